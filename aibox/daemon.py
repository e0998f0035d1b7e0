"""The daemon: one asyncio process that owns the store, the models, the HTTP API on
loopback and the admin API on a UNIX socket, from start-up to a clean stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.routing import BaseRoute

from agents.service import Agents
from aibox import __version__
from aibox.api.admin import build_admin_app
from aibox.api.connectors import connector_routes
from aibox.api.openai import build_app
from aibox.api.server import EmbeddedServer, bind_tcp, bind_unix, make_server
from aibox.config import Config, ConfigError, load_config
from aibox.logs import setup_logging
from aibox.metrics import Metrics
from aibox.notify import Notifier
from aibox.router import Router
from aibox.secrets import SecretError
from aibox.store import Store
from aibox.store.schema import Generation
from connectors.manager import ConnectorManager
from models.catalog import Catalog, ModelCard
from models.files import is_present
from models.pool import ModelPool, PoolSettings
from models.runtime import GenerationStats

log = logging.getLogger("aibox.daemon")

IDLE_CHECK_S = 30.0


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


class Daemon:
    def __init__(self, config: Config, *, host: str | None = None, port: int | None = None) -> None:
        self.config = config
        self.host = host if host is not None else config.api.host
        self.port = port if port is not None else config.api.port
        self.api_key = self._resolve_api_key()
        self.catalog = Catalog.load(config.state_path / "cards")
        self.metrics = Metrics()
        self.pool = ModelPool(
            self.catalog,
            PoolSettings(
                models_dir=config.models_path,
                threads=config.threads,
                max_loaded=config.runtime.max_loaded,
                keep_alive_s=config.runtime.keep_alive_s,
                queue_size=config.runtime.queue_size,
                state_cache_bytes=config.runtime.state_cache_mb << 20,
                kv_reuse=config.runtime.kv_reuse,
                state_dir=config.state_path,
            ),
            on_finished=self.metrics.observe,
        )
        self.metrics.add_live_gauges(lambda: {name: w.depth for name, w in self.pool.loaded.items()})
        self.store: Store | None = None
        self.admin_routes: list[BaseRoute] = []
        self.connectors: ConnectorManager | None = None
        self.admin_routes.extend(connector_routes(self))
        self.agents: Agents | None = None
        self.router: Router | None = None
        self.ready = False
        self.started_at = time.time()
        self.api_address: tuple[str, int] | None = None
        self._servers: list[EmbeddedServer] = []
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()
        self.notifier = Notifier()
        self.reload_hooks: list[Callable[[Config], Awaitable[None]]] = []

    def _resolve_api_key(self) -> str | None:
        api = self.config.api
        probe = api.model_copy(update={"host": self.host})
        if api.api_key is None:
            if not probe.is_loopback():
                raise ConfigError(
                    f"key 'api.api_key': required to listen on {self.host}, which is not a loopback address "
                    "(set api.api_key, e.g. \"env:AIBOX_API_KEY\", or listen on 127.0.0.1)"
                )
            return None
        try:
            return api.api_key.get()
        except SecretError as e:
            raise ConfigError(f"key 'api.api_key': {e}") from None

    # -- life cycle -----------------------------------------------------------

    async def start(self) -> None:
        self.config.state_path.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.notifier.status("opening the database")
        self.store = await asyncio.to_thread(Store.open, self.config.store_url)
        self.router = Router.for_daemon(self)
        self.admin_routes.extend(self.router.routes())
        default = self.catalog.get(self.config.default_model)
        if default.is_local and not is_present(default, self.config.models_path):
            raise StartupError(
                f"default model {default.name} is not in {self.config.models_path}; run `aibox models pull {default.name}`"
            )
        self.notifier.status(f"loading {default.name}")
        await self.pool.worker(default.name)
        self.agents = Agents(self)
        self.admin_routes.extend(self.agents.routes())
        await self._serve(build_app(self), bind_tcp(self.host, self.port))
        api_sock = self._servers[-1].servers[0].sockets[0]
        self.api_address = api_sock.getsockname()[:2]
        await self._serve(build_admin_app(self), bind_unix(self.config.admin_socket))
        self._tasks.append(asyncio.create_task(self._reap_idle_models(), name="reap-idle"))
        if self.config.connectors:
            self.notifier.status("starting chat connectors")
            self.connectors = ConnectorManager(self.config, self.store, self.agents.runner, inbox=self.agents.inbox)
            await self.connectors.start()
        await self.agents.start()
        self.ready = True
        log.info("ready", extra={"api": f"http://{self.api_address[0]}:{self.api_address[1]}", "version": __version__})

    async def _serve(self, app: Any, sock: Any) -> None:
        server = make_server(app, graceful_s=self.grace_s)
        self._servers.append(server)
        self._tasks.append(asyncio.create_task(server.serve(sockets=[sock]), name="http"))
        while not server.started:
            if self._tasks[-1].done():
                self._tasks[-1].result()
                raise StartupError("HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    async def _reap_idle_models(self) -> None:
        while True:
            await asyncio.sleep(IDLE_CHECK_S)
            await self.pool.reap_idle()

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Starts, serves until SIGTERM/SIGINT (or `request_stop`), then stops cleanly.
        Tells systemd each step (sd_notify) and pings its watchdog from this event loop;
        SIGHUP reloads the config in place."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        watchdog = asyncio.create_task(self.notifier.watchdog_loop(), name="watchdog")
        try:
            await self.start()
            self.notifier.ready(status=self._status_line())
            await self._stopping.wait()
        finally:
            self.notifier.stopping(status="stopping: finishing requests in flight")
            await self.shutdown()
            watchdog.cancel()
            self.notifier.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    @property
    def grace_s(self) -> float:
        """Time requests in flight get to finish on SIGTERM: most of systemd's stop timeout,
        leaving the rest for closing models and the database."""
        return max(1.0, self.config.service.stop_timeout_s * 0.6)

    def _status_line(self) -> str:
        api = f"http://{self.api_address[0]}:{self.api_address[1]}" if self.api_address else "no API"
        return f"ready: API {api}, models loaded: {', '.join(self.pool.loaded) or 'none'}"

    def _on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def reload(self) -> None:
        """Re-reads the config file without closing a connection: logging applies at once,
        reload hooks (agents, connectors) get the new config, and settings bound at start
        (listen address, state dir, database) are reported as needing a restart. A bad file
        is logged and the running config kept."""
        self.notifier.reloading()
        try:
            new = await asyncio.to_thread(load_config, self.config.source)
        except ConfigError as e:
            log.error("reload failed, keeping the running config", extra={"error": str(e)})
            self.notifier.ready(status=self._status_line())
            return
        fixed = {"api.host": (new.api.host, self.config.api.host), "api.port": (new.api.port, self.config.api.port),
                 "state_dir": (new.state_path, self.config.state_path), "store.url": (new.store_url, self.config.store_url)}
        needs_restart = [key for key, (a, b) in fixed.items() if a != b]
        if needs_restart:
            log.warning("changed settings apply after a restart", extra={"keys": needs_restart})
        setup_logging(new.logging.level, new.logging.format, new.logs_path)
        self.config = new
        if self.agents is not None:
            await asyncio.to_thread(self.agents.registry.reload)
            self.agents.sync_agent_schedules()
        for hook in self.reload_hooks:
            try:
                await hook(new)
            except Exception:
                log.exception("reload hook failed", extra={"hook": getattr(hook, "__qualname__", repr(hook))})
        log.info("config reloaded", extra={"source": str(new.source) if new.source else None})
        self.notifier.ready(status=self._status_line())

    async def shutdown(self) -> None:
        self.ready = False
        if self.agents is not None:
            await self.agents.stop()
        if self.connectors is not None:
            await self.connectors.stop()
        if self.router is not None:
            await self.router.close()
        for server in self._servers:
            server.should_exit = True
        for task in self._tasks:
            if task.get_name() == "http":
                await asyncio.wait([task], timeout=self.grace_s + 2)
            else:
                task.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=10)
        await self.pool.close()
        if self.store is not None:
            self.store.close()
        self.config.admin_socket.unlink(missing_ok=True)
        log.info("stopped")

    # -- shared services ------------------------------------------------------

    def model_available(self, card: ModelCard) -> bool:
        return (not card.is_local) or is_present(card, self.config.models_path)

    def record(self, model: str, stats: GenerationStats, *, source: str, sender: str | None = None, agent: str | None = None) -> None:
        """Stores a finished generation's figures (never its text) without blocking the loop."""
        if self.store is None:
            return
        row = Generation(
            model=model,
            source=source,
            sender=sender,
            agent=agent,
            prompt_tokens=stats.prompt_tokens,
            cached_tokens=stats.cached_tokens,
            completion_tokens=stats.completion_tokens,
            ttft_ms=stats.ttft_s * 1000 if stats.ttft_s is not None else None,
            total_ms=stats.total_s * 1000,
            finish_reason=stats.finish_reason,
        )

        def write() -> None:
            assert self.store is not None
            with self.store.session() as s:
                s.add(row)

        task = asyncio.get_running_loop().create_task(asyncio.to_thread(write))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def status(self) -> dict[str, Any]:
        loaded = self.pool.loaded
        return {
            "version": __version__,
            "ready": self.ready,
            "uptime_s": round(time.time() - self.started_at, 1),
            "api": f"http://{self.api_address[0]}:{self.api_address[1]}" if self.api_address else None,
            "default_model": self.config.default_model,
            "models": [
                {
                    "name": name,
                    "queue_depth": w.depth,
                    "queue_size": w.queue_size,
                    "tokens_per_s": round(w.recent_tok_s, 1),
                    "idle_s": round(time.monotonic() - w.last_used, 1),
                }
                for name, w in loaded.items()
            ],
            "state_dir": str(self.config.state_path),
            "connectors": self.connectors.health() if self.connectors is not None else {},
            "agents": self.agents.status() if self.agents is not None else None,
        }
