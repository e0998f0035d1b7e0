"""`aibox service install | uninstall | status`: the box as a systemd service."""

from __future__ import annotations

import typer
from rich.console import Console

from aibox import service
from aibox.cli.common import EXIT_CONFIG, EXIT_FAILURE, JsonOption, fail, print_json
from aibox.config import ConfigError, load_config

app = typer.Typer(help="Install the box as a hardened systemd service.", no_args_is_help=True)
console = Console(highlight=False)


@app.command("install")
def install(
    gpu: bool | None = typer.Option(None, "--gpu/--no-gpu", help="allow the NVIDIA device nodes (default: when /dev/nvidiactl exists)"),
) -> None:
    """Create the aibox user and directories, write the unit, enable and start it. Safe to re-run."""
    layout = service.Layout()
    try:
        service.require_manageable()
        cfg = load_config(layout.config_path) if layout.config_path.exists() else load_config(None)
        with console.status("installing the service…"):
            done = service.install(cfg, layout, gpu=gpu)
    except ConfigError as e:
        fail(str(e), EXIT_CONFIG)
    except service.ServiceError as e:
        fail(str(e))
    if not done:
        console.print("aibox.service is installed, enabled and running; nothing to change")
    for line in done:
        console.print(f"[green]✓[/green] {line}")


@app.command("uninstall")
def uninstall() -> None:
    """Stop, disable and remove the unit. Config, state, logs and the user are kept."""
    try:
        done = service.uninstall(service.Layout())
    except service.ServiceError as e:
        fail(str(e))
    if not done:
        console.print("aibox.service is not installed; nothing to remove")
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
