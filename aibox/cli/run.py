"""`aibox run`: the daemon in the foreground (systemd runs exactly this)."""

from __future__ import annotations

import asyncio
import os
import time

import typer

from aibox.cli.common import EXIT_CONFIG, EXIT_FAILURE, err_console, fail, get_config
from aibox.cli.models import byte_progress, card_or_fail
from aibox.config import ConfigError
from aibox.logs import setup_logging
from aibox.notify import Notifier
from models.files import PullError, is_present, pull


def run(
    ctx: typer.Context,
    host: str = typer.Option(None, help="Listen address of the HTTP API (overrides [api] host)."),
    port: int = typer.Option(None, help="Port of the HTTP API (overrides [api] port)."),
    pull_default: bool = typer.Option(True, "--pull/--no-pull", help="Pull the default model first if it is missing."),
) -> None:
    """Run the box: models, HTTP API on loopback, admin socket, connectors."""
    from aibox.daemon import Daemon, StartupError  # heavy: only `run` needs it
    from models.pool import ModelUnavailableError

    os.umask(0o027)  # the database, logs and backups hold chats and pairing state: not for other users
    config = get_config(ctx)
    setup_logging(config.logging.level, config.logging.format, config.logs_path)
    card = card_or_fail(config, config.default_model)
    if pull_default and card.is_local and not is_present(card, config.models_path):
        with byte_progress(f"pulling default model {card.name}", enabled=err_console.is_terminal) as progress:
            notifier, last = Notifier(), [0.0]

            def report(done: int, total: int) -> None:
                """Under systemd, each second of progress buys another minute of start-up time."""
                progress(done, total)
                if notifier.enabled and time.monotonic() - last[0] >= 1.0:
                    last[0] = time.monotonic()
                    notifier.extend_start(60, f"pulling {card.name}: {done * 100 // max(total, 1)}%")

            try:
                pull(card, config.models_path, progress=report, log=lambda m: err_console.print(f"[dim]{m}[/dim]"))
            except PullError as e:
                fail(str(e))
    try:
        daemon = Daemon(config, host=host, port=port)
        asyncio.run(daemon.run())
    except ConfigError as e:
        fail(str(e), EXIT_CONFIG)
    except (StartupError, ModelUnavailableError, OSError) as e:
        fail(f"cannot start: {e}", EXIT_FAILURE)
