"""Running ASGI apps inside the daemon's own event loop, on sockets the daemon binds.

Binding ourselves lets the admin socket get its permissions before anyone can connect
and lets tests ask for port 0; uvicorn's own signal handling is switched off because the
daemon owns SIGTERM and SIGHUP."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Generator
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp


class EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def make_server(app: ASGIApp, graceful_s: float = 5.0) -> EmbeddedServer:
    """`graceful_s`: how long requests in flight may run on after a stop before they are cut."""
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, timeout_graceful_shutdown=graceful_s)
    return EmbeddedServer(config)


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
