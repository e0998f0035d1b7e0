"""Talking to the running daemon: its admin API over the UNIX socket, and its
OpenAI-compatible API over TCP for `aibox chat`."""

from __future__ import annotations

from typing import Any

import httpx
import typer

from aibox.cli.common import EXIT_UNAVAILABLE, fail, get_config, print_json
from aibox.config import Config


class DaemonNotRunning(Exception):
    pass


class AdminClient:
    def __init__(self, config: Config, timeout: float = 30.0) -> None:
        self.socket = config.admin_socket
        self._client = httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://aibox", timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if not self.socket.exists():
            raise DaemonNotRunning(f"the daemon is not running (no admin socket at {self.socket}); start it with `aibox run`")
        try:
            r = self._client.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise DaemonNotRunning(f"cannot reach the daemon at {self.socket}: {e}") from None
        if r.status_code >= 400:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text
            fail(message)
        return r.json()

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)


def admin_show(ctx: typer.Context, method: str, path: str, as_json: bool, **kwargs: Any) -> Any | None:
    """One admin request for a command with `--json`: under it the answer is printed as
    JSON and None comes back (the command is done); otherwise the command renders it."""
    data = admin_call(get_config(ctx), method, path, **kwargs)
    if as_json:
        print_json(data)
        return None
    return data


def admin_call(config: Config, method: str, path: str, **kwargs: Any) -> Any:
    """One admin request; a daemon that is not running becomes a one-line error, exit 69."""
    try:
        return AdminClient(config).request(method, path, **kwargs)
    except DaemonNotRunning as e:
        fail(str(e), EXIT_UNAVAILABLE)
