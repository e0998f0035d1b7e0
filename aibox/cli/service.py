"""`aibox service install | uninstall | status`: the box as a systemd service."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from aibox.cli.common import EXIT_CONFIG, EXIT_FAILURE, JsonOption, fail, print_json
from aibox.config import ConfigError, load_config
from aibox.ops import service

app = typer.Typer(help="Install the box as a hardened systemd service.", no_args_is_help=True)
console = Console(highlight=False)


MARK = {True: "[yellow]todo[/yellow]", False: "[green]ok  [/green]", None: "[dim]if  [/dim]"}


def show_plan(plan: service.Plan, as_json: bool) -> None:
    """Each step marked todo, ok (already so) or if (systemd would decide), then the files in full."""
    if as_json:
        print_json(plan.as_dict())
        return
    console.print("[bold]aibox service install --dry-run[/bold]: what install would do; nothing was changed")
    for step in plan.steps:
        console.print(f" {MARK[step.needed]} {step.kind:<9} {escape(step.target)}: {escape(step.detail)}", soft_wrap=True)
    for step in plan.steps:
        if step.text is not None:
            state = "would be written" if step.needed else "already installed"
            console.print(f"\n[bold]--- {escape(step.target)}[/bold] ({state})", soft_wrap=True)
            sys.stdout.write(step.text)
    if plan.refusals:
        console.print()
    for reason in plan.refusals:
        console.print(f"[red]install would refuse here[/red]: {escape(reason)}", soft_wrap=True)


@app.command("install")
def install(
    gpu: bool | None = typer.Option(None, "--gpu/--no-gpu", help="allow the NVIDIA device nodes (default: when /dev/nvidiactl exists)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print every step, the unit and the drop-in, and change nothing; "
                                 "needs neither root nor systemd; exit code 1 where install would refuse"),
    as_json: bool = typer.Option(False, "--json", help="with --dry-run: print the plan as JSON"),
) -> None:
    """Create the aibox user and directories, write the unit, enable and start it. Safe to re-run."""
    layout = service.Layout()
    if as_json and not dry_run:
        raise typer.BadParameter("goes with --dry-run", param_hint="--json")
    if dry_run:
        try:
            cfg = load_config(layout.config_path) if layout.config_path.exists() else load_config(None)
            plan = service.plan(cfg, layout, gpu=gpu)
        except ConfigError as e:
            fail(str(e), EXIT_CONFIG)
        except service.ServiceError as e:
            fail(str(e))
        show_plan(plan, as_json)
        raise typer.Exit(EXIT_FAILURE if plan.refusals else 0)
    try:
        service.require_manageable()
        cfg = load_config(layout.config_path) if layout.config_path.exists() else load_config(None)
        with console.status("installing the service…"):
            done = service.install(cfg, layout, gpu=gpu)
    except ConfigError as e:
        fail(str(e), EXIT_CONFIG)
    except service.ServiceError as e:
        fail(str(e))
    _report(done, "aibox.service is installed, enabled and running; nothing to change")


@app.command("uninstall")
def uninstall() -> None:
    """Stop, disable and remove the unit. Config, state, logs and the user are kept."""
    try:
        done = service.uninstall(service.Layout())
    except service.ServiceError as e:
        fail(str(e))
    _report(done, "aibox.service is not installed; nothing to remove")


def _report(done: list[str], nothing: str) -> None:
    """What a change did, one line a step, or `nothing` when it had nothing to do."""
    if not done:
        console.print(nothing)
    for line in done:
        console.print(f"[green]✓[/green] {line}")


@app.command("status")
def status(as_json: bool = JsonOption) -> None:
    """systemd's view of the service; exit code 1 unless it is active."""
    info = service.status()
    if as_json:
        print_json(info)
    else:
        for key, value in info.items():
            console.print(f"{key:>9}: {value}")
    raise typer.Exit(0 if info["active"].startswith("active") else EXIT_FAILURE)
