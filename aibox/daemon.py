"""The daemon: builds the box's parts, hands each exactly what it uses, and runs them from
start-up to a clean stop. Only the CLI (`aibox run`) imports this module.

How a message travels, and who builds what (README, "How it fits together"):

    connector -> gateway (policy, inbox) -> agent runner -> router -> pool -> runtime
    reply <- outbound path (reply streamer, journal) <- every kind of answer

The HTTP API enters at the router too; the admin API (UNIX socket) reads and changes the
parts through their own methods.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from agents.long_answers import LongAnswers
from agents.registry import Registry
from agents.runner import AgentRunner, RunnerSettings
from agents.scheduled_jobs import ScheduledJobs
from agents.sessions import Sessions
from aibox import __version__
from aibox.api.admin import build_admin_app
from aibox.api.agents import agent_routes
from aibox.api.openai import ApiSettings, build_app
from aibox.api.pairing import pairing_routes
from aibox.api.router import router_routes
from aibox.api.ui import UiParts, ui_admin_routes, ui_routes
from aibox.api.server import EmbeddedServer, bind_tcp, bind_unix, make_server
from aibox.config import Config, ConfigError, load_config
from aibox.logs import LOG_FILE, setup_logging
from aibox.metrics import Metrics
from aibox.notify import Notifier
from aibox.router import Router
from aibox.router.candidates import CandidateSource
from aibox.router.estimator import Estimator, LengthModel
from aibox.router.fallback import Backends
from aibox.secrets import SecretError
from aibox.store import Store
from aibox.ui.auth import UiAuth
from aibox.ui.pulls import Pulls
from aibox.usage import UsageLog
from connectors.inbox import Inbox
from connectors.manager import ConnectorManager
from connectors.outbound import Outbound
from connectors.web import WebConnector
from models.catalog import Catalog
from models.files import is_present
from models.pool import ModelPool, PoolSettings
from models.remote import RemoteModels

log = logging.getLogger("aibox.daemon")

IDLE_CHECK_S = 30.0


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


def runner_settings(config: Config) -> RunnerSettings:
    return RunnerSettings(
        default_model=config.default_model, default_agent=config.agents.default_agent,
        timezone=config.agents.timezone, max_tokens=config.runtime.max_tokens,
    )


@dataclass
class Parts:
    """Everything `start` builds on the open store, in the order data flows through it."""

    store: Store
    usage: UsageLog
    router: Router
    inbox: Inbox
    outbound: Outbound
    registry: Registry
    sessions: Sessions
    long_answers: LongAnswers
    runner: AgentRunner
    connectors: ConnectorManager
    jobs: ScheduledJobs


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
        self.parts: Parts | None = None
        self.ready = False
        self.started_at = time.time()
        self.api_address: tuple[str, int] | None = None
        self.recovered = 0
        self._servers: list[EmbeddedServer] = []
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()
        self.notifier = Notifier()
        self.ui: UiParts | None = None

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

    # -- building the parts ---------------------------------------------------

    def build(self, store: Store) -> Parts:
        """Wires the parts on an open store; nothing runs until `start` starts them."""
        config = self.config
        usage = UsageLog(store)
        remotes = RemoteModels(self.catalog)
        router = Router(
            CandidateSource(self.catalog, config.models_path, store, self.pool, remotes, config.state_path, config.threads),
            Estimator(LengthModel.load(), store),
            config.default_model,
            Backends(self.catalog, self.pool, remotes, usage),
            quality_margin=config.router.quality_margin,
        )
        inbox = Inbox(store)
        outbound = Outbound(inbox)
        registry = Registry(store, config.state_path / "agents")
        sessions = Sessions(store)
        long_answers = LongAnswers(outbound)
        runner = AgentRunner(registry, sessions, router, runner_settings(config), long_answers=long_answers, inbox=inbox)
        connectors = ConnectorManager(config, store, runner, inbox=inbox, outbound=outbound)
        jobs = ScheduledJobs(store, outbound.deliver, runner.ask, connectors.alert_owner, config.agents.timezone)
        runner.jobs = jobs
        return Parts(store, usage, router, inbox, outbound, registry, sessions, long_answers, runner, connectors, jobs)

    # -- life cycle -----------------------------------------------------------

    async def start(self) -> None:
        self.config.state_path.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.notifier.status("opening the database")
        store = await asyncio.to_thread(Store.open, self.config.store_url)
        parts = self.parts = self.build(store)
        default = self.catalog.get(self.config.default_model)
        if default.is_local and not is_present(default, self.config.models_path):
            raise StartupError(
                f"default model {default.name} is not in {self.config.models_path}; run `aibox models pull {default.name}`"
            )
        self.notifier.status(f"loading {default.name}")
        await self.pool.worker(default.name)
        api = ApiSettings(self.config.default_model, self.config.runtime.max_tokens, self.config.api.max_body_bytes, self.api_key)
        page = await self._start_page(parts)
        app = build_app(api, parts.router, self.catalog, self.metrics, loaded=lambda: self.pool.loaded, ready=lambda: self.ready,
                        extra_routes=ui_routes(page) if page else ())
        await self._serve(app, bind_tcp(self.host, self.port), "HTTP API")
        api_sock = self._servers[-1].servers[0].sockets[0]
        self.api_address = api_sock.getsockname()[:2]
        admin_routes = [
            *pairing_routes(parts.connectors),
            *agent_routes(parts.registry, parts.jobs, self.sync_schedules),
            *router_routes(parts.router),
            *(ui_admin_routes(page.auth, self._api_url) if page else ()),
        ]
        await self._serve(build_admin_app(self.status, self.catalog, self.pool, admin_routes), bind_unix(self.config.admin_socket), "admin socket")
        self._tasks.append(asyncio.create_task(self._reap_idle_models(), name="reap-idle"))
        keep = timedelta(days=self.config.agents.inbox_retention_days)
        self._tasks.append(asyncio.create_task(parts.inbox.prune_daily(keep), name="inbox-prune"))
        if self.config.connectors:
            self.notifier.status("starting chat connectors")
            await parts.connectors.start()
        # Only now, with every connector running to deliver their answers: scheduled jobs,
        # and the messages the last run left unanswered.
        parts.jobs.start()
        self.sync_schedules()
        self.recovered, _ = await parts.connectors.gateway.replay()
        self.ready = True
        log.info("ready", extra={"api": f"http://{self.api_address[0]}:{self.api_address[1]}", "version": __version__})

    async def _start_page(self, parts: Parts) -> UiParts | None:
        """The box's own page and its web chat (aibox/api/ui.py), on the API's port when
        that is loopback only: a network listener gets neither (put a TLS reverse proxy on
        this host in front of the loopback API instead)."""
        if not self.config.api.model_copy(update={"host": self.host}).is_loopback():
            log.info("the page under /ui/ is off: the API does not listen on loopback only")
            return None
        web = WebConnector()
        await web.start(parts.connectors.gateway.attach(web, web.settings))
        config = self.config
        self.ui = UiParts(
            UiAuth(), self.status, parts.store, self.catalog, config.models_path, config.state_path, config.threads,
            parts.connectors, web, parts.registry, parts.jobs, self.sync_schedules, Pulls(config.models_path),
            config.logs_path / LOG_FILE,
        )
        return self.ui

    def _api_url(self) -> str:
        assert self.api_address is not None
        host, port = self.api_address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def _serve(self, app: Any, sock: Any, label: str) -> None:
        server = make_server(app, label, graceful_s=self.grace_s)
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
        agents are re-read and the runner gets the new settings; settings bound at start
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
        if self.parts is not None:
            self.parts.runner.settings = runner_settings(new)
            await asyncio.to_thread(self.parts.registry.reload)
            self.sync_schedules()
            try:
                if restart := self.parts.connectors.reload(new):
                    log.warning("changed connector settings apply after a restart", extra={"connectors": restart})
            except ConfigError as e:
                log.error("connector settings not reloaded", extra={"error": str(e)})
        log.info("config reloaded", extra={"source": str(new.source) if new.source else None})
        self.notifier.ready(status=self._status_line())

    async def shutdown(self) -> None:
        self.ready = False
        parts = self.parts
        if parts is not None:
            await parts.long_answers.close()  # what they had not posted is written again after the restart
            await parts.jobs.shutdown()
            await parts.connectors.stop()
            await parts.router.close()
        if self.ui is not None:
            await self.ui.close()
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
        if parts is not None:
            await parts.usage.drain()
            parts.store.close()
        self.config.admin_socket.unlink(missing_ok=True)
        log.info("stopped")

    # -- what the admin API reads and asks -----------------------------------

    def sync_schedules(self) -> None:
        """Brings the agent files' schedules up to date with the agents and connectors."""
        if self.parts is None:
            return
        connectors = self.parts.connectors

        def chat_for(platform: str, chat: str) -> str | None:
            if platform not in connectors.settings:
                return None
            return connectors.owner_chat(platform) if chat == "owner" else chat

        self.parts.jobs.sync_agents(self.parts.registry.all(), chat_for)

    def status(self) -> dict[str, Any]:
        loaded = self.pool.loaded
        parts = self.parts
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
            "connectors": parts.connectors.health() if parts is not None and self.config.connectors else {},
            "agents": None if parts is None else {
                "agents": [a.summary() | {"schedules": len(a.definition.schedules)} for a in parts.registry.all()],
                "problems": parts.registry.problems,
                "jobs": len(parts.jobs.list()),
                "inbox": parts.inbox.counts(),
                "recovered_at_start": self.recovered,
            },
        }
