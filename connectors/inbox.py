"""Nothing is lost: every message the box will answer is in the store before the
platform hears that it arrived, and it is marked answered only once the reply is out.

The gateway calls `admit` before it hands a message on (connectors return to their
platform, which is what acknowledges the message, only after that), and `answered`
after the reply streamer delivered the reply. On start, `pending()` gives back every
message a crash or a kill -9 left unanswered, to be answered again.

"Answered once" also covers a crash in the middle of a reply: the outbound path's
journal (connectors/outbound.py) records here the id of the first message of each reply,
and a message answered again edits that earlier message instead of appearing as a second
reply. The only gap left is a kill between the platform accepting a message and the
journal write (a few milliseconds).

A reply the platform refuses for good (or that could not be delivered for a day) ends
as "undeliverable": never retried, counted in `aibox status`, its reason in the audit log.

Answered messages are kept for `agents.inbox_retention_days` (platforms redeliver within
hours, so that is enough to recognise a duplicate) and then deleted with their text;
unanswered ones are never deleted.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import delete, select

from aibox.store import Store
from aibox.store.schema import utcnow
from connectors.base import InboundMessage
from connectors.tables import InboxMessage

log = logging.getLogger(__name__)


class Inbox:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._in_flight: set[str] = set()
        self._held: set[str] = set()

    async def admit(self, msg: InboundMessage) -> bool:
        """Stores the message; False when it was answered already or is being answered."""
        if msg.key in self._in_flight:
            return False

        def write() -> bool:
            with self.store.session() as s:
                row = s.get(InboxMessage, msg.key)
                if row is None:
                    s.add(InboxMessage(
                        key=msg.key, platform=msg.platform, chat_id=msg.chat_id, sender_id=msg.sender_id,
                        message_id=msg.message_id, sender_name=msg.sender_name, text=msg.text, reply_to=msg.reply_to,
                        is_direct=msg.is_direct, mentions_bot=msg.mentions_bot, received_at=msg.received_at,
                        status="pending", attempts=1,
                    ))
                    return True
                if row.status in ("answered", "undeliverable"):
                    return False
                row.attempts += 1
                return True

        self._in_flight.add(msg.key)
        try:
            fresh = await asyncio.to_thread(write)
        except BaseException:
            self._in_flight.discard(msg.key)
            raise
        if not fresh:
            self._in_flight.discard(msg.key)
        return fresh

    def hold(self, msg: InboundMessage) -> None:
        """The reply is only an acknowledgement (a long answer runs in the background): the
        message stays pending until `settle`, so a crash before the answer replays it."""
        self._held.add(msg.key)

    def unhold(self, msg: InboundMessage) -> None:
        self._held.discard(msg.key)

    async def settle(self, msg: InboundMessage) -> None:
        """The background answer is out (or the user cancelled it): the message is answered."""
        self._held.discard(msg.key)
        await self.answered(msg)

    async def answered(self, msg: InboundMessage) -> None:
        if msg.key in self._held:
            return
        await self._finish(msg, "answered")

    async def undeliverable(self, msg: InboundMessage) -> None:
        """The terminal state: the reply will never reach the chat; it is not retried."""
        self._held.discard(msg.key)
        await self._finish(msg, "undeliverable")

    async def _finish(self, msg: InboundMessage, status: str) -> None:
        def write() -> None:
            with self.store.session() as s:
                row = s.get(InboxMessage, msg.key)
                if row is not None:
                    row.status, row.answered_at = status, utcnow()

        try:
            await asyncio.to_thread(write)
        finally:
            self._in_flight.discard(msg.key)

    def release(self, msg: InboundMessage) -> None:
        """The reply could not be delivered: leave it pending for the next start."""
        self._in_flight.discard(msg.key)

    def pending(self) -> list[InboundMessage]:
        with self.store.session() as s:
            rows = s.scalars(select(InboxMessage).where(InboxMessage.status == "pending").order_by(InboxMessage.received_at))
            return [
                InboundMessage(platform=r.platform, chat_id=r.chat_id, sender_id=r.sender_id, message_id=r.message_id,
                               text=r.text, sender_name=r.sender_name, reply_to=r.reply_to, is_direct=r.is_direct,
                               mentions_bot=r.mentions_bot, received_at=r.received_at)
                for r in rows
            ]

    def prune(self, keep: timedelta) -> int:
        """Deletes answered messages answered longer ago than `keep`; returns how many."""
        cutoff = utcnow() - keep
        with self.store.session() as s:
            done = InboxMessage.status.in_(("answered", "undeliverable"))
            result = s.execute(delete(InboxMessage).where(done, InboxMessage.answered_at < cutoff))
            return result.rowcount or 0

    async def prune_daily(self, keep: timedelta) -> None:
        """Runs `prune` once a day for as long as the daemon runs."""
        while True:
            try:
                removed = await asyncio.to_thread(self.prune, keep)
            except Exception:  # the store may be briefly unavailable; try again tomorrow
                log.exception("pruning the inbox failed")
            else:
                if removed:
                    log.info("pruned answered messages from the inbox", extra={"count": removed, "older_than_days": keep.days})
            await asyncio.sleep(24 * 3600)

    def counts(self) -> dict[str, int]:
        with self.store.session() as s:
            rows = s.execute(select(InboxMessage.status, InboxMessage.key)).all()
        counts: dict[str, int] = {}
        for status, _ in rows:
            counts[status] = counts.get(status, 0) + 1
        return counts

    async def reply_message(self, platform: str, chat_id: str, reply_to: str) -> str | None:
        def read() -> str | None:
            with self.store.session() as s:
                row = s.get(InboxMessage, f"{platform}:{chat_id}:{reply_to}")
                return row.reply_message_id if row is not None else None

        return await asyncio.to_thread(read)

    async def record_reply(self, platform: str, chat_id: str, reply_to: str, message_id: str) -> None:
        def write() -> None:
            with self.store.session() as s:
                row = s.get(InboxMessage, f"{platform}:{chat_id}:{reply_to}")
                if row is not None:
                    row.reply_message_id = message_id

        await asyncio.to_thread(write)
