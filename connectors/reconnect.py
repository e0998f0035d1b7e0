"""Keeping a platform connection up: one session after another, with backoff between them.

Discord's client restarts, Slack's Socket Mode and Telegram's long poll work alike: a
session runs until its connection ends. An end worth retrying raises `Reconnect`; the
connector then shows "degraded" with the reason and the wait, and the next session starts
after an exponential backoff with equal jitter (so that many boxes coming back from one
outage do not reconnect in lockstep), or after exactly the wait the platform asked for.
A session that returns is over for good: the connector was stopped, or it failed for a
reason no retry can fix and has said so in its health.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from connectors.base import Connector
from connectors.reply import RetryPolicy

# Doublings of the base delay at most: past them the wait stops growing even when the
# configured maximum is higher (and 2**failures stays a small number).
MAX_DOUBLINGS = 10

Session = Callable[[], Awaitable[None]]


class Reconnect(Exception):
    """The session ended and a new one should be tried; `reason` is what health() shows."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Reconnecting:
    """One connector's task of sessions, the failures counted since the last one that
    worked, and `start`'s wait for the first verdict (connected, or failed for good)."""

    def __init__(self, connector: Connector, max_delay: float, base_delay: float = 1.0) -> None:
        self._connector = connector
        self._policy = RetryPolicy(base_delay=base_delay, max_delay=max_delay)
        self._task: asyncio.Task[None] | None = None
        self._settled = asyncio.Event()
        self.failures = 0
        self.stopping = False  # set before the connection is closed, so its end is not retried

    def start(self, session: Session, name: str) -> None:
        self.stopping = False
        self._settled.clear()
        self._task = asyncio.create_task(self._run(session), name=name)

    async def wait_settled(self, timeout: float) -> bool:
        """Whether the connector connected or failed for good within `timeout` seconds."""
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def settle(self) -> None:
        """The connector is up, or failed for good: `start` has its answer."""
        self._settled.set()

    def reset(self) -> None:
        """A connection worked: the next failure waits as little as the first did."""
        self.failures = 0

    async def stop(self) -> None:
        self.stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self, session: Session) -> None:
        while True:
            try:
                await session()
                return
            except Reconnect as e:
                if self.stopping:
                    return
                if e.retry_after is not None:
                    delay = e.retry_after
                else:
                    self.failures += 1
                    delay = self._policy.backoff(min(self.failures, MAX_DOUBLINGS))
                self._connector._set_health("degraded", f"{e.reason}; retrying in {delay:.1f} s")
                await asyncio.sleep(delay)
