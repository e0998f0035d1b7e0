"""What every messaging connector is: one inbound message type and one interface.

A connector turns its platform's events into `InboundMessage`s and hands each to the
daemon's sink; replies go back through `send`, `edit` and `typing`. Everything
platform-specific (wire format, limits, rate limits, reconnects) stays inside the
connector's own module.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

HealthState = Literal["starting", "ok", "degraded", "failed", "stopped"]


@dataclass(frozen=True)
class Attachment:
    """Metadata only: the bytes stay on the platform until someone asks for them."""

    kind: str
    name: str | None = None
    mime_type: str | None = None
    size: int | None = None
    ref: str | None = None


@dataclass(frozen=True)
class InboundMessage:
    platform: str
    chat_id: str
    sender_id: str
    message_id: str
    text: str
    sender_name: str | None = None
    attachments: tuple[Attachment, ...] = ()
    reply_to: str | None = None
    is_direct: bool = True
    mentions_bot: bool = False
    received_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def key(self) -> str:
        """Unique across platforms: what the inbox dedupes on."""
        return f"{self.platform}:{self.chat_id}:{self.message_id}"


@dataclass
class Health:
    state: HealthState = "stopped"
    detail: str = ""
    since: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


MessageSink = Callable[[InboundMessage], Awaitable[None]]


class Connector(abc.ABC):
    """One messaging platform. `start` returns once the connector is receiving (or has
    failed: then `health()` says why and the daemon carries on with the others)."""

    platform: str
    max_text: int
    supports_edit: bool = True  # False: the reply streamer sends finished pieces instead of editing

    @abc.abstractmethod
    async def start(self, sink: MessageSink) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    def health(self) -> Health: ...

    @abc.abstractmethod
    async def send(self, chat_id: str, text: str, reply_to: str | None = None) -> str:
        """Sends a message and returns the platform's id for it."""

    @abc.abstractmethod
    async def edit(self, chat_id: str, message_id: str, text: str) -> None: ...

    @abc.abstractmethod
    async def typing(self, chat_id: str) -> None: ...
