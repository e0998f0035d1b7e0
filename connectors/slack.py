"""Slack through bolt-python (async) and slack-sdk: Socket Mode, or the HTTP Events API.

Socket Mode (the default) needs no public address: an app-level token opens a
websocket that Slack pushes events into. The HTTP mode serves bolt's own aiohttp
endpoint instead, where bolt checks each request's v0 HMAC-SHA256 signature and
refuses timestamps more than five minutes off. Either way bolt drops the bot's own
events, and this connector drops other bots' (no reply loops).

slack-sdk's Socket Mode client would reconnect a lost connection at a fixed interval;
this connector turns that off and reconnects itself with exponential backoff and
jitter (connectors/reconnect.py), so a Slack outage is not met by every box in
lockstep (a refresh that Slack asks for with a `disconnect` message is still
slack-sdk's to do). A rejected token is final: health() says which key and the daemon
carries on.

Replies go out as section blocks (3,000 characters each, mrkdwn) with the same text as
the notification fallback; a 429 becomes `RateLimited` with Slack's Retry-After, so
the reply streamer waits exactly as long as Slack asked.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections import OrderedDict
from typing import Any, Literal

import aiohttp
from aiohttp import web
from pydantic import Field, ValidationInfo, field_validator
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from aibox.secrets import Secret, SecretError
from connectors.base import Attachment, Connector, InboundMessage, MessageSink
from connectors.chunking import split_text
from connectors.errors import ConnectorError, RateLimited, TransientError
from connectors.reconnect import Reconnect, Reconnecting
from connectors.settings import ConnectorSettings
from connectors.webhook import WebhookListener

log = logging.getLogger(__name__)

SLACK_API = "https://slack.com/api/"
NONCE_EVENT = "aibox_reply"
SEND_ATTEMPTS = 3
MAX_SECTION = 3_000
MAX_BLOCKS = 50
# Token problems no retry can fix.
FATAL_ERRORS = {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired", "not_allowed_token_type"}
# Message subtypes that are people writing; all others (edits, joins, bot posts) are not.
PEOPLE_SUBTYPES = {None, "file_share", "thread_broadcast"}


class SlackSettings(ConnectorSettings):
    mode: Literal["socket", "http"] = Field("socket", description="Socket Mode, or the HTTP Events API")
    bot_token: Secret = Field(description="Bot User OAuth Token (xoxb-...)")
    app_token: Secret | None = Field(None, validate_default=True, description="app-level token (xapp-...), Socket Mode")
    signing_secret: Secret | None = Field(None, validate_default=True, description="Signing Secret, HTTP mode")
    api_base: str = Field(SLACK_API, description="Web API base URL; only tests change it")
    events_host: str = Field("127.0.0.1", description="where the HTTP mode listens (put a TLS proxy in front)")
    events_port: int = Field(3000, ge=0, le=65535, description="HTTP mode port; 0 picks a free one")
    events_path: str = Field("/slack/events", description="the Request URL path set in the Slack app")
    ping_interval_s: float = Field(10.0, gt=0, description="Socket Mode keep-alive ping interval")
    start_timeout_s: float = Field(30.0, gt=0, description="how long start() waits for Slack")
    reconnect_max_delay_s: float = Field(60.0, gt=0, description="longest wait between reconnects")

    @field_validator("app_token")
    @classmethod
    def _app_token_for_socket_mode(cls, v: Secret | None, info: ValidationInfo) -> Secret | None:
        if v is None and info.data.get("mode", "socket") == "socket":
            raise ValueError("Socket Mode needs an app-level token (xapp-...); or set mode = \"http\"")
        return v

    @field_validator("signing_secret")
    @classmethod
    def _secret_for_http_mode(cls, v: Secret | None, info: ValidationInfo) -> Secret | None:
        if v is None and info.data.get("mode") == "http":
            raise ValueError("the HTTP Events API needs the app's signing secret")
        return v


class SlackConnector(Connector):
    platform = "slack"
    max_text = 40_000
    settings_model = SlackSettings

    def __init__(self, settings: SlackSettings) -> None:
        super().__init__()
        self.settings = settings
        self._sink: MessageSink | None = None
        self._client: AsyncWebClient | None = None
        self._http: aiohttp.ClientSession | None = None
        self._app: AsyncApp | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._listener: WebhookListener | None = None
        self._verifier: SignatureVerifier | None = None
        self._bot_user_id = ""
        self._thread_roots: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._sessions = Reconnecting(self, max_delay=settings.reconnect_max_delay_s)
        self.events_url: str | None = None

    # lifecycle

    async def start(self, sink: MessageSink) -> None:
        self._sink = sink
        self._set_health("starting", "connecting to Slack")
        try:
            bot_token = self.settings.bot_token.get()
            app_token = self.settings.app_token.get() if self.settings.mode == "socket" and self.settings.app_token else None
            secret = self.settings.signing_secret.get() if self.settings.signing_secret else None
        except SecretError as e:
            self._set_health("failed", f"connectors.slack: {e}")
            return
        # One HTTP session for every call (slack-sdk would open a connection per call),
        # and no automatic retries: a resent post could appear twice (see `send`).
        self._http = aiohttp.ClientSession()
        self._client = AsyncWebClient(
            token=bot_token, base_url=self.settings.api_base, session=self._http, retry_handlers=[]
        )
        self._verifier = SignatureVerifier(secret) if secret else None
        self._app = AsyncApp(
            client=self._client,
            signing_secret=secret or "",
            request_verification_enabled=self.settings.mode == "http",
            process_before_response=False,
        )
        self._app.event("message")(self._on_event)
        self._app.event("app_mention")(self._on_event)
        self._sessions.start(lambda: self._session(app_token), name="slack-connector")
        wait = self.settings.start_timeout_s
        if not await self._sessions.wait_settled(wait) and self._health.state == "starting":
            self._set_health("degraded", f"no answer from Slack after {wait:g} s; still trying")

    async def stop(self) -> None:
        await self._sessions.stop()
        if self._socket is not None:
            await self._socket.close_async()
            self._socket = None
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._set_health("stopped", "")

    async def _session(self, app_token: str | None) -> None:
        """Authenticates, then holds the event channel until it is lost (the next
        session follows) or a token is refused (the end)."""
        try:
            if not self._bot_user_id:
                await self._authenticate()
            if self.settings.mode == "http":
                await self._serve_http()
                self._connected("listening for Slack events at " + (self.events_url or ""))
                return
            assert app_token is not None
            await self._connect_socket(app_token)
            self._connected("Socket Mode connected")
            self._sessions.reset()
            while await self._socket_alive():
                await asyncio.sleep(min(1.0, self.settings.ping_interval_s))
        except SlackApiError as e:
            error = e.response.get("error") if isinstance(e.response.data, dict) else None
            if error in FATAL_ERRORS:
                key = "bot_token" if not self._bot_user_id else "app_token"
                self._fail(f"connectors.slack.{key} was rejected by Slack ({error})")
                return
            raise Reconnect(f"Slack answered {error or e.response.status_code}") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise Reconnect(f"cannot reach Slack ({type(e).__name__})") from None
        except OSError as e:
            where = "listen for events" if self.settings.mode == "http" else "reach Slack"
            raise Reconnect(f"cannot {where}: {e.strerror or e}") from None
        except Exception as e:  # whatever else goes wrong, keep the connector alive and say so
            log.exception("slack connector error")
            raise Reconnect(f"{type(e).__name__}: {e}") from None
        raise Reconnect("Socket Mode connection lost")

    async def _authenticate(self) -> None:
        assert self._client is not None
        auth = await self._client.auth_test()
        self._bot_user_id = str(auth["user_id"])

    async def _connect_socket(self, app_token: str) -> None:
        if self._socket is None:
            assert self._app is not None and self._client is not None
            self._socket = AsyncSocketModeHandler(
                self._app, app_token, web_client=self._client, ping_interval=self.settings.ping_interval_s
            )
            # We reconnect (with backoff and jitter); slack-sdk would retry at a fixed pace.
            self._socket.client.default_auto_reconnect_enabled = False
            self._socket.client.auto_reconnect_enabled = False
        client = self._socket.client
        client.wss_uri = await client.issue_new_wss_url()
        await asyncio.wait_for(client.connect(), self.settings.start_timeout_s)

    async def _socket_alive(self) -> bool:
        """Connected, or slack-sdk is switching to a new URL because Slack asked it to
        (a `disconnect` message); that switch holds its connect lock."""
        if self._socket is None:
            return False
        client = self._socket.client
        return client.connect_operation_lock.locked() or await client.is_connected()

    async def _serve_http(self) -> None:
        s = self.settings
        listener = WebhookListener(s.events_host, s.events_port, [("POST", s.events_path, self._http_event)])
        await listener.start()
        self._listener = listener
        self.events_url = listener.url(s.events_path)

    async def _http_event(self, request: web.Request) -> web.Response:
        """bolt's endpoint, but checking the signature before the body is parsed: bolt
        parses first, so a malformed body would otherwise end in a 500 and a traceback."""
        assert self._app is not None and self._verifier is not None
        raw = await request.read()
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        if not timestamp.isdigit() or not self._verifier.is_valid(raw, timestamp, request.headers.get("X-Slack-Signature")):
            return web.json_response({"error": "invalid request signature or timestamp"}, status=401)
        try:
            bolt_request = await to_bolt_request(request)
        except ValueError:
            return web.json_response({"error": "malformed event body"}, status=400)
        return await to_aiohttp_response(await self._app.async_dispatch(bolt_request))

    def _connected(self, detail: str) -> None:
        self._set_health("ok", detail)
        self._sessions.settle()

    def _fail(self, detail: str) -> None:
        self._set_health("failed", detail)
        self._sessions.settle()

    # inbound

    async def _on_event(self, event: Any) -> None:
        """Both `message` and `app_mention` land here; a mention in a channel can come as
        both, and the gateway drops the second by its key (channel and ts)."""
        if not isinstance(event, dict):
            log.warning("slack event is not an object; ignored")
            return
        if event.get("bot_id") or event.get("subtype") not in PEOPLE_SUBTYPES:
            return
        channel, user, ts = event.get("channel"), event.get("user"), event.get("ts")
        text = event.get("text")
        if not (isinstance(channel, str) and isinstance(user, str) and isinstance(ts, str) and isinstance(text, str)):
            log.warning("slack message event without channel, user, ts or text; ignored")
            return
        if user == self._bot_user_id:
            return
        mention = f"<@{self._bot_user_id}>"
        mentions_bot = bool(self._bot_user_id) and mention in text
        if mentions_bot:
            text = text.replace(mention, "").strip()
        thread_ts = event.get("thread_ts")
        if isinstance(thread_ts, str):
            self._remember_thread(channel, ts, thread_ts)
        inbound = InboundMessage(
            platform=self.platform,
            chat_id=channel,
            sender_id=user,
            message_id=ts,
            text=_unescape(text),
            attachments=tuple(_attachment(f) for f in event.get("files") or [] if isinstance(f, dict)),
            reply_to=thread_ts if isinstance(thread_ts, str) and thread_ts != ts else None,
            is_direct=event.get("channel_type") == "im" or (event.get("channel_type") is None and channel.startswith("D")),
            mentions_bot=mentions_bot or event.get("type") == "app_mention",
        )
        assert self._sink is not None
        try:
            await self._sink(inbound)
        except Exception:
            log.exception("handing a slack message to the daemon failed")

    def _remember_thread(self, channel: str, ts: str, root: str) -> None:
        self._thread_roots[(channel, ts)] = root
        if len(self._thread_roots) > 10_000:
            self._thread_roots.popitem(last=False)

    # outbound

    async def send(self, chat_id: str, text: str, reply_to: str | None = None) -> str:
        """Posts `text`. Slack has no idempotency key, so the post carries a nonce in its
        message metadata; when the connection drops before the answer, the chat is
        searched for that nonce before posting again, and a post that did arrive is not
        repeated."""
        client = self._ready_client()
        thread_ts = None
        if reply_to is not None and not chat_id.startswith("D"):
            thread_ts = self._thread_roots.get((chat_id, reply_to), reply_to)
        nonce = secrets.token_hex(8)
        since = f"{time.time() - 600:.6f}"
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                response = await client.chat_postMessage(
                    channel=chat_id,
                    thread_ts=thread_ts,
                    unfurl_links=False,
                    unfurl_media=False,
                    metadata={"event_type": NONCE_EVENT, "event_payload": {"nonce": nonce}},
                    **_content(text),
                )
                return str(response["ts"])
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
                found = await self._find_post(client, chat_id, thread_ts, nonce, since)
                if found is not None:
                    log.info("slack post arrived although its connection dropped; not posting it again")
                    return found
                if attempt == SEND_ATTEMPTS:
                    raise TransientError(f"slack chat.postMessage: {type(e).__name__}") from None
            except Exception as e:
                raise _mapped(e, "chat.postMessage") from None
        raise AssertionError("unreachable")

    async def _find_post(
        self, client: AsyncWebClient, chat_id: str, thread_ts: str | None, nonce: str, since: str
    ) -> str | None:
        """The ts of our post carrying `nonce`, if Slack has it (needs the history scopes)."""
        try:
            if thread_ts is not None:
                page = await client.conversations_replies(
                    channel=chat_id, ts=thread_ts, oldest=since, include_all_metadata=True, limit=200
                )
            else:
                page = await client.conversations_history(
                    channel=chat_id, oldest=since, include_all_metadata=True, limit=200
                )
        except Exception as e:
            log.warning("cannot check whether a dropped slack post arrived (%s); posting again", _mapped(e, "history"))
            return None
        for message in page.get("messages") or []:
            metadata = message.get("metadata") or {}
            if metadata.get("event_type") == NONCE_EVENT and (metadata.get("event_payload") or {}).get("nonce") == nonce:
                return str(message["ts"])
        return None

    async def edit(self, chat_id: str, message_id: str, text: str) -> None:
        client = self._ready_client()
        try:
            await client.chat_update(channel=chat_id, ts=message_id, **_content(text))
        except Exception as e:
            raise _mapped(e, "chat.update") from None

    async def typing(self, chat_id: str) -> None:
        """Slack gives bot tokens no typing indicator (outside assistant threads), so there
        is nothing to send; the first words of the streamed reply show up instead."""

    def _ready_client(self) -> AsyncWebClient:
        if self._client is None:
            raise TransientError("slack connector is not started")
        return self._client


def _escape(text: str) -> str:
    """Slack reads &, < and > as markup; these three are all it wants escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _content(text: str) -> dict[str, Any]:
    """The message as section blocks of at most 3,000 characters, plus the plain text
    Slack shows in notifications."""
    escaped = _escape(text)
    sections = split_text(escaped, MAX_SECTION) or [escaped]
    if len(sections) > MAX_BLOCKS:
        raise ConnectorError(f"slack message needs {len(sections)} sections, more than Slack's {MAX_BLOCKS}")
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": s}} for s in sections]
    return {"text": escaped[: SlackConnector.max_text], "blocks": blocks}


def _attachment(f: dict[str, Any]) -> Attachment:
    mime = f.get("mimetype") or None
    head = mime.split("/", 1)[0] if mime else ""
    return Attachment(
        kind=head if head in ("image", "audio", "video") else "file",
        name=f.get("name"),
        mime_type=mime,
        size=f.get("size"),
        ref=f.get("id"),
    )


def _mapped(e: Exception, method: str) -> ConnectorError:
    """slack-sdk's exceptions as the reply streamer's three kinds."""
    if isinstance(e, ConnectorError):
        return e
    if isinstance(e, SlackApiError):
        status = e.response.status_code
        error = e.response.get("error") if isinstance(e.response.data, dict) else None
        if status == 429 or error == "ratelimited":
            retry_after = _retry_after(e.response.headers)
            return RateLimited(retry_after, f"slack {method}: rate limited for {retry_after:g} s")
        if status >= 500:
            return TransientError(f"slack {method}: server error {status}")
        return ConnectorError(f"slack {method}: {error or f'HTTP {status}'}")
    if isinstance(e, (aiohttp.ClientError, OSError, asyncio.TimeoutError)):
        return TransientError(f"slack {method}: {type(e).__name__}: {e}")
    return ConnectorError(f"slack {method}: {type(e).__name__}: {e}")


def _retry_after(headers: Any) -> float:
    for name, value in (headers or {}).items():
        if name.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) else value
            if re.fullmatch(r"\s*\d+(\.\d+)?\s*", str(raw)):
                return float(raw)
    return 1.0
