"""A Telegram Bot API server on 127.0.0.1 for python-telegram-bot to talk to.

It speaks the real wire protocol as PTB 22 uses it: `POST /bot<token>/<method>` with the
parameters form-encoded (non-strings JSON-encoded as strings) or multipart when a file
is attached, answers `{"ok": true, "result": ...}`, and errors as Telegram does (401
for a bad token, 400 "message is not modified", 429 with `parameters.retry_after`).
`getUpdates` is a real long poll: it holds the request until an update arrives or the
timeout passes, and drops updates below the offset the client confirms.

Tests push user messages with `user_message` (media with `user_media`, edits with
`user_edits`), read what the bot posted from `outbox` (outbox.py) and script failures
with `faults` (keyed by method name: statuses, drops before or after the work is done,
200s with a truncated JSON body, slow answers).

What Telegram does that a client must cope with, played here as documented: lengths are
counted in UTF-16 code units after entities are parsed (4,096 per message); `parse_mode
= HTML` is parsed with Telegram's tag set and a malformed one is a 400 "can't parse
entities", and the entities of the result carry UTF-16 offsets; `getUpdates` honours
`allowed_updates` (an `edited_message` reaches only a bot that asked for it); and, with
`flood_interval_s` set, more than one write per chat in that interval is a 429 with an
integer `retry_after` (Telegram's per-chat flood control), counted in `flood_rejected`.
`raw_updates` injects updates exactly as given, malformed ones included, and
`garbage_next_poll` makes the next getUpdates answer something that is not JSON. Once
the bot calls `setWebhook`, updates are posted to it instead (with its secret token in
`X-Telegram-Bot-Api-Secret-Token`, retried until answered 2xx) and getUpdates is a 409.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import math
import re
import time
from html.parser import HTMLParser
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from aibox.bench.platforms.outbox import FaultPlan, Outbox

BOT_ID = 7_000_000_001
BOT_USERNAME = "aibox_test_bot"
MAX_TEXT = 4096
# What Telegram says with a scripted error status (a 400 on an edit: the user deleted it).
FAULT_DESCRIPTIONS = {400: "Bad Request: message to edit not found", 403: "Forbidden: bot was blocked by the user"}
WRITES = frozenset({"sendMessage", "editMessageText", "sendDocument", "sendPhoto"})


@dataclass
class TelegramServer:
    token: str = "123456:TEST-token-abcdefghijklmnop"
    host: str = "127.0.0.1"
    port: int = 0
    outbox: Outbox = field(default_factory=Outbox)
    faults: FaultPlan = field(default_factory=FaultPlan)
    calls: list[str] = field(default_factory=list)
    flood_interval_s: float | None = None

    def __post_init__(self) -> None:
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids: dict[str, itertools.count[int]] = {}
        self._arrived = asyncio.Event()
        self._garbage_polls = 0
        self._sent_by_users: dict[tuple[str, int], dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}
        self._runner: web.AppRunner | None = None
        self.confirmed_offset = 0
        self.webhook: tuple[str, str | None] | None = None
        self.webhook_answers: list[int] = []
        self._session: ClientSession | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._last_write: dict[str, float] = {}
        self.flood_rejected = 0
        self.commands: list[dict[str, Any]] | None = None

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = ClientSession(timeout=ClientTimeout(total=10))

    async def stop(self) -> None:
        for task in list(self._deliveries):
            task.cancel()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> "TelegramServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://{self.host}:{self.port}/file/bot"

    # -- what tests do -----------------------------------------------------------------
    def user_message(
        self,
        chat_id: int,
        text: str,
        *,
        user_id: int | None = None,
        chat_type: str = "private",
        is_bot: bool = False,
        mention: bool = False,
        first_name: str = "Test",
    ) -> int:
        """Queues a message from a person (or a bot) and returns its message_id."""
        user_id = user_id if user_id is not None else chat_id
        message_id = self._next_message_id(str(chat_id))
        if mention:
            text = f"@{BOT_USERNAME} {text}"
        message: dict[str, Any] = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": chat_type}
            | ({"first_name": first_name} if chat_type == "private" else {"title": "Group"}),
            "from": {"id": user_id, "is_bot": is_bot, "first_name": first_name},
            "text": text,
        }
        if mention:
            message["entities"] = [{"type": "mention", "offset": 0, "length": utf16_len(BOT_USERNAME) + 1}]
        elif text.startswith("/"):
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": utf16_len(text.split()[0])}]
        self._sent_by_users[(str(chat_id), message_id)] = message
        self.raw_updates({"update_id": next(self._update_ids), "message": message})
        return message_id

    def user_media(self, chat_id: int, kind: str, *, caption: str | None = None, file_name: str = "notes.txt",
                   mime_type: str = "text/plain", content: bytes = b"") -> int:
        """A person sends a sticker, photo or document (with `content` to download), no text."""
        message_id = self._next_message_id(str(chat_id))
        file_id = f"file{chat_id}-{message_id}"
        self.files[file_id] = content
        media: dict[str, Any] = {
            "sticker": {"sticker": {"file_id": file_id, "file_unique_id": f"u{file_id}", "type": "regular",
                                    "width": 512, "height": 512, "is_animated": False, "is_video": False, "emoji": "👍"}},
            "photo": {"photo": [{"file_id": file_id, "file_unique_id": f"u{file_id}", "width": 90, "height": 90,
                                 "file_size": len(content)}]},
            "document": {"document": {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_name": file_name,
                                      "mime_type": mime_type, "file_size": len(content)}},
        }[kind]
        message: dict[str, Any] = {
            "message_id": message_id, "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private", "first_name": "Test"},
            "from": {"id": chat_id, "is_bot": False, "first_name": "Test"}, **media,
        }
        if caption is not None:
            message["caption"] = caption
        self.raw_updates({"update_id": next(self._update_ids), "message": message})
        return message_id

    def user_edits(self, chat_id: int, message_id: int, text: str) -> None:
        """A person edits a message they sent: an `edited_message` update."""
        message = dict(self._sent_by_users[(str(chat_id), message_id)], text=text, edit_date=int(time.time()))
        self.raw_updates({"update_id": next(self._update_ids), "edited_message": message})

    def raw_updates(self, *updates: Any) -> None:
        """Queues updates for getUpdates, or posts them to the webhook when one is set."""
        if self.webhook is None:
            self._updates.extend(updates)
            self._arrived.set()
            return
        for update in updates:
            task = asyncio.get_running_loop().create_task(self._deliver(json.dumps(update).encode()))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, body: bytes) -> None:
        """As Telegram does: retried until the webhook answers 2xx (a few times, here)."""
        assert self.webhook is not None
        for attempt in range(5):
            status = await self.post_to_webhook(body, self.webhook[1])
            if 200 <= status < 300:
                return
            await asyncio.sleep(0.2 * (attempt + 1))

    async def post_to_webhook(self, body: bytes, secret: str | None) -> int:
        """Posts `body` to the webhook as Telegram would, with `secret` in its header."""
        assert self.webhook is not None and self._session is not None
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        try:
            async with self._session.post(self.webhook[0], data=body, headers=headers) as r:
                status = r.status
        except ClientError:
            status = 0
        self.webhook_answers.append(status)
        return status

    def next_update_id(self) -> int:
        return next(self._update_ids)

    def garbage_next_poll(self) -> None:
        self._garbage_polls += 1
        self._arrived.set()

    @property
    def undelivered(self) -> int:
        return len(self._updates)

    # -- the Bot API -------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        self.calls.append(method)
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        params = await _params(request)
        fault = self.faults.take(method)
        if fault is not None and fault.kind == "drop_before":
            return await _drop(request)
        if fault is not None and fault.kind == "status":
            if fault.status == 429:
                return _error(429, f"Too Many Requests: retry after {fault.retry_after:g}", retry_after=fault.retry_after)
            return _error(fault.status, fault.detail or FAULT_DESCRIPTIONS.get(fault.status, "Internal Server Error"))
        handler = getattr(self, f"_m_{method}", None)
        if handler is None:
            return _error(404, "Not Found")
        flood = self._flood_wait(method, params)
        if flood is not None:
            self.flood_rejected += 1
            return _error(429, f"Too Many Requests: retry after {flood}", retry_after=flood)
        try:
            response = await handler(params)
        except _ApiError as e:
            return _error(400, e.description)
        if fault is not None and fault.kind == "drop_after":
            return await _drop(request)
        if fault is not None and fault.kind == "truncated":
            assert response.body is not None and isinstance(response.body, bytes)
            return web.Response(status=200, body=response.body[: len(response.body) // 2], content_type="application/json")
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        return response

    def _flood_wait(self, method: str, params: dict[str, Any]) -> int | None:
        """Whole seconds to wait when this write comes too soon after the chat's last one."""
        if self.flood_interval_s is None or method not in WRITES or not params.get("chat_id"):
            return None
        chat, now = str(params["chat_id"]), time.monotonic()
        left = self._last_write.get(chat, -1e9) + self.flood_interval_s - now
        if left > 0:
            return max(1, math.ceil(left))
        self._last_write[chat] = now
        return None

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        content = self.files.get(request.match_info["path"])
        return web.Response(status=404) if content is None else web.Response(body=content)

    async def _m_getFile(self, params: dict[str, Any]) -> web.Response:
        file_id = _require(params, "file_id")
        if file_id not in self.files:
            raise _ApiError("Bad Request: invalid file_id")
        return _ok({"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": len(self.files[file_id]),
                    "file_path": file_id})

    async def _m_setMyCommands(self, params: dict[str, Any]) -> web.Response:
        commands = json.loads(_require(params, "commands"))
        for c in commands:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", c.get("command", "")) or not 1 <= len(c.get("description", "")) <= 256:
                raise _ApiError("Bad Request: BOT_COMMAND_INVALID")
        self.commands = commands
        return _ok(True)

    async def _m_getMe(self, params: dict[str, Any]) -> web.Response:
        return _ok(_bot_user())

    async def _m_deleteWebhook(self, params: dict[str, Any]) -> web.Response:
        self.webhook = None
        return _ok(True)

    async def _m_setWebhook(self, params: dict[str, Any]) -> web.Response:
        url = _require(params, "url")
        if not url.startswith(("https://", "http://127.0.0.1")):
            raise _ApiError("Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        self.webhook = (url, params.get("secret_token") or None)
        return _ok(True)

    async def _m_getUpdates(self, params: dict[str, Any]) -> web.StreamResponse:
        if self.webhook is not None:
            return _error(409, "Conflict: can't use getUpdates method while webhook is active; "
                          "use deleteWebhook to delete the webhook first")
        offset = int(params.get("offset") or 0)
        timeout = float(params.get("timeout") or 0)
        if offset:
            self.confirmed_offset = max(self.confirmed_offset, offset)
            self._updates = [u for u in self._updates if not _below(u, offset)]
        deadline = time.monotonic() + timeout
        while not self._updates and not self._garbage_polls:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                break
        if self._garbage_polls:
            self._garbage_polls -= 1
            return web.Response(status=200, text="<html>502 upstream hiccup</html>", content_type="text/html")
        limit = int(params.get("limit") or 100)
        allowed = json.loads(params["allowed_updates"]) if params.get("allowed_updates") else None
        return _ok([u for u in self._updates[:limit] if _allowed(u, allowed)])

    async def _m_sendMessage(self, params: dict[str, Any]) -> web.Response:
        chat_id = _require(params, "chat_id")
        text, entities = _text(params)
        reply = json.loads(params["reply_parameters"]) if params.get("reply_parameters") else {}
        message_id = self._next_message_id(chat_id)
        posted = self.outbox.post(chat_id, str(message_id), text, str(reply["message_id"]) if reply else None)
        posted.entities = entities
        return _ok(_bot_message(chat_id, message_id, text, entities))

    async def _m_editMessageText(self, params: dict[str, Any]) -> web.Response:
        chat_id = _require(params, "chat_id")
        message_id = _require(params, "message_id")
        text, entities = _text(params)
        current = self.outbox.get(chat_id, message_id)
        if current is None:
            raise _ApiError("Bad Request: message to edit not found")
        if current.text == text and current.entities == entities:
            raise _ApiError(
                "Bad Request: message is not modified: specified new message content and reply "
                "markup are exactly the same as a current content and reply markup of the message"
            )
        edited = self.outbox.edit(chat_id, message_id, text)
        assert edited is not None
        edited.entities = entities
        return _ok(_bot_message(chat_id, int(message_id), text, entities))

    async def _m_sendChatAction(self, params: dict[str, Any]) -> web.Response:
        chat_id = _require(params, "chat_id")
        if params.get("action") not in ("typing", "upload_document", "upload_photo", "record_voice"):
            raise _ApiError("Bad Request: wrong parameter action in request")
        self.outbox.record_typing(chat_id)
        return _ok(True)

    async def _m_sendDocument(self, params: dict[str, Any]) -> web.Response:
        chat_id = _require(params, "chat_id")
        document = params.get("document")
        if not isinstance(document, web.FileField) and not isinstance(document, str):
            raise _ApiError("Bad Request: there is no document in the request")
        name = document.filename if isinstance(document, web.FileField) else "file"
        message_id = self._next_message_id(chat_id)
        caption = params.get("caption") or ""
        self.outbox.post(chat_id, str(message_id), caption)
        result = _bot_message(chat_id, message_id, None) | {
            "document": {"file_id": f"doc{message_id}", "file_unique_id": f"u{message_id}", "file_name": name}
        }
        return _ok(result)

    def _next_message_id(self, chat_id: str) -> int:
        return next(self._message_ids.setdefault(chat_id, itertools.count(1)))


class _ApiError(Exception):
    def __init__(self, description: str) -> None:
        self.description = description


async def _params(request: web.Request) -> dict[str, Any]:
    """Form-encoded, multipart or JSON: PTB uses the first two, other clients the third."""
    if request.content_type == "application/json":
        body = await request.read()
        return json.loads(body) if body else {}
    if request.method == "GET":
        return dict(request.query)
    form = await request.post()
    return {k: v for k, v in form.items()}


def _require(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if value in (None, ""):
        raise _ApiError(f"Bad Request: {name} is empty")
    return str(value)


def _text(params: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The text as the user will see it, and its entities, as Telegram checks them."""
    text = str(params.get("text") or "")
    mode = params.get("parse_mode")
    entities: list[dict[str, Any]] = []
    if mode == "HTML":
        text, entities = parse_html(text)
    elif mode:
        raise _ApiError(f"Bad Request: unsupported parse_mode {mode!r} (this server parses HTML only)")
    if not text.strip():
        raise _ApiError("Bad Request: message text is empty")
    if utf16_len(text) > MAX_TEXT:
        raise _ApiError("Bad Request: message is too long")
    return text, entities


def utf16_len(text: str) -> int:
    """Telegram counts lengths and offsets in UTF-16 code units: an emoji is often two."""
    return len(text.encode("utf-16-le")) // 2


HTML_TAGS = {"b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline", "ins": "underline",
             "s": "strikethrough", "strike": "strikethrough", "del": "strikethrough", "tg-spoiler": "spoiler",
             "span": "spoiler", "a": "text_link", "code": "code", "pre": "pre", "blockquote": "blockquote"}


class _EntityParser(HTMLParser):
    """Telegram's HTML: its tag set only, tags closed in order, `&lt; &gt; &amp; &quot;`
    and numeric references only; anything else is "can't parse entities"."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.out: list[str] = []
        self.length = 0  # UTF-16 units so far
        self.open: list[tuple[str, int, dict[str, Any]]] = []
        self.entities: list[dict[str, Any]] = []

    def _fail(self, why: str) -> None:
        raise _ApiError(f"Bad Request: can't parse entities: {why} at byte offset {self.length}")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in HTML_TAGS:
            self._fail(f"Unsupported start tag \"{tag}\"")
        extra: dict[str, Any] = {}
        values = dict(attrs)
        if tag == "a":
            if not values.get("href"):
                self._fail("Can't find end of the URL")
            extra["url"] = values["href"]
        if tag == "span" and values.get("class") != "tg-spoiler":
            self._fail("Tag \"span\" must have class \"tg-spoiler\"")
        if tag == "code" and self.open and self.open[-1][0] == "pre":  # one "pre" entity, with its language
            if values.get("class", "").startswith("language-"):
                self.open[-1][2]["language"] = values["class"].removeprefix("language-")
            extra["in_pre"] = True
        self.open.append((tag, self.length, extra))

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1][0] != tag:
            self._fail(f"Can't find end tag corresponding to start tag \"{self.open[-1][0] if self.open else tag}\"")
        name, start, extra = self.open.pop()
        if self.length > start and not extra.pop("in_pre", False):
            self.entities.append({"type": HTML_TAGS[name], "offset": start, "length": self.length - start, **extra})

    def handle_data(self, data: str) -> None:
        if "<" in data or ">" in data:
            self._fail("Unexpected character")
        self._add(data)

    def handle_entityref(self, name: str) -> None:
        if name not in ("lt", "gt", "amp", "quot"):
            self._fail(f"Unsupported HTML entity \"&{name};\"")
        self._add(html.unescape(f"&{name};"))

    def handle_charref(self, name: str) -> None:
        self._add(html.unescape(f"&#{name};"))

    def _add(self, text: str) -> None:
        self.out.append(text)
        self.length += utf16_len(text)


def parse_html(source: str) -> tuple[str, list[dict[str, Any]]]:
    parser = _EntityParser()
    parser.feed(source)
    parser.close()
    if parser.rawdata:  # an unterminated tag or entity the parser kept waiting for
        parser._fail("Unclosed start tag")
    if parser.open:
        parser._fail(f"Can't find end tag corresponding to start tag \"{parser.open[-1][0]}\"")
    return "".join(parser.out), sorted(parser.entities, key=lambda e: e["offset"])


def _allowed(update: Any, allowed: list[str] | None) -> bool:
    """Telegram's default leaves out only a few kinds; an explicit list is exact."""
    if not isinstance(update, dict):
        return True
    kinds = [k for k in update if k != "update_id"]
    return not kinds or (kinds[0] in allowed if allowed else kinds[0] not in ("chat_member", "message_reaction"))


def _below(update: Any, offset: int) -> bool:
    return isinstance(update, dict) and isinstance(update.get("update_id"), int) and update["update_id"] < offset


def _bot_user() -> dict[str, Any]:
    return {
        "id": BOT_ID, "is_bot": True, "first_name": "AIBox", "username": BOT_USERNAME,
        "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False,
    }


def _bot_message(chat_id: str, message_id: int, text: str | None, entities: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    chat_type = "private" if not chat_id.startswith("-") else "group"
    message: dict[str, Any] = {
        "message_id": message_id,
        "date": int(time.time()),
        "chat": {"id": int(chat_id), "type": chat_type},
        "from": _bot_user(),
    }
    if text is not None:
        message["text"] = text
    if entities:
        message["entities"] = entities
    return message


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(status: int, description: str, retry_after: float | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=status)


async def _drop(request: web.Request) -> web.StreamResponse:
    """Closes the connection with no answer at all, as a crashed proxy would."""
    assert request.transport is not None
    request.transport.abort()
    raise ConnectionResetError("dropped by the test server")
