"""Nothing is lost: every message the box will answer is in the store before the
platform hears that it arrived, and it is marked answered only once the reply is out.

The gateway calls `admit` before it hands a message on (connectors return to their
platform, which is what acknowledges the message, only after that), and `answered`
after the reply streamer delivered the reply. On start, `pending()` gives back every
message a crash or a kill -9 left unanswered, to be answered again.

"Answered once" also covers a crash in the middle of a reply: `Journal` wraps the
connector the reply streamer writes to and records the id of the first message of each
reply. When a message is answered again, the new answer replaces the text of that
earlier message instead of appearing as a second reply. The only gap left is a kill
between the platform accepting a message and the journal write (a few milliseconds).

Answered messages are kept for `agents.inbox_retention_days` (platforms redeliver within
hours, so that is enough to recognise a duplicate) and then deleted with their text;
unanswered ones are never deleted.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import delete, select

from agents.tables import InboxMessage
from aibox.store import Store
from aibox.store.schema import utcnow
from connectors.base import Connector, Health, InboundMessage, MessageSink
from connectors.errors import ConnectorError, RateLimited, TransientError

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
                if row.status == "answered":
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

        def write() -> None:
            with self.store.session() as s:
                row = s.get(InboxMessage, msg.key)
                if row is not None:
                    row.status, row.answered_at = "answered", utcnow()

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
            result = s.execute(delete(InboxMessage).where(InboxMessage.status == "answered", InboxMessage.answered_at < cutoff))
            return result.rowcount or 0

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

    def journal(self, connector: Connector) -> "Journal":
        return Journal(connector, self)


class Journal(Connector):
    """The connector as the reply streamer sees it: the first message of each reply is
    recorded, and a reply to a message that already has one edits it instead."""

    def __init__(self, inner: Connector, inbox: Inbox) -> None:
        self.inner = inner
        self.inbox = inbox
        self.platform = inner.platform
        self.max_text = inner.max_text
        self.supports_edit = inner.supports_edit

    async def start(self, sink: MessageSink) -> None:
        await self.inner.start(sink)

    async def stop(self) -> None:
        await self.inner.stop()

    def health(self) -> Health:
        return self.inner.health()

    async def send(self, chat_id: str, text: str, reply_to: str | None = None) -> str:
        if reply_to is None:
            return await self.inner.send(chat_id, text, None)
        earlier = await self.inbox.reply_message(self.platform, chat_id, reply_to)
        if earlier is not None and self.supports_edit:
            try:
                await self.inner.edit(chat_id, earlier, text)
                return earlier
            except (RateLimited, TransientError):
                raise
            except ConnectorError as e:
                if "not modified" in str(e).lower():
                    return earlier
                log.info("earlier reply %s in %s:%s cannot be edited (%s); sending anew", earlier, self.platform, chat_id, e)
        message_id = await self.inner.send(chat_id, text, reply_to)
        await self.inbox.record_reply(self.platform, chat_id, reply_to, message_id)
        return message_id

    async def edit(self, chat_id: str, message_id: str, text: str) -> None:
        await self.inner.edit(chat_id, message_id, text)

    async def typing(self, chat_id: str) -> None:
        await self.inner.typing(chat_id)
