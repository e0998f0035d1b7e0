"""`aibox bench …`: speed figures measured side by side in one run on this machine."""

from __future__ import annotations

import json as jsonlib
from pathlib import Path

import typer
from rich.table import Table

from aibox.cli.common import EXIT_DATAERR, EXIT_NOINPUT, console, err_console, fail, get_config
from aibox.cli.models import card_or_fail
from models.files import is_present

app = typer.Typer(help="Benchmarks: runtime, and more as features land.", no_args_is_help=True)


def write_json(path: Path | None, data: dict) -> None:
    if path is not None:
        path.write_text(jsonlib.dumps(data, indent=2, default=str))
        err_console.print(f"wrote {path}")


@app.command("runtime")
def runtime(
    ctx: typer.Context,
    model: str = typer.Option(None, "--model", "-m", help="Model to measure (default: the default model)."),
    max_tokens: int = typer.Option(128, help="Tokens per completion."),
    rounds: int = typer.Option(2, help="Rounds over the prompt set."),
    json: Path = typer.Option(None, "--json", help="Also write the full results to this JSON file."),
) -> None:
    """Daemon vs raw llama-cpp-python tokens/s and TTFT; turn-10 TTFT with and without KV reuse."""
    from aibox.bench.runtime import bench_runtime

    config = get_config(ctx)
    card = card_or_fail(config, model or config.default_model)
    if not is_present(card, config.models_path):
        fail(f"{card.name} is not on this box; run `aibox models pull {card.name}`", EXIT_NOINPUT)
    with console.status("benchmarking") as status:
        result = bench_runtime(card, config.models_path, config.threads, max_tokens, rounds, progress=lambda m: status.update(m))
    write_json(json, result)
    console.print(f"model {result['model']} on {result['machine']['summary']}")
    table = Table("path", "tok/s (median)", "TTFT ms (median)")
    table.add_row("raw llama-cpp-python", f"{result['raw']['tok_s']:.1f}", f"{result['raw']['ttft_s'] * 1000:.0f}")
    table.add_row("aibox daemon (HTTP+SSE)", f"{result['daemon']['tok_s']:.1f}", f"{result['daemon']['ttft_s'] * 1000:.0f}")
    console.print(table)
    console.print(f"daemon overhead on tokens/s: {result['daemon_overhead_pct']:+.1f}%  (target < 5%)")
    console.print(f"identical greedy outputs: {result['identical_outputs']}")
    reuse = result["kv_reuse"]
    table = Table("turn 10 of a chat", "TTFT ms")
    table.add_row("with KV reuse", f"{reuse['with_reuse']['turn10_ttft_s'] * 1000:.0f}")
    table.add_row("without KV reuse", f"{reuse['without_reuse']['turn10_ttft_s'] * 1000:.0f}")
    console.print(table)
    console.print(f"turn-10 TTFT speedup from reuse: {result['turn10_ttft_speedup']:.1f}x  (target >= 3x)")


@app.command("pipeline")
def pipeline(
    platform: list[str] = typer.Option(None, "--platform", "-p", help="Only these platforms (repeatable; default: all four)."),
    messages: int = typer.Option(1000, min=10, help="Measured messages per platform."),
    chats: int = typer.Option(100, min=1, help="Chats talking at once."),
    think_ms: float = typer.Option(1000.0, min=0, help="Mean pause between a reply and the chat's next message; 0 saturates."),
    json: Path = typer.Option(None, "--json", help="Also write the full results to this JSON file."),
) -> None:
    """Message in to first reply byte through each platform's fake server, stub model: p50/p99."""
    from rich.progress import Progress

    from aibox.bench.pipeline import bench_pipeline

    total = messages + chats
    with Progress(console=err_console, transient=True) as bar:
        tasks: dict[str, object] = {}

        def progress(name: str, done: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done)

        result = bench_pipeline(platform or None, messages, chats, think_ms, progress)
    write_json(json, result)
    console.print(
        f"{result['concurrent_chats']} concurrent chats, think time {result['think_ms']:.0f} ms, stub model, "
        f"on {result['machine']['summary']}; load average {result['load_avg_1m']['before']:.1f} before, "
        f"{result['load_avg_1m']['after']:.1f} after"
    )
    table = Table("platform", "messages", "p50 ms", "p99 ms", "mean ms", "max ms", "errors")
    failed = False
    for r in result["results"]:
        if "error" in r:
            table.add_row(r["platform"], "-", "-", "-", "-", "-", r["error"])
            failed = True
            continue
        failed = failed or r["errors"] > 0
        table.add_row(r["platform"], str(r["messages"]), f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                      f"{r['mean_ms']:.1f}", f"{r['max_ms']:.1f}", str(r["errors"]))
    console.print(table)
    console.print(f"target: p50 under {result['target_p50_ms']:.0f} ms, no errors")
    if failed:
        raise typer.Exit(1)


@app.command("spec")
def spec(
    ctx: typer.Context,
    model: str = typer.Option(None, "--model", "-m", help="Target model (default: the default model)."),
    quick: bool = typer.Option(False, "--quick", help="3 prompts per set and 48 tokens each instead of 8 and 96."),
    threads: int = typer.Option(0, "--threads", min=0, help="llama.cpp threads (default: the config's, one per core)."),
    json: Path = typer.Option(None, "--json", help="Also write the full results to this JSON file."),
    plot: Path = typer.Option(None, "--plot", help="PNG of speed-up and τ per drafter (default: next to --json, else ./bench-spec-MODEL.png)."),
) -> None:
    """Speculative decoding: plain vs each drafter at fixed lengths vs `auto`, per prompt set (chat, code, copy-heavy)."""
    from aibox.bench.speculative import bench_spec, plot as plot_result
    from aibox.cli.models import catalog

    config = get_config(ctx)
    card = card_or_fail(config, model or config.default_model)
    if not card.is_local:
        fail(f"{card.name} is a remote model; speculative decoding runs on local models", EXIT_NOINPUT)
    if not is_present(card, config.models_path):
        fail(f"{card.name} is not on this box; run `aibox models pull {card.name}`", EXIT_NOINPUT)
    with console.status("benchmarking") as status:
        result = bench_spec(
            card,
            catalog(config),
            config.models_path,
            config.state_path,
            threads or config.threads,
            quick=quick,
            progress=lambda m: status.update(m),
        )
    write_json(json, result)
    png = plot or (json.with_suffix(".png") if json else Path(f"bench-spec-{card.name}.png"))
    plot_result(result, png)
    err_console.print(f"wrote {png}")
    console.print(f"model {result['model']} on {result['machine']['summary']}, {result['machine']['threads']} threads")
    prof = result["profile"]
    console.print("profile: " + "  ".join(f"B={b} {s * 1000:.1f} ms" for b, s in zip(prof["batch_sizes"], prof["seconds"])))
    console.print(f"batched logits bit-identical to one-token decodes up to B={prof['exact_batch']}")
    table = Table("prompt set", "tok/s", "x plain", "τ", "lossless", "ceiling for τ")
    table.add_column("drafter", no_wrap=True)
    for r in result["results"]:
        table.add_row(
            r["prompt_set"], f"{r['tok_s']:.1f}", f"{r['speedup']:.2f}", f"{r['tau']:.2f}",
            "yes" if r["lossless"] else "NO", f"{r['ceiling']:.2f}", r["drafter"],
        )
    console.print(table)


@app.command("router")
def router(
    ctx: typer.Context,
    quick: bool = typer.Option(False, "--quick", help="A smaller workload (8 requests instead of 24)."),
    threads: int = typer.Option(None, "--threads", help="Threads per model (default: the config's)."),
    max_tokens: int = typer.Option(200, help="Tokens per answer at most, for every policy."),
    mean_gap_s: float = typer.Option(6.0, help="Mean seconds between arrivals (Poisson)."),
    json: Path = typer.Option(None, "--json", help="Also write the full results to this JSON file."),
) -> None:
    """Length-class accuracy on the test split; mean/p95 time to full answer and TTFT for
    always-fast, always-long and the router, on a Poisson workload through a real daemon."""
    from aibox.bench.router import FAST, LONG, bench_router

    config = get_config(ctx)
    for name in (FAST, LONG):
        if not is_present(card_or_fail(config, name), config.models_path):
            fail(f"{name} is not on this box; run `aibox models pull {name}`", EXIT_NOINPUT)
    with console.status("benchmarking the router") as status:
        result = bench_router(config.models_path, threads or config.threads, quick, max_tokens, mean_gap_s,
                              progress=lambda m: status.update(m),
                              quality_from=config.store_url if config.state_path.exists() else None)
    write_json(json, result)
    acc = result["accuracy"]
    p = result["prompts"]
    console.print(f"on {result['machine']['summary']}; labels: {result['label_model']} greedy, capped at "
                  f"{result['label_cap_tokens']} tokens; {p['total']} prompts ({p['train']} train, {p['test']} test)")
    console.print(f"length-class accuracy on the test split: {acc['accuracy']:.1%} of {acc['n']}  (target >= 85%)")
    table = Table("policy", "requests", "mean total s", "p95 total s", "mean TTFT s", "p95 TTFT s", "short p95 TTFT s", "models used")
    for policy, r in result["results"].items():
        table.add_row(policy, str(r["requests"]), f"{r['mean_total_s']:.1f}", f"{r['p95_total_s']:.1f}",
                      f"{r['mean_ttft_s']:.2f}", f"{r['p95_ttft_s']:.2f}", f"{r['short_p95_ttft_s']:.2f}",
                      ", ".join(f"{m}: {k}" for m, k in r["models"].items()))
    console.print(table)
    q = result["quality"]
    console.print(f"held-out evaluation items: {q['items']} (measured quality rows from this box: {q['measured_rows_copied']})")
    table = Table("policy", "right answers", "mean total s", "p95 total s", "short p95 TTFT s", "models used")
    for policy, r in q["results"].items():
        table.add_row(policy, f"{r['right']} / {r['requests']} ({r['right_pct']:.0f}%)", f"{r['mean_total_s']:.1f}",
                      f"{r['p95_total_s']:.1f}", f"{r['short_p95_ttft_s']:.2f}",
                      ", ".join(f"{m}: {k}" for m, k in r["models"].items()))
    console.print(table)
    for target, met in result["targets"].items():
        console.print(f"{target}: {'met' if met else 'NOT met'}")


@app.command("train-step")
def train_step(
    ctx: typer.Context,
    model: str = typer.Option(None, "--model", "-m", help="Target model (default: the default model)."),
    data: Path = typer.Option(None, "--data", help="Prepared data (default: <state dir>/bench/train-step/MODEL; prepared if missing)."),
    prompts: int = typer.Option(30, min=2, help="Shipped training prompts the target answers for the data."),
    steps: int = typer.Option(60, min=3, help="Steps of each run on 2 threads (loss curve, seconds per step)."),
    one_thread_steps: int = typer.Option(10, min=3, help="Steps of each run on 1 thread (seconds per step)."),
    json: Path = typer.Option(None, "--json", help="Also write the full results to this JSON file."),
) -> None:
    """DSpark training step: the old exact fp32 step vs cached top-k + bf16, same data and start."""
    from aibox.bench.train_step import bench_train_step
    from models.files import model_path

    config = get_config(ctx)
    card = card_or_fail(config, model or config.default_model)
    if not card.is_local or not is_present(card, config.models_path):
        fail(f"{card.name} is not a local model on this box; run `aibox models pull {card.name}`", EXIT_NOINPUT)
    data = data or config.state_path / "bench" / "train-step" / card.name
    with console.status("benchmarking") as status:
        try:
            result = bench_train_step(model_path(card, config.models_path), data, prompts=prompts, steps=steps,
                                      one_thread_steps=one_thread_steps, progress=lambda m: status.update(m))
        except ValueError as e:
            fail(str(e), EXIT_DATAERR)
    write_json(json, result)
    console.print(f"{card.name} on {result['machine']['summary']}: {result['prompts']} prompts, {result['answer_tokens']} answer "
                  f"tokens, top-{result['top_k']}, {result['settings']}")
    table = Table("step", "s/step 1 thread", "s/step 2 threads", f"CE per {result['ce_window']} steps", f"exact loss after {steps}", "τ est.")
    for name in ("old", "new"):
        r = result[name]
        table.add_row(f"{name} ({r['loss_path']}, {'bf16' if r['bf16'] else 'fp32'})", f"{r['seconds_per_step_1_thread']:.3f}",
                      f"{r['seconds_per_step_2_threads']:.3f}", " ".join(f"{c:.2f}" for c in r["ce_curve"]),
                      f"{r['exact_loss_after']:.4f}", f"{r['tau_est_after']:.2f}")
    console.print(table)
    console.print(f"speed-up: {result['speedup_1_thread']:.2f}x on 1 thread, {result['speedup_2_threads']:.2f}x on 2 "
                  f"(target >= 3x); exact loss new/old {result['exact_loss_ratio']:.3f}")


@app.command("bad-input")
def bad_input(
    ctx: typer.Context,
    json: Path = typer.Option(None, "--json", help="Also write the full results to this JSON file."),
) -> None:
    """A fixed list of malformed API requests against a fresh daemon: each must get a 4xx JSON error, none a 5xx."""
    from rich.progress import Progress

    from aibox.bench.bad_input import CASES, bench_bad_input

    config = get_config(ctx)
    card = card_or_fail(config, config.default_model)
    if not is_present(card, config.models_path):
        fail(f"{card.name} is not on this box; run `aibox models pull {card.name}`", EXIT_NOINPUT)
    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("malformed requests", total=len(CASES))
        result = bench_bad_input(config.models_path, progress=lambda done: bar.update(task, completed=done))
    write_json(json, result)
    table = Table("request", "status", "code", "expected")
    for r in result["results"]:
        mark = "" if r["as_expected"] else "  <- unexpected"
        table.add_row(r["request"], str(r["status"]), str(r["code"]), r["expected"] + mark)
    console.print(table)
    console.print(f"{result['requests']} malformed requests: {result['server_errors']} answered 5xx, "
                  f"{result['not_json']} without a JSON error, {result['unexpected']} not as expected")
    if result["server_errors"] or result["not_json"] or result["unexpected"]:
        raise typer.Exit(1)
