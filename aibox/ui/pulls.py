"""Model pulls started from the page: each runs `models.files.pull` (the same function as
`aibox models pull`) in a worker thread, and its progress is kept here for the page's
live progress bar (an SSE stream in aibox/api/ui.py)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from models.catalog import ModelCard
from models.files import PullError, pull

log = logging.getLogger("aibox.ui")


@dataclass
class PullState:
    model: str
    state: str = "running"  # running, done, failed
    done: int = 0
    total: int = 0
    error: str = ""
    started_at: float = field(default_factory=time.time)
    version: int = 0  # bumped on every change, so a stream sends only news

    def as_dict(self) -> dict:
        return asdict(self)


class Pulls:
    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self._states: dict[str, PullState] = {}
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task] = set()
        self.changed = asyncio.Event()

    def start(self, card: ModelCard) -> PullState:
        """Starts pulling `card` unless a pull of it is already running."""
        with self._lock:
            current = self._states.get(card.name)
            if current is not None and current.state == "running":
                return current
            state = self._states[card.name] = PullState(card.name, total=card.size)
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._run(card, state, loop))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return state

    async def _run(self, card: ModelCard, state: PullState, loop: asyncio.AbstractEventLoop) -> None:
        def progress(done: int, total: int) -> None:
            with self._lock:
                state.done, state.total = done, total or state.total
                state.version += 1
            loop.call_soon_threadsafe(self._bump)

        log.info("model pull started from the page", extra={"model": card.name})
        try:
            await asyncio.to_thread(pull, card, self.models_dir, progress, lambda msg: log.info(msg, extra={"model": card.name}))
        except (PullError, OSError) as e:
            with self._lock:
                state.state, state.error = "failed", str(e)
                state.version += 1
            log.error("model pull failed", extra={"model": card.name, "error": str(e)})
        else:
            with self._lock:
                state.state, state.done = "done", state.total
                state.version += 1
            log.info("model pulled", extra={"model": card.name})
        self._bump()

    def _bump(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def states(self) -> list[dict]:
        with self._lock:
            return [s.as_dict() for s in self._states.values()]

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
