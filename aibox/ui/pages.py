"""Rendering the page's templates (Jinja2, autoescaped: chat text and sender names are
shown as text, never as markup) and where its static files live."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"

_env = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]), undefined=StrictUndefined,
    trim_blocks=True, lstrip_blocks=True,
)


def _bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit in ("B", "KB") else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {s} s" if minutes else f"{s} s"


def _when(value: Any) -> str:
    """An ISO time or epoch seconds as "YYYY-MM-DD HH:MM UTC"."""
    if value is None or value == "":
        return "-"
    if isinstance(value, (int, float)):
        value = datetime.fromtimestamp(value, timezone.utc)
    elif isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


_env.filters.update(bytes=_bytes, duration=_duration, when=_when)

NAV = (("/ui/", "Overview"), ("/ui/chat", "Web chat"), ("/ui/pairing", "Pairing"), ("/ui/agents", "Agents and jobs"),
       ("/ui/models", "Models"), ("/ui/logs", "Logs"))


def render(template: str, **context: Any) -> str:
    return _env.get_template(template).render(nav=NAV, **context)
