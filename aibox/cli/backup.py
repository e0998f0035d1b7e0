"""`aibox backup create | verify | restore`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from aibox.cli.common import EXIT_DATAERR, EXIT_NOINPUT, JsonOption, fail, get_config, print_json
from aibox.ops import backup

app = typer.Typer(help="Back up and restore the database, config, agents and pairing state.", no_args_is_help=True)
console = Console(highlight=False)


@app.command("create")
def create(
    ctx: typer.Context,
    output: Path | None = typer.Option(None, "--output", "-o", help="archive path (default: <state_dir>/backups/aibox-<time>.tar.gz)"),
    as_json: bool = JsonOption,
) -> None:
    """Write one archive; safe while the daemon runs (SQLite online backup)."""
    cfg = get_config(ctx)
    try:
        with console.status("backing up…"):
            archive = backup.create(cfg, output)
    except (backup.BackupError, OSError) as e:
        fail(str(e))
    result = backup.verify(archive)
    if as_json:
        print_json({"archive": str(archive), "files": result.manifest.get("files", {}), "ok": result.ok})
    else:
        console.print(f"wrote {archive} ({len(result.manifest.get('files', {}))} files, {archive.stat().st_size} bytes)")
    if not result.ok:
        fail("; ".join(result.problems), EXIT_DATAERR)


@app.command("verify")
def verify(
    archive: Path = typer.Argument(..., help="backup archive"),
    as_json: bool = JsonOption,
) -> None:
    """Re-hash every member against the manifest and check the database's integrity."""
    if not archive.is_file():
        fail(f"{archive} does not exist", EXIT_NOINPUT)
    result = backup.verify(archive)
    if as_json:
        print_json({"archive": str(archive), "ok": result.ok, "problems": result.problems,
                    "created": result.manifest.get("created"), "files": result.manifest.get("files", {})})
    elif result.ok:
        console.print(f"[green]ok[/green]: {archive}, made {result.manifest.get('created')}, "
                      f"{len(result.manifest.get('files', {}))} files match their checksums")
    else:
        for problem in result.problems:
            console.print(f"[red]bad[/red]: {problem}")
    raise typer.Exit(0 if result.ok else EXIT_DATAERR)


@app.command("restore")
def restore(
    ctx: typer.Context,
    archive: Path = typer.Argument(..., help="backup archive"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
) -> None:
    """Put a backup back on a stopped box; replaced files are kept as *.pre-restore-<time>."""
    if not archive.is_file():
        fail(f"{archive} does not exist", EXIT_NOINPUT)
    cfg = get_config(ctx)
    if not yes and not typer.confirm(f"replace the database, config and agents of {cfg.state_path} with {archive}?"):
        raise typer.Exit(1)
    try:
        done = backup.restore(cfg, archive)
    except (backup.BackupError, OSError) as e:
        fail(str(e))
    for line in done:
        console.print(f"restored {line}")
