"""`aibox draft …`: build a DSpark drafter for a local model on this box.

prepare (the target answers the shipped prompts; features cached) -> train -> calibrate ->
eval. Every step is resumable and picks CUDA when there is a GPU, the CPU otherwise.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from aibox.cli.common import EXIT_DATAERR, EXIT_FAILURE, EXIT_NOINPUT, JsonOption, console, err_console, fail, get_config, print_json
from aibox.cli.models import card_or_fail
from aibox.config import Config
from models.files import model_path

app = typer.Typer(help="Train, calibrate and evaluate DSpark drafters for speculative decoding.", no_args_is_help=True)

DeviceOption = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda, cuda:N.")
ThreadsOption = typer.Option(None, "--threads", min=1, help="CPU threads for llama.cpp and torch (default: all cores).")
GgufOption = typer.Option(None, "--gguf", help="Target GGUF file (default: the model's file in the models dir).")
ModelOption = typer.Option(..., "--model", "-m", help="Target model name.")


def _workdir(config: Config, model: str) -> Path:
    return config.state_path / "dspark" / model


def _target(config: Config, model: str, gguf: Path | None) -> Path:
    if gguf is not None:
        if not gguf.is_file():
            fail(f"no GGUF file at {gguf}", EXIT_NOINPUT)
        return gguf
    card = card_or_fail(config, model)
    path = model_path(card, config.models_path)
    if not path.is_file():
        fail(f"{model} is not on this box; run `aibox models pull {model}` or pass --gguf", EXIT_NOINPUT)
    return path


def _threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _setup(ctx: typer.Context, model: str, gguf: Path | None, threads: int | None) -> tuple[Config, Path]:
    """The config and the target's GGUF for a step that runs torch; sets torch's threads."""
    config = get_config(ctx)
    path = _target(config, model, gguf)
    _threads(threads)
    return config, path


def _bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=err_console,
    )


@app.command("prepare")
def prepare_cmd(
    ctx: typer.Context,
    model: str = ModelOption,
    gguf: Path = GgufOption,
    data: Path = typer.Option(None, "--data", help="Data directory (default: <state dir>/dspark/<model>/data)."),
    prompts: Path = typer.Option(None, "--prompts", help="Prompt set JSONL (default: the one shipped with aibox)."),
    limit: int = typer.Option(0, min=0, help="Only the first N prompts (0: all)."),
    max_tokens: int = typer.Option(160, min=1, help="Longest answer, in tokens."),
    temperature: float = typer.Option(0.0, min=0.0, help="Answer sampling temperature (0: greedy, what eval measures)."),
    top_p: float = typer.Option(1.0, min=0.01, max=1.0, help="Answer nucleus sampling."),
    feature_layers: str = typer.Option("", "--feature-layers", help="Also capture these target layers' outputs as features, e.g. 7,15,22 (default: the final hidden state only)."),
    top_k: int = typer.Option(32, "--top-k", min=1, help="Target probabilities kept per answer token (what train's cheap loss reads)."),
    threads: int = ThreadsOption,
    json: bool = JsonOption,
) -> None:
    """Let the target answer the prompt set and cache tokens, hidden states (fp16) and its top-k probabilities; resumable."""
    from models.dspark.target_weights import read_shape
    from models.dspark_toolkit.data import PROMPTS_FILE, DataError, PrepareSettings, estimate_bytes, free_bytes, load_prompts, prepare

    config = get_config(ctx)
    path = _target(config, model, gguf)
    data = data or _workdir(config, model) / "data"
    try:
        items = load_prompts(prompts or PROMPTS_FILE)
    except (OSError, DataError) as e:
        fail(str(e), EXIT_DATAERR)
    if limit:
        items = items[:limit]
    settings = PrepareSettings(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k)
    try:
        chosen = [int(x) for x in feature_layers.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"layer numbers separated by commas, not {feature_layers!r}", param_hint="--feature-layers") from None
    need = estimate_bytes(len(items), settings, read_shape(path).d_model, n_layers=len(chosen))
    free = free_bytes(data)
    err_console.print(f"{len(items)} prompts -> {data}: at most {need / 1e6:.0f} MB on disk ({free / 1e9:.1f} GB free)")
    if need > free:
        fail(f"not enough disk for {data}: need up to {need / 1e6:.0f} MB, {free / 1e6:.0f} MB free", EXIT_FAILURE)
    with _bar() as bar:
        task = bar.add_task("answering", total=len(items))
        try:
            result = prepare(path, data, items, settings, threads=threads, layers=chosen,
                             progress=lambda done, total: bar.update(task, completed=done, total=total))
        except (DataError, ValueError) as e:
            fail(str(e), EXIT_DATAERR)
    if json:
        print_json(result)
    else:
        console.print(f"prepared {result['prepared_now']} now ({result['prompts']} in all), "
                      f"{result['bytes'] / 1e6:.1f} MB in {result['dir']}")


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    model: str = ModelOption,
    gguf: Path = GgufOption,
    data: Path = typer.Option(None, "--data", help="Prepared data (default: <state dir>/dspark/<model>/data)."),
    out: Path = typer.Option(None, "--out", help="Run directory (default: <state dir>/dspark/<model>/dspark, or dflash)."),
    steps: int = typer.Option(600, min=1, help="Optimizer steps (cosine schedule length)."),
    batch_size: int = typer.Option(4, min=1, help="Sequences per step."),
    anchors: int = typer.Option(32, min=1, help="Random blocks per sequence."),
    lr: float = typer.Option(6e-4, min=0.0, help="Peak learning rate."),
    layers: int = typer.Option(2, min=1, help="Draft layers (target width)."),
    ffn: int = typer.Option(None, min=16, help="Feed-forward width (default: the target's)."),
    rank: int = typer.Option(64, min=0, help="Serial correction rank r (0: none)."),
    draft_vocab: int = typer.Option(0, min=0, help="Keep only the N most frequent tokens in the draft head (0: all)."),
    block_size: int = typer.Option(5, min=2, help="γ: anchor + γ-1 mask slots."),
    baseline: bool = typer.Option(False, "--baseline", help="Train the DFlash baseline: no serial correction, CE only."),
    max_minutes: float = typer.Option(None, min=0.1, help="Stop (with a checkpoint) after this long; rerun to resume."),
    checkpoint_every: int = typer.Option(50, min=1, help="Steps between checkpoints."),
    exact_loss: bool = typer.Option(False, "--exact-loss", help="Compute the target's full distribution in every step instead of reading the prepared top-k (slower)."),
    bf16: bool = typer.Option(None, "--bf16/--no-bf16", help="bf16 autocast for the draft forward (default: where the CPU or GPU does bf16 natively)."),
    device: str = DeviceOption,
    threads: int = ThreadsOption,
    json: bool = JsonOption,
) -> None:
    """Train a drafter (or resume the run in --out); writes safetensors, config.json and a loss curve."""
    from models.dspark.checkpoint import CheckpointError
    from models.dspark.device import pick_device
    from models.dspark_toolkit.data import DataError
    from models.dspark_toolkit.trainer import TrainSettings, train

    config, path = _setup(ctx, model, gguf, threads)
    data = data or _workdir(config, model) / "data"
    out = out or _workdir(config, model) / ("dflash" if baseline else "dspark")
    settings = TrainSettings(steps=steps, batch_size=batch_size, anchors=anchors, lr=lr, n_layers=layers, ffn=ffn,
                             markov_rank=rank, draft_vocab=draft_vocab, block_size=block_size, baseline=baseline,
                             checkpoint_every=checkpoint_every, exact_loss=exact_loss, bf16=bf16)
    try:
        dev = pick_device(device)
    except ValueError as e:
        fail(str(e))
    err_console.print(f"training on {dev} -> {out}")
    with _bar() as bar:
        task = bar.add_task("training", total=steps)

        def progress(step: int, total: int, row: dict) -> None:
            acc = " ".join(f"{a:.2f}" for a in row["accept"])
            bar.update(task, completed=step, total=total, description=f"loss {row['loss']:.3f} accept {acc}")

        try:
            result = train(data, path, out, settings, dev, progress, max_minutes)
        except (DataError, CheckpointError) as e:
            fail(str(e), EXIT_DATAERR)
    if json:
        print_json(result)
        return
    val = result["validation"]
    console.print(f"{result['steps_done']}/{result['steps']} steps ({result['loss_path']} loss, "
                  f"{'bf16' if result['bf16'] else 'fp32'}) -> {result['out']}")
    console.print(f"held-out: loss {val['loss']:.3f}, greedy acceptance by position "
                  f"{' '.join(f'{a:.2f}' for a in val['accept'])}, τ estimate {val['tau_est']:.2f}")


@app.command("calibrate")
def calibrate_cmd(
    ctx: typer.Context,
    model: str = ModelOption,
    gguf: Path = GgufOption,
    data: Path = typer.Option(None, "--data", help="Prepared data (its held-out split is used)."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Drafter directory (default: <state dir>/dspark/<model>/dspark)."),
    device: str = DeviceOption,
    threads: int = ThreadsOption,
    json: bool = JsonOption,
) -> None:
    """Fit per-position temperatures of the confidence head on held-out data; ECE, AUROC, Brier before/after."""
    from models.dspark.checkpoint import CheckpointError
    from models.dspark.device import pick_device
    from models.dspark_toolkit.calibrate import calibrate
    from models.dspark_toolkit.data import DataError

    config, path = _setup(ctx, model, gguf, threads)
    data = data or _workdir(config, model) / "data"
    checkpoint = checkpoint or _workdir(config, model) / "dspark"
    try:
        result = calibrate(checkpoint, path, data, pick_device(device))
    except (DataError, CheckpointError, ValueError) as e:
        fail(str(e), EXIT_DATAERR)
    if json:
        print_json(result)
        return
    table = Table("predictions", "ECE before", "ECE after", "AUROC before", "AUROC after", "Brier before", "Brier after")
    for kind in ("per_position", "cumulative"):
        b, a = result["before"][kind], result["after"][kind]
        table.add_row(kind, f"{b['ece']:.3f}", f"{a['ece']:.3f}", f"{b['auroc']:.3f}", f"{a['auroc']:.3f}",
                      f"{b['brier']:.3f}", f"{a['brier']:.3f}")
    console.print(table)
    console.print(f"temperatures by position: {' '.join(f'{t:.2f}' for t in result['temperatures'])} "
                  f"({result['samples']} held-out blocks); written to {checkpoint}")


@app.command("eval")
def eval_cmd(
    ctx: typer.Context,
    model: str = ModelOption,
    gguf: Path = GgufOption,
    dspark: Path = typer.Option(None, "--dspark", help="DSpark drafter (default: <state dir>/dspark/<model>/dspark)."),
    dflash: Path = typer.Option(None, "--dflash", help="DFlash baseline (default: <state dir>/dspark/<model>/dflash, if present)."),
    per_set: int = typer.Option(10, min=1, help="Held-out prompts per set (chat, code, copy-heavy)."),
    max_tokens: int = typer.Option(128, min=1, help="Tokens generated per prompt."),
    gamma: int = typer.Option(5, min=1, help="Draft length verified every step."),
    out: Path = typer.Option(None, "--out", help="Where eval.json and eval.png go (default: the DSpark directory)."),
    device: str = DeviceOption,
    threads: int = ThreadsOption,
    json: bool = JsonOption,
) -> None:
    """τ, per-position acceptance and tokens/s of DSpark, the DFlash baseline and prompt lookup, greedy, in one run."""
    from models.dspark.checkpoint import CheckpointError
    from models.dspark.device import pick_device
    from models.dspark_toolkit.evaluate import evaluate

    config, path = _setup(ctx, model, gguf, threads)
    dspark = dspark or _workdir(config, model) / "dspark"
    if dflash is None and (_workdir(config, model) / "dflash" / "config.json").exists():
        dflash = _workdir(config, model) / "dflash"
    out = out or dspark
    with _bar() as bar:
        task = bar.add_task("generating", total=None)
        try:
            result = evaluate(path, dspark, dflash, out, per_set=per_set, max_tokens=max_tokens, gamma=gamma,
                              device=pick_device(device), threads=threads,
                              progress=lambda done, total, what: bar.update(task, completed=done, total=total, description=what))
        except (CheckpointError, ValueError) as e:
            fail(str(e), EXIT_DATAERR)
    if json:
        print_json(result)
        return
    table = Table("drafter", "τ", "acceptance by position", "tok/s", "vs plain", "lossless")
    for r in result["results"]:
        table.add_row(r["drafter"], f"{r['tau']:.2f}", " ".join(f"{a:.2f}" for a in r["acceptance_by_position"]),
                      f"{r['tok_s']:.1f}", f"{r['speedup']:.2f}x", "yes" if r["lossless"] else "NO")
    console.print(table)
    console.print(f"γ={gamma}, greedy, {result['prompts']} held-out prompts x {max_tokens} tokens on {result['machine']}; "
                  f"wrote {result['json']} and {result['png']}")
    if not all(r["lossless"] for r in result["results"]):
        raise typer.Exit(EXIT_FAILURE)
