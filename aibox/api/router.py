"""Admin API route for the router's dry run: `POST /router/decide`, which `aibox route`
asks a running daemon for (served on the UNIX socket with the rest of the admin API)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aibox.api.errors import ApiError, read_json_object
from aibox.router import Router


def router_routes(router: Router) -> list[Route]:
    async def decide(request: Request) -> Response:
        body = await read_json_object(request)
        if not isinstance(body.get("text"), str):
            raise ApiError(400, "body must be a JSON object with a string 'text'", param="text")
        decision = router.decide(
            body["text"], agent=body.get("agent"), sender=body.get("sender"), pinned=body.get("pinned"),
            override=body.get("override"), attachment_chars=int(body.get("attachment_chars") or 0),
        )
        return JSONResponse(decision.as_dict())

    return [Route("/router/decide", decide, methods=["POST"])]
