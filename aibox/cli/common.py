"""What every CLI command shares: config loading, one-line errors, exit codes, output."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console

from aibox.config import Config, ConfigError, load_config

# Exit codes (sysexits.h where one fits), documented in the README.
EXIT_FAILURE = 1
EXIT_DATAERR = 65  # a file or archive failed verification
EXIT_NOINPUT = 66  # unknown model, missing file
EXIT_UNAVAILABLE = 69  # the daemon is not running, or a model is busy
EXIT_CONFIG = 78  # the config file is invalid

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Prints one readable line on stderr and exits with `code`."""
    print(f"aibox: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise typer.Exit(code)


def get_config(ctx: typer.Context) -> Config:
    """The config named by the global --config option (or found the usual way)."""
    root = ctx.find_root()
    cached = root.meta.get("config")
    if cached is not None:
        return cached
    try:
        config = load_config(root.params.get("config"))
    except ConfigError as e:
        fail(str(e), EXIT_CONFIG)
    root.meta["config"] = config
    return config


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")
