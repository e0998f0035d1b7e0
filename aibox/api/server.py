"""Running ASGI apps inside the daemon's own event loop, on sockets the daemon binds.

Binding ourselves lets the admin socket get its permissions before anyone can connect
and lets tests ask for port 0; uvicorn's own signal handling is switched off because the
daemon owns SIGTERM and SIGHUP.

Slow clients cannot hold connections: request headers must arrive within
`HEADER_TIMEOUT_S` of the connection opening (or of the previous answer, on a kept-alive
connection; uvicorn itself only times out idle ones), and a request body within
`BODY_TIMEOUT_S` of its headers, else the answer is a 408 and the connection closes. An
error that escapes an app is logged once and, if nothing was sent yet, answered with a
JSON 500 (aibox/api/errors.py); uvicorn never prints a plain-text page or a traceback of
its own. Each server logs its start and stop once, under its label."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Generator
from pathlib import Path

import h11
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from aibox.api.errors import ApiError, BodyTimeout

log = logging.getLogger("aibox.api")

HEADER_TIMEOUT_S = 5.0
BODY_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5

# uvicorn's life-cycle lines cannot say which of the daemon's servers they are about;
# EmbeddedServer logs its own instead.
_UVICORN_LIFECYCLE = {
    "Started server process [%d]",
    "Finished server process [%d]",
    "Shutting down",
    "Waiting for connections to close. (CTRL+C to force quit)",
    "Waiting for background tasks to complete. (CTRL+C to force quit)",
}


def _not_lifecycle(record: logging.LogRecord) -> bool:
    return not (record.levelno == logging.INFO and record.msg in _UVICORN_LIFECYCLE)


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request headers (slow-loris)."""

    header_timeout_s = HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is None or self.cycle.response_complete:
            self._arm_header_timer()  # headers of a request are still coming
        elif self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()  # the keep-alive timer now guards the idle connection
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not (self.cycle is None or self.cycle.response_complete):
            return
        log.info("connection closed: request headers too slow", extra={"timeout_s": self.header_timeout_s})
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()


class Guarded:
    """The ASGI app with a body deadline and the last-resort error answer around it."""

    def __init__(self, app: ASGIApp, body_timeout_s: float = BODY_TIMEOUT_S) -> None:
        self.app = app
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        body_done = False
        started = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:  # afterwards receive only waits for the client to go away
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.body_timeout_s) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except Exception as e:  # Starlette already answered (and logged) it, unless the answer had begun
            if not getattr(e, "logged", False):
                log.error("unexpected error answering a request", exc_info=True,
                          extra={"method": scope.get("method"), "path": scope.get("path"), "status": 500})
            if not started:
                error = ApiError(500, "internal error; the box logged it", type="server_error", code="internal_error",
                                 headers={"Connection": "close"})
                await error.response()(scope, receive, send)


class EmbeddedServer(uvicorn.Server):
    """`label` names the server in its start and stop lines (HTTP API, admin socket)."""

    def __init__(self, config: uvicorn.Config, label: str) -> None:
        super().__init__(config)
        self.label = label

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            where = [_address(s) for s in sockets or ()]
            log.info("%s listening on %s", self.label, ", ".join(where), extra={"server": self.label, "listen": where})

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        log.info("%s stopping", self.label, extra={"server": self.label, "connections": len(self.server_state.connections)})
        await super().shutdown(sockets)
        log.info("%s stopped", self.label, extra={"server": self.label})


def _address(sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        return str(sock.getsockname())
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def make_server(app: ASGIApp, label: str, graceful_s: float = 5.0) -> EmbeddedServer:
    """`graceful_s`: how long requests in flight may run on after a stop before they are cut."""
    uvicorn_log = logging.getLogger("uvicorn.error")
    if _not_lifecycle not in uvicorn_log.filters:
        uvicorn_log.addFilter(_not_lifecycle)
    config = uvicorn.Config(
        Guarded(app), lifespan="off", log_config=None, access_log=False, timeout_graceful_shutdown=graceful_s,
        http=HeaderTimeoutProtocol, timeout_keep_alive=KEEP_ALIVE_S,
    )
    return EmbeddedServer(config, label)


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def bind_unix(path: Path, mode: int = 0o660) -> socket.socket:
    """A UNIX socket that is never, even for an instant, more open than `mode`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(16)
    return sock
