"""What a bot posted to a fake platform server, and the faults the server should play.

Every fake server (Discord, Slack) records the bot's messages here as they arrive, with
each message's full edit history, so a test or `aibox bench pipeline` can wait for a
reply and check what a person would finally see. `FaultPlan` holds the failures a
test wants the server to answer with next (a 429, a 500, a dropped connection).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class BotMessage:
    chat_id: str
    message_id: str
    text: str
    reply_to: str | None = None
    versions: list[str] = field(default_factory=list)
    entities: list[dict] = field(default_factory=list)  # formatting, where the platform reports it
    version_times: list[float] = field(default_factory=list)
    created_at: float = field(default_factory=time.perf_counter)
    updated_at: float = field(default_factory=time.perf_counter)

    @property
    def edits(self) -> int:
        return len(self.versions) - 1


class Outbox:
    """The bot's messages in the order they were first posted; waiters wake on every change."""

    def __init__(self) -> None:
        self._messages: dict[tuple[str, str], BotMessage] = {}
        self._by_chat: dict[str, list[BotMessage]] = {}
        self._changed = asyncio.Event()
        self._posted: dict[str, asyncio.Event] = {}
        self.typing: list[str] = []

    def post(self, chat_id: str, message_id: str, text: str, reply_to: str | None = None) -> BotMessage:
        message = BotMessage(chat_id, message_id, text, reply_to, versions=[text], version_times=[time.perf_counter()])
        chat = self._by_chat.setdefault(chat_id, [])
        earlier = self._messages.get((chat_id, message_id))
        if earlier is None:
            chat.append(message)
        else:
            chat[chat.index(earlier)] = message
        self._messages[(chat_id, message_id)] = message
        posted = self._posted.pop(chat_id, None)
        if posted is not None:
            posted.set()
        self._notify()
        return message

    def edit(self, chat_id: str, message_id: str, text: str) -> BotMessage | None:
        message = self._messages.get((chat_id, message_id))
        if message is None:
            return None
        message.text = text
        message.versions.append(text)
        message.updated_at = time.perf_counter()
        message.version_times.append(message.updated_at)
        self._notify()
        return message

    def get(self, chat_id: str, message_id: str) -> BotMessage | None:
        return self._messages.get((chat_id, message_id))

    def record_typing(self, chat_id: str) -> None:
        self.typing.append(chat_id)
        self._notify()

    def in_chat(self, chat_id: str) -> list[BotMessage]:
        return list(self._by_chat.get(chat_id, ()))

    async def wait_for_posts(self, chat_id: str, count: int, timeout: float = 10.0) -> list[BotMessage]:
        """Waits until `chat_id` holds at least `count` messages, waking only on that
        chat's posts: with a hundred chats waiting at once (the pipeline benchmark), waking
        every waiter on every change would cost more than the pipeline being measured."""
        deadline = time.monotonic() + timeout
        while len(self._by_chat.get(chat_id, ())) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{count} messages not posted in {chat_id} within {timeout:g} s")
            event = self._posted.setdefault(chat_id, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), timeout=left)
            except asyncio.TimeoutError:
                pass
        return self.in_chat(chat_id)

    def all(self) -> list[BotMessage]:
        return list(self._messages.values())

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Returns once `condition()` holds; raises TimeoutError naming nothing secret."""
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"condition not met within {timeout:g} s")
            event = self._changed
            try:
                await asyncio.wait_for(event.wait(), timeout=min(left, 0.5))
            except asyncio.TimeoutError:
                pass

    async def wait_for_text(self, chat_id: str, text: str, timeout: float = 10.0) -> list[BotMessage]:
        """Waits until the bot's messages in `chat_id`, joined, read `text` and returns
        them. Whitespace is ignored, and so are code fences: a cut inside a code block
        closes it and reopens it in the next piece."""
        wanted = _squash(text)
        await self.wait_for(lambda: _squash("".join(m.text for m in self.in_chat(chat_id))) == wanted, timeout)
        return self.in_chat(chat_id)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def _squash(text: str) -> str:
    return "".join(text.replace("```", "").split())


FaultKind = Literal["status", "drop_before", "drop_after", "truncated", "slow"]


@dataclass
class Fault:
    route: str
    kind: FaultKind
    status: int = 500
    retry_after: float = 0.0
    times: int = 1
    delay: float = 0.0
    detail: str = ""  # what the error says, where the platform's default would not do


class FaultPlan:
    """Failures to play on the next matching requests, oldest first.

    `drop_before` closes the connection without handling the request; `drop_after`
    handles it and then closes the connection before the answer goes out, so the
    client cannot know whether it worked (what idempotency keys are for). `truncated`
    handles it and answers 200 with the body cut off mid-JSON (a proxy that died while
    streaming it); `slow` handles it `delay` seconds late (longer than the client's
    time-out, the client gives up on a request that did its work).
    """

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self.played: list[Fault] = []

    def add(
        self,
        route: str,
        *,
        status: int | None = None,
        retry_after: float = 0.0,
        drop: Literal["before", "after"] | None = None,
        truncate: bool = False,
        delay: float = 0.0,
        times: int = 1,
        detail: str = "",
    ) -> None:
        given = [status is not None, drop is not None, truncate, delay > 0]
        if sum(given) != 1:
            raise ValueError("give exactly one of a status, a drop, truncate or a delay")
        kind: FaultKind
        if status is not None:
            kind = "status"
        elif drop is not None:
            kind = "drop_before" if drop == "before" else "drop_after"
        else:
            kind = "truncated" if truncate else "slow"
        self._faults.append(Fault(route, kind, status or 0, retry_after, times, delay, detail))

    def take(self, route: str) -> Fault | None:
        for fault in self._faults:
            if fault.route == route:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                self.played.append(fault)
                return fault
        return None

    @property
    def pending(self) -> int:
        return sum(f.times for f in self._faults)
