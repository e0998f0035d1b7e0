"""Long answers generated in the background, so a chat is never stuck behind one.

The chat gets an acknowledgement at once; a status message is edited as the answer
grows (every `interval_s`, which also keeps platforms' edit rate limits happy); the full
answer is posted when it is done; `/cancel` in that chat stops it, which closes the
generation stream and frees the model for the next request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connectors.base import Connector

log = logging.getLogger("aibox.router")

PROGRESS_INTERVAL_S = 5.0


@dataclass
class Delivery:
    """How a job talks to its chat: `send` posts a short message and returns its id, `edit`
    replaces a posted message's text, `answer` posts the full answer (split as the
    platform needs; `send` when not given)."""

    send: Callable[[str], Awaitable[str]]
    edit: Callable[[str, str], Awaitable[None]]
    answer: Callable[[str], Awaitable[object]] | None = None


def connector_delivery(connector: "Connector", chat_id: str, answer: Callable[[str], Awaitable[object]] | None = None) -> Delivery:
    """Status message and edits straight through the chat's connector."""

    async def send(text: str) -> str:
        return await connector.send(chat_id, text)

    async def edit(message_id: str, text: str) -> None:
        await connector.edit(chat_id, message_id, text)

    return Delivery(send, edit, answer)


@dataclass(eq=False)
class LongJob:
    chat: str
    model: str
    started: float = field(default_factory=time.monotonic)
    words: int = 0
    state: str = "running"  # running, done, cancelled, failed
    answer: str = ""
    status_message: str | None = None
    task: asyncio.Task | None = None
    on_done: Callable[[str], Awaitable[None]] | None = None

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


class LongJobs:
    def __init__(self, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._jobs: dict[str, set[LongJob]] = {}

    def running(self, chat: str) -> list[LongJob]:
        return [j for j in self._jobs.get(chat, ()) if j.state == "running"]

    async def start(
        self, chat: str, model: str, pieces: AsyncIterable[str], delivery: Delivery, expected_s: float,
        on_done: Callable[[str], Awaitable[None]] | None = None,
    ) -> LongJob:
        """Posts the status message and starts generating; returns once the job runs.
        `on_done` gets the full answer (to store it as the assistant's turn)."""
        job = LongJob(chat, model)
        job.on_done = on_done
        job.status_message = await delivery.send(
            f"Writing a long answer with {model} (about {expected_s:.0f} s)… /cancel stops it."
        )
        self._jobs.setdefault(chat, set()).add(job)
        job.task = asyncio.create_task(self._run(job, pieces, delivery), name=f"long-job-{chat}")
        return job

    async def _run(self, job: LongJob, pieces: AsyncIterable[str], delivery: Delivery) -> None:
        parts: list[str] = []
        last_edit = time.monotonic()
        try:
            async for piece in pieces:
                parts.append(piece)
                if time.monotonic() - last_edit >= self.interval_s:
                    job.words = len("".join(parts).split())
                    await self._status(job, delivery, f"Writing… {job.words} words so far ({job.elapsed_s:.0f} s). /cancel stops it.")
                    last_edit = time.monotonic()
        except asyncio.CancelledError:
            job.state = "cancelled"
            job.answer = "".join(parts)
            job.words = len(job.answer.split())
            await self._status(job, delivery, f"Cancelled after {job.words} words ({job.elapsed_s:.0f} s).")
            raise
        except Exception as e:
            job.state = "failed"
            log.exception("long job failed", extra={"chat": job.chat, "model": job.model})
            await self._status(job, delivery, f"The long answer failed: {e}")
            return
        finally:
            self._forget(job)
        job.answer = "".join(parts)
        job.words = len(job.answer.split())
        job.state = "done"
        await self._status(job, delivery, f"Done: {job.words} words in {job.elapsed_s:.0f} s.")
        await (delivery.answer or delivery.send)(job.answer or "(the model gave an empty answer)")
        if job.on_done is not None:
            await job.on_done(job.answer)

    async def _status(self, job: LongJob, delivery: Delivery, text: str) -> None:
        try:
            await delivery.edit(job.status_message or "", text)
        except Exception:
            log.warning("could not update a long job's status message", extra={"chat": job.chat}, exc_info=True)

    def _forget(self, job: LongJob) -> None:
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
        for chat in list(self._jobs):
            await self.cancel(chat)
