"""`aibox doctor`: checks the box and prints each problem with its fix."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from aibox.cli.common import EXIT_FAILURE, JsonOption, print_json
from aibox.ops.doctor import run_checks

MARK = {"ok": "[green]ok  [/green]", "warn": "[yellow]warn[/yellow]", "fail": "[red]FAIL[/red]"}


def doctor(
    ctx: typer.Context,
    as_json: bool = JsonOption,
    deep: bool = typer.Option(False, "--deep", help="Re-hash model files even when their verified stamp is current."),
) -> None:
    """Check config, permissions, secrets, models, disk, database and the service; print a fix for each problem."""
    config = ctx.find_root().params.get("config")
    console = Console(highlight=False)
    if as_json:
        checks = run_checks(config, deep=deep)
    else:
        with console.status("checking…"):
            checks = run_checks(config, deep=deep)
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        print_json({"ok": not failed, "checks": [c.as_dict() for c in checks]})
    else:
        for c in checks:
            console.print(f" {MARK[c.status]} [bold]{escape(c.name)}[/bold]: {escape(c.detail)}")
            if c.fix:
                console.print(f"       fix: {escape(c.fix)}")
        counts = {s: sum(c.status == s for c in checks) for s in MARK}
        console.print(f"{counts['ok']} ok, {counts['warn']} warnings, {counts['fail']} failed")
    raise typer.Exit(EXIT_FAILURE if failed else 0)
