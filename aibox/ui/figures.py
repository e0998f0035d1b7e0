"""The figures the overview shows, each read from the box: generation speed from the
generations table (every answer the router served, aibox/usage.py), disk and memory from
the operating system. Nothing here is estimated or made up; what is not there is shown as
missing."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import select

from aibox.store import Store
from aibox.store.schema import Generation
from aibox.ui.chart import Series


@dataclass(frozen=True)
class Speed:
    """Per model over a window: decode tokens/s and time to first token of each generation."""

    tokens_per_s: list[Series]
    ttft_ms: list[Series]
    count: int
    start: float
    end: float


def speed(store: Store, window: timedelta = timedelta(hours=1), now: datetime | None = None) -> Speed:
    """Decode speed is completion tokens over the time after the first token, so a slow
    prompt does not hide a fast decoder (the time to first token has its own series)."""
    now = now or datetime.now(timezone.utc)
    since = now - window
    with store.session() as s:
        rows = s.execute(
            select(Generation.created_at, Generation.model, Generation.completion_tokens, Generation.ttft_ms, Generation.total_ms)
            .where(Generation.created_at >= since).order_by(Generation.created_at)
        ).all()
    rates: dict[str, list[tuple[float, float]]] = {}
    ttfts: dict[str, list[tuple[float, float]]] = {}
    for at, model, tokens, ttft_ms, total_ms in rows:
        t = (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()
        if ttft_ms is not None:
            ttfts.setdefault(model, []).append((t, round(ttft_ms, 1)))
        decode_s = (total_ms - (ttft_ms or 0.0)) / 1000
        if tokens > 1 and decode_s > 0:
            rates.setdefault(model, []).append((t, round((tokens - 1) / decode_s, 1)))
    return Speed(
        [Series(m, p) for m, p in sorted(rates.items())], [Series(m, p) for m, p in sorted(ttfts.items())],
        len(rows), since.timestamp(), now.timestamp(),
    )


@dataclass(frozen=True)
class Disk:
    path: str
    total: int
    free: int


def disks(paths: list[Path]) -> list[Disk]:
    """The file systems holding `paths` (state, models), each once."""
    seen: dict[int, Disk] = {}
    for path in paths:
        probe = path if path.exists() else path.parent
        try:
            device = os.stat(probe).st_dev
            usage = shutil.disk_usage(probe)
        except OSError:
            continue
        seen.setdefault(device, Disk(str(path), usage.total, usage.free))
    return list(seen.values())


@dataclass(frozen=True)
class Memory:
    total: int | None
    available: int | None
    daemon_rss: int | None


def memory() -> Memory:
    """/proc/meminfo and this process's resident size (Linux; None where not readable)."""
    info: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    rss = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return Memory(info.get("MemTotal"), info.get("MemAvailable"), rss)
