"""The `aibox` command: runs the daemon and administers it."""

from __future__ import annotations

import typer

from aibox import __version__
from aibox.cli import bench, chat, models, run, status
from aibox.cli import backup, doctor, logs, security, service
from aibox.cli import pairing
from aibox.cli import agents, route
from aibox.cli import draft
from aibox.cli import ui

app = typer.Typer(
    name="aibox",
    help="AIBox: local AI models, agents and chat connectors on an always-on box.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"aibox {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    config: str = typer.Option(None, "--config", "-c", help="Config file (default: $AIBOX_CONFIG, then the platform's config dir)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Global options shared by every command."""


app.command("run")(run.run)
app.command("chat")(chat.chat)
app.command("status")(status.status)
app.add_typer(models.app, name="models")
app.add_typer(bench.app, name="bench")
app.command("doctor")(doctor.doctor)
app.command("logs")(logs.logs)
app.add_typer(backup.app, name="backup")
app.add_typer(security.app, name="security")
app.add_typer(service.app, name="service")
app.add_typer(pairing.app, name="pairing")
app.add_typer(agents.app, name="agents")
app.add_typer(agents.jobs_app, name="jobs")
app.add_typer(draft.app, name="draft")
app.command("route")(route.route)
app.add_typer(ui.app, name="ui")


def main() -> None:
    app()
