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

Slack only hears that an event arrived (the HTTP 200, or the Socket Mode ack) once the
gateway has stored the message in the inbox (`process_before_response`): Slack does not
redeliver an event it got a 200 for, so an ack sent before the store would lose the
message to a crash in between. Storing is one small write, well inside Slack's 3 s;
when it fails the ack is withheld and Slack delivers again.

Replies go out as section blocks (3,000 characters each, mrkdwn) with the same text as
the notification fallback; a 429 becomes `RateLimited` with Slack's Retry-After, so
the reply streamer waits exactly as long as Slack asked. A post whose outcome is unclear
(see `send`) is looked up by its nonce before it is posted again, and a token Slack
stops accepting while the box runs fails the connector's health with the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from urllib.parse import parse_qsl
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
MAX_SECTION = 3_000
MAX_BLOCKS = 50
# Token problems no retry can fix.
FATAL_ERRORS = {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired", "not_allowed_token_type"}
# Errors after which, by Slack's documentation, "it's possible some aspect of the
# operation succeeded": a post that got one may be in the channel.
UNCLEAR_ERRORS = {"internal_error", "fatal_error"}
# Slack refuses events older than this (and so do we: a replayed signed request).
MAX_EVENT_AGE_S = 300
# An event body larger than this cannot come from Slack: a message's text is at most
# 40,000 characters, and an event carries it twice (text and rich-text blocks); even
# with every character JSON-escaped (6 bytes) that is under 480 KB.
MAX_EVENT_BODY = 512 * 1024
# Posts whose outcome is unclear, remembered so that the retry looks them up first.
MAX_UNCLEAR = 1_000
SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")
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
        self._unclear: OrderedDict[tuple[str, str | None, str], tuple[str, str]] = OrderedDict()
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
            process_before_response=True,
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
            error = _api_error(e)
            if error in FATAL_ERRORS:
                key = "bot_token" if not self._bot_user_id else "app_token"
                self._fail(f"connectors.slack.{key} was rejected by Slack ({error})")
                return
            raise Reconnect(f"Slack answered {error or getattr(e.response, 'status_code', 'an unreadable body')}") from None
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
        listener = WebhookListener(
            s.events_host, s.events_port, [("POST", s.events_path, self._http_event)], max_body=MAX_EVENT_BODY
        )
        await listener.start()
        self._listener = listener
        self.events_url = listener.url(s.events_path)

    async def _http_event(self, request: web.Request) -> web.Response:
        """bolt's endpoint with the checks bolt leaves out: the signature headers and the
        body's size come first (nobody gets to make the box read a large body unsigned),
        and a body that is not an object, or an `event` that is not one, is answered
        without reaching bolt, which would fail on it with a 500 and a traceback."""
        assert self._app is not None and self._verifier is not None
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        signature = request.headers.get("X-Slack-Signature", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > MAX_EVENT_AGE_S or not SIGNATURE.fullmatch(signature):
            return _refusal(401, "missing, malformed or stale request signature")
        if request.content_length is not None and request.content_length > MAX_EVENT_BODY:
            return _refusal(413, f"event body over {MAX_EVENT_BODY} bytes")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _refusal(413, f"event body over {MAX_EVENT_BODY} bytes")
        try:
            valid = self._verifier.is_valid(raw, timestamp, signature)
        except UnicodeDecodeError:
            return _refusal(400, "event body is not UTF-8")
        if not valid:
            return _refusal(401, "invalid request signature")
        problem = _body_problem(raw, request.content_type)
        if problem == "event":
            # Slack would retry a non-200 three times and count it against the app.
            log.warning("slack event_callback whose event is not an object; ignored")
            return web.Response(status=200)
        if problem is not None:
            return _refusal(400, problem)
        return await to_aiohttp_response(await self._app.async_dispatch(await to_bolt_request(request)))

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
        subtype = event.get("subtype")
        if event.get("bot_id") or not (subtype is None or isinstance(subtype, str)) or subtype not in PEOPLE_SUBTYPES:
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
            attachments=tuple(_attachment(f) for f in _list(event.get("files")) if isinstance(f, dict)),
            reply_to=thread_ts if isinstance(thread_ts, str) and thread_ts != ts else None,
            is_direct=event.get("channel_type") == "im" or (event.get("channel_type") is None and channel.startswith("D")),
            mentions_bot=mentions_bot or event.get("type") == "app_mention",
        )
        assert self._sink is not None
        try:
            await self._sink(inbound)
        except Exception as e:
            # No ack then (bolt answers 500, Socket Mode sends none): Slack delivers again.
            log.error("storing slack message %s failed (%s); Slack will deliver it again", ts, type(e).__name__)
            raise ConnectorError("the message could not be stored") from None

    def _remember_thread(self, channel: str, ts: str, root: str) -> None:
        self._thread_roots[(channel, ts)] = root
        if len(self._thread_roots) > 10_000:
            self._thread_roots.popitem(last=False)

    # outbound

    async def send(self, chat_id: str, text: str, reply_to: str | None = None) -> str:
        """Posts `text`. Slack has no idempotency key, so the post carries a nonce in its
        message metadata. When its outcome is unclear (the connection dropped or timed out
        before the answer, the answer was cut off, a 5xx, or Slack's own "it's possible
        some aspect of the operation succeeded" errors), the chat is searched for the
        nonce; a post that did arrive is not repeated. If it is not found the call fails
        as transient, and the reply streamer's retry, which comes back here with the same
        text, searches again (the post may have landed late) before posting with the same
        nonce."""
        client = self._ready_client()
        thread_ts = None
        if reply_to is not None and not chat_id.startswith("D"):
            thread_ts = self._thread_roots.get((chat_id, reply_to), reply_to)
        key = (chat_id, thread_ts, text)
        earlier = self._unclear.get(key)
        if earlier is not None:
            found = await self._find_post(client, chat_id, thread_ts, *earlier)
            if found is not None:
                del self._unclear[key]
                log.info("an unclear slack post had arrived after all; not posting it again")
                return found
        nonce, since = earlier or (secrets.token_hex(8), f"{time.time() - 600:.6f}")
        try:
            response = await client.chat_postMessage(
                channel=chat_id,
                thread_ts=thread_ts,
                unfurl_links=False,
                unfurl_media=False,
                metadata={"event_type": NONCE_EVENT, "event_payload": {"nonce": nonce}},
                **_content(text),
            )
            self._unclear.pop(key, None)
            return str(response["ts"])
        except Exception as e:
            failure = self._mapped(e, "chat.postMessage")
            if not _unclear_outcome(e):
                self._unclear.pop(key, None)
                raise failure from None
        found = await self._find_post(client, chat_id, thread_ts, nonce, since)
        if found is not None:
            self._unclear.pop(key, None)
            log.info("slack post arrived although its answer was lost; not posting it again")
            return found
        self._unclear[key] = (nonce, since)
        if len(self._unclear) > MAX_UNCLEAR:
            self._unclear.popitem(last=False)
        raise TransientError(f"{failure} (and the post is not in the chat)") from None

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
            log.warning("cannot check whether an unclear slack post arrived (%s); posting again", self._mapped(e, "history"))
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
            raise self._mapped(e, "chat.update") from None

    async def typing(self, chat_id: str) -> None:
        """Slack gives bot tokens no typing indicator (outside assistant threads), so there
        is nothing to send; the first words of the streamed reply show up instead."""

    def _ready_client(self) -> AsyncWebClient:
        if self._client is None:
            raise TransientError("slack connector is not started")
        return self._client

    def _mapped(self, e: Exception, method: str) -> ConnectorError:
        """`_mapped`, and a token Slack stopped accepting (revoked, expired, rotated)
        fails the connector's health: every later call would fail the same way."""
        failure = _mapped(e, method)
        error = _api_error(e)
        if error in FATAL_ERRORS:
            self._set_health("failed", f"connectors.slack.bot_token was rejected by Slack ({error}) on {method}")
        return failure


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


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _attachment(f: dict[str, Any]) -> Attachment:
    mime = f.get("mimetype") if isinstance(f.get("mimetype"), str) else None
    head = mime.split("/", 1)[0] if mime else ""
    return Attachment(
        kind=head if head in ("image", "audio", "video") else "file",
        name=f.get("name"),
        mime_type=mime,
        size=f.get("size"),
        ref=f.get("id"),
    )


def _refusal(status: int, problem: str) -> web.Response:
    return web.json_response({"error": problem}, status=status)


def _body_problem(raw: bytes, content_type: str) -> str | None:
    """What is wrong with a signed event body, if anything; "event" for an
    `event_callback` whose event is not an object."""
    try:
        if content_type == "application/x-www-form-urlencoded":
            form = dict(parse_qsl(raw.decode(), keep_blank_values=True))
            body = json.loads(form["payload"]) if "payload" in form else form
        else:
            body = json.loads(raw)
    except (ValueError, RecursionError):
        return "event body is not JSON"
    if not isinstance(body, dict):
        return "event body is not a JSON object"
    if "event" in body and not isinstance(body["event"], dict):
        return "event"
    return None


def _api_error(e: Exception) -> str | None:
    """Slack's `error` code in a refused call, when its answer could be read."""
    if isinstance(e, SlackApiError) and isinstance(getattr(e.response, "data", None), dict):
        error = e.response.data.get("error")
        return error if isinstance(error, str) else None
    return None


def _unclear_outcome(e: Exception) -> bool:
    """Whether Slack may have stored a post that failed this way."""
    if isinstance(e, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError, asyncio.TimeoutError)):
        return True
    if isinstance(e, SlackApiError):
        status = getattr(e.response, "status_code", None)
        if not isinstance(status, int):  # the answer came but its body could not be read
            return True
        return status >= 500 or _api_error(e) in UNCLEAR_ERRORS
    return False


def _mapped(e: Exception, method: str) -> ConnectorError:
    """slack-sdk's exceptions as the reply streamer's three kinds."""
    if isinstance(e, ConnectorError):
        return e
    if isinstance(e, SlackApiError):
        status = getattr(e.response, "status_code", None) or getattr(e.response, "status", 0)
        error = _api_error(e)
        if not isinstance(getattr(e.response, "data", None), dict):
            return TransientError(f"slack {method}: the answer (HTTP {status}) could not be read")
        if status == 429 or error == "ratelimited":
            retry_after = _retry_after(e.response.headers)
            return RateLimited(retry_after, f"slack {method}: rate limited for {retry_after:g} s")
        if status >= 500 or error in UNCLEAR_ERRORS:
            return TransientError(f"slack {method}: server error {error or status}")
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
