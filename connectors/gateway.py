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
per chat so that a chat's replies arrive in the order its questions did.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from connectors.audit_log import AuditLog
from connectors.base import Connector, InboundMessage, MessageSink
from connectors.errors import ConnectorError
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


def pairing_text(code: str) -> str:
    return (
        "Hi! I don't know you yet. To talk to this box, ask its owner to approve this "
        f"pairing code (it expires in one hour):\n\n{code}\n\n"
        f"The owner runs: aibox pairing approve {code}"
    )


class Gateway:
    def __init__(
        self, pairing: Pairing, audit: AuditLog, responder: Responder, *, inbox: Inbox | None = None,
        outbound: Outbound | None = None, remember: int = 20_000,
    ) -> None:
        self.inbox = inbox
        self.outbound = outbound if outbound is not None else Outbound(inbox)
        self.pairing = pairing
        self.audit = audit
        self.responder = responder
        self._remember = remember
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._connectors: dict[str, tuple[ConnectorSettings, SenderRateLimit]] = {}
        self._chat_locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

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
                self._spawn(msg, self.outbound.send_text(msg.platform, msg.chat_id, SLOW_DOWN, msg.message_id))
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

    async def _answer(self, msg: InboundMessage) -> None:
        try:
            delivered = await self.outbound.stream(msg.platform, msg.chat_id, self.responder(msg), msg.message_id)
        except BaseException:
            if self.inbox is not None:
                self.inbox.release(msg)
            raise
        if delivered.error is not None:
            self._audit(msg, "reply_failed", type(delivered.error).__name__)
        if self.inbox is not None:
            reached_chat = delivered.message_ids and not isinstance(delivered.error, ConnectorError)
            if delivered.error is None or reached_chat:
                await self.inbox.answered(msg)
            else:
                self.inbox.release(msg)

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

    def _spawn(self, msg: InboundMessage, work: object) -> None:
        """Runs a reply after any earlier one in the same chat has finished."""
        lock = self._chat_locks.setdefault(f"{msg.platform}:{msg.chat_id}", asyncio.Lock())

        async def in_order() -> None:
            async with lock:
                try:
                    await work  # type: ignore[misc]
                except Exception:
                    log.exception("reply in %s:%s failed", msg.platform, msg.chat_id)
                    self._audit(msg, "reply_failed", "unexpected error")

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
        """Lets replies in flight finish (up to `timeout`), then cancels the rest."""
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        await self.audit.flush()
