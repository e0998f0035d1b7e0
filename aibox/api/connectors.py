"""Admin API routes for the chat connectors: pairing (list, approve, revoke), served on the
daemon's UNIX socket next to the rest of the admin API (`aibox pairing ...` calls them)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aibox.api.errors import ApiError
from connectors.pairing import PairingError

if TYPE_CHECKING:
    from aibox.daemon import Daemon
    from connectors.manager import ConnectorManager


def connector_routes(daemon: "Daemon") -> list[Route]:
    def manager() -> "ConnectorManager":
        if daemon.connectors is None:
            raise ApiError(409, "no chat connectors are configured (add a [connectors.NAME] table)", code="no_connectors")
        return daemon.connectors

    async def field(request: Request, name: str) -> str:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise ApiError(400, "the body is not JSON") from None
        value = body.get(name) if isinstance(body, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise ApiError(400, f"'{name}' is required", param=name)
        return value.strip()

    async def listing(_request: Request) -> Response:
        m = manager()
        return JSONResponse({
            "pending": [
                {"code": p.code, "platform": p.platform, "sender_id": p.sender_id, "name": p.name,
                 "expires_at": p.expires_at.isoformat()}
                for p in m.pending()
            ],
            "approved": [
                {"platform": a.platform, "sender_id": a.sender_id, "role": a.role, "name": a.name}
                for a in m.approved()
            ],
        })

    async def approve(request: Request) -> Response:
        code = await field(request, "code")
        try:
            a = manager().approve(code)
        except PairingError as e:
            raise ApiError(404, str(e), code="pairing_not_found") from None
        return JSONResponse({"platform": a.platform, "sender_id": a.sender_id, "role": a.role, "name": a.name})

    async def revoke(request: Request) -> Response:
        sender = await field(request, "sender")
        try:
            gone = manager().revoke(sender)
        except PairingError as e:
            raise ApiError(404, str(e), code="sender_not_found") from None
        return JSONResponse({"revoked": [{"platform": a.platform, "sender_id": a.sender_id} for a in gone]})

    return [
        Route("/pairing", listing, methods=["GET"]),
        Route("/pairing/approve", approve, methods=["POST"]),
        Route("/pairing/revoke", revoke, methods=["POST"]),
    ]
