"""`aibox ui`: a one-time login link to the box's own page, and its sessions.

The link comes from the running daemon over the admin socket, so only root and the aibox
group can get one; it works once, for a few minutes.
"""

from __future__ import annotations

from datetime import datetime, timezone

import typer
from rich.table import Table

from aibox.cli.client import admin_call
from aibox.cli.common import JsonOption, console, fail, get_config, print_json

app = typer.Typer(help="Log in to the box's page (a one-time link) and manage its sessions.", invoke_without_command=True)


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@app.callback()
def login(ctx: typer.Context, json: bool = JsonOption) -> None:
    """Print a single-use login link to the box's page (valid a few minutes)."""
    if ctx.invoked_subcommand is not None:
        return
    data = admin_call(get_config(ctx), "POST", "/ui/login")
    if json:
        print_json({"url": data["url"], "expires_at": data["expires_at"]})
        return
    console.print(f"Open this link in a browser on this machine (works once, until {_when(data['expires_at'])}):")
    print(data["url"])


@app.command("sessions")
def sessions(ctx: typer.Context, json: bool = JsonOption) -> None:
    """List the page's live sessions."""
    data = admin_call(get_config(ctx), "GET", "/ui/sessions")
    if json:
        print_json(data)
        return
    if not data["sessions"]:
        console.print("No live sessions.")
        return
    table = Table("id", "logged in", "last seen", "expires")
    for s in data["sessions"]:
        table.add_row(s["id"], _when(s["created_at"]), _when(s["last_seen"]), _when(s["expires_at"]))
    console.print(table)


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    session: str = typer.Argument(None, help="Session id from `aibox ui sessions`."),
    all_: bool = typer.Option(False, "--all", help="End every session."),
    json: bool = JsonOption,
) -> None:
    """End one session, or all of them with --all."""
    if (session is None) == (not all_):
        fail("name one session id, or pass --all", 2)
    data = admin_call(get_config(ctx), "POST", "/ui/sessions/revoke", json={} if all_ else {"id": session})
    if json:
        print_json(data)
        return
    console.print(f"Ended {data['revoked']} session{'' if data['revoked'] == 1 else 's'}.")
