"""`aibox security audit`: risky settings, exit code 1 when any is found."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from aibox.cli.common import EXIT_FAILURE, JsonOption, get_config, print_json
from aibox.ops.security import security_audit

app = typer.Typer(help="Security checks of the box's settings.", no_args_is_help=True)


@app.command("audit")
def audit_command(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """Report open DM policies, an unprotected network API, readable secrets and broad tool grants."""
    findings = security_audit(get_config(ctx))
    if as_json:
        print_json({"ok": not findings, "findings": [f.as_dict() for f in findings]})
    else:
        console = Console(highlight=False)
        if not findings:
            console.print("[green]no risky settings found[/green]")
        else:
            for f in findings:
                mark = "[red]high  [/red]" if f.severity == "high" else "[yellow]medium[/yellow]"
                console.print(f" {mark} [bold]{escape(f.setting)}[/bold]: {escape(f.detail)}")
                console.print(f"        fix: {escape(f.fix)}")
            console.print(f"{len(findings)} risky setting(s)")
    raise typer.Exit(EXIT_FAILURE if findings else 0)
