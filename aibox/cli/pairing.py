"""`aibox pairing`: who may command the box from the chat apps.

An unknown sender who writes to the bot gets a short code; the owner approves it here.
Talks to the running daemon's admin API (the codes live in its database).
"""

from __future__ import annotations

import typer
from rich.table import Table

from aibox.cli.client import admin_show
from aibox.cli.common import JsonOption, console

app = typer.Typer(help="Approve, list and revoke chat senders (pairing codes).", no_args_is_help=True)


@app.command("list")
def list_(ctx: typer.Context, json: bool = JsonOption) -> None:
    """Show pending pairing codes and the approved senders with their roles."""
    data = admin_show(ctx, "GET", "/pairing", json)
    if data is None:
        return
    pending = Table("code", "platform", "sender", "name", "expires", title="Pending codes")
    for p in data["pending"]:
        pending.add_row(p["code"], p["platform"], p["sender_id"], p["name"] or "", p["expires_at"][:19].replace("T", " "))
    approved = Table("platform", "sender", "role", "name", title="Approved senders")
    for a in data["approved"]:
        approved.add_row(a["platform"], a["sender_id"], a["role"], a["name"] or "")
    console.print(pending if data["pending"] else "No pending pairing codes.")
    console.print(approved if data["approved"] else "No approved senders yet.")


@app.command()
def approve(ctx: typer.Context, code: str = typer.Argument(..., help="The code the sender received."), json: bool = JsonOption) -> None:
    """Let the sender who received CODE talk to the box (the first one becomes owner)."""
    data = admin_show(ctx, "POST", "/pairing/approve", json, json={"code": code})
    if data is None:
        return
    who = f"{data['platform']}:{data['sender_id']}" + (f" ({data['name']})" if data["name"] else "")
    console.print(f"Approved {who} as {data['role']}.")


@app.command()
def deny(ctx: typer.Context, code: str = typer.Argument(..., help="The pending code to drop."), json: bool = JsonOption) -> None:
    """Drop a pending code without approving it."""
    data = admin_call(get_config(ctx), "POST", "/pairing/deny", json={"code": code})
    if json:
        print_json(data)
        return
    console.print(f"Denied {data['platform']}:{data['sender_id']} (code {data['code']}).")


@app.command()
def revoke(
    ctx: typer.Context,
    sender: str = typer.Argument(..., help="Sender id, or platform:id to revoke on one platform only."),
    json: bool = JsonOption,
) -> None:
    """Stop answering SENDER; they would have to pair again."""
    data = admin_show(ctx, "POST", "/pairing/revoke", json, json={"sender": sender})
    if data is None:
        return
    console.print("Revoked " + ", ".join(f"{r['platform']}:{r['sender_id']}" for r in data["revoked"]) + ".")
