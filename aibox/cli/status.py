"""`aibox status`: what the running daemon is doing."""

from __future__ import annotations

import typer
from rich.table import Table

from aibox.cli.client import admin_call
from aibox.cli.common import JsonOption, console, get_config, print_json


def status(ctx: typer.Context, json: bool = JsonOption) -> None:
    """Show uptime, loaded models with their speed and queues, and the API address."""
    data = admin_call(get_config(ctx), "GET", "/status")
    if json:
        print_json(data)
        return
    console.print(f"aibox {data['version']}  ready={data['ready']}  uptime {data['uptime_s']:.0f} s  api {data['api']}")
    table = Table("model", "queue", "tok/s", "idle s")
    for m in data["models"]:
        table.add_row(m["name"], f"{m['queue_depth']}/{m['queue_size']}", f"{m['tokens_per_s']:.1f}", f"{m['idle_s']:.0f}")
    console.print(table)
    if data.get("connectors"):
        table = Table("connector", "state", "detail")
        for name, health in data["connectors"].items():
            table.add_row(name, health["state"], health["detail"])
        console.print(table)
    if data.get("agents"):
        agents = data["agents"]
        names = ", ".join(a["name"] + ("" if a["enabled"] else " (off)") for a in agents["agents"])
        inbox = ", ".join(f"{n} {state}" for state, n in sorted(agents["inbox"].items())) or "empty"
        console.print(f"agents: {names}  jobs: {agents['jobs']}  inbox: {inbox}  recovered at start: {agents['recovered_at_start']}")
        for path, problem in agents["problems"].items():
            console.print(f"[red]agent file refused[/red] {path}: {problem}", highlight=False)
    for section, value in data.items():
        if section not in ("version", "ready", "uptime_s", "api", "models", "default_model", "state_dir", "connectors", "agents"):
            console.print(f"[bold]{section}[/bold]: {value}")
