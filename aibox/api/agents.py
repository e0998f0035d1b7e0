"""Admin API routes for agents and scheduled jobs (`aibox agents ...`, `aibox jobs ...`),
served on the daemon's UNIX socket with the rest of the admin API."""

from __future__ import annotations

import tomllib
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agents.definition import AgentFileError, parse_agent
from agents.registry import AgentEntry, Registry, RegistryError
from agents.scheduled_jobs import ScheduledJobs
from aibox.api.errors import ApiError, read_json_object


def agent_routes(registry: Registry, jobs: ScheduledJobs, sync_schedules: Callable[[], None]) -> list[Route]:
    """`sync_schedules` brings the agent files' schedules up to date after a change."""

    def entry(name: str) -> AgentEntry:
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
        body = await read_json_object(r)
        name, text = str(body.get("filename", "agent.toml")), str(body.get("toml", ""))
        try:
            definition = parse_agent(tomllib.loads(text), name)
        except tomllib.TOMLDecodeError as e:
            raise ApiError(400, f"{name}: not valid TOML: {e}", code="invalid_agent") from None
        except AgentFileError as e:
            raise ApiError(400, str(e), code="invalid_agent") from None
        registry.user_dir.mkdir(parents=True, exist_ok=True)
        target = registry.user_dir / f"{definition.name}.toml"
        target.write_text(text, encoding="utf-8")
        registry.reload()
        sync_schedules()
        return JSONResponse(registry.get(definition.name).summary())

    async def remove(r: Request) -> Response:
        entry(r.path_params["name"])
        try:
            path = registry.remove(r.path_params["name"])
        except RegistryError as e:
            raise ApiError(400, str(e), code="shipped_agent") from None
        sync_schedules()
        return JSONResponse({"removed": r.path_params["name"], "path": str(path)})

    async def toggle(r: Request) -> Response:
        if r.path_params["action"] not in ("enable", "disable"):
            raise ApiError(404, "use /agents/NAME/enable or /agents/NAME/disable", code="not_found")
        entry(r.path_params["name"])
        e = registry.set_enabled(r.path_params["name"], r.path_params["action"] == "enable")
        sync_schedules()
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
