"""The generations table's writer: one row of figures (never text) per finished generation.

Every generation reaches a model through the router's backends (aibox/router/fallback.py),
which hand its figures here, so usage is recorded in exactly one place whichever path
asked (a chat turn, a long answer, a summary, the API). Rows are written from a worker
thread so the event loop never waits on the database.
May import: aibox.store, models.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aibox.store import Store
from aibox.store.schema import Generation
from models.stream import GenerationStats


@dataclass(frozen=True)
class UsageTags:
    """Who asked: `source` is "api", "agents", "jobs" or a chat platform."""

    source: str
    sender: str | None = None
    agent: str | None = None


class UsageLog:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._writes: set[asyncio.Task[None]] = set()

    def record(self, model: str, stats: GenerationStats, tags: UsageTags) -> None:
        row = Generation(
            model=model,
            source=tags.source,
            sender=tags.sender,
            agent=tags.agent,
            prompt_tokens=stats.prompt_tokens,
            cached_tokens=stats.cached_tokens,
            completion_tokens=stats.completion_tokens,
            ttft_ms=stats.ttft_s * 1000 if stats.ttft_s is not None else None,
            total_ms=stats.total_s * 1000,
            finish_reason=stats.finish_reason,
        )

        def write() -> None:
            with self.store.session() as s:
                s.add(row)

        task = asyncio.get_running_loop().create_task(asyncio.to_thread(write))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def drain(self, timeout: float = 10.0) -> None:
        """Waits for rows still being written (on shutdown)."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=timeout)
