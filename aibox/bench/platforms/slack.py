"""A local Slack: the Web API, a Socket Mode websocket and signed Events API posts, on 127.0.0.1.

It speaks what slack-sdk 3.4x and bolt-python 1.30 send and expect (read from their
sources): `POST /api/<method>` with a JSON or form body and the token as a Bearer header,
answering `{"ok": ...}` with HTTP 200, or 429 with `Retry-After` and
`{"ok": false, "error": "ratelimited"}`; `conversations.history` and
`conversations.replies` (GET, with message metadata on request); `auth.test` (both `user_id` and `bot_id`, which
bolt needs to ignore the bot's own events), `apps.connections.open` (an app-level
token; answers a `ws://` URL), `chat.postMessage` and `chat.update` (section blocks over
3,000 characters are refused as `invalid_blocks`; text over 40,000 characters is
truncated, as Slack does, and the outbox marks it). The websocket says `hello`, pushes
`events_api` envelopes and expects `{"envelope_id"}` acks; envelopes not acked when a
connection ends are pushed again, with `retry_attempt` raised, on the next one.
Messages the bot posts come back as `message` events, as they do from Slack.

Faults for the unclear outcomes Slack documents: a post Slack stored whose answer was
then lost (`drop="after"`), cut off after the status line (`truncate=True`: the 200's
Content-Length promises more than arrives, as when a proxy dies mid-answer), or that
took longer than the client waits (`delay`); and, on the route `METHOD.stored`, an error
answered after the message was stored (`status=500`, or `status=200` for Slack's
`internal_error`, "it's possible some aspect of the operation succeeded").

API for tests and `aibox bench pipeline`:

    async with FakeSlack() as server:
        server.api_base                                 # the Web API base URL for the connector
        server.bot_token, server.app_token, server.signing_secret, server.bot_user_id
        await server.wait_connected()                   # a Socket Mode client is connected
        ts = await server.user_says("D1", "U1", "hi")   # a DM, pushed over Socket Mode
        await server.user_says("C1", "U1", "hi", channel_type="channel", mention=True)
        server.outbox                                   # an outbox.Outbox: what the bot posted
        server.faults.add("chat.update", status=429, retry_after=1)   # routes are Web API method names
        server.faults.add("chat.postMessage", truncate=True)  # stored, then a 200 cut off mid-body
        server.faults.add("chat.postMessage", delay=20)       # stored 20 s late (past the client's time-out)
        server.faults.add("chat.postMessage.stored", status=500)  # stored, then answered 500
        server.bot_token = "xoxb-rotated"                # the bot's token revoked: calls get invalid_auth
        await server.drop_socket()                      # cut the websocket without a close frame
        await server.ask_to_reconnect()                 # {"type": "disconnect"}, as Slack sends
        await server.send_raw("{not json")              # a malformed frame
        await server.redeliver_last()                   # Slack's retry of an event it thinks was lost
        body = server.event_body("D1", "U1", "hi")      # an event_callback, e.g. for an HTTP post
        status, text = await post_signed(url, body, server.signing_secret)   # Events API over HTTP
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import WSMsgType, web

from aibox.bench.platforms.outbox import FaultPlan, Outbox

MAX_TEXT = 40_000
MAX_SECTION = 3_000
MAX_BLOCKS = 50
DROP_AFTER = web.RequestKey("slack_drop_after", bool)


class FakeSlack:
    def __init__(
        self,
        bot_token: str = "xoxb-fake-bot-token",
        app_token: str = "xapp-fake-app-token",
        signing_secret: str = "fake-signing-secret",
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.team_id = "T0000FAKE"
        self.app_id = "A0000FAKE"
        self.bot_user_id = "U0000BOT1"
        self.bot_id = "B0000BOT1"
        self.outbox = Outbox()
        self.faults = FaultPlan()
        self.truncated: list[str] = []
        self._metadata: dict[tuple[str, str], dict[str, Any] | None] = {}
        self.connections_opened = 0
        self.acked: list[str] = []
        self._last_ts = 0.0
        self._tickets: set[str] = set()
        self._unacked: dict[str, dict[str, Any]] = {}
        self._last_user_event: dict[str, Any] | None = None
        self._live: web.WebSocketResponse | None = None
        self._live_transport: asyncio.BaseTransport | None = None
        self._connected = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> FakeSlack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_get("/link", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._live is not None:
            await self._live.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    # what a test does

    async def wait_connected(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    def next_ts(self) -> str:
        """A Slack message ts: epoch seconds with microseconds, unique and increasing."""
        self._last_ts = max(round(time.time(), 6), round(self._last_ts + 0.000001, 6))
        return f"{self._last_ts:.6f}"

    def event_body(
        self,
        channel: str,
        user: str,
        text: str,
        *,
        channel_type: str = "im",
        mention: bool = False,
        thread_ts: str | None = None,
        bot_id: str | None = None,
        subtype: str | None = None,
        ts: str | None = None,
        event_type: str = "message",
        files: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """An `event_callback` carrying a `message` (or `app_mention`) event, as Slack sends it."""
        ts = ts or self.next_ts()
        text = html.escape(text, quote=False)
        if mention:
            text = f"<@{self.bot_user_id}> {text}"
        event: dict[str, Any] = {
            "type": event_type,
            "channel": channel,
            "user": user,
            "text": text,
            "ts": ts,
            "event_ts": ts,
            "team": self.team_id,
        }
        if event_type == "message":
            event["channel_type"] = channel_type
        if bot_id is None and subtype is None:
            event["client_msg_id"] = str(uuid.uuid4())
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
        if bot_id is not None:
            event["bot_id"] = bot_id
        if subtype is not None:
            event["subtype"] = subtype
        if files:
            event["files"] = files
            event.setdefault("subtype", "file_share")
        return {
            "token": "legacy-verification-token",
            "team_id": self.team_id,
            "api_app_id": self.app_id,
            "event": event,
            "type": "event_callback",
            "event_id": f"Ev{uuid.uuid4().hex[:10].upper()}",
            "event_time": int(float(ts)),
            "authorizations": [
                {"enterprise_id": None, "team_id": self.team_id, "user_id": self.bot_user_id, "is_bot": True}
            ],
            "is_ext_shared_channel": False,
        }

    async def user_says(self, channel: str, user: str, text: str, **kwargs: Any) -> str:
        """Pushes a message event over Socket Mode (held until a client connects); returns its ts."""
        body = self.event_body(channel, user, text, **kwargs)
        self._last_user_event = body
        await self.push(body)
        return body["event"]["ts"]

    async def push(self, payload: dict[str, Any], retry_attempt: int = 0) -> str:
        envelope = {
            "envelope_id": str(uuid.uuid4()),
            "type": "events_api",
            "payload": payload,
            "accepts_response_payload": False,
            "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
        }
        self._unacked[envelope["envelope_id"]] = envelope
        await self._deliver(envelope)
        return envelope["envelope_id"]

    async def redeliver_last(self) -> None:
        """Slack's retry of the last `user_says` event (same event, new envelope), as
        after an ack that Slack did not get."""
        assert self._last_user_event is not None
        await self.push(self._last_user_event, retry_attempt=1)

    async def send_raw(self, text: str) -> None:
        if self._live is None:
            raise RuntimeError("no Socket Mode client is connected")
        await self._live.send_str(text)

    async def drop_socket(self) -> None:
        """Cuts the live websocket as a network failure would: no close frame."""
        transport = self._live_transport
        self._live = None
        self._live_transport = None
        self._connected.clear()
        if transport is not None:
            transport.abort()  # type: ignore[attr-defined]

    async def ask_to_reconnect(self) -> None:
        if self._live is not None:
            await self._live.send_json({"type": "disconnect", "reason": "refresh_requested", "debug_info": {"host": "fake"}})

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    # Web API

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        try:
            params = await _params(request)
        except ValueError as e:
            return web.json_response({"ok": False, "error": "invalid_form_data", "detail": str(e)})
        token = request.headers.get("Authorization", "").removeprefix("Bearer ") or str(params.get("token", ""))
        wanted = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != wanted:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        fault = self.faults.take(method)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.kind == "drop_before":
            request.transport.abort()  # type: ignore[union-attr]
            return web.Response(status=500)
        if fault is not None and fault.kind == "status":
            if fault.status == 429:
                headers = {"Retry-After": str(int(fault.retry_after))}
                return web.json_response({"ok": False, "error": "ratelimited"}, status=429, headers=headers)
            return web.Response(status=fault.status, text="<html>server error</html>", content_type="text/html")
        handler = {
            "auth.test": self._auth_test,
            "apps.connections.open": self._connections_open,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "conversations.history": self._history,
            "conversations.replies": self._history,
        }.get(method)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"}, status=404)
        response = await handler(params)
        if fault is not None and fault.kind == "drop_after":
            request.transport.abort()  # type: ignore[union-attr]
        if fault is not None and fault.kind == "truncated":
            return await _cut_off(request, response)
        stored = self.faults.take(f"{method}.stored") if response.status == 200 else None
        if stored is not None and stored.kind == "status":
            return web.json_response({"ok": False, "error": "internal_error"}, status=stored.status)
        return response

    async def _auth_test(self, params: dict[str, Any]) -> web.Response:
        return web.json_response(
            {
                "ok": True,
                "url": "https://fake.slack.com/",
                "team": "Fake Team",
                "user": "aibox",
                "team_id": self.team_id,
                "user_id": self.bot_user_id,
                "bot_id": self.bot_id,
                "is_enterprise_install": False,
            }
        )

    async def _connections_open(self, params: dict[str, Any]) -> web.Response:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        return web.json_response({"ok": True, "url": f"ws://127.0.0.1:{self.port}/link?ticket={ticket}"})

    async def _post_message(self, params: dict[str, Any]) -> web.Response:
        channel = params.get("channel")
        if not channel:
            return web.json_response({"ok": False, "error": "channel_not_found"})
        shown, problem = self._shown(params)
        if problem:
            return web.json_response({"ok": False, "error": problem})
        ts = self.next_ts()
        self.outbox.post(channel, ts, shown, reply_to=params.get("thread_ts"))
        metadata = params.get("metadata")
        self._metadata[(channel, ts)] = json.loads(metadata) if isinstance(metadata, str) else metadata
        message = {"type": "message", "user": self.bot_user_id, "bot_id": self.bot_id, "app_id": self.app_id,
                   "text": params.get("text", ""), "ts": ts, "team": self.team_id}
        await self.push(self.event_body(channel, self.bot_user_id, shown, bot_id=self.bot_id, ts=ts))
        return web.json_response({"ok": True, "channel": channel, "ts": ts, "message": message})

    async def _update(self, params: dict[str, Any]) -> web.Response:
        channel, ts = params.get("channel"), params.get("ts")
        if not channel or not ts or self.outbox.get(channel, ts) is None:
            return web.json_response({"ok": False, "error": "message_not_found"})
        shown, problem = self._shown(params)
        if problem:
            return web.json_response({"ok": False, "error": problem})
        self.outbox.edit(channel, ts, shown)
        return web.json_response({"ok": True, "channel": channel, "ts": ts, "text": params.get("text", "")})

    async def _history(self, params: dict[str, Any]) -> web.Response:
        """conversations.history (top-level messages) or .replies (a thread, with `ts`),
        newest first, with metadata only when `include_all_metadata` is asked for."""
        channel, oldest = params.get("channel"), float(params.get("oldest") or 0)
        thread = params.get("ts")
        with_metadata = str(params.get("include_all_metadata")).lower() in ("1", "true")
        found = []
        for m in self.outbox.in_chat(channel or ""):
            in_scope = (m.reply_to == thread or m.message_id == thread) if thread else m.reply_to is None
            if in_scope and float(m.message_id) > oldest:
                entry: dict[str, Any] = {"type": "message", "user": self.bot_user_id, "bot_id": self.bot_id,
                                         "text": html.escape(m.text, quote=False), "ts": m.message_id}
                metadata = self._metadata.get((m.chat_id, m.message_id))
                if with_metadata and metadata:
                    entry["metadata"] = metadata
                found.append(entry)
        return web.json_response({"ok": True, "messages": found[::-1], "has_more": False})

    def _shown(self, params: dict[str, Any]) -> tuple[str, str | None]:
        """What a person sees: the section blocks when there are any, else the text."""
        text = params.get("text") or ""
        blocks = params.get("blocks") or []
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        if not text and not blocks:
            return "", "no_text"
        if len(blocks) > MAX_BLOCKS:
            return "", "invalid_blocks"
        sections = []
        for block in blocks:
            body = (block.get("text") or {}).get("text", "") if block.get("type") == "section" else ""
            if not body or len(body) > MAX_SECTION:
                return "", "invalid_blocks"
            sections.append(body)
        if len(text) > MAX_TEXT:
            self.truncated.append(text)
            text = text[:MAX_TEXT]
        return html.unescape("\n".join(sections) if sections else text), None

    # Socket Mode

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.Response(status=401, text="invalid ticket")
        self._tickets.discard(ticket)
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        self.connections_opened += 1
        if self._live is not None:
            await self._live.close()
        self._live, self._live_transport = ws, request.transport
        await ws.send_json(
            {"type": "hello", "num_connections": 1, "debug_info": {"host": "fake", "approximate_connection_time": 18060},
             "connection_info": {"app_id": self.app_id}}
        )
        for envelope in list(self._unacked.values()):
            await self._deliver(envelope, retry=True)
        self._connected.set()
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    ack = json.loads(msg.data)
                except json.JSONDecodeError:
                    continue
                envelope_id = ack.get("envelope_id") if isinstance(ack, dict) else None
                if envelope_id and self._unacked.pop(envelope_id, None) is not None:
                    self.acked.append(envelope_id)
        finally:
            if self._live is ws:
                self._live = None
                self._live_transport = None
                self._connected.clear()
        return ws

    async def _deliver(self, envelope: dict[str, Any], retry: bool = False) -> None:
        ws = self._live
        if ws is None or ws.closed:
            return
        if retry:
            envelope["retry_attempt"] += 1
            envelope["retry_reason"] = "timeout"
        try:
            await ws.send_str(json.dumps(envelope))
        except (ConnectionError, RuntimeError):
            pass


async def _cut_off(request: web.Request, response: web.Response) -> web.StreamResponse:
    """Sends `response`'s status and headers and half its body, then closes the connection."""
    body = response.body if isinstance(response.body, bytes) else b""
    cut = web.StreamResponse(status=response.status, headers={"Content-Type": "application/json"})
    cut.content_length = len(body)
    await cut.prepare(request)
    await cut.write(body[: len(body) // 2])
    assert request.transport is not None
    request.transport.close()
    return cut


async def _params(request: web.Request) -> dict[str, Any]:
    if request.method == "GET":
        return dict(request.query)
    raw = await request.read()
    if request.content_type == "application/json":
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            raise ValueError("body is not JSON") from None
        if not isinstance(body, dict):
            raise ValueError("body is not a JSON object")
        return body
    return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's v0 request signature: HMAC-SHA256 over "v0:{timestamp}:{body}"."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


async def post_signed(
    url: str,
    body: dict[str, Any] | bytes,
    secret: str,
    *,
    timestamp: str | None = None,
    signed_with: str | None = None,
) -> tuple[int, str]:
    """Posts an Events API request the way Slack does; `timestamp` and `signed_with` let
    a test send stale or forged ones."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    ts = timestamp if timestamp is not None else str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature(signed_with or secret, ts, raw),
    }
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=raw, headers=headers) as response:
            return response.status, await response.text()
