"""The box's own page under /ui/ on the API's port (loopback only), and the admin-socket
routes `aibox ui` asks for a login link.

Every page needs a session (aibox/ui/auth.py): without one a page answers the login page
(401), and every POST also needs the session's CSRF token (form field `csrf` or header
`X-CSRF-Token`), else 403. What the page changes it changes through the same functions as
the CLI and the admin API (ConnectorManager.approve/deny/revoke, Registry.set_enabled,
ScheduledJobs.cancel, models.files.pull/verify/remove), so the audit log reads the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from agents.registry import Registry, RegistryError
from agents.scheduled_jobs import ScheduledJobs
from aibox.api.errors import ApiError, read_json_object
from aibox.store import Store
from aibox.ui import figures
from aibox.ui.auth import LoginRefused, Session, UiAuth
from aibox.ui.chart import line_chart
from aibox.ui.pages import STATIC_DIR, render
from aibox.ui.pulls import Pulls
from connectors.manager import ConnectorManager
from connectors.pairing import PairingError
from connectors.web import OWNER, WebConnector
from models.catalog import Catalog, CatalogError
from models.files import VerifyError, is_present, remove, verify
from models.speculative.accelerator import plan

log = logging.getLogger("aibox.ui")

COOKIE = "aibox_ui"
MAX_FORM_BYTES = 64 * 1024
LEVELS = ("debug", "info", "warning", "error", "critical")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


@dataclass
class UiParts:
    """What the page reads and changes, handed in by the daemon."""

    auth: UiAuth
    status: Callable[[], dict[str, Any]]
    store: Store
    catalog: Catalog
    models_dir: Path
    state_dir: Path
    threads: int
    connectors: ConnectorManager
    web: WebConnector
    registry: Registry
    jobs: ScheduledJobs
    sync_schedules: Callable[[], None]
    pulls: Pulls
    log_file: Path
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    async def close(self) -> None:
        """Ends the page's live streams (so a stop does not wait on open tabs) and the web chat."""
        self.closing.set()
        await self.web.stop()
        await self.pulls.close()


Handler = Callable[[Request, Session], Awaitable[Response]]


def _page(html: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def _login_page(message: str, status: int) -> HTMLResponse:
    return _page(render("login.html", message=message), status)


def _forbidden(message: str) -> HTMLResponse:
    return _page(render("error.html", status=403, message=message), 403)


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body (what the page's forms and fetches send), first value per key."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise ApiError(413, f"form body exceeds {MAX_FORM_BYTES} bytes", code="body_too_large")
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        raise ApiError(400, "the form body is not UTF-8") from None
    return {k: v[0] for k, v in parsed.items()}


def ui_routes(parts: UiParts) -> list[Route]:
    auth = parts.auth

    def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            session = auth.session(request.cookies.get(COOKIE))
            if session is None:
                return _login_page("You are not logged in. Run `aibox ui` on the box and open the link it prints.", 401)
            return await handler(request, session)

        return guarded

    def action(handler: Callable[[Request, Session, dict[str, str]], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            session = auth.session(request.cookies.get(COOKIE))
            if session is None:
                return _forbidden("no session: run `aibox ui` on the box and open the link it prints")
            form = await _form(request)
            if not session.csrf_ok(request.headers.get("x-csrf-token") or form.get("csrf")):
                log.warning("page request refused: missing or wrong CSRF token", extra={"path": request.url.path})
                return _forbidden("missing or wrong CSRF token; reload the page and try again")
            return await handler(request, session, form)

        return guarded

    def show(request: Request, session: Session, template: str, **context: Any) -> HTMLResponse:
        flash, session.flash = session.flash, []
        return _page(render(template, csrf=session.csrf, path=request.url.path, flash=flash, session_id=session.id, **context))

    def back(session: Session, to: str, message: str) -> Response:
        session.flash.append(message)
        return RedirectResponse(to, status_code=303)

    # -- login ---------------------------------------------------------------------------

    async def login(request: Request) -> Response:
        token = request.query_params.get("token", "")
        try:
            cookie, session = auth.redeem(token)
        except LoginRefused as e:
            log.warning("page login refused", extra={"reason": str(e)})
            return _login_page(str(e), 403)
        log.info("page login", extra={"session": session.id})
        # A page of our own moves on to /ui/: a same-site navigation, so the SameSite=Strict
        # cookie goes along even when the link was opened from another program.
        response = _page(render("redirect.html", to="/ui/"))
        response.set_cookie(
            COOKIE, cookie, max_age=int(auth.session_ttl_s), path="/ui", httponly=True, samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(_request: Request, session: Session, _form: dict[str, str]) -> Response:
        auth.revoke(session.id)
        log.info("page logout", extra={"session": session.id})
        response = _login_page("You are logged out.", 200)
        response.delete_cookie(COOKIE, path="/ui")
        return response

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        path = STATIC_DIR / name
        if name not in {p.name for p in STATIC_DIR.iterdir()}:
            return Response("not found", status_code=404)
        return FileResponse(path, headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"})

    # -- overview ------------------------------------------------------------------------

    async def overview(request: Request, session: Session) -> Response:
        status = parts.status()
        speed = await asyncio.to_thread(figures.speed, parts.store)
        accel = []
        for m in status["models"]:
            try:
                p = await asyncio.to_thread(plan, parts.catalog.get(m["name"]), parts.catalog, parts.models_dir, parts.state_dir, parts.threads)
                accel.append({"model": m["name"], "on": p.pays, "reason": p.reason, "drafters": p.drafters})
            except (CatalogError, ValueError, OSError) as e:
                accel.append({"model": m["name"], "on": False, "reason": str(e), "drafters": []})
        connectors = dict(status["connectors"])
        web = parts.web.health()
        connectors["web"] = {"state": web.state, "detail": web.detail, "since": web.since.isoformat()}
        return show(
            request, session, "overview.html", status=status, connectors=connectors, accel=accel, speed=speed,
            tok_chart=line_chart("Decode tokens per second, last hour", "tokens/s", speed.tokens_per_s, speed.start, speed.end),
            ttft_chart=line_chart("Time to first token, last hour", "ms", speed.ttft_ms, speed.start, speed.end),
            disks=figures.disks([parts.state_dir, parts.models_dir]), memory=figures.memory(),
        )

    # -- pairing -------------------------------------------------------------------------

    async def pairing(request: Request, session: Session) -> Response:
        m = parts.connectors
        return show(request, session, "pairing.html", configured=bool(m.settings), pending=m.pending(), approved=m.approved())

    async def pairing_action(request: Request, session: Session, form: dict[str, str]) -> Response:
        what = request.path_params["action"]
        value = form.get("code" if what in ("approve", "deny") else "sender", "").strip()
        m = parts.connectors
        try:
            if what == "approve":
                a = m.approve(value)
                text = f"Approved {a.platform}:{a.sender_id} as {a.role}."
            elif what == "deny":
                p = m.deny(value)
                text = f"Denied {p.platform}:{p.sender_id} (code {p.code})."
            elif what == "revoke":
                gone = m.revoke(value)
                text = "Revoked " + ", ".join(f"{a.platform}:{a.sender_id}" for a in gone) + "."
            else:
                return Response("not found", status_code=404)
        except PairingError as e:
            text = str(e)
        return back(session, "/ui/pairing", text)

    # -- agents and jobs -----------------------------------------------------------------

    async def agents(request: Request, session: Session) -> Response:
        jobs = await asyncio.to_thread(parts.jobs.list)
        for job in jobs:
            job["runs"] = await asyncio.to_thread(parts.jobs.history, job["id"], 5)
        return show(request, session, "agents.html", agents=[a.summary() for a in parts.registry.all()],
                    problems=parts.registry.problems, jobs=jobs)

    async def agent_action(request: Request, session: Session, _form: dict[str, str]) -> Response:
        name, what = request.path_params["name"], request.path_params["action"]
        if what not in ("enable", "disable"):
            return Response("not found", status_code=404)
        try:
            parts.registry.get(name)
            parts.registry.set_enabled(name, what == "enable")
        except RegistryError as e:
            return back(session, "/ui/agents", str(e))
        parts.sync_schedules()
        log.info("agent %sd from the page", what, extra={"agent": name})
        return back(session, "/ui/agents", f"{name}: {what}d.")

    async def job_cancel(request: Request, session: Session, _form: dict[str, str]) -> Response:
        job_id = request.path_params["id"]
        ok = parts.jobs.cancel(job_id)
        return back(session, "/ui/agents", f"Cancelled job {job_id}." if ok else f"No active job {job_id!r}.")

    # -- models --------------------------------------------------------------------------

    def model_rows() -> list[dict]:
        return [
            {"name": c.name, "roles": c.roles, "size": c.size, "remote": c.remote is not None,
             "present": c.is_local and is_present(c, parts.models_dir), "license": c.license}
            for c in parts.catalog
        ]

    async def models(request: Request, session: Session) -> Response:
        loaded = {m["name"] for m in parts.status()["models"]}
        return show(request, session, "models.html", models=model_rows(), loaded=loaded,
                    pulls={p["model"]: p for p in parts.pulls.states()})

    async def model_action(request: Request, session: Session, _form: dict[str, str]) -> Response:
        name, what = request.path_params["name"], request.path_params["action"]
        try:
            card = parts.catalog.get(name)
        except CatalogError as e:
            return back(session, "/ui/models", str(e))
        if what == "pull":
            state = parts.pulls.start(card)
            if request.headers.get("accept") == "application/json":
                return JSONResponse(state.as_dict(), headers=SECURITY_HEADERS)
            return back(session, "/ui/models", f"Pulling {name}.")
        if what == "verify":
            try:
                path = await asyncio.to_thread(verify, card, parts.models_dir, None, True)
            except VerifyError as e:
                return back(session, "/ui/models", str(e))
            return back(session, "/ui/models", f"{name}: sha256 matches the card ({path.name}).")
        if what == "remove":
            if name in {m["name"] for m in parts.status()["models"]}:
                return back(session, "/ui/models", f"{name} is loaded; it cannot be removed while it serves")
            removed = await asyncio.to_thread(remove, card, parts.models_dir)
            log.info("model removed from the page", extra={"model": name})
            return back(session, "/ui/models", f"{name}: removed." if removed else f"{name} is not on this box.")
        return Response("not found", status_code=404)

    async def model_events(request: Request, _session: Session) -> Response:
        async def events() -> AsyncIterator[bytes]:
            sent: dict[str, int] = {}
            while not parts.closing.is_set() and not await request.is_disconnected():
                waiter = parts.pulls.changed
                for state in parts.pulls.states():
                    if sent.get(state["model"]) != state["version"]:
                        sent[state["model"]] = state["version"]
                        yield _sse("pull", state)
                try:
                    await asyncio.wait_for(waiter.wait(), timeout=5)
                except TimeoutError:
                    yield b": keep-alive\n\n"

        return _stream(events())

    # -- web chat ------------------------------------------------------------------------

    async def chat(request: Request, session: Session) -> Response:
        return show(request, session, "chat.html", transcript=parts.web.transcript(OWNER))

    async def chat_send(_request: Request, _session: Session, form: dict[str, str]) -> Response:
        text = form.get("text", "").strip()
        if not text:
            return JSONResponse({"error": "the message is empty"}, status_code=400, headers=SECURITY_HEADERS)
        message_id = await parts.web.submit(OWNER, text)
        return JSONResponse({"id": message_id}, headers=SECURITY_HEADERS)

    async def chat_events(request: Request, _session: Session) -> Response:
        queue = parts.web.subscribe(OWNER)

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 2000\n\n"
                while not parts.closing.is_set() and not await request.is_disconnected():
                    try:
                        event = await asyncio.wait_for(queue.get(), timeout=5)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    yield _sse(event["kind"], event)
                    if event["kind"] == "closed":
                        return
            finally:
                parts.web.unsubscribe(OWNER, queue)

        return _stream(events())

    # -- logs ----------------------------------------------------------------------------

    async def logs(request: Request, session: Session) -> Response:
        level = request.query_params.get("level", "info")
        level = level if level in LEVELS else "info"
        lines = await asyncio.to_thread(_tail, parts.log_file, 200, level)
        return show(request, session, "logs.html", lines=lines, level=level, levels=LEVELS,
                    log_file=parts.log_file, exists=parts.log_file.is_file())

    async def log_events(request: Request, _session: Session) -> Response:
        level = request.query_params.get("level", "info")
        level = level if level in LEVELS else "info"

        async def events() -> AsyncIterator[bytes]:
            path = parts.log_file
            offset = path.stat().st_size if path.is_file() else 0
            while not parts.closing.is_set() and not await request.is_disconnected():
                await asyncio.sleep(1.0)
                if not path.is_file():
                    continue
                size = path.stat().st_size
                if size < offset:  # rotated
                    offset = 0
                if size == offset:
                    yield b": keep-alive\n\n"
                    continue
                with path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read(size - offset)
                complete = chunk.rfind(b"\n") + 1
                offset += complete
                for raw in chunk[:complete].decode("utf-8", "replace").splitlines():
                    entry = _log_entry(raw)
                    if entry is not None and _at_least(entry["level"], level):
                        yield _sse("line", entry)

        return _stream(events())

    return [
        Route("/ui/login", login, methods=["GET"]),
        Route("/ui/logout", action(logout), methods=["POST"]),
        Route("/ui/static/{name}", static, methods=["GET"]),
        Route("/ui/", page(overview), methods=["GET"]),
        Route("/ui/pairing", page(pairing), methods=["GET"]),
        Route("/ui/pairing/{action}", action(pairing_action), methods=["POST"]),
        Route("/ui/agents", page(agents), methods=["GET"]),
        Route("/ui/agents/{name}/{action}", action(agent_action), methods=["POST"]),
        Route("/ui/jobs/{id}/cancel", action(job_cancel), methods=["POST"]),
        Route("/ui/models", page(models), methods=["GET"]),
        Route("/ui/models/events", page(model_events), methods=["GET"]),
        Route("/ui/models/{name}/{action}", action(model_action), methods=["POST"]),
        Route("/ui/chat", page(chat), methods=["GET"]),
        Route("/ui/chat/send", action(chat_send), methods=["POST"]),
        Route("/ui/chat/events", page(chat_events), methods=["GET"]),
        Route("/ui/logs", page(logs), methods=["GET"]),
        Route("/ui/logs/events", page(log_events), methods=["GET"]),
    ]


def ui_admin_routes(auth: UiAuth, base_url: Callable[[], str]) -> list[Route]:
    """On the admin socket: a login link for `aibox ui`, the sessions, and revoking them."""

    async def login_link(_request: Request) -> Response:
        token, expires = auth.issue_login()
        log.info("page login link issued")
        return JSONResponse({"url": f"{base_url()}/ui/login?token={token}", "expires_at": expires})

    async def sessions(_request: Request) -> Response:
        return JSONResponse({"sessions": [s.summary() for s in auth.sessions()]})

    async def revoke(request: Request) -> Response:
        body = await read_json_object(request)
        which = body.get("id")
        if which is not None and not isinstance(which, str):
            raise ApiError(400, "'id' must be a session id string", param="id")
        count = auth.revoke(which)
        if which is not None and count == 0:
            raise ApiError(404, f"no session {which!r}; see `aibox ui sessions`", code="session_not_found")
        log.info("page sessions revoked", extra={"count": count})
        return JSONResponse({"revoked": count})

    return [
        Route("/ui/login", login_link, methods=["POST"]),
        Route("/ui/sessions", sessions, methods=["GET"]),
        Route("/ui/sessions/revoke", revoke, methods=["POST"]),
    ]


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n".encode()


def _stream(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=SECURITY_HEADERS | {"X-Accel-Buffering": "no"})


def _log_entry(raw: str) -> dict | None:
    try:
        entry = json.loads(raw)
    except ValueError:
        return {"ts": "", "level": "info", "logger": "", "msg": raw}
    if not isinstance(entry, dict):
        return None
    return {"ts": str(entry.get("ts", "")), "level": str(entry.get("level", "info")).lower(),
            "logger": str(entry.get("logger", "")), "msg": str(entry.get("msg", ""))}


def _at_least(level: str, floor: str) -> bool:
    rank = {name: i for i, name in enumerate(LEVELS)}
    return rank.get(level, 1) >= rank[floor]


def _tail(path: Path, n: int, floor: str) -> list[dict]:
    """The last `n` entries at `floor` or above of the daemon's JSON log."""
    if not path.is_file():
        return []
    kept: deque[dict] = deque(maxlen=n)
    with path.open(encoding="utf-8", errors="replace") as f:
        for raw in f:
            entry = _log_entry(raw.rstrip("\n"))
            if entry is not None and _at_least(entry["level"], floor):
                kept.append(entry)
    return list(kept)
