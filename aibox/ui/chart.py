"""A small line chart drawn as inline SVG: no chart library, no script, readable without
colour (each series also gets its own marker and a legend entry with its latest value)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 600, 180
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 28
COLOURS = ("#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed")
MARKERS = ("circle", "square", "diamond", "triangle", "circle")


@dataclass(frozen=True)
class Series:
    name: str
    points: list[tuple[float, float]]  # (epoch seconds, value)


def _nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above `value`, for round gridlines."""
    if value <= 0:
        return 1.0
    base = 10.0 ** math.floor(math.log10(value))
    return next(step * base for step in (1, 2, 5, 10) if step * base >= value)


def _marker(kind: str, x: float, y: float, colour: str) -> str:
    if kind == "square":
        return f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" fill="{colour}"/>'
    if kind == "diamond":
        return f'<path d="M{x:.1f} {y - 4:.1f}L{x + 4:.1f} {y:.1f}L{x:.1f} {y + 4:.1f}L{x - 4:.1f} {y:.1f}Z" fill="{colour}"/>'
    if kind == "triangle":
        return f'<path d="M{x:.1f} {y - 4:.1f}L{x + 4:.1f} {y + 3:.1f}L{x - 4:.1f} {y + 3:.1f}Z" fill="{colour}"/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>'


def line_chart(title: str, unit: str, series: list[Series], start: float, end: float) -> str:
    """An SVG of the series between `start` and `end` (epoch seconds); says so when empty."""
    values = [v for s in series for _, v in s.points]
    top = _nice_max(max(values) if values else 0.0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + (t - start) / max(end - start, 1e-9) * plot_w

    def y(v: float) -> float:
        return TOP + plot_h - v / top * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    ]
    for i in range(5):
        v = top * i / 4
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end" class="tick">{v:g}</text>')
    minutes = (end - start) / 60
    for i in range(5):
        t = start + (end - start) * i / 4
        label = f"-{minutes * (4 - i) / 4:.0f} min" if i < 4 else "now"
        parts.append(f'<text x="{x(t):.1f}" y="{HEIGHT - 8}" text-anchor="middle" class="tick">{label}</text>')
    parts.append(f'<text x="{LEFT}" y="{TOP - 2}" class="tick">{escape(unit)}</text>')
    if not values:
        parts.append(f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" text-anchor="middle" class="empty">'
                     "no generations in this period</text>")
    for i, s in enumerate(series):
        colour, marker = COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)]
        pts = sorted(s.points)
        if len(pts) > 1:
            path = " ".join(f"{'M' if j == 0 else 'L'}{x(t):.1f} {y(v):.1f}" for j, (t, v) in enumerate(pts))
            parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts.extend(_marker(marker, x(t), y(v), colour) for t, v in pts)
    parts.append("</svg>")
    return "".join(parts)
