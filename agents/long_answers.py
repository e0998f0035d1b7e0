"""Long answers written in the background, so a chat is never stuck behind one.

The chat gets an acknowledgement at once; a status message is edited as the answer
grows (every `interval_s`); the full answer is posted when it is done; `/cancel` in that
chat stops it, which closes the generation stream and frees the model for the next
request. Everything is posted through the outbound path (connectors/outbound.py, handed
in), so the status line and its edits are paced and retried like every other write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 5.0


class ChatPoster(Protocol):
    """What a long answer needs of the outbound path (connectors.outbound.Outbound)."""

    @property
    def platforms(self) -> set[str]: ...
    async def deliver(self, platform: str, chat_id: str, text: str) -> str: ...
    async def edit(self, platform: str, chat_id: str, message_id: str, text: str) -> str: ...


@dataclass(eq=False)
class LongAnswer:
    platform: str
    chat_id: str
    model: str
    started: float = field(default_factory=time.monotonic)
    words: int = 0
    state: str = "running"  # running, done, cancelled, failed
    answer: str = ""
    status_message: str | None = None
    task: asyncio.Task | None = None
    on_done: Callable[[str], Awaitable[None]] | None = None

    @property
    def chat(self) -> str:
        return f"{self.platform}:{self.chat_id}"

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


class LongAnswers:
    def __init__(self, poster: ChatPoster, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.poster = poster
        self.interval_s = interval_s
        self.closing = False  # set on shutdown: answers cut now were not cancelled by their chat
        self._jobs: dict[str, set[LongAnswer]] = {}

    def serves(self, platform: str) -> bool:
        """Whether answers can be posted in the background on this platform now."""
        return platform in self.poster.platforms

    def running(self, chat: str) -> list[LongAnswer]:
        """The long answers being written in `chat` ("platform:chat_id")."""
        return [j for j in self._jobs.get(chat, ()) if j.state == "running"]

    async def start(
        self, platform: str, chat_id: str, model: str, pieces: AsyncIterable[str], expected_s: float,
        on_done: Callable[[str], Awaitable[None]] | None = None,
    ) -> LongAnswer:
        """Posts the status message and starts generating; returns once the job runs.
        `on_done` gets the full answer (to store it as the assistant's turn)."""
        job = LongAnswer(platform, chat_id, model)
        job.on_done = on_done
        job.status_message = await self.poster.deliver(
            platform, chat_id, f"Writing a long answer with {model} (about {expected_s:.0f} s)… /cancel stops it."
        )
        self._jobs.setdefault(job.chat, set()).add(job)
        job.task = asyncio.create_task(self._run(job, pieces), name=f"long-answer-{job.chat}")
        return job

    async def _run(self, job: LongAnswer, pieces: AsyncIterable[str]) -> None:
        parts: list[str] = []
        last_edit = time.monotonic()
        try:
            async for piece in pieces:
                parts.append(piece)
                if time.monotonic() - last_edit >= self.interval_s:
                    job.words = len("".join(parts).split())
                    await self._status(job, f"Writing… {job.words} words so far ({job.elapsed_s:.0f} s). /cancel stops it.")
                    last_edit = time.monotonic()
        except asyncio.CancelledError:
            job.state = "cancelled"
            job.answer = "".join(parts)
            job.words = len(job.answer.split())
            if self.closing:
                await self._status(job, f"Interrupted after {job.words} words by a restart of the box; it writes the answer again when it is back.")
            else:
                await self._status(job, f"Cancelled after {job.words} words ({job.elapsed_s:.0f} s).")
            raise
        except Exception as e:
            job.state = "failed"
            log.exception("long answer failed", extra={"chat": job.chat, "model": job.model})
            await self._status(job, f"The long answer failed: {e}")
            return
        finally:
            self._forget(job)
        job.answer = "".join(parts)
        job.words = len(job.answer.split())
        job.state = "done"
        await self._status(job, f"Done: {job.words} words in {job.elapsed_s:.0f} s.")
        await self.poster.deliver(job.platform, job.chat_id, job.answer or "(the model gave an empty answer)")
        if job.on_done is not None:
            await job.on_done(job.answer)

    async def _status(self, job: LongAnswer, text: str) -> None:
        try:
            job.status_message = await self.poster.edit(job.platform, job.chat_id, job.status_message or "", text)
        except Exception:
            log.warning("could not update a long answer's status message", extra={"chat": job.chat}, exc_info=True)

    def _forget(self, job: LongAnswer) -> None:
        jobs = self._jobs.get(job.chat)
        if jobs is not None:
            jobs.discard(job)
            if not jobs:
                del self._jobs[job.chat]

    async def cancel(self, chat: str) -> int:
        """Stops every long job of the chat; returns how many were running."""
        jobs = self.running(chat)
        for job in jobs:
            assert job.task is not None
            job.task.cancel()
        for job in jobs:
            try:
                await job.task
            except asyncio.CancelledError:
                pass
        return len(jobs)

    async def close(self) -> None:
        self.closing = True
        for chat in list(self._jobs):
            await self.cancel(chat)
