"""Streaming a model's answer back into a chat, on any platform.

People should see the answer grow instead of staring at nothing: the first words go
out as a message as soon as they exist, and that message is edited as more arrive. The
platforms punish chatty bots, so edits in one chat are paced (one per second by
default, shared by every reply in that chat), and the last edit carries the full text.
A reply longer than the platform's limit continues in further messages, cut by
`split_text`. Platforms that cannot edit (`supports_edit = False`) get each piece once
it is final.

Failures never lose or repeat a piece: a 429 (`RateLimited`) is waited out for as long
as the platform asks and the same call is made again; a server error or a dropped
connection (`TransientError`) is retried with exponential backoff and jitter, a
bounded number of times. A message that can no longer be edited (deleted, too old) is
replaced by a new one carrying its text.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from typing import TypeVar

from connectors.base import Connector
from connectors.chunking import split_text
from connectors.errors import ConnectorError, RateLimited, TransientError

__all__ = ["ChatPacer", "DeliveredReply", "ReplyStreamer", "RetryPolicy", "call_with_retry", "split_text"]

log = logging.getLogger(__name__)
T = TypeVar("T")

CUT_SHORT = "\n\n[the answer was cut short by an error]"
EMPTY = "(no answer)"


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one platform call is retried before the reply gives up on it."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_rate_limit_wait: float = 900.0

    def backoff(self, attempt: int) -> float:
        """Exponential with "equal jitter": half fixed, half random, so that many chats
        retrying after one outage do not hit the server in lockstep."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


async def call_with_retry(
    op: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    on_rate_limited: Callable[[float], None] | None = None,
    on_retry: Callable[[], None] | None = None,
) -> T:
    """Runs one platform call until it succeeds, waiting out 429s and retrying
    transient failures; `ConnectorError`s and exhausted retries propagate.
    `on_retry` runs just before each repeated call: a retried write is a write, and
    the chat's pacer must count it (else the next edit follows it within milliseconds)."""
    failures = 0
    waited = 0.0
    while True:
        try:
            if (failures or waited) and on_retry is not None:
                on_retry()
            return await op()
        except RateLimited as e:
            if waited + e.retry_after > policy.max_rate_limit_wait:
                raise
            waited += e.retry_after
            if on_rate_limited is not None:
                on_rate_limited(e.retry_after)
            log.info("rate limited, retrying in %.1f s", e.retry_after)
            await asyncio.sleep(e.retry_after)
        except TransientError as e:
            failures += 1
            if failures >= policy.attempts:
                raise
            delay = policy.backoff(failures)
            log.info("transient failure (%s), retry %d in %.2f s", e, failures, delay)
            await asyncio.sleep(delay)


class ChatPacer:
    """At most one write per `interval` in each chat, across all replies to that chat;
    a 429 pushes the chat's next turn out by the time the platform asked for."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._next: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def wait_turn(self, chat: str) -> None:
        lock = self._locks.setdefault(chat, asyncio.Lock())
        async with lock:
            delay = self._next.get(chat, 0.0) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.mark(chat)

    def mark(self, chat: str) -> None:
        """Records a write that did not wait for its turn (a reply's first message)."""
        now = time.monotonic()
        self._next[chat] = max(self._next.get(chat, 0.0), now + self.interval)
        if len(self._next) > 10_000:
            self._forget_idle(now)

    def hold(self, chat: str, seconds: float) -> None:
        self._next[chat] = max(self._next.get(chat, 0.0), time.monotonic() + seconds)

    def _forget_idle(self, now: float) -> None:
        for chat in [c for c, t in self._next.items() if t < now and not self._locks.get(c, asyncio.Lock()).locked()]:
            self._next.pop(chat, None)
            self._locks.pop(chat, None)


@dataclass
class DeliveredReply:
    """What reached the chat: the full text, the ids of the messages carrying it, and
    the error that stopped it early, if any."""

    text: str = ""
    message_ids: list[str] = field(default_factory=list)
    error: BaseException | None = None


@dataclass
class _Part:
    message_id: str
    shown: str


class ReplyStreamer:
    """Streams answers into chats on one connector; one instance serves every chat."""

    def __init__(
        self,
        connector: Connector,
        *,
        pacer: ChatPacer | None = None,
        policy: RetryPolicy | None = None,
        typing_interval: float = 4.0,
        typing_delay: float = 0.3,
    ) -> None:
        self.connector = connector
        self.pacer = pacer or ChatPacer()
        self.policy = policy or RetryPolicy()
        self.typing_interval = typing_interval
        self.typing_delay = typing_delay

    async def stream(
        self, chat_id: str, deltas: AsyncIterable[str], reply_to: str | None = None
    ) -> DeliveredReply:
        """Delivers the text `deltas` yields, showing it as it grows; returns once every
        piece is delivered, or the reply failed in a way retrying could not fix."""
        return await _Reply(self, chat_id, reply_to).run(deltas)

    async def send_text(self, chat_id: str, text: str, reply_to: str | None = None) -> DeliveredReply:
        """A whole text at once (pairing codes, notices), split and retried like a stream."""
        return await self.stream(chat_id, _once(text), reply_to)

    async def edit_text(self, chat_id: str, message_id: str, text: str) -> str:
        """Replaces a posted message's text (a long answer's status line), paced with every
        other write to the chat and retried like them; a message that can no longer be
        edited is sent anew. Returns the id of the message that now shows `text`."""
        pace_key = f"{self.connector.platform}:{chat_id}"
        hold = lambda seconds: self.pacer.hold(pace_key, seconds)  # noqa: E731
        again = lambda: self.pacer.mark(pace_key)  # noqa: E731
        await self.pacer.wait_turn(pace_key)
        try:
            await call_with_retry(lambda: self.connector.edit(chat_id, message_id, text), self.policy, hold, again)
            return message_id
        except (RateLimited, TransientError):
            raise
        except ConnectorError as e:
            if "not modified" in str(e).lower():
                return message_id
            log.info("cannot edit message %s in %s (%s): sending its text anew", message_id, pace_key, e)
        await self.pacer.wait_turn(pace_key)
        return await call_with_retry(lambda: self.connector.send(chat_id, text, None), self.policy, hold, again)


class _Reply:
    def __init__(self, streamer: ReplyStreamer, chat_id: str, reply_to: str | None) -> None:
        self.connector = streamer.connector
        self.pacer = streamer.pacer
        self.policy = streamer.policy
        self.typing_interval = streamer.typing_interval
        self.typing_delay = streamer.typing_delay
        self.chat_id = chat_id
        self.reply_to = reply_to
        self.pace_key = f"{self.connector.platform}:{chat_id}"
        self.limit = self.connector.max_text
        self.can_edit = getattr(self.connector, "supports_edit", True)
        self.parts: list[_Part] = []
        self.buffer: list[str] = []
        self.done = False
        self.dirty = asyncio.Event()
        self.turn_taken = False
        self.result = DeliveredReply()

    async def run(self, deltas: AsyncIterable[str]) -> DeliveredReply:
        typing = asyncio.create_task(self._keep_typing())
        consumer = asyncio.create_task(self._consume(deltas))
        try:
            await self._publish()
        except ConnectorError as e:
            self.result.error = e
            log.warning("reply to %s failed: %s", self.pace_key, e)
        finally:
            typing.cancel()
            consumer.cancel()
            with suppress(asyncio.CancelledError):
                await typing
            with suppress(asyncio.CancelledError):
                await consumer
        self.result.message_ids = [p.message_id for p in self.parts]
        return self.result

    async def _consume(self, deltas: AsyncIterable[str]) -> None:
        try:
            async with _closing(deltas) as stream:
                async for delta in stream:
                    if delta:
                        self.buffer.append(delta)
                        self.dirty.set()
        except Exception as e:  # the model or agent failed: deliver what exists, say so
            log.warning("answer stream for %s failed: %r", self.pace_key, e)
            self.result.error = e
            self.buffer.append(CUT_SHORT)
        finally:
            self.done = True
            self.dirty.set()

    async def _publish(self) -> None:
        while True:
            await self.dirty.wait()
            if self.parts and not self.done:
                await self.pacer.wait_turn(self.pace_key)
                self.turn_taken = True
            self.dirty.clear()
            final = self.done
            text = "".join(self.buffer)
            if final and not text.strip():
                text = EMPTY
            await self._sync(text, final)
            self.turn_taken = False  # a turn this round did not use is not carried over
            if final:
                self.result.text = text
                return

    async def _sync(self, text: str, final: bool) -> None:
        """Makes the chat show `text`: edits parts that changed, sends new ones."""
        pieces = split_text(text, self.limit, self.connector.length_unit)
        if not self.can_edit and not final:
            pieces = pieces[:-1]
        for i, piece in enumerate(pieces):
            if i < len(self.parts):
                if self.parts[i].shown != piece and self.can_edit:
                    await self._edit(i, piece)
            else:
                await self._send(piece)

    async def _turn(self) -> None:
        if self.turn_taken:
            self.turn_taken = False
        else:
            await self.pacer.wait_turn(self.pace_key)

    async def _send(self, piece: str) -> None:
        if self.parts:
            await self._turn()
        else:
            self.pacer.mark(self.pace_key)
        reply_to = self.reply_to if not self.parts else None
        message_id = await call_with_retry(
            lambda: self.connector.send(self.chat_id, piece, reply_to), self.policy, self._hold, self._again
        )
        self.parts.append(_Part(message_id, piece))

    async def _edit(self, index: int, piece: str) -> None:
        await self._turn()
        part = self.parts[index]
        try:
            await call_with_retry(
                lambda: self.connector.edit(self.chat_id, part.message_id, piece), self.policy, self._hold, self._again
            )
        except (RateLimited, TransientError):
            raise
        except ConnectorError as e:
            log.info("cannot edit message %s in %s (%s): sending its text anew", part.message_id, self.pace_key, e)
            await self._turn()
            part.message_id = await call_with_retry(
                lambda: self.connector.send(self.chat_id, piece, None), self.policy, self._hold, self._again
            )
        part.shown = piece

    def _hold(self, seconds: float) -> None:
        self.pacer.hold(self.pace_key, seconds)

    def _again(self) -> None:
        self.pacer.mark(self.pace_key)

    async def _keep_typing(self) -> None:
        """Shows "typing…" until the answer is complete. An answer that is ready within
        `typing_delay` never needed it, and saves a platform call per reply."""
        await asyncio.sleep(self.typing_delay)
        while not self.done:
            try:
                await self.connector.typing(self.chat_id)
            except Exception as e:  # a missing indicator is cosmetic: never fail a reply over it
                log.debug("typing indicator in %s failed: %s", self.pace_key, e)
            await asyncio.sleep(self.typing_interval)


async def _once(text: str) -> AsyncIterator[str]:
    yield text


def _closing(deltas: AsyncIterable[str]) -> aclosing:
    """Closes the answer generator when the reply ends early, so the model stops too."""
    return aclosing(deltas) if hasattr(deltas, "aclose") else aclosing(_forward(deltas))


async def _forward(deltas: AsyncIterable[str]) -> AsyncIterator[str]:
    async for delta in deltas:
        yield delta
