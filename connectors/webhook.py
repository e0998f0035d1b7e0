"""The HTTP listener a platform posts its events to (Telegram's webhook mode, WhatsApp,
Slack's Events API).

Each connector brings its own routes and checks (a secret header, an HMAC signature);
this is only the server around them: bound to one host and port (port 0 picks a free
one, and `port` says which after `start`), a body larger than `max_body` answered 413
when a handler reads it, no access log (the handlers log what matters, and a URL can
carry a token), and a start that leaves nothing behind when the port is taken.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebhookListener:
    def __init__(
        self, host: str, port: int, routes: Sequence[tuple[str, str, Handler]], max_body: int = 4 * 1024 * 1024
    ) -> None:
        """`routes` are (HTTP method, path, handler)."""
        self.host = host
        self.port = port
        self._bind_port = port
        self._routes = tuple(routes)
        self._max_body = max_body
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    async def start(self) -> None:
        """Listens; raises OSError (address in use, no permission) with nothing left open."""
        app = web.Application(client_max_size=self._max_body)
        for method, path, handler in self._routes:
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._bind_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
