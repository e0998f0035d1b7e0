"""What every messaging connector is: one inbound message type and one interface.

A connector turns its platform's events into `InboundMessage`s and hands each to the
daemon's sink; replies go back through `send`, `edit` and `typing`. Everything
platform-specific (wire format, limits, rate limits) stays inside the connector's own
module; what they all do alike (their health, a webhook listener, reconnecting with
backoff) is written once, here and in connectors/webhook.py and connectors/reconnect.py.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from aibox.secrets import redact

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
    length_unit: Literal["char", "utf-16"] = "char"  # what `max_text` counts (Telegram: UTF-16 code units)

    def __init__(self) -> None:
        self._health = Health("stopped")

    @abc.abstractmethod
    async def start(self, sink: MessageSink) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    def health(self) -> Health:
        return self._health

    def _set_health(self, state: HealthState, detail: str) -> None:
        """Records a new state for `aibox status`. The detail is redacted, since it often
        quotes a platform's error and those can echo a token; a repeat of the current
        state is no change (`since` keeps its time) and is not logged again."""
        detail = redact(detail)
        if state == self._health.state and detail == self._health.detail:
            return
        level = {"failed": logging.ERROR, "degraded": logging.WARNING}.get(state, logging.INFO)
        log = logging.getLogger(type(self).__module__)
        log.log(level, "%s connector %s%s", self.platform, state, f": {detail}" if detail else "")
        self._health = Health(state, detail)

    @abc.abstractmethod
    async def send(self, chat_id: str, text: str, reply_to: str | None = None) -> str:
        """Sends a message and returns the platform's id for it."""

    @abc.abstractmethod
    async def edit(self, chat_id: str, message_id: str, text: str) -> None: ...

    @abc.abstractmethod
    async def typing(self, chat_id: str) -> None: ...
