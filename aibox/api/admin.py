"""The admin API, served only on the daemon's UNIX socket (mode 0660: root and the aibox
group). The `aibox` CLI talks to it; nothing here is reachable over the network. Its
routes live beside this file by subject (pairing.py, agents.py, router.py); this module
adds status and model unloading and assembles the app."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from aibox.api.errors import ERROR_HANDLERS, ApiError
from models.catalog import Catalog, CatalogError
from models.pool import ModelPool


def build_admin_app(status: Callable[[], dict[str, Any]], catalog: Catalog, pool: ModelPool, routes: Sequence[BaseRoute]) -> Starlette:
    """`status` is what `aibox status` shows; `routes` the subject routes to serve too."""

    async def show_status(_request: Request) -> Response:
        return JSONResponse(status())

    async def unload(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            catalog.get(name)
        except CatalogError as e:
            raise ApiError(404, str(e), code="model_not_found") from None
        return JSONResponse({"model": name, "unloaded": await pool.unload(name)})

    own = [
        Route("/status", show_status, methods=["GET"]),
        Route("/models/{name}/unload", unload, methods=["POST"]),
    ]
    return Starlette(routes=[*own, *routes], exception_handlers=ERROR_HANDLERS)
