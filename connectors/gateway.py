"""The gateway between the connectors and the agent runner: access control, the inbox,
then the answer.

Every connector hands its inbound messages to the sink `Gateway.attach` returns. The
gateway drops repeats (platforms redeliver after a reconnect), decides who may command
the box (connectors/policy.py), hands pairing codes to unknown senders, keeps one
sender from monopolising the box, answers `/pairing` itself, stores what will be
answered in the inbox, and streams it to the responder (the agent runner), whose answer
goes back through the outbound path (connectors/outbound.py). Each decision lands in the
audit log. After a crash, `replay` answers what the inbox still holds.

The sink returns as soon as the decision is made; answers run as tasks, one at a time
per chat so that a chat's replies arrive in the order its questions did. Notices about
the sender (the rate-limit warning) skip that queue: they are about now.

The gateway answers a few things itself: `/start` with a greeting and the commands, and
a message with nothing readable in it (a sticker, a photo without caption) with a line
saying the box cannot read that kind of message yet; neither reaches the model.

A reply the platform would not take (its sends kept failing after the reply streamer's
own retries) is tried again while the daemon runs, with backoff (`Redelivery`): the
answer already written is kept, so the model does not write it twice. An answer that
gets through more than `late_after_s` after the question says once that it is late; one
not delivered within `give_up_after_s`, or refused for good by the platform
(`Undeliverable`, e.g. WhatsApp's 24-hour window), gets the terminal inbox state
"undeliverable", an audit entry, and the owner is told where that is possible.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timezone

from connectors.audit_log import AuditLog
from connectors.base import Connector, InboundMessage, MessageSink
from connectors.commands import greeting
from connectors.errors import ConnectorError, Undeliverable
from connectors.inbox import Inbox
from connectors.outbound import Outbound
from connectors.pairing import Pairing, PairingError
from connectors.policy import SenderRateLimit, command_name, decide, sender_role
from connectors.reply import ReplyStreamer
from connectors.settings import ConnectorSettings

log = logging.getLogger(__name__)

Responder = Callable[[InboundMessage], AsyncIterator[str]]

SLOW_DOWN = "You're sending messages faster than I can answer. Please slow down a little and try again in a minute."
ADMIN_ONLY = "Sorry, that command is only for the owner and admins of this box."
GROUP_ADMIN_ONLY = "In a group, only the owner and admins of this box can change that; ask in a direct chat for your own."
PAIRING_FULL_DETAIL = "too many pending pairing codes"
UNREADABLE_KINDS = {"sticker": "stickers", "image": "photos", "document": "documents of that type", "audio": "audio",
                    "voice": "voice messages", "video": "videos"}

OwnerAlert = Callable[[str, str], Awaitable[None]]


@dataclass(frozen=True)
class Redelivery:
    """How an undelivered reply is tried again while the daemon runs: exponential
    backoff from `base_s` up to `max_s`, a "late" note after `late_after_s`, and the
    terminal state after `give_up_after_s` (a day: longer than any platform outage
    worth waiting for, short enough that an answer still means something)."""

    base_s: float = 15.0
    max_s: float = 600.0
    late_after_s: float = 600.0
    give_up_after_s: float = 24 * 3600.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.max_s, self.base_s * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def unreadable_text(msg: InboundMessage) -> str:
    kinds = sorted({UNREADABLE_KINDS.get(a.kind, f"{a.kind} messages") for a in msg.attachments})
    what = " or ".join(kinds) if kinds else "messages without text"
    return f"Sorry, I can't read {what} yet. Please write your question as text (a text file works too)."


def late_note(minutes: float, platform: str) -> str:
    return f"(Sorry, this answer is late: I could not reach you on {platform.capitalize()} for {minutes:.0f} minutes.)\n\n"


def pairing_text(code: str) -> str:
    return (
        "Hi! I don't know you yet. To talk to this box, ask its owner to approve this "
        f"pairing code (it expires in one hour):\n\n{code}\n\n"
        f"The owner runs: aibox pairing approve {code}"
    )


class Gateway:
    def __init__(
        self, pairing: Pairing, audit: AuditLog, responder: Responder, *, inbox: Inbox | None = None,
        outbound: Outbound | None = None, remember: int = 20_000, redelivery: Redelivery | None = None,
        alert_owner: OwnerAlert | None = None,
    ) -> None:
        self.inbox = inbox
        self.redelivery = redelivery or Redelivery()
        self.alert_owner = alert_owner
        self.outbound = outbound if outbound is not None else Outbound(inbox)
        self.pairing = pairing
        self.audit = audit
        self.responder = responder
        self._remember = remember
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._connectors: dict[str, tuple[ConnectorSettings, SenderRateLimit]] = {}
        self._chat_locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: dict[str, asyncio.Task[None]] = {}  # replies waiting to be tried again
        self._written: dict[str, str] = {}  # answers fully written but not yet delivered

    def attach(self, connector: Connector, settings: ConnectorSettings, streamer: ReplyStreamer | None = None) -> MessageSink:
        """Registers a connector and returns the sink it must hand its messages to;
        `streamer` replaces the outbound path's default for this connector."""
        limiter = SenderRateLimit(settings.rate_limit_per_minute, settings.rate_limit_burst)
        self.outbound.attach(connector, settings, streamer)
        self._connectors[connector.platform] = (settings, limiter)

        async def sink(msg: InboundMessage) -> None:
            await self.handle(msg)

        return sink

    async def handle(self, msg: InboundMessage, recovered: bool = False) -> None:
        """`recovered`: a message replayed from the inbox after a restart; it was let
        through once already, so the sender's rate limit does not apply again."""
        settings, limiter = self._connectors[msg.platform]
        if self._repeat(msg.key):
            self._audit(msg, "duplicate")
            return
        role = sender_role(settings, self.pairing.role(msg.platform, msg.sender_id), msg.sender_id)
        decision = decide(msg, settings, role)
        if decision.action == "ignore":
            self._audit(msg, decision.reason)
            return
        verdict = "ok" if recovered else limiter.check(f"{msg.platform}:{msg.sender_id}")
        if verdict != "ok":
            self._audit(msg, "rate_limited", "warned" if verdict == "warn" else "dropped")
            if verdict == "warn":
                self._spawn(msg, self.outbound.send_text(msg.platform, msg.chat_id, SLOW_DOWN, msg.message_id), queued=False)
            return
        if decision.action == "pair":
            await self._offer_pairing(msg)
            return
        if decision.action == "refuse":
            self._audit(msg, decision.reason, f"command /{command_name(msg.text)}")
            refusal = GROUP_ADMIN_ONLY if decision.reason == "group_setting_denied" else ADMIN_ONLY
            self._spawn(msg, self.outbound.send_text(msg.platform, msg.chat_id, refusal, msg.message_id))
            return
        if command_name(msg.text) == "pairing":
            self._audit(msg, "admin_command", "command /pairing")
            self._spawn(msg, self.outbound.send_text(msg.platform, msg.chat_id, self._pairing_command(msg.text), msg.message_id))
            return
        if command_name(msg.text) == "start" or not msg.text.strip():
            self._audit(msg, "greeted" if msg.text.strip() else "unreadable")
            notice = greeting() if msg.text.strip() else unreadable_text(msg)
            self._spawn(msg, self.outbound.send_text(msg.platform, msg.chat_id, notice, msg.message_id))
            return
        if self.inbox is not None and not await self.inbox.admit(msg):
            self._audit(msg, "duplicate", "already answered")
            return
        self._audit(msg, decision.reason, f"role {decision.role}")
        self._spawn(msg, self._answer(msg))

    async def _offer_pairing(self, msg: InboundMessage) -> None:
        pending = self.pairing.request(msg.platform, msg.sender_id, msg.chat_id, msg.sender_name)
        if pending is None:
            self._audit(msg, "pairing_refused", PAIRING_FULL_DETAIL)
            return
        self._audit(msg, "pairing_code_sent")
        self._spawn(msg, self.outbound.send_text(msg.platform, msg.chat_id, pairing_text(pending.code), msg.message_id))

    async def _answer(self, msg: InboundMessage, attempt: int = 1) -> None:
        written = self._written.pop(msg.key, None)
        received = msg.received_at if msg.received_at.tzinfo else msg.received_at.replace(tzinfo=timezone.utc)
        waited_s = time.time() - received.timestamp()
        late = late_note(waited_s / 60, msg.platform) if attempt > 1 and waited_s >= self.redelivery.late_after_s else ""
        answer = _Recorded(self.responder(msg) if written is None else _once(written), late)
        try:
            delivered = await self.outbound.stream(msg.platform, msg.chat_id, answer, msg.message_id)
        except BaseException:
            if self.inbox is not None:
                self.inbox.release(msg)
            raise
        if delivered.error is not None:
            self._audit(msg, "reply_failed", type(delivered.error).__name__)
        if self.inbox is None:
            return
        reached_chat = delivered.message_ids and not isinstance(delivered.error, ConnectorError)
        if delivered.error is None or reached_chat:
            await self.inbox.answered(msg)
            if attempt > 1:
                self._audit(msg, "delivered_late", f"attempt {attempt}")
            return
        self.inbox.release(msg)
        if answer.complete:
            self._written[msg.key] = answer.text
        if isinstance(delivered.error, Undeliverable):
            await self._give_up(msg, delivered.error.reason)
        elif waited_s >= self.redelivery.give_up_after_s:
            await self._give_up(msg, f"not delivered within {self.redelivery.give_up_after_s / 3600:g} h")
        else:
            self._retry_later(msg, attempt)

    def _retry_later(self, msg: InboundMessage, attempt: int) -> None:
        delay = self.redelivery.delay(attempt)
        log.info("reply not delivered; trying again later",
                 extra={"platform": msg.platform, "attempt": attempt, "retry_in_s": round(delay, 1)})

        async def later() -> None:
            await asyncio.sleep(delay)
            self._waiting.pop(msg.key, None)
            if self.inbox is not None and not await self.inbox.admit(msg):
                return  # answered meanwhile (a redelivery of the same message)
            self._spawn(msg, self._answer(msg, attempt + 1))

        task = asyncio.get_running_loop().create_task(later(), name=f"redeliver-{msg.key}")
        self._waiting[msg.key] = task

    async def _give_up(self, msg: InboundMessage, reason: str) -> None:
        """The terminal state: never retried, counted in `aibox status`, audited."""
        self._written.pop(msg.key, None)
        assert self.inbox is not None
        await self.inbox.undeliverable(msg)
        self._audit(msg, "undeliverable", reason[:200])
        log.warning("reply undeliverable", extra={"platform": msg.platform, "reason": reason})
        if self.alert_owner is None:
            return
        try:
            await self.alert_owner(msg.platform, f"A reply in {msg.platform} chat {msg.chat_id} could not be delivered: {reason}.")
        except Exception as e:  # the owner's chat may be the one that is unreachable
            log.warning("could not tell the owner about an undeliverable reply: %s", e)

    async def replay(self) -> tuple[int, int]:
        """Answers the messages the last run left unanswered (a crash, a kill -9), once
        each, on the platforms that are running; returns (replayed, still waiting)."""
        if self.inbox is None:
            return 0, 0
        pending = await asyncio.to_thread(self.inbox.pending)
        replayed = 0
        for msg in pending:
            if msg.platform in self._connectors:
                await self.handle(msg, recovered=True)
                replayed += 1
        if pending:
            log.info("answering messages left unanswered by the last run", extra={"count": replayed, "waiting": len(pending) - replayed})
        return replayed, len(pending) - replayed

    def _spawn(self, msg: InboundMessage, work: object, queued: bool = True) -> None:
        """Runs a reply after any earlier one in the same chat has finished; `queued=False`
        runs it at once (still paced with the chat's other writes)."""
        lock = self._chat_locks.setdefault(f"{msg.platform}:{msg.chat_id}", asyncio.Lock())

        async def run() -> None:
            try:
                await work  # type: ignore[misc]
            except Exception:
                log.exception("reply in %s:%s failed", msg.platform, msg.chat_id)
                self._audit(msg, "reply_failed", "unexpected error")

        async def in_order() -> None:
            if not queued:
                await run()
                return
            async with lock:
                await run()

        task = asyncio.get_running_loop().create_task(in_order())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _pairing_command(self, text: str) -> str:
        words = text.split()[1:]
        try:
            if not words or words[0] == "list":
                lines = [f"{p.code}  {p.platform}:{p.sender_id} {p.name or ''}".rstrip() for p in self.pairing.pending()]
                return "Pending pairing codes:\n" + "\n".join(lines) if lines else "No pending pairing codes."
            if words[0] == "approve" and len(words) == 2:
                approved = self.pairing.approve(words[1])
                self.audit.record(approved.platform, "pairing_approved", approved.chat_id, approved.sender_id, "via chat")
                self.notify_approved(approved.platform, approved.chat_id)
                return f"Approved {approved.platform}:{approved.sender_id} as {approved.role}."
            if words[0] == "revoke" and len(words) == 2:
                gone = self.pairing.revoke(words[1])
                for a in gone:
                    self.audit.record(a.platform, "pairing_revoked", a.chat_id, a.sender_id, "via chat")
                return "Revoked " + ", ".join(f"{a.platform}:{a.sender_id}" for a in gone) + "."
        except PairingError as e:
            return str(e)
        return "Usage: /pairing [list | approve CODE | revoke SENDER]"

    def notify_approved(self, platform: str, chat_id: str | None) -> None:
        """Tells a newly approved sender they can start, when their connector is running."""
        if platform not in self._connectors or chat_id is None:
            return
        task = asyncio.get_running_loop().create_task(
            self.outbound.send_text(platform, chat_id, "You're approved: you can talk to this box now.")
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def update_settings(self, platform: str, settings: ConnectorSettings) -> None:
        """New access settings for a running connector (a config reload): the next
        message is decided by them. The sender rate limit restarts only if it changed."""
        old, limiter = self._connectors[platform]
        if (old.rate_limit_per_minute, old.rate_limit_burst) != (settings.rate_limit_per_minute, settings.rate_limit_burst):
            limiter = SenderRateLimit(settings.rate_limit_per_minute, settings.rate_limit_burst)
        self._connectors[platform] = (settings, limiter)

    def _repeat(self, key: str) -> bool:
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        return False

    def _audit(self, msg: InboundMessage, decision: str, detail: str = "") -> None:
        self.audit.record(msg.platform, decision, msg.chat_id, msg.sender_id, detail)

    async def drain(self, timeout: float = 10.0) -> None:
        """Lets replies in flight finish (up to `timeout`), then cancels the rest; replies
        waiting to be tried again stay pending in the inbox for the next start."""
        for waiting in self._waiting.values():
            waiting.cancel()
        self._waiting.clear()
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        await self.audit.flush()


class _Recorded:
    """The answer as it streams, kept: when its delivery fails, the retry sends the text
    already written instead of asking the model again. `prefix` goes out first."""

    def __init__(self, deltas: AsyncIterator[str], prefix: str = "") -> None:
        self.deltas = deltas
        self.prefix = prefix
        self.pieces: list[str] = []
        self.complete = False
        self._stream = self._run()

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._stream

    async def _run(self) -> AsyncIterator[str]:
        if self.prefix:
            yield self.prefix
        async for piece in self.deltas:
            self.pieces.append(piece)
            yield piece
        self.complete = True

    async def aclose(self) -> None:
        """Stops the model too: the reply ended early."""
        await self._stream.aclose()
        close = getattr(self.deltas, "aclose", None)
        if close is not None:
            await close()


async def _once(text: str) -> AsyncIterator[str]:
    yield text
