"""`aibox route "text"`: which model would answer this, and why (a dry run: nothing is generated)."""

from __future__ import annotations

import typer
from rich.table import Table

from aibox.cli.client import AdminClient, DaemonNotRunning
from aibox.cli.common import EXIT_NOINPUT, JsonOption, console, fail, get_config, print_json

KEYS = ("predicted_tokens", "length_class", "task_kind", "model", "candidates", "reason")


def route(
    ctx: typer.Context,
    text: str = typer.Argument(..., help="The message to route."),
    agent: str = typer.Option(None, "--agent", "-a", help="The agent that would answer."),
    sender: str = typer.Option(None, "--sender", help="The sender, for their answer-length history."),
    pinned: str = typer.Option(None, "--pinned", help="An agent's model pin to apply."),
    override: str = typer.Option(None, "--model", "-m", help="A user's explicit model choice to apply."),
    attachment_chars: int = typer.Option(0, "--attachment-chars", min=0, help="Length of attached text."),
    json: bool = JsonOption,
) -> None:
    """Dry-run the router: predicted answer length and task kind, the model it picks, the
    expected seconds and measured quality (points right on this kind) of every candidate and the reason. Asks the running daemon (live queues); without one, decides
    here from the config, the catalog and the store."""
    config = get_config(ctx)
    body = {"text": text, "agent": agent, "sender": sender, "pinned": pinned, "override": override,
            "attachment_chars": attachment_chars}
    try:
        data = AdminClient(config).post("/router/decide", json=body)
        data["daemon"] = True
    except DaemonNotRunning:
        data = _decide_here(config, body)
        data["daemon"] = False
    if json:
        print_json({k: data[k] for k in KEYS} | {k: v for k, v in data.items() if k not in KEYS})
        return
    console.print(f"[bold]{data['model']}[/bold]: {data['task_kind']}, {data['length_class']} answer, "
                  f"about {data['predicted_tokens']} tokens")
    console.print(f"reason: {data['reason']}")
    table = Table("candidate", "expected s", "quality", "tok/s", "TTFT s", "queue", "speed from", "note")
    for c in data["candidates"]:
        quality = "not measured" if c["quality"] is None else f"{c['quality']:.0f}"
        table.add_row(c["model"], f"{c['expected_s']:.1f}", quality, f"{c['tok_s']:.1f}", f"{c['ttft_s']:.2f}",
                      str(c["queue"]), c["speed_source"], c["excluded"] or c["accelerated"])
    console.print(table)
    if not data["daemon"]:
        console.print("(no daemon running: decided locally, with no live queues)")


def _decide_here(config, body: dict) -> dict:  # noqa: ANN001 - aibox.config.Config
    from aibox.router.decide import Router
    from aibox.store import Store
    from models.catalog import CatalogError

    store = Store.open(config.store_url) if config.state_path.exists() else None
    try:
        router = Router.for_config(config, store)
        return router.decide(**body).as_dict()
    except (LookupError, FileNotFoundError, ValueError, CatalogError) as e:
        fail(str(e), EXIT_NOINPUT)
    finally:
        if store is not None:
            store.close()
