"""Admin API routes for pairing: list, approve, deny, revoke (`aibox pairing ...` calls them),
served on the daemon's UNIX socket with the rest of the admin API."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aibox.api.errors import ApiError, read_field
from connectors.manager import ConnectorManager
from connectors.pairing import PairingError


def pairing_routes(connectors: ConnectorManager) -> list[Route]:
    def manager() -> ConnectorManager:
        if not connectors.settings:
            raise ApiError(409, "no chat connectors are configured (add a [connectors.NAME] table)", code="no_connectors")
        return connectors

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
        code = await read_field(request, "code")
        try:
            a = manager().approve(code)
        except PairingError as e:
            raise ApiError(404, str(e), code="pairing_not_found") from None
        return JSONResponse({"platform": a.platform, "sender_id": a.sender_id, "role": a.role, "name": a.name})

    async def deny(request: Request) -> Response:
        code = await read_field(request, "code")
        try:
            p = manager().deny(code)
        except PairingError as e:
            raise ApiError(404, str(e), code="pairing_not_found") from None
        return JSONResponse({"code": p.code, "platform": p.platform, "sender_id": p.sender_id, "name": p.name})

    async def revoke(request: Request) -> Response:
        sender = await read_field(request, "sender")
        try:
            gone = manager().revoke(sender)
        except PairingError as e:
            raise ApiError(404, str(e), code="sender_not_found") from None
        return JSONResponse({"revoked": [{"platform": a.platform, "sender_id": a.sender_id} for a in gone]})

    return [
        Route("/pairing", listing, methods=["GET"]),
        Route("/pairing/approve", approve, methods=["POST"]),
        Route("/pairing/deny", deny, methods=["POST"]),
        Route("/pairing/revoke", revoke, methods=["POST"]),
    ]
