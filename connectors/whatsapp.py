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
are normal: the gateway drops them by message id. The 200 goes out only once every
message in the post is stored (a store that fails gets a 503, and Meta posts again);
a message in the post that is malformed is skipped and logged (without its text),
so it cannot hold back the valid ones beside it, which Meta would otherwise post again
and again.

The Graph API has no idempotency key and no way to list the messages a business sent,
so a send whose answer is lost (the connection dropped after the request went out, or
timed out) cannot be checked directly. Each send carries a nonce in
`biz_opaque_callback_data`, which Meta echoes in the `sent` status it posts to the
webhook for every message it accepted; a send with a lost answer waits up to
`confirm_wait_s` for that status. If it comes, the message is there and is not sent
again; if not, the send fails as transient and the retry, with the same nonce, checks
for a late status before posting. (A status later still than that retry is the one gap
left: the person then sees the message twice.) A 200 whose body is cut off means Meta
accepted the message: it counts as delivered, with the id from its status if one came.
Error 131047 (more than 24 hours since the person last wrote) raises `Undeliverable`,
which the outbound path records as final instead of retrying at every start.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections import OrderedDict
from typing import Any

import httpx
from aiohttp import web
from pydantic import Field

from aibox.secrets import Secret, redact
from connectors.base import Attachment, Connector, InboundMessage, MessageSink
from connectors.errors import ConnectorError, RateLimited, TransientError, Undeliverable
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
# Kinds with nothing the box can read yet: they arrive as an attachment without text.
OPAQUE_KINDS = ("location", "contacts", "unsupported", "order")
# The person cannot get this message: outside the 24-hour window (131047), or the number
# cannot receive WhatsApp messages (131026).
UNDELIVERABLE_CODES = {131047: "more than 24 hours have passed since the person last wrote (WhatsApp error 131047)",
                       131026: "the number cannot receive this message (WhatsApp error 131026)"}
TOKEN_REJECTED = 190
NONCE_PREFIX = "aibox:"
SIGNATURE = re.compile(r"sha256=[0-9a-f]{64}")
MAX_BODY = 8 * 1024 * 1024
MAX_REMEMBERED = 10_000


class UnclearOutcome(TransientError):
    """The request went out and its answer was lost (`lost`), or was a 5xx: Meta may
    have acted on it."""

    def __init__(self, detail: str, lost: bool = True) -> None:
        self.lost = lost
        super().__init__(detail)


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
    confirm_wait_s: float = Field(
        5.0, gt=0, description="how long a send whose answer was lost waits for Meta's `sent` status"
    )


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
            max_body=MAX_BODY,
        )
        self._app_secret = b""
        self._verify_token = ""
        self._last_inbound: dict[str, str] = {}
        self._read: OrderedDict[str, None] = OrderedDict()
        self._background: set[asyncio.Task[None]] = set()
        # nonce -> the id Meta's `sent` status gave it; and who waits for one
        self._sent: OrderedDict[str, str] = OrderedDict()
        self._sent_waiters: dict[str, asyncio.Event] = {}
        self._unclear: OrderedDict[tuple[str, str | None, str], str] = OrderedDict()
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
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._set_health("stopped", "")

    async def send(self, chat_id: str, text: str, reply_to: str | None = None) -> str:
        """Sends `text`; see the module docstring for what happens when the answer is lost."""
        if reply_to and reply_to not in self._read:
            task = asyncio.get_running_loop().create_task(self._mark_read(reply_to))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        key = (chat_id, reply_to, text)
        nonce = self._unclear.get(key)
        if nonce is not None and nonce in self._sent:
            del self._unclear[key]
            log.info("an unclear whatsapp send had arrived after all; not sending it again")
            return self._sent[nonce]
        nonce = nonce or secrets.token_hex(8)
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": chat_id,
            "type": "text",
            "text": {"preview_url": False, "body": text},
            "biz_opaque_callback_data": NONCE_PREFIX + nonce,
        }
        if reply_to:
            body["context"] = {"message_id": reply_to}
        try:
            answer = await self._request("POST", f"{self.settings.phone_number_id}/messages", json=body)
        except UnclearOutcome as e:
            # A lost answer waits for the status; after a 5xx the message was most
            # likely not taken, and the retry still looks for a late status first.
            sent = await self._sent_status(nonce, self.settings.confirm_wait_s if e.lost else 0.0)
            if sent is not None:
                self._unclear.pop(key, None)
                log.info("whatsapp send arrived although its answer was lost; not sending it again")
                return sent
            _remember(self._unclear, key, nonce)
            raise TransientError(f"{e} (and Meta reported no such message)") from None
        self._unclear.pop(key, None)
        try:
            return str(answer["messages"][0]["id"])
        except (KeyError, IndexError, TypeError):
            # A 2xx means Meta took the message; only its id got lost.
            log.warning("the Graph API accepted a message but its answer had no id; counted as delivered")
            return self._sent.get(nonce) or f"unknown-id.{nonce}"

    async def _sent_status(self, nonce: str, wait: float) -> str | None:
        """The id Meta's `sent` status gave the message with `nonce`, waiting up to `wait`."""
        if nonce not in self._sent and wait > 0:
            event = self._sent_waiters.setdefault(nonce, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), wait)
            except asyncio.TimeoutError:
                pass
            finally:
                self._sent_waiters.pop(nonce, None)
        return self._sent.get(nonce)

    async def _mark_read(self, message_id: str) -> None:
        """Blue ticks for a message being answered, once, beside the answer's send: the
        typing indicator does it while the model works, but an answer faster than that,
        or one to a message a restart left pending (the connector never saw it arrive),
        would skip it."""
        _remember(self._read, message_id, None)
        body = {"messaging_product": "whatsapp", "status": "read", "message_id": message_id}
        try:
            await self._request("POST", f"{self.settings.phone_number_id}/messages", json=body)
        except ConnectorError as e:  # cosmetic: never fail a reply over it
            log.debug("whatsapp read receipt failed: %s", e)

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
        _remember(self._read, message_id, None)

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One Graph API call, its failures mapped onto the reply streamer's errors. A
        failure before the request went out is a `TransientError`, one after it an
        `UnclearOutcome`; a 2xx whose body is cut off or unreadable returns {}."""
        if self._client is None:
            raise ConnectorError("the WhatsApp connector is not started")
        try:
            async with self._slots:
                response = await self._client.send(self._client.build_request(method, path, **kwargs), stream=True)
                try:
                    await response.aread()
                except httpx.TransportError as e:
                    if not response.is_success:
                        raise UnclearOutcome(f"Graph API {response.status_code}, its answer cut off") from None
                    log.warning("Graph API answered %s but the body was cut off (%s)", response.status_code, type(e).__name__)
                    return {}
                finally:
                    await response.aclose()
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
            self._unreachable(e)
            raise TransientError(f"Graph API unreachable: {type(e).__name__}") from None
        except httpx.TransportError as e:
            self._unreachable(e)
            raise UnclearOutcome(f"Graph API connection lost after the request: {type(e).__name__}") from None
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        error = payload.get("error") if isinstance(payload, dict) else None
        if response.is_success and error is None:
            if self._health.state == "degraded":
                self._set_health("ok", f"webhook on {self.webhook_url}")
            return payload if isinstance(payload, dict) else {}
        code = error.get("code") if isinstance(error, dict) else None
        detail = redact(str(error.get("message") if isinstance(error, dict) else response.reason_phrase))
        if response.status_code == 429 or code in RATE_LIMIT_CODES:
            raise RateLimited(_retry_after(response), f"Graph API rate limit: {detail}")
        if code in UNDELIVERABLE_CODES:
            raise Undeliverable(UNDELIVERABLE_CODES[code])
        if code == TOKEN_REJECTED and self._health.state in ("ok", "degraded"):
            self._set_health("failed", f"connectors.whatsapp.access_token was rejected by the Graph API: {detail}")
        if response.status_code >= 500:
            raise UnclearOutcome(f"Graph API {response.status_code}: {detail}", lost=False)
        raise ConnectorError(f"Graph API {response.status_code}: {detail}")

    def _unreachable(self, e: Exception) -> None:
        if self._health.state == "ok":
            self._set_health("degraded", f"webhook on {self.webhook_url}; Graph API unreachable ({type(e).__name__})")

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
        signature = request.headers.get("X-Hub-Signature-256", "")
        if not SIGNATURE.fullmatch(signature):  # before reading a body nobody signed
            log.warning("whatsapp webhook post with a missing or malformed signature refused")
            return web.Response(status=401, text="bad signature")
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.Response(status=413, text="body too large")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=413, text="body too large")
        expected = "sha256=" + hmac.new(self._app_secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            log.warning("whatsapp webhook post with a wrong signature refused")
            return web.Response(status=401, text="bad signature")
        try:
            event = json.loads(body)
        except (ValueError, RecursionError):
            event = None
        if not isinstance(event, dict):
            log.warning("whatsapp webhook post is not a JSON object; refused")
            return web.Response(status=400, text="malformed event")
        post = _Post()
        post.read(event)
        for skipped in post.skipped:
            log.warning("whatsapp webhook: skipped %s", skipped)
        for nonce, message_id in post.sent:
            _remember(self._sent, nonce, message_id)
            waiter = self._sent_waiters.get(nonce)
            if waiter is not None:
                waiter.set()
        unstored = 0
        for message in post.messages:
            self._last_inbound[message.chat_id] = message.message_id
            if self._sink is not None:
                try:
                    await self._sink(message)
                except Exception as e:
                    unstored += 1
                    log.error("storing whatsapp message %s failed (%s)", message.message_id, type(e).__name__)
        if unstored:  # Meta posts it again; what was stored is recognised as a repeat
            return web.Response(status=503, text="could not store every message; post again")
        return web.Response(text="ok")


class _Post:
    """What one webhook post holds: the people's messages, Meta's `sent` statuses for our
    own messages (by nonce), and a note (without any text) for each part skipped."""

    def __init__(self) -> None:
        self.messages: list[InboundMessage] = []
        self.sent: list[tuple[str, str]] = []
        self.skipped: list[str] = []

    def read(self, event: dict[str, Any]) -> None:
        for e, entry in enumerate(_items(event.get("entry"), "entry", self.skipped)):
            for c, change in enumerate(_items(entry.get("changes"), f"entry {e} changes", self.skipped)):
                if change.get("field") != "messages":
                    continue
                value = change.get("value")
                if not isinstance(value, dict):
                    self.skipped.append(f"entry {e} change {c}: value is not an object")
                    continue
                contacts = _items(value.get("contacts"), "contacts", self.skipped)
                names = {contact.get("wa_id"): _name(contact) for contact in contacts}
                for status in _items(value.get("statuses"), "statuses", self.skipped):
                    self._status(status)
                for m, message in enumerate(_items(value.get("messages"), "messages", self.skipped)):
                    try:
                        inbound = _inbound(message, names)
                    except (TypeError, ValueError, AttributeError) as problem:
                        self.skipped.append(f"message {m} of entry {e}: {problem}")
                        continue
                    if inbound is not None:
                        self.messages.append(inbound)

    def _status(self, status: dict[str, Any]) -> None:
        data, message_id = status.get("biz_opaque_callback_data"), status.get("id")
        if not (isinstance(data, str) and data.startswith(NONCE_PREFIX) and isinstance(message_id, str)):
            return
        if status.get("status") == "failed":
            codes = [err.get("code") for err in _items(status.get("errors"), "errors", self.skipped)]
            log.warning("whatsapp reports message %s failed (codes %s)", message_id, codes)
        else:
            self.sent.append((data.removeprefix(NONCE_PREFIX), message_id))


def _items(value: Any, what: str, skipped: list[str]) -> list[dict[str, Any]]:
    """The objects in a list of the webhook; anything else is noted in `skipped`."""
    if value is None:
        return []
    if not isinstance(value, list):
        skipped.append(f"{what}: not a list")
        return []
    objects = [v for v in value if isinstance(v, dict)]
    if len(objects) < len(value):
        skipped.append(f"{what}: {len(value) - len(objects)} item(s) not an object")
    return objects


def _name(contact: dict[str, Any]) -> str | None:
    profile = contact.get("profile")
    name = profile.get("name") if isinstance(profile, dict) else None
    return name if isinstance(name, str) else None


def _inbound(m: dict[str, Any], names: dict[Any, str | None]) -> InboundMessage | None:
    """A person's message; None for what is not one (reactions, system notices)."""
    sender = m.get("from")
    message_id = m.get("id")
    kind = m.get("type")
    if not isinstance(sender, str) or not isinstance(message_id, str) or not isinstance(kind, str):
        raise ValueError("no sender, id or type")
    if kind in ("reaction", "system"):
        return None
    attachments: tuple[Attachment, ...] = ()
    if kind == "text":
        text = _part(m, "text").get("body")
    elif kind in MEDIA_KINDS:
        media = _part(m, kind)
        text = media.get("caption") or ""
        attachments = (Attachment(kind, _str(media.get("filename")), _str(media.get("mime_type")), None, _str(media.get("id"))),)
    elif kind == "button":
        text = _part(m, "button").get("text") or ""
    elif kind == "interactive":
        reply = _part(m, "interactive")
        picked = reply.get("button_reply") or reply.get("list_reply") or {}
        text = picked.get("title") or "" if isinstance(picked, dict) else None
    elif kind in OPAQUE_KINDS:
        text, attachments = "", (Attachment(kind),)
    else:
        return None
    if not isinstance(text, str):
        raise TypeError(f"message {message_id} has a text that is not a string")
    context = m.get("context")
    reply_to = context.get("id") if isinstance(context, dict) else None
    return InboundMessage(
        platform="whatsapp",
        chat_id=sender,
        sender_id=sender,
        message_id=message_id,
        text=text,
        sender_name=names.get(sender),
        attachments=attachments,
        reply_to=reply_to if isinstance(reply_to, str) else None,
        is_direct=True,
        mentions_bot=False,
    )


def _part(m: dict[str, Any], kind: str) -> dict[str, Any]:
    part = m.get(kind)
    if part is None:
        return {}
    if not isinstance(part, dict):
        raise TypeError(f"message {m.get('id')} has a {kind} that is not an object")
    return part


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _remember(memory: OrderedDict[Any, Any], key: Any, value: Any) -> None:
    memory[key] = value
    if len(memory) > MAX_REMEMBERED:
        memory.popitem(last=False)


def _retry_after(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("Retry-After", DEFAULT_RETRY_AFTER))
    except ValueError:
        return DEFAULT_RETRY_AFTER
