"""The agents part of the daemon: registry, sessions, inbox, scheduler, the runner the
connectors answer through, and the admin API routes the CLI uses.

Start-up order matters for "nothing is lost": the daemon starts the connectors with
`runner` as their responder and `inbox` in their gateway, and only then calls `start`,
which replays the messages the last run left unanswered (each platform's connector
must be running to deliver their answers).
"""

from __future__ import annotations

import asyncio
import logging
import tomllib
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agents.inbox import Inbox
from agents.jobs import Jobs
from agents.registry import Registry, RegistryError
from agents.runner import AgentRunner
from agents.sessions import Sessions
from agents.spec import AgentFileError, parse_agent
from aibox.api.errors import ApiError
from connectors.errors import ConnectorError
from connectors.manager import ConnectorManager

if TYPE_CHECKING:
    from aibox.daemon import Daemon

log = logging.getLogger(__name__)


class Agents:
    def __init__(self, daemon: "Daemon") -> None:
        assert daemon.store is not None
        self.daemon = daemon
        store = daemon.store
        self.timezone = daemon.config.agents.timezone
        self.registry = Registry(store, daemon.config.state_path / "agents")
        self.sessions = Sessions(store)
        self.inbox = Inbox(store)
        self.runner = AgentRunner(daemon, self.registry, self.sessions, self.timezone)
        self.jobs = Jobs(store, self.deliver, self.runner.ask, self.alert_owner, self.timezone)
        self.runner.jobs = self.jobs
        self.runner.inbox = self.inbox
        self.recovered = 0
        self._pruner: asyncio.Task[None] | None = None

    @property
    def connectors(self) -> ConnectorManager | None:
        return self.daemon.connectors

    async def start(self) -> None:
        self._pruner = asyncio.create_task(self._prune_daily(), name="inbox-prune")
        self.jobs.start()
        self.sync_agent_schedules()
        pending = self.inbox.pending()
        for msg in pending:
            if self.connectors is not None and msg.platform in self.connectors.connectors:
                await self.connectors.gateway.handle(msg, recovered=True)
                self.recovered += 1
        if pending:
            log.info("answering messages left unanswered by the last run",
                     extra={"count": self.recovered, "waiting": len(pending) - self.recovered})

    async def stop(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
        await self.jobs.shutdown()

    async def _prune_daily(self) -> None:
        keep = timedelta(days=self.daemon.config.agents.inbox_retention_days)
        while True:
            try:
                removed = await asyncio.to_thread(self.inbox.prune, keep)
            except Exception:  # the store may be briefly unavailable; try again tomorrow
                log.exception("pruning the inbox failed")
            else:
                if removed:
                    log.info("pruned answered messages from the inbox", extra={"count": removed, "older_than_days": keep.days})
            await asyncio.sleep(24 * 3600)

    # -- delivery for jobs --------------------------------------------------------------

    async def deliver(self, platform: str, chat_id: str, text: str) -> None:
        if self.connectors is None:
            raise ConnectorError("no chat connectors are configured")
        await self.connectors.gateway.deliver(platform, chat_id, text)

    def owner_chat(self, platform: str) -> str | None:
        """Where the owner reads: their approved DM chat, else their configured id."""
        if self.connectors is None:
            return None
        for approved in self.connectors.approved():
            if approved.platform == platform and approved.role == "owner" and approved.chat_id:
                return approved.chat_id
        settings = self.connectors.settings.get(platform)
        return settings.owner if settings is not None else None

    async def alert_owner(self, platform: str, text: str) -> None:
        chat = self.owner_chat(platform)
        if chat is None:
            raise ConnectorError(f"no owner known on {platform}")
        await self.deliver(platform, chat, text)

    def sync_agent_schedules(self) -> None:
        """Schedules from agent files: kept for enabled agents whose chat is reachable."""
        wanted: set[str] = set()
        for entry in self.registry.all():
            if not entry.enabled:
                continue
            for i, schedule in enumerate(entry.spec.schedules):
                platform, _, chat = schedule.chat.partition(":")
                if chat == "owner":
                    chat = self.owner_chat(platform) or ""
                if self.connectors is None or platform not in self.connectors.settings or not chat:
                    log.info("schedule %d of agent %s not active: %s is not configured", i, entry.spec.name, schedule.chat)
                    continue
                wanted.add(self.jobs.schedule_agent(entry.spec.name, i, schedule.when, schedule.task, platform, chat))
        self.jobs.keep_agent_jobs(wanted)

    def status(self) -> dict[str, Any]:
        return {
            "agents": [a.summary() | {"schedules": len(a.spec.schedules)} for a in self.registry.all()],
            "problems": self.registry.problems,
            "jobs": len(self.jobs.list()),
            "inbox": self.inbox.counts(),
            "recovered_at_start": self.recovered,
        }

    # -- admin API ---------------------------------------------------------------------

    def routes(self) -> list[Route]:
        registry, jobs = self.registry, self.jobs

        def entry(name: str):  # noqa: ANN202
            try:
                return registry.get(name)
            except RegistryError as e:
                raise ApiError(404, str(e), code="agent_not_found") from None

        async def list_agents(_r: Request) -> Response:
            return JSONResponse({"agents": [a.summary() for a in registry.all()], "problems": registry.problems})

        async def show(r: Request) -> Response:
            e = entry(r.path_params["name"])
            return JSONResponse(e.summary() | {"file": e.path.read_text(encoding="utf-8")})

        async def add(r: Request) -> Response:
            body = await r.json()
            name, text = str(body.get("filename", "agent.toml")), str(body.get("toml", ""))
            try:
                spec = parse_agent(tomllib.loads(text), name)
            except tomllib.TOMLDecodeError as e:
                raise ApiError(400, f"{name}: not valid TOML: {e}", code="invalid_agent") from None
            except AgentFileError as e:
                raise ApiError(400, str(e), code="invalid_agent") from None
            registry.user_dir.mkdir(parents=True, exist_ok=True)
            target = registry.user_dir / f"{spec.name}.toml"
            target.write_text(text, encoding="utf-8")
            registry.reload()
            self.sync_agent_schedules()
            return JSONResponse(registry.get(spec.name).summary())

        async def remove(r: Request) -> Response:
            entry(r.path_params["name"])
            try:
                path = registry.remove(r.path_params["name"])
            except RegistryError as e:
                raise ApiError(400, str(e), code="shipped_agent") from None
            self.sync_agent_schedules()
            return JSONResponse({"removed": r.path_params["name"], "path": str(path)})

        async def toggle(r: Request) -> Response:
            if r.path_params["action"] not in ("enable", "disable"):
                raise ApiError(404, "use /agents/NAME/enable or /agents/NAME/disable", code="not_found")
            entry(r.path_params["name"])
            e = registry.set_enabled(r.path_params["name"], r.path_params["action"] == "enable")
            self.sync_agent_schedules()
            return JSONResponse(e.summary())

        async def list_jobs(_r: Request) -> Response:
            return JSONResponse({"jobs": jobs.list()})

        async def cancel(r: Request) -> Response:
            job_id = r.path_params["id"]
            if not jobs.cancel(job_id):
                raise ApiError(404, f"no active job {job_id!r}; see `aibox jobs list`", code="job_not_found")
            return JSONResponse({"cancelled": job_id})

        async def history(r: Request) -> Response:
            return JSONResponse({"runs": jobs.history(r.path_params["id"])})

        return [
            Route("/agents", list_agents, methods=["GET"]),
            Route("/agents", add, methods=["POST"]),
            Route("/agents/{name}", show, methods=["GET"]),
            Route("/agents/{name}", remove, methods=["DELETE"]),
            Route("/agents/{name}/{action:str}", toggle, methods=["POST"]),
            Route("/jobs", list_jobs, methods=["GET"]),
            Route("/jobs/{id}", cancel, methods=["DELETE"]),
            Route("/jobs/{id}/runs", history, methods=["GET"]),
        ]
