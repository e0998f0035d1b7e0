"""WhatsApp through the Business Cloud API: a webhook in, the Graph API out.

Meta posts message events to our webhook; we answer the one-time subscription check
(`hub.challenge`, only with the right verify token) and accept an event only when its
`X-Hub-Signature-256` is the HMAC-SHA256 of the exact body under the app secret.
Replies go out with `POST /{version}/{phone_number_id}/messages` over httpx.

WhatsApp cannot edit a message a business sent, so this connector says
`supports_edit = False`: the reply streamer sends each piece of a long answer once it is
final, and the typing indicator (which needs the id of the message being answered,
and also marks it read) shows while the model works.

Meta delivers at least once and retries a webhook that did not get a 200, so repeats
are normal: the gateway drops them by message id.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from typing import Any

import httpx
from aiohttp import web
from pydantic import Field

from aibox.secrets import Secret, redact
from connectors.base import Attachment, Connector, InboundMessage, MessageSink
from connectors.errors import ConnectorError, RateLimited, TransientError
from connectors.settings import ConnectorSettings
from connectors.webhook import WebhookListener

log = logging.getLogger(__name__)

# Graph API error codes that mean "too many messages": app/account throughput and the
# per-recipient pair limit. Meta sends some of them with status 400, not 429.
RATE_LIMIT_CODES = {4, 80007, 130429, 131048, 131056}
DEFAULT_RETRY_AFTER = 2.0
# Calls in flight to the Graph API at once. More wait here, in a cheap queue: httpx's own
# pool queue rescans every waiting request whenever a connection frees up.
MAX_IN_FLIGHT = 16
MEDIA_KINDS = ("image", "audio", "video", "document", "sticker", "voice")


class WhatsAppSettings(ConnectorSettings):
    access_token: Secret = Field(description="system user access token with whatsapp_business_messaging")
    app_secret: Secret = Field(description="the Meta app's secret, for X-Hub-Signature-256")
    verify_token: Secret = Field(description="any string; the same one entered in the webhook setup")
    phone_number_id: str = Field(description="the business phone number's id (not the number)")
    graph_url: str = "https://graph.facebook.com"
    api_version: str = "v21.0"
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(8644, ge=0, le=65535)
    webhook_path: str = "/whatsapp/webhook"
    request_timeout_s: float = Field(15.0, gt=0)


class WhatsAppConnector(Connector):
    platform = "whatsapp"
    max_text = 4096
    supports_edit = False
    settings_model = WhatsAppSettings

    def __init__(self, settings: WhatsAppSettings) -> None:
        super().__init__()
        self.settings = settings
        self._sink: MessageSink | None = None
        self._client: httpx.AsyncClient | None = None
        self._listener = WebhookListener(
            settings.listen_host,
            settings.listen_port,
            [("GET", settings.webhook_path, self._verify), ("POST", settings.webhook_path, self._event)],
            max_body=8 * 1024 * 1024,
        )
        self._app_secret = b""
        self._verify_token = ""
        self._last_inbound: dict[str, str] = {}
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    @property
    def webhook_url(self) -> str:
        """Where Meta posts (with the port actually bound when `listen_port` is 0)."""
        return self._listener.url(self.settings.webhook_path)

    async def start(self, sink: MessageSink) -> None:
        self._sink = sink
        self._set_health("starting", "connecting to the Graph API")
        s = self.settings
        self._app_secret = s.app_secret.get().encode()
        self._verify_token = s.verify_token.get()
        self._client = httpx.AsyncClient(
            base_url=f"{s.graph_url.rstrip('/')}/{s.api_version}/",
            headers={"Authorization": f"Bearer {s.access_token.get()}"},
            timeout=s.request_timeout_s,
            limits=httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT),
        )
        graph_down = None
        try:
            await self._check_number()
        except (RateLimited, TransientError) as e:
            graph_down = str(e)
        except ConnectorError as e:
            self._set_health("failed", f"the Graph API refused the phone number or token: {e}")
            return
        try:
            await self._listener.start()
        except OSError as e:
            self._set_health("failed", f"cannot listen on {s.listen_host}:{s.listen_port}: {e.strerror}")
            return
        if graph_down is None:
            self._set_health("ok", f"webhook on {self.webhook_url}")
        else:
            self._set_health("degraded", f"webhook on {self.webhook_url}; Graph API not reachable yet ({graph_down})")

    async def _check_number(self) -> None:
        assert self._client is not None
        response = await self._request("GET", self.settings.phone_number_id, params={"fields": "display_phone_number"})
        log.info("whatsapp number %s ready", response.get("display_phone_number", "?"))

    async def stop(self) -> None:
        await self._listener.stop()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._set_health("stopped", "")

    async def send(self, chat_id: str, text: str, reply_to: str | None = None) -> str:
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": chat_id,
            "type": "text",
            "text": {"preview_url": False, "body": text},
        }
        if reply_to:
            body["context"] = {"message_id": reply_to}
        answer = await self._request("POST", f"{self.settings.phone_number_id}/messages", json=body)
        try:
            return str(answer["messages"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise ConnectorError("the Graph API accepted the message but returned no id") from None

    async def edit(self, chat_id: str, message_id: str, text: str) -> None:
        raise ConnectorError("WhatsApp cannot edit messages sent by a business")

    async def typing(self, chat_id: str) -> None:
        """Shows "typing…" in reply to the chat's latest message (the API needs its id)."""
        message_id = self._last_inbound.get(chat_id)
        if message_id is None:
            return
        body = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
            "typing_indicator": {"type": "text"},
        }
        await self._request("POST", f"{self.settings.phone_number_id}/messages", json=body)

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One Graph API call, its failures mapped onto the reply streamer's errors."""
        if self._client is None:
            raise ConnectorError("the WhatsApp connector is not started")
        try:
            async with self._slots:
                response = await self._client.request(method, path, **kwargs)
        except httpx.TransportError as e:
            if self._health.state == "ok":
                self._set_health("degraded", f"webhook on {self.webhook_url}; Graph API unreachable ({type(e).__name__})")
            raise TransientError(f"Graph API unreachable: {type(e).__name__}") from None
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        error = payload.get("error") if isinstance(payload, dict) else None
        if response.is_success and error is None:
            if self._health.state == "degraded":
                self._set_health("ok", f"webhook on {self.webhook_url}")
            return payload
        code = error.get("code") if isinstance(error, dict) else None
        detail = redact(str(error.get("message") if isinstance(error, dict) else response.reason_phrase))
        if response.status_code == 429 or code in RATE_LIMIT_CODES:
            raise RateLimited(_retry_after(response), f"Graph API rate limit: {detail}")
        if response.status_code >= 500:
            raise TransientError(f"Graph API {response.status_code}: {detail}")
        raise ConnectorError(f"Graph API {response.status_code}: {detail}")

    async def _verify(self, request: web.Request) -> web.Response:
        """Meta's one-time subscription check when the webhook is set up."""
        mode = request.query.get("hub.mode")
        token = request.query.get("hub.verify_token", "")
        challenge = request.query.get("hub.challenge", "")
        if mode == "subscribe" and hmac.compare_digest(token.encode(), self._verify_token.encode()):
            return web.Response(text=challenge)
        log.warning("whatsapp webhook verification refused (wrong verify token or mode)")
        return web.Response(status=403, text="verification failed")

    async def _event(self, request: web.Request) -> web.Response:
        body = await request.read()
        signature = request.headers.get("X-Hub-Signature-256", "")
        expected = "sha256=" + hmac.new(self._app_secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            log.warning("whatsapp webhook post with a missing or wrong signature refused")
            return web.Response(status=401, text="bad signature")
        try:
            event = json.loads(body)
            messages = list(_messages(event))
        except (ValueError, TypeError, AttributeError) as e:
            log.warning("whatsapp webhook post is not a valid event: %s", e)
            return web.Response(status=400, text="malformed event")
        for message in messages:
            self._last_inbound[message.chat_id] = message.message_id
            if self._sink is not None:
                try:
                    await self._sink(message)
                except Exception:
                    log.exception("the gateway failed on WhatsApp message %s", message.message_id)
        return web.Response(text="ok")


def _messages(event: dict[str, Any]) -> list[InboundMessage]:
    """The user messages in one webhook post; statuses, echoes and reactions are not."""
    found: list[InboundMessage] = []
    for entry in event.get("entry") or []:
        for change in entry.get("changes") or []:
            if change.get("field") != "messages":
                continue
            value = change.get("value") or {}
            names = {c.get("wa_id"): (c.get("profile") or {}).get("name") for c in value.get("contacts") or []}
            for m in value.get("messages") or []:
                inbound = _inbound(m, names)
                if inbound is not None:
                    found.append(inbound)
    return found


def _inbound(m: dict[str, Any], names: dict[str, str | None]) -> InboundMessage | None:
    sender = m.get("from")
    message_id = m.get("id")
    kind = m.get("type")
    if not isinstance(sender, str) or not isinstance(message_id, str) or kind in ("reaction", "system", "unsupported"):
        return None
    attachments: tuple[Attachment, ...] = ()
    if kind == "text":
        text = (m.get("text") or {}).get("body") or ""
    elif kind in MEDIA_KINDS:
        media = m.get(kind) or {}
        text = media.get("caption") or ""
        attachments = (Attachment(kind, media.get("filename"), media.get("mime_type"), None, media.get("id")),)
    elif kind == "button":
        text = (m.get("button") or {}).get("text") or ""
    elif kind == "interactive":
        reply = (m.get("interactive") or {})
        picked = reply.get("button_reply") or reply.get("list_reply") or {}
        text = picked.get("title") or ""
    else:
        return None
    if not isinstance(text, str):
        raise TypeError(f"message {message_id} has a text that is not a string")
    return InboundMessage(
        platform="whatsapp",
        chat_id=sender,
        sender_id=sender,
        message_id=message_id,
        text=text,
        sender_name=names.get(sender),
        attachments=attachments,
        reply_to=(m.get("context") or {}).get("id"),
        is_direct=True,
        mentions_bot=False,
    )


def _retry_after(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("Retry-After", DEFAULT_RETRY_AFTER))
    except ValueError:
        return DEFAULT_RETRY_AFTER
