"""WhatsApp Business Cloud API on 127.0.0.1: Meta's side of both directions.

- Out: a Graph API (`GET /{version}/{phone_number_id}`, `POST
  /{version}/{phone_number_id}/messages`) that checks the Bearer token and the message
  body as Meta does, records what the bot sent in an `Outbox`, and answers errors in
  Graph's shape (`{"error": {"message", "type", "code", "fbtrace_id"}}`); faults are
  keyed "send" and "typing".
- In: `user_message` posts the webhook Meta would post for a person's message,
  signed with `X-Hub-Signature-256` over the exact body; `post_raw` posts any bytes,
  signed or not; `verify` plays the subscription check.
- Statuses: for every message it accepts, Meta posts a `sent` status to the webhook,
  echoing the send's `biz_opaque_callback_data`; so does this server, once
  `webhook_url` is set (`statuses_posted` counts them).
- The 24-hour window: a send to a number whose person last wrote more than 24 hours
  ago (`close_window(wa_id)` makes it so) is refused with error 131047, as Meta does.
- Faults beyond the shared ones: `truncate=True` stores the message and answers a 200
  whose JSON stops halfway; `delay` stores it that many seconds late.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

from aibox.bench.platforms.outbox import FaultPlan, Outbox

API_VERSION = "v21.0"
MAX_TEXT = 4096
WINDOW_S = 24 * 3600


@dataclass(frozen=True)
class Answer:
    """What our webhook answered Meta."""

    status_code: int
    text: str


class FakeWhatsApp:
    def __init__(
        self,
        access_token: str = "EAAG-test-access-token",
        app_secret: str = "test-app-secret",
        phone_number_id: str = "106540352242922",
        display_number: str = "15550001111",
        port: int = 0,
    ) -> None:
        self.access_token = access_token
        self.app_secret = app_secret
        self.phone_number_id = phone_number_id
        self.display_number = display_number
        self.outbox = Outbox()
        self.faults = FaultPlan()
        self.read_receipts: list[str] = []
        self.webhook_url = ""
        self._ids = itertools.count(1)
        self._chat_of: dict[str, str] = {}
        self._last_wrote: dict[str, float] = {}
        self._status_tasks: set[asyncio.Task[None]] = set()
        self.statuses_posted = 0
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self.port = port

    async def __aenter__(self) -> "FakeWhatsApp":
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get(f"/{API_VERSION}/{{number}}", self._number)
        app.router.add_post(f"/{API_VERSION}/{{number}}/messages", self._messages)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = ClientSession(timeout=ClientTimeout(total=30), connector=TCPConnector(limit=32))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._status_tasks):
            task.cancel()
        await asyncio.gather(*self._status_tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def graph_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- Meta posting webhooks to the bot ---------------------------------------------
    def envelope(self, wa_id: str, message: dict[str, Any], name: str = "Test User") -> dict[str, Any]:
        return {
            "object": "whatsapp_business_account",
            "entry": [{
                "id": "102290129340398",
                "changes": [{
                    "field": "messages",
                    "value": {
                        "messaging_product": "whatsapp",
                        "metadata": {"display_phone_number": self.display_number, "phone_number_id": self.phone_number_id},
                        "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
                        "messages": [message],
                    },
                }],
            }],
        }

    def text_message(self, wa_id: str, text: str) -> dict[str, Any]:
        message_id = f"wamid.in.{next(self._ids)}"
        self._chat_of[message_id] = wa_id
        return {
            "from": wa_id,
            "id": message_id,
            "timestamp": str(int(time.time())),
            "type": "text",
            "text": {"body": text},
        }

    async def user_message(self, wa_id: str, text: str, *, times: int = 1) -> str:
        """Posts a person's text message `times` times (Meta retries deliveries); returns its id."""
        message = self.text_message(wa_id, text)
        body = json.dumps(self.envelope(wa_id, message)).encode()
        for _ in range(times):
            response = await self.post_raw(body)
            assert response.status_code == 200, response.text
        return message["id"]

    def close_window(self, wa_id: str) -> None:
        """The person last wrote 25 hours ago: free-form messages to them are refused."""
        self._last_wrote[wa_id] = time.time() - WINDOW_S - 3600

    def person_wrote(self, wa_id: str) -> None:
        """Opens the person's 24-hour window (every message they post does)."""
        self._last_wrote[wa_id] = time.time()

    def _opens_window(self, body: bytes) -> None:
        try:
            event = json.loads(body)
            for entry in event["entry"]:
                for change in entry["changes"]:
                    for m in change["value"].get("messages") or []:
                        self.person_wrote(str(m["from"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            pass

    async def post_raw(self, body: bytes, *, sign: bool = True, signature: str | None = None) -> "Answer":
        self._opens_window(body)
        headers = {"Content-Type": "application/json"}
        if sign:
            headers["X-Hub-Signature-256"] = signature or self.sign(body)
        assert self._session is not None
        async with self._session.post(self.webhook_url, data=body, headers=headers) as r:
            return Answer(r.status, await r.text())

    def sign(self, body: bytes) -> str:
        return "sha256=" + hmac.new(self.app_secret.encode(), body, hashlib.sha256).hexdigest()

    async def verify(self, verify_token: str, challenge: str = "1158201444") -> "Answer":
        params = {"hub.mode": "subscribe", "hub.verify_token": verify_token, "hub.challenge": challenge}
        assert self._session is not None
        async with self._session.get(self.webhook_url, params=params) as r:
            return Answer(r.status, await r.text())

    # -- the Graph API ------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.access_token}"

    async def _number(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, 190, "Invalid OAuth access token - Cannot parse access token", "OAuthException")
        if request.match_info["number"] != self.phone_number_id:
            return _error(400, 100, "Unsupported get request. Object does not exist", "GraphMethodException")
        return web.json_response({"display_phone_number": self.display_number, "id": self.phone_number_id})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return _error(401, 190, "Invalid OAuth access token - Cannot parse access token", "OAuthException")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, 100, "Invalid parameter", "OAuthException")
        if body.get("messaging_product") != "whatsapp":
            return _error(400, 100, "The parameter messaging_product is required.", "OAuthException")
        route = "typing" if "typing_indicator" in body or body.get("status") == "read" else "send"
        fault = self.faults.take(route)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.kind == "drop_before":
            return await _drop(request)
        if fault is not None and fault.kind == "status":
            if fault.status == 429:
                response = _error(429, 130429, "Rate limit hit", "OAuthException")
                response.headers["Retry-After"] = f"{fault.retry_after:g}"
                return response
            if fault.status == 400:  # Meta's per-recipient throttle comes as a 400 with its own code
                return _error(400, 131056, "(#131056) (Business Account, Consumer Account) pair rate limit hit",
                              "OAuthException")
            return _error(fault.status, 1, "An unknown error occurred", "OAuthException")
        if route == "typing":
            message_id = str(body.get("message_id"))
            self.read_receipts.append(message_id)
            self.outbox.record_typing(self._chat_of.get(message_id, message_id))
            response = web.json_response({"success": True})
        else:
            text = (body.get("text") or {}).get("body")
            if body.get("type") != "text" or not isinstance(text, str) or not text.strip():
                return _error(400, 100, "Param text['body'] is required", "OAuthException")
            if len(text) > MAX_TEXT:
                return _error(400, 100, f"Param text['body'] must be at most {MAX_TEXT} characters long.", "OAuthException")
            to = str(body.get("to"))
            if time.time() - self._last_wrote.get(to, 0.0) > WINDOW_S:
                return _error(400, 131047, "(#131047) Re-engagement message", "OAuthException", details=(
                    "Message failed to send because more than 24 hours have passed since the customer last replied "
                    "to this number."))
            message_id = f"wamid.out.{next(self._ids)}"
            self.outbox.post(to, message_id, text, (body.get("context") or {}).get("message_id"))
            self._post_status(to, message_id, body.get("biz_opaque_callback_data"))
            response = web.json_response({
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to}],
                "messages": [{"id": message_id}],
            })
        if fault is not None and fault.kind == "drop_after":
            return await _drop(request)
        if fault is not None and fault.kind == "truncated":  # a proxy that died while passing it on
            assert isinstance(response.body, bytes)
            return web.Response(status=200, body=response.body[: len(response.body) // 2], content_type="application/json")
        return response

    def _post_status(self, to: str, message_id: str, callback_data: Any) -> None:
        """Meta's `sent` status for an accepted message, posted to the webhook soon after."""
        if not self.webhook_url:
            return
        status: dict[str, Any] = {
            "id": message_id, "status": "sent", "timestamp": str(int(time.time())), "recipient_id": to,
            "conversation": {"id": f"conv-{to}", "origin": {"type": "service"}},
            "pricing": {"billable": True, "pricing_model": "CBP", "category": "service"},
        }
        if isinstance(callback_data, str):
            status["biz_opaque_callback_data"] = callback_data
        envelope = self.envelope(to, {})
        value = envelope["entry"][0]["changes"][0]["value"]
        del value["messages"], value["contacts"]
        value["statuses"] = [status]

        async def post() -> None:
            try:
                answer = await self.post_raw(json.dumps(envelope).encode())
            except (ClientError, OSError, asyncio.TimeoutError):
                return  # the bot is gone; Meta would retry, a test has no one to retry for
            if answer.status_code == 200:
                self.statuses_posted += 1

        task = asyncio.get_running_loop().create_task(post())
        self._status_tasks.add(task)
        task.add_done_callback(self._status_tasks.discard)


def _error(status: int, code: int, message: str, kind: str, details: str | None = None) -> web.Response:
    error: dict[str, Any] = {"message": message, "type": kind, "code": code, "fbtrace_id": "AbCdEfGh"}
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return web.json_response({"error": error}, status=status)


async def _drop(request: web.Request) -> web.StreamResponse:
    """Closes the connection with no answer at all."""
    assert request.transport is not None
    request.transport.abort()
    await asyncio.sleep(0)
    raise ConnectionResetError("dropped by the test server")
