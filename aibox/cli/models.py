"""`aibox models …`: the catalog and the model files on this box."""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from aibox.cli.common import EXIT_DATAERR, EXIT_FAILURE, EXIT_NOINPUT, JsonOption, console, err_console, fail, get_config, print_json
from aibox.config import Config
from models.catalog import Catalog, CatalogError, ModelCard
from models.files import PullError, VerifyError, is_present, model_path, pull, remove, verify

app = typer.Typer(help="List, pull, verify, inspect and remove models.", no_args_is_help=True)


def catalog(config: Config) -> Catalog:
    try:
        return Catalog.load(config.state_path / "cards")
    except CatalogError as e:
        fail(str(e), EXIT_FAILURE)


def card_or_fail(config: Config, name: str) -> ModelCard:
    try:
        return catalog(config).get(name)
    except CatalogError as e:
        fail(str(e), EXIT_NOINPUT)


def present_local_card(config: Config, name: str, purpose: str) -> ModelCard:
    """The card of a local model whose file is here, or a one-line error saying which it is not."""
    card = card_or_fail(config, name)
    if not card.is_local:
        fail(f"{name} is a remote model; only local models are {purpose}", EXIT_NOINPUT)
    if not is_present(card, config.models_path):
        fail(f"{name} is not on this box; run `aibox models pull {name}`", EXIT_NOINPUT)
    return card


def card_summary(card: ModelCard, config: Config) -> dict:
    path = model_path(card, config.models_path) if card.is_local else None
    return {
        "name": card.name,
        "roles": card.roles,
        "size": card.size,
        "license": card.license,
        "context_length": card.context_length,
        "remote": card.remote.base_url if card.remote else None,
        "present": card.is_local and is_present(card, config.models_path),
        "path": str(path) if path else None,
    }


@contextmanager
def byte_progress(description: str, enabled: bool) -> Iterator:
    """A progress bar on stderr (kept off stdout so --json output stays clean)."""
    if not enabled:
        yield lambda _done, _total: None
        return
    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(description, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


@app.command("list")
def list_models(ctx: typer.Context, json: bool = JsonOption) -> None:
    """List the models in the catalog and whether each is on this box."""
    config = get_config(ctx)
    rows = [card_summary(c, config) for c in catalog(config)]
    if json:
        print_json(rows)
        return
    table = Table("name", "roles", "size", "present", "license")
    for r in rows:
        size = f"{r['size'] / 1e6:,.0f} MB" if r["size"] else "remote"
        table.add_row(r["name"], ",".join(r["roles"]), size, "yes" if r["present"] else "no", r["license"])
    console.print(table)


@app.command("pull")
def pull_model(ctx: typer.Context, name: str, json: bool = JsonOption) -> None:
    """Download a model from its sources and verify its sha256 before it is used."""
    config = get_config(ctx)
    card = card_or_fail(config, name)
    with byte_progress(f"pulling {name}", enabled=not json) as progress:
        try:
            path = pull(card, config.models_path, progress=progress, log=lambda m: err_console.print(f"[dim]{m}[/dim]"))
        except PullError as e:
            fail(str(e), EXIT_FAILURE)
    if json:
        print_json({"name": name, "path": str(path), "sha256": card.sha256, "verified": True})
    else:
        console.print(f"{name}: {path} (sha256 verified)")


@app.command("verify")
def verify_model(ctx: typer.Context, name: str, json: bool = JsonOption) -> None:
    """Hash the model file and compare it with its card. Exit 65 on a mismatch."""
    config = get_config(ctx)
    card = card_or_fail(config, name)
    with byte_progress(f"hashing {name}", enabled=not json) as progress:
        try:
            path = verify(card, config.models_path, progress=progress, force=True)
            ok, detail = True, str(path)
        except VerifyError as e:
            ok, detail = False, str(e)
    if json:
        print_json({"name": name, "ok": ok, "detail": detail, "sha256": card.sha256})
    elif ok:
        console.print(f"{name}: ok ({detail})")
    if not ok:
        if not json:
            fail(detail, EXIT_DATAERR)
        raise typer.Exit(EXIT_DATAERR)


@app.command("info")
def info(ctx: typer.Context, name: str, json: bool = JsonOption) -> None:
    """Show a model's card, its state on this box, and whether speculative decoding pays here."""
    config = get_config(ctx)
    card = card_or_fail(config, name)
    data = card.model_dump(mode="json") | card_summary(card, config)
    if card.is_local:
        data["speculation"] = speculation_summary(card, config)
    if json:
        print_json(data)
        return
    table = Table(show_header=False, box=None)
    for key in ("name", "description", "roles", "file", "size", "sha256", "license", "context_length", "present", "path"):
        table.add_row(key, str(data.get(key)))
    table.add_row("sources", "\n".join(s.get("url") or s.get("type") for s in data["sources"]))
    spec = data.get("speculation")
    if spec:
        table.add_row("drafters", ", ".join(spec["drafters"]))
        if spec["profile"]:
            prof = spec["profile"]
            table.add_row(
                "verify profile",
                "  ".join(f"B={b}: {s * 1000:.1f} ms" for b, s in zip(prof["batch_sizes"], prof["seconds"]))
                + f"  (bit-identical to single decodes up to B={prof['exact_batch']})"
                + ("\nquick profile measured at first load; `aibox models profile` measures the full one" if prof["quick"] else ""),
            )
        table.add_row("acceleration", ("pays here: " if spec["pays"] else "off here: ") + spec["reason"])
    console.print(table)


def speculation_summary(card: ModelCard, config: Config) -> dict:
    from models.speculative.accelerator import plan

    try:
        decision = plan(card, catalog(config), config.models_path, config.state_path, config.threads)
    except ValueError as e:
        fail(str(e), EXIT_DATAERR)
    return {
        "drafters": decision.drafters,
        "profile": decision.profile.to_json() if decision.profile else None,
        "pays": decision.pays,
        "break_even_acceptance": decision.assessment.break_even_confidence if decision.assessment else None,
        "ceiling": decision.assessment.ceiling if decision.assessment else None,
        "draft_model": decision.draft_model,
        "dspark": decision.dspark,
        "reason": decision.reason,
    }


@app.command("profile")
def profile(
    ctx: typer.Context,
    name: str,
    repeats: int = typer.Option(5, min=1, help="Timed decodes per batch size (the median is kept)."),
    json: bool = JsonOption,
) -> None:
    """Measure seconds per verify step vs tokens in the batch, SPS(B), fully, and cache it for this machine
    (the daemon measures a quick one by itself the first time a model loads)."""
    from models.speculative.profile import machine_info, measure, save_profile
    from models.speculative.scheduler import Scheduler
    from models.speculative.target import LlamaTarget

    config = get_config(ctx)
    card = present_local_card(config, name, "profiled")
    target = LlamaTarget.load(model_path(card, config.models_path), n_ctx=512, threads=config.threads)
    with Progress(console=err_console, transient=True, disable=json) as bar:
        task = bar.add_task(f"profiling {name}", total=None)
        prof = measure(
            target,
            card.name,
            machine_info(config.threads),
            repeats=repeats,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    path = save_profile(config.state_path, prof)
    assessment = Scheduler(prof).assess()
    if json:
        print_json({"profile": prof.to_json(), "path": str(path), "pays": assessment.pays, "reason": assessment.reason})
        return
    table = Table("tokens in batch", "ms per step", "x one token")
    for b, sec in zip(prof.batch_sizes, prof.seconds):
        table.add_row(str(b), f"{sec * 1000:.1f}", f"{sec / prof.seconds[0]:.2f}")
    console.print(table)
    console.print(f"batched logits are bit-identical to one-token decodes up to B={prof.exact_batch}")
    console.print(f"saved {path}")
    console.print(("speculation pays here: " if assessment.pays else "speculation is off here: ") + assessment.reason)


@app.command("eval")
def eval_model(
    ctx: typer.Context,
    name: str,
    limit: int = typer.Option(None, "--limit", min=1, help="At most this many items of each task kind (spread over the kind)."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore the results of an earlier, interrupted run."),
    json: bool = JsonOption,
) -> None:
    """Measure how often a model answers right, per task kind, on the shipped evaluation set
    (greedy, through the real runtime), and store the rates for the router. Resumes an
    interrupted run of the same model file on the same set."""
    from aibox.router import quality
    from aibox.store import Store
    from models.runtime import LocalModel

    config = get_config(ctx)
    card = present_local_card(config, name, "evaluated")
    try:
        every = quality.load_items()
    except (OSError, quality.EvalSetError) as e:
        fail(f"evaluation set: {e}", EXIT_DATAERR)
    items = quality.stratified(every, limit)
    digest = quality.set_digest(every)
    log = quality.ResultLog(config.state_path / "eval" / f"{name}.jsonl", digest, card.sha256 or card.file)
    if fresh:
        log.clear()
    model = LocalModel(card, model_path(card, config.models_path), threads=config.threads, n_ctx=2048, state_cache_bytes=0,
                       kv_reuse=False)
    try:
        with Progress(*Progress.get_default_columns(), "{task.fields[right]} right", console=err_console, transient=True,
                      disable=json) as bar:
            task = bar.add_task(f"evaluating {name}", total=len(items), right=0)
            right = 0

            def step(result: quality.ItemResult) -> None:
                nonlocal right
                right += result.passed
                bar.update(task, advance=1, right=right)

            results = quality.evaluate(items, quality.local_answerer(model), log, step)
    finally:
        model.close()
    scores = quality.by_kind(results)
    store = Store.open(config.store_url)
    try:
        quality.save_scores(store, name, scores, digest)
    finally:
        store.close()
    total = sum(s.correct for s in scores), sum(s.items for s in scores)
    if json:
        print_json({"model": name, "eval_set": digest, "per_kind_limit": limit, "kinds": [s.as_dict() for s in scores],
                    "correct": total[0], "items": total[1],
                    "failures": [{"id": r.id, "detail": r.detail, "answer": r.answer} for r in results if not r.passed]})
        return
    table = Table("kind", "right", "rate", "mean s")
    for sc in scores:
        table.add_row(sc.kind, f"{sc.correct} / {sc.items}", f"{sc.rate:.0%}", f"{sc.mean_s:.2f}")
    table.add_row("all", f"{total[0]} / {total[1]}", f"{total[0] / total[1]:.0%}", "")
    console.print(table)
    console.print(f"stored for the router (evaluation set {digest})")


@app.command("recommend")
def recommend(ctx: typer.Context, json: bool = JsonOption) -> None:
    """Detect this box's accelerators and memory and list the catalog models that fit, with
    GPU offload, expected speed (measured here when it has run, else estimated) and the
    `runtime.max_loaded` that keeps the largest of them from running the box out of memory."""
    from aibox.router.candidates import measured_speed
    from aibox.router.quality import measured_quality
    from aibox.store import Store
    from models.hardware import detect, max_loaded, place

    config = get_config(ctx)
    hw = detect(cores=config.threads)
    store = Store.open(config.store_url) if config.state_path.exists() else None
    rows = []
    try:
        for card in catalog(config):
            if not card.is_local or card.roles == ["draft"]:
                continue
            placement = place(card, hw)
            speed = measured_speed(store, card.name)
            quality = measured_quality(store, card.name)
            items = sum(q.items for q in quality.values())
            rows.append(placement.as_dict() | {
                "roles": card.roles, "present": is_present(card, config.models_path), "verified": bool(card.sha256),
                "tok_s": round(speed.tok_s, 1) if speed else placement.expected_tok_s,
                "speed_source": speed.source if speed else "estimate (bandwidth / file size)",
                "quality": round(100 * sum(q.rate * q.items for q in quality.values()) / items, 1) if items else None,
            })
    finally:
        if store is not None:
            store.close()
    fitting = [r for r in rows if r["fits"]]
    suggested = max_loaded([place(catalog(config).get(r["model"]), hw) for r in fitting], hw, cap=8)
    if json:
        print_json({"hardware": hw.as_dict(), "models": rows, "max_loaded": suggested,
                    "configured_max_loaded": config.runtime.max_loaded})
        return
    gpus = ", ".join(f"{a.name} ({a.vram_free / 2**30:.1f} of {a.vram_total / 2**30:.1f} GiB free)" for a in hw.accelerators)
    console.print(f"{hw.cores} cores, {hw.memory_available / 2**30:.1f} of {hw.memory_total / 2**30:.1f} GiB memory free; "
                  f"{gpus or 'no GPU'}" + ("" if hw.gpu_offload or not hw.accelerators else " (this llama.cpp build cannot offload)"))
    table = Table("model", "fits", "GPU layers", "tok/s", "right answers", "present", "card", "note")
    for r in rows:
        layers = "all" if r["n_gpu_layers"] == -1 else str(r["n_gpu_layers"])
        quality = "not measured" if r["quality"] is None else f"{r['quality']:.0f}%"
        table.add_row(r["model"], "yes" if r["fits"] else "no", layers, f"{r['tok_s']:.0f}", quality,
                      "yes" if r["present"] else "no", "verified" if r["verified"] else "unverified", r["note"])
    console.print(table)
    console.print(f"max_loaded: {suggested} (configured: {config.runtime.max_loaded})")


@app.command("rm")
def rm(ctx: typer.Context, name: str, json: bool = JsonOption) -> None:
    """Delete a model's file (the card stays in the catalog)."""
    config = get_config(ctx)
    card = card_or_fail(config, name)
    removed = remove(card, config.models_path)
    if json:
        print_json({"name": name, "removed": removed})
    elif removed:
        console.print(f"{name}: removed")
    else:
        fail(f"{name} is not on this box", EXIT_NOINPUT)
