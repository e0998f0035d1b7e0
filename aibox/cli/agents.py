"""`aibox agents` and `aibox jobs`: the box's agents and their scheduled jobs.

Both talk to the running daemon's admin API (agents' enabled state, jobs and their run
history live in its database); `agents add` validates the file here first, so a bad
file is refused with the key and the problem even when the daemon is down.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from agents.definition import AgentFileError, load_agent
from aibox.cli.client import admin_show
from aibox.cli.common import EXIT_DATAERR, JsonOption, console, fail

app = typer.Typer(help="List, inspect, add, remove, enable and disable agents.", no_args_is_help=True)
jobs_app = typer.Typer(help="List and cancel scheduled jobs, and show their runs.", no_args_is_help=True)


@app.command("list")
def list_agents(ctx: typer.Context, json: bool = JsonOption) -> None:
    """Show every agent, where its file is, its model policy and whether it is enabled."""
    data = admin_show(ctx, "GET", "/agents", json)
    if data is None:
        return
    table = Table("name", "enabled", "default", "model", "tools", "source", "description")
    for a in data["agents"]:
        table.add_row(a["name"], "yes" if a["enabled"] else "no", "yes" if a["default"] else "", a["model"],
                      ",".join(a["tools"]), a["source"], a["description"])
    console.print(table)
    for path, problem in data["problems"].items():
        console.print(f"[red]refused[/red] {path}: {problem}")


@app.command()
def show(ctx: typer.Context, name: str = typer.Argument(..., help="Agent name."), json: bool = JsonOption) -> None:
    """Print an agent's settings and its file."""
    data = admin_show(ctx, "GET", f"/agents/{name}", json)
    if data is None:
        return
    console.print(f"[bold]{data['name']}[/bold] ({data['source']}, {'enabled' if data['enabled'] else 'disabled'}) {data['path']}")
    console.print(data["file"], markup=False, highlight=False)


@app.command()
def add(ctx: typer.Context, file: Path = typer.Argument(..., help="An agent TOML file."), json: bool = JsonOption) -> None:
    """Validate FILE and install it as a user agent (replacing one of the same name)."""
    try:
        load_agent(file)
    except AgentFileError as e:
        fail(str(e), EXIT_DATAERR)
    data = admin_show(ctx, "POST", "/agents", json, json={"filename": file.name, "toml": file.read_text(encoding="utf-8")})
    if data is None:
        return
    console.print(f"Added agent {data['name']} ({data['path']}).")


@app.command("rm")
def remove(ctx: typer.Context, name: str = typer.Argument(..., help="A user agent's name."), json: bool = JsonOption) -> None:
    """Remove a user agent (shipped agents can only be disabled)."""
    data = admin_show(ctx, "DELETE", f"/agents/{name}", json)
    if data is None:
        return
    console.print(f"Removed agent {name} ({data['path']}).")


def _toggle(ctx: typer.Context, name: str, action: str, json: bool) -> None:
    data = admin_show(ctx, "POST", f"/agents/{name}/{action}", json)
    if data is None:
        return
    console.print(f"Agent {name} is {'enabled' if data['enabled'] else 'disabled'}.")


@app.command()
def enable(ctx: typer.Context, name: str = typer.Argument(..., help="Agent name."), json: bool = JsonOption) -> None:
    """Let chats use the agent, and run its schedules."""
    _toggle(ctx, name, "enable", json)


@app.command()
def disable(ctx: typer.Context, name: str = typer.Argument(..., help="Agent name."), json: bool = JsonOption) -> None:
    """Stop the agent (its history and notes stay in the store)."""
    _toggle(ctx, name, "disable", json)


@jobs_app.command("list")
def list_jobs(ctx: typer.Context, json: bool = JsonOption) -> None:
    """Show active scheduled jobs with their next run and failures in a row."""
    data = admin_show(ctx, "GET", "/jobs", json)
    if data is None:
        return
    if not data["jobs"]:
        console.print("No scheduled jobs.")
        return
    table = Table("id", "chat", "agent", "kind", "task", "schedule", "next run", "failures")
    for j in data["jobs"]:
        table.add_row(j["id"], f"{j['platform']}:{j['chat_id']}", j["agent"], j["kind"], j["task"], j["schedule"],
                      (j["next_run"] or "-")[:16].replace("T", " "), str(j["failures"]))
    console.print(table)


@jobs_app.command()
def cancel(ctx: typer.Context, job_id: str = typer.Argument(..., help="Job id from `aibox jobs list`."), json: bool = JsonOption) -> None:
    """Cancel a scheduled job."""
    data = admin_show(ctx, "DELETE", f"/jobs/{job_id}", json)
    if data is None:
        return
    console.print(f"Cancelled job {data['cancelled']}.")


@jobs_app.command()
def runs(ctx: typer.Context, job_id: str = typer.Argument(..., help="Job id from `aibox jobs list`."), json: bool = JsonOption) -> None:
    """Show a job's recent runs: when, status, runs it stood for, error."""
    data = admin_show(ctx, "GET", f"/jobs/{job_id}/runs", json)
    if data is None:
        return
    if not data["runs"]:
        console.print(f"Job {job_id} has not run yet.")
        return
    table = Table("started", "status", "missed", "detail")
    for r in data["runs"]:
        table.add_row(r["started_at"][:19].replace("T", " "), r["status"], str(r["missed"]), r["detail"])
    console.print(table)
