"""`aibox logs [-f]`: the daemon's JSON log, readable or raw."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.markup import escape

from aibox.cli.common import EXIT_NOINPUT, fail, get_config
from aibox.logs import LOG_FILE, read_log

COLOR = {"debug": "dim", "info": "", "warning": "yellow", "error": "red", "critical": "bold red"}


def _pretty(line: str) -> str:
    try:
        entry = json.loads(line)
    except ValueError:
        return escape(line)
    ts, level, logger, msg = (entry.pop(k, "") for k in ("ts", "level", "logger", "msg"))
    exc = entry.pop("exc", "")
    extra = " ".join(f"{k}={v}" for k, v in entry.items())
    text = f"{ts[:19].replace('T', ' ')} {level:<7} {logger}: {msg}" + (f"  {extra}" if extra else "") + (f"\n{exc}" if exc else "")
    style = COLOR.get(level, "")
    return f"[{style}]{escape(text)}[/{style}]" if style else escape(text)


def logs(
    ctx: typer.Context,
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new lines"),
    lines: int = typer.Option(50, "--lines", "-n", min=0, help="how many recent lines to show first"),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON lines."),
) -> None:
    """Show the daemon's log (the JSON file in the logs dir), optionally following it."""
    path = get_config(ctx).logs_path / LOG_FILE
    if not path.exists() and not follow:
        fail(f"no log at {path} yet: the daemon writes it when it runs (under systemd, also `journalctl -u aibox`)", EXIT_NOINPUT)
    console = Console(highlight=False, soft_wrap=True)
    try:
        for line in read_log(path, lines=lines, follow=follow):
            if as_json:
                print(line, flush=True)
            else:
                console.print(_pretty(line))
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
