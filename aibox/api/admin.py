"""The admin API, served only on the daemon's UNIX socket (mode 0660: root and the aibox
group). The `aibox` CLI talks to it; nothing here is reachable over the network."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aibox.api.errors import ApiError
from models.catalog import CatalogError

if TYPE_CHECKING:
    from aibox.daemon import Daemon


def build_admin_app(daemon: "Daemon") -> Starlette:
    async def status(_request: Request) -> Response:
        return JSONResponse(daemon.status())

    async def unload(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            daemon.catalog.get(name)
        except CatalogError as e:
            raise ApiError(404, str(e), code="model_not_found") from None
        return JSONResponse({"model": name, "unloaded": await daemon.pool.unload(name)})

    async def api_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response()

    routes = [
        Route("/status", status, methods=["GET"]),
        Route("/models/{name}/unload", unload, methods=["POST"]),
        *daemon.admin_routes,
    ]
    return Starlette(routes=routes, exception_handlers={ApiError: api_error})
