"""The web chat: the box's own page (aibox/ui, served under /ui/chat) as one more
connector, so its messages take the same way as Telegram's: the gateway (policy, inbox,
audit log), the agent runner, the router, and back through the outbound path.

Only someone logged in to the page may write here, and a login is only handed out over the
admin socket, so every sender is the owner: the settings name the one sender id "owner" and
allow no one else (no pairing). The page's HTTP routes (aibox/api/ui.py) check the session
and hand messages to `submit`; what the box posts in a chat reaches every open page of that
chat as events (`subscribe`), a posted message first and then its edits as the answer grows.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import deque
from dataclasses import dataclass

from pydantic import Field

from connectors.base import Connector, InboundMessage, MessageSink
from connectors.errors import ConnectorError
from connectors.settings import ConnectorSettings, DmPolicy

OWNER = "owner"
KEEP = 100  # messages per chat a freshly opened page shows


class WebSettings(ConnectorSettings):
    dm_policy: DmPolicy = "allowlist"
    owner: str | None = OWNER
    edit_interval_s: float = Field(0.2, ge=0.0, le=60.0)


@dataclass
class WebMessage:
    id: str
    role: str  # "user" or "assistant"
    text: str


class WebConnector(Connector):
    platform = "web"
    max_text = 100_000
    supports_edit = True
    settings_model = WebSettings

    def __init__(self, settings: WebSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or WebSettings()
        self._sink: MessageSink | None = None
        self._ids = itertools.count(1)
        self._chats: dict[str, deque[WebMessage]] = {}
        self._listeners: dict[str, set[asyncio.Queue[dict]]] = {}

    async def start(self, sink: MessageSink) -> None:
        self._sink = sink
        self._set_health("ok", "served at /ui/chat")

    async def stop(self) -> None:
        self._sink = None
        for queues in self._listeners.values():
            for q in queues:
                q.put_nowait({"kind": "closed"})
        self._set_health("stopped", "")

    async def submit(self, chat_id: str, text: str, sender_id: str = OWNER) -> str:
        """A message typed on the page; returns its id once the gateway has taken it."""
        if self._sink is None:
            raise ConnectorError("the web chat is not running")
        message_id = f"u{uuid.uuid4().hex[:12]}"
        self._remember(chat_id, WebMessage(message_id, "user", text))
        self._publish(chat_id, {"kind": "message", "id": message_id, "role": "user", "text": text})
        await self._sink(InboundMessage(self.platform, chat_id, sender_id, message_id, text, sender_name="owner (web)"))
        return message_id

    def transcript(self, chat_id: str) -> list[WebMessage]:
        return list(self._chats.get(chat_id, ()))

    def subscribe(self, chat_id: str) -> asyncio.Queue[dict]:
        q: asyncio.Queue[dict] = asyncio.Queue()
        self._listeners.setdefault(chat_id, set()).add(q)
        return q

    def unsubscribe(self, chat_id: str, q: asyncio.Queue[dict]) -> None:
        self._listeners.get(chat_id, set()).discard(q)

    async def send(self, chat_id: str, text: str, reply_to: str | None = None) -> str:
        message_id = f"b{next(self._ids)}"
        self._remember(chat_id, WebMessage(message_id, "assistant", text))
        self._publish(chat_id, {"kind": "message", "id": message_id, "role": "assistant", "text": text, "reply_to": reply_to})
        return message_id

    async def edit(self, chat_id: str, message_id: str, text: str) -> None:
        for m in self._chats.get(chat_id, ()):
            if m.id == message_id:
                m.text = text
                self._publish(chat_id, {"kind": "edit", "id": message_id, "text": text})
                return
        raise ConnectorError(f"message {message_id} not found in web chat {chat_id}")

    async def typing(self, chat_id: str) -> None:
        self._publish(chat_id, {"kind": "typing"})

    def _remember(self, chat_id: str, message: WebMessage) -> None:
        self._chats.setdefault(chat_id, deque(maxlen=KEEP)).append(message)

    def _publish(self, chat_id: str, event: dict) -> None:
        for q in self._listeners.get(chat_id, ()):
            q.put_nowait(event)
