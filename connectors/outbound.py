"""The one way out: every message the box posts in a chat goes through here.

Streamed answers, long answers written in the background (their status line, its edits
and the answer), scheduled jobs, alerts for the owner, pairing notices and answers
replayed after a crash all reach the platform through the same per-platform
`ReplyStreamer` (connectors/reply.py), so they share its pacing of one write per
interval per chat and its retries of 429s and transient failures. The streamer writes
through a `Journal`, which records the first message of each reply in the inbox, so a
message answered again after a crash edits its earlier reply instead of adding a second.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable

from connectors.base import Connector, Health, MessageSink
from connectors.errors import ConnectorError, RateLimited, TransientError
from connectors.inbox import Inbox
from connectors.reply import ChatPacer, DeliveredReply, ReplyStreamer
from connectors.settings import ConnectorSettings

log = logging.getLogger(__name__)


class Outbound:
    """The reply streamer of every running connector, by platform."""

    def __init__(self, inbox: Inbox | None = None) -> None:
        self.inbox = inbox
        self._streamers: dict[str, ReplyStreamer] = {}

    def attach(self, connector: Connector, settings: ConnectorSettings, streamer: ReplyStreamer | None = None) -> ReplyStreamer:
        """Registers a connector; `streamer` replaces the default one (journaled when
        there is an inbox, paced by the connector's `edit_interval_s`)."""
        if streamer is None:
            target = Journal(connector, self.inbox) if self.inbox is not None else connector
            streamer = ReplyStreamer(target, pacer=ChatPacer(settings.edit_interval_s))
        self._streamers[connector.platform] = streamer
        return streamer

    @property
    def platforms(self) -> set[str]:
        return set(self._streamers)

    def streamer(self, platform: str) -> ReplyStreamer:
        streamer = self._streamers.get(platform)
        if streamer is None:
            raise ConnectorError(f"no running {platform} connector")
        return streamer

    async def stream(self, platform: str, chat_id: str, deltas: AsyncIterable[str], reply_to: str | None = None) -> DeliveredReply:
        """An answer as it is generated, shown as it grows."""
        return await self.streamer(platform).stream(chat_id, deltas, reply_to)

    async def send_text(self, platform: str, chat_id: str, text: str, reply_to: str | None = None) -> DeliveredReply:
        """A whole text (a notice, a pairing code); failures are in the result."""
        return await self.streamer(platform).send_text(chat_id, text, reply_to)

    async def deliver(self, platform: str, chat_id: str, text: str) -> str:
        """A message the box starts itself (a scheduled job, an alert, a long answer's
        status line); returns the id of its first message and raises when it failed."""
        delivered = await self.send_text(platform, chat_id, text)
        if delivered.error is not None:
            raise delivered.error
        return delivered.message_ids[0]

    async def edit(self, platform: str, chat_id: str, message_id: str, text: str) -> str:
        """Replaces a posted message's text; returns the id of the message showing it."""
        return await self.streamer(platform).edit_text(chat_id, message_id, text)


class Journal(Connector):
    """The connector as the reply streamer sees it: the first message of each reply is
    recorded, and a reply to a message that already has one edits it instead."""

    def __init__(self, inner: Connector, inbox: Inbox) -> None:
        self.inner = inner
        self.inbox = inbox
        self.platform = inner.platform
        self.max_text = inner.max_text
        self.supports_edit = inner.supports_edit
        self.length_unit = inner.length_unit

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
