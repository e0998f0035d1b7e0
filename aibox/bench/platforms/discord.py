"""A local Discord: the REST API and the gateway websocket on 127.0.0.1, for the real discord.py.

It speaks what discord.py 2.7 sends and expects (read from its http.py, gateway.py and
state.py): `GET /users/@me` (401 for a wrong token), `GET /oauth2/applications/@me`,
`POST /channels/{id}/messages` (JSON or multipart with payload_json; content over 2000
characters is refused as Discord does; `nonce` + `enforce_nonce` return the earlier
message instead of posting twice), `PATCH /channels/{id}/messages/{mid}`,
`POST /channels/{id}/typing`; and a gateway that sends HELLO, answers heartbeats with
ACKs, takes IDENTIFY (READY) or RESUME (replays what the client missed, then RESUMED)
and dispatches MESSAGE_CREATE. Frames go out as plain JSON text, which discord.py reads
even when it asked for zlib-stream compression.

API for tests and `aibox bench pipeline`:

    async with FakeDiscord(token="t") as server:
        server.api_base, server.gateway_url         # the two URLs the connector is pointed at
        server.bot_user_id                          # the bot's own user id
        await server.wait_identified()              # a client has IDENTIFIED (or RESUMED)
        mid = await server.user_says("chan", "user", "hi")              # a DM (MESSAGE_CREATE)
        await server.user_says("chan", "user", "hi", guild_id="g", mention=True)
        server.outbox                               # an outbox.Outbox: bot messages,
                                                    # their edits, typing; `await outbox.wait_for_text(...)`
        server.faults.add("send", status=429, retry_after=0.2)   # routes: me, application, send, edit, typing
        server.faults.add("edit", drop="after")
        await server.drop_gateway()                 # cut the websocket without a close frame
        await server.send_raw("{not json")          # a malformed frame on the live gateway
        server.identify_count, server.resume_count, server.heartbeats
        server.ack_heartbeats = False               # a zombie connection: heartbeats go unanswered
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiohttp import WSMsgType, web

from aibox.bench.platforms.outbox import FaultPlan, Outbox

MESSAGE_CONTENT_INTENT = 1 << 15
MAX_CONTENT = 2000
DROP_AFTER = web.RequestKey("drop_after", bool)


@dataclass
class _Session:
    session_id: str
    seq: int = 0
    sent: list[tuple[int, str]] = field(default_factory=list)
    ws: web.WebSocketResponse | None = None
    transport: asyncio.BaseTransport | None = None


class FakeDiscord:
    def __init__(
        self,
        token: str = "fake-discord-token",
        *,
        message_content_enabled: bool = True,
        heartbeat_interval_ms: int = 41250,
    ) -> None:
        self.token = token
        self.message_content_enabled = message_content_enabled
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.bot_user_id = "900000000000000001"
        self.application_id = "900000000000000002"
        self.outbox = Outbox()
        self.faults = FaultPlan()
        self.identify_count = 0
        self.heartbeats = 0
        self.ack_heartbeats = True
        self.resume_count = 0
        self.requested_intents: int | None = None
        self.nonces: dict[tuple[str, str], str] = {}
        self._ids = itertools.count(1_300_000_000_000_000_000)
        self._sessions: dict[str, _Session] = {}
        self._live: _Session | None = None
        self._backlog: list[tuple[str, dict[str, Any]]] = []
        self._identified = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self.port = 0

    # lifecycle

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        api = "/api/v10"
        app.router.add_get(f"{api}/users/@me", self._me)
        app.router.add_get(f"{api}/oauth2/applications/@me", self._application)
        app.router.add_post(f"{api}/channels/{{channel_id}}/messages", self._send)
        app.router.add_patch(f"{api}/channels/{{channel_id}}/messages/{{message_id}}", self._edit)
        app.router.add_post(f"{api}/channels/{{channel_id}}/typing", self._typing)
        app.router.add_get("/gateway", self._gateway)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # what a test does

    async def wait_identified(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._identified.wait(), timeout)

    async def user_says(
        self,
        channel_id: str,
        user_id: str,
        text: str,
        *,
        guild_id: str | None = None,
        mention: bool = False,
        bot: bool = False,
        username: str = "someone",
        reply_to: str | None = None,
        attachments: list[dict[str, Any]] | None = None,
    ) -> str:
        """Dispatches a MESSAGE_CREATE as if `user_id` wrote `text`; returns the message id.
        `attachments` are Discord attachment objects (id, filename, size, url, ...)."""
        message_id = str(next(self._ids))
        mentions = []
        if mention:
            text = f"<@{self.bot_user_id}> {text}"
            mentions = [self._user(self.bot_user_id, "aibox", bot=True)]
        data = self._message(message_id, channel_id, self._user(user_id, username, bot=bot), text, guild_id)
        data["mentions"] = mentions
        data["attachments"] = [
            {"proxy_url": a.get("url", ""), "content_type": None, **a} for a in attachments or []
        ]
        if reply_to is not None:
            data["message_reference"] = {"message_id": reply_to, "channel_id": channel_id, "type": 0}
        if not self._content_visible(guild_id, mention):
            data["content"] = ""
        await self.dispatch("MESSAGE_CREATE", data)
        return message_id

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Sends a dispatch to the live session; kept for RESUME replay either way, and
        held until the first IDENTIFY when no client has connected yet."""
        session = self._live or (self._newest_session())
        if session is None:
            self._backlog.append((event, data))
            return
        await self._send_dispatch(session, event, data)

    async def send_raw(self, text: str) -> None:
        """Puts `text` on the live gateway as it is (for malformed-frame tests)."""
        if self._live is None or self._live.ws is None:
            raise RuntimeError("no client is connected to the gateway")
        await self._live.ws.send_str(text)

    async def drop_gateway(self) -> None:
        """Cuts the live gateway connection the way a network failure does: no close frame."""
        session = self._live
        if session is None or session.ws is None:
            return
        transport = session.transport
        session.ws = None
        self._live = None
        self._identified.clear()
        if transport is not None:
            transport.abort()  # type: ignore[attr-defined]

    # REST

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.token}"

    async def _guard(self, request: web.Request, route: str) -> web.StreamResponse | None:
        """Answers for a wrong token or a planned fault; None lets the request through."""
        if not self._authorized(request):
            return _json({"message": "401: Unauthorized", "code": 0}, status=401)
        fault = self.faults.take(route)
        if fault is None or fault.kind == "drop_after":
            request[DROP_AFTER] = fault is not None
            return None
        if fault.kind == "drop_before":
            await request.read()
            request.transport.abort()  # type: ignore[union-attr]
            return web.Response(status=500)
        if fault.status == 429:
            body = {"message": "You are being rate limited.", "retry_after": fault.retry_after, "global": False}
            headers = {"Via": "1.1 google", "Retry-After": str(max(1, round(fault.retry_after)))}
            return _json(body, status=429, headers=headers)
        return _json({"message": "500: Internal Server Error", "code": 0}, status=fault.status)

    def _finish(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        if request.get(DROP_AFTER):
            request.transport.abort()  # type: ignore[union-attr]
        return response

    async def _me(self, request: web.Request) -> web.StreamResponse:
        refused = await self._guard(request, "me")
        if refused is not None:
            return refused
        return self._finish(request, _json(self._bot_user()))

    async def _application(self, request: web.Request) -> web.StreamResponse:
        refused = await self._guard(request, "application")
        if refused is not None:
            return refused
        body = {
            "id": self.application_id,
            "name": "aibox",
            "icon": None,
            "description": "",
            "bot_public": False,
            "bot_require_code_grant": False,
            "owner": self._user("900000000000000003", "owner"),
            "team": None,
            "verify_key": "0" * 64,
            "flags": MESSAGE_CONTENT_INTENT << 4,
            "interactions_endpoint_url": None,
            "bot": self._bot_user(),
        }
        return self._finish(request, _json(body))

    async def _send(self, request: web.Request) -> web.StreamResponse:
        refused = await self._guard(request, "send")
        if refused is not None:
            return refused
        channel_id = request.match_info["channel_id"]
        try:
            payload = await self._payload(request)
        except ValueError as e:
            return _form_error(str(e))
        content = payload.get("content") or ""
        problem = _content_problem(content)
        if problem:
            return _form_error(problem)
        nonce = payload.get("nonce")
        if nonce is not None and payload.get("enforce_nonce"):
            earlier = self.nonces.get((channel_id, str(nonce)))
            if earlier is not None:
                existing = self.outbox.get(channel_id, earlier)
                assert existing is not None
                return self._finish(request, _json(self._bot_message(existing.message_id, channel_id, existing.text)))
        reference = (payload.get("message_reference") or {}).get("message_id")
        message_id = str(next(self._ids))
        self.outbox.post(channel_id, message_id, content, reply_to=str(reference) if reference else None)
        if nonce is not None:
            self.nonces[(channel_id, str(nonce))] = message_id
        body = self._bot_message(message_id, channel_id, content)
        await self.dispatch("MESSAGE_CREATE", body)  # Discord echoes the bot's own messages
        return self._finish(request, _json(body))

    async def _edit(self, request: web.Request) -> web.StreamResponse:
        refused = await self._guard(request, "edit")
        if refused is not None:
            return refused
        channel_id = request.match_info["channel_id"]
        message_id = request.match_info["message_id"]
        try:
            payload = await self._payload(request)
        except ValueError as e:
            return _form_error(str(e))
        content = payload.get("content") or ""
        problem = _content_problem(content)
        if problem:
            return _form_error(problem)
        if self.outbox.get(channel_id, message_id) is None:
            return _json({"message": "Unknown Message", "code": 10008}, status=404)
        message = self.outbox.edit(channel_id, message_id, content)
        assert message is not None
        return self._finish(request, _json(self._bot_message(message_id, channel_id, content, edited=True)))

    async def _typing(self, request: web.Request) -> web.StreamResponse:
        refused = await self._guard(request, "typing")
        if refused is not None:
            return refused
        self.outbox.record_typing(request.match_info["channel_id"])
        return self._finish(request, web.Response(status=204))

    async def _payload(self, request: web.Request) -> dict[str, Any]:
        if request.content_type == "multipart/form-data":
            form = await request.post()
            raw = form.get("payload_json")
            if not isinstance(raw, str):
                raise ValueError("multipart body without payload_json")
            return json.loads(raw)
        try:
            body = await request.json()
        except json.JSONDecodeError:
            raise ValueError("body is not JSON") from None
        if not isinstance(body, dict):
            raise ValueError("body is not a JSON object")
        return body

    # gateway

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        self._sockets.add(ws)
        session: _Session | None = None
        try:
            await ws.send_json({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}, "s": None, "t": None})
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                op, data = frame.get("op"), frame.get("d")
                if op == 1:
                    self.heartbeats += 1
                    if self.ack_heartbeats:
                        await ws.send_json({"op": 11, "d": None, "s": None, "t": None})
                elif op in (2, 6):
                    session = await (self._identify(ws, data) if op == 2 else self._resume(ws, data))
                    if session is not None:
                        session.transport = request.transport
        finally:
            self._sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
                if self._live is session:
                    self._live = None
                    self._identified.clear()
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> _Session | None:
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        intents = int(data.get("intents") or 0)
        self.requested_intents = intents
        if intents & MESSAGE_CONTENT_INTENT and not self.message_content_enabled:
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return None
        self.identify_count += 1
        session = _Session(session_id=f"session-{self.identify_count}", ws=ws)
        self._sessions[session.session_id] = session
        self._live = session
        ready = {
            "v": 10,
            "user": self._bot_user(),
            "guilds": [],
            "session_id": session.session_id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": self.application_id, "flags": MESSAGE_CONTENT_INTENT << 4},
            "private_channels": [],
            "relationships": [],
        }
        await self._send_dispatch(session, "READY", ready)
        self._identified.set()
        backlog, self._backlog = self._backlog, []
        for event, payload in backlog:
            await self._send_dispatch(session, event, payload)
        return session

    async def _resume(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> _Session | None:
        session = self._sessions.get(str(data.get("session_id")))
        if data.get("token") != self.token or session is None:
            await ws.send_json({"op": 9, "d": False, "s": None, "t": None})
            return None
        self.resume_count += 1
        session.ws = ws
        self._live = session
        since = int(data.get("seq") or 0)
        for seq, frame in list(session.sent):
            if seq > since:
                await ws.send_str(frame)
        await self._send_dispatch(session, "RESUMED", {})
        self._identified.set()
        return session

    async def _send_dispatch(self, session: _Session, event: str, data: dict[str, Any]) -> None:
        session.seq += 1
        frame = json.dumps({"op": 0, "s": session.seq, "t": event, "d": data})
        session.sent.append((session.seq, frame))
        if session.ws is not None and not session.ws.closed:
            try:
                await session.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                session.ws = None

    def _newest_session(self) -> _Session | None:
        return list(self._sessions.values())[-1] if self._sessions else None

    def _content_visible(self, guild_id: str | None, mention: bool) -> bool:
        """Without the message-content intent Discord blanks guild messages that do not
        mention the bot; DMs and mentions always carry their content."""
        asked = self.requested_intents is not None and bool(self.requested_intents & MESSAGE_CONTENT_INTENT)
        return asked or guild_id is None or mention

    # payload shapes

    def _user(self, user_id: str, username: str, *, bot: bool = False) -> dict[str, Any]:
        user = {"id": user_id, "username": username, "discriminator": "0", "avatar": None, "global_name": username}
        if bot:
            user["bot"] = True
        return user

    def _bot_user(self) -> dict[str, Any]:
        return {**self._user(self.bot_user_id, "aibox", bot=True), "verified": True, "mfa_enabled": False, "flags": 0}

    def _message(
        self, message_id: str, channel_id: str, author: dict[str, Any], content: str, guild_id: str | None
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": message_id,
            "channel_id": channel_id,
            "type": 0,
            "content": content,
            "author": author,
            "timestamp": datetime.now(timezone.utc).isoformat(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "flags": 0,
        }
        if guild_id is not None:
            data["guild_id"] = guild_id
        return data

    def _bot_message(self, message_id: str, channel_id: str, content: str, *, edited: bool = False) -> dict[str, Any]:
        data = self._message(message_id, channel_id, self._bot_user(), content, None)
        if edited:
            data["edited_timestamp"] = datetime.now(timezone.utc).isoformat()
        return data


def _content_problem(content: str) -> str | None:
    if not content.strip():
        return "Cannot send an empty message"
    if len(content) > MAX_CONTENT:
        return f"content: Must be {MAX_CONTENT} or fewer in length."
    return None


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with Discord's exact content type: discord.py parses a body only when the
    header reads `application/json`, with no charset."""
    return web.Response(
        body=json.dumps(body).encode(), status=status, headers={**(headers or {}), "Content-Type": "application/json"}
    )


def _form_error(problem: str) -> web.Response:
    return _json({"message": f"Invalid Form Body: {problem}", "code": 50035}, status=400)
