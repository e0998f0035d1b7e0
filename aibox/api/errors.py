"""Errors as OpenAI-style JSON bodies: every bad request gets a 4xx that names the problem,
and an error nobody foresaw a JSON 500 that closes the connection, never a plain-text page.

Each refusal is logged at info with method, path, status and code, never the message (it
can quote the request) or the body. Bodies are ASCII-escaped JSON, so text that cannot be
encoded (a lone surrogate the client sent) can still be reported."""

from __future__ import annotations

import json
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from aibox.secrets import redact

log = logging.getLogger("aibox.api")


class ErrorResponse(JSONResponse):
    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return ErrorResponse(self.body(), status_code=self.status, headers=self.headers)

    def respond(self, request: Request) -> JSONResponse:
        """The response, logged: what an operator needs to see a client being refused."""
        log.info(
            "request refused",
            extra={"method": request.method, "path": request.url.path, "status": self.status, "code": self.code},
        )
        return self.response()

    def body(self) -> dict:
        return {"error": {"message": redact(self.message), "type": self.type, "param": self.param, "code": self.code}}


class BodyTimeout(ApiError):
    """The client sent its body too slowly (slow-loris); the connection is closed after the answer."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            408, f"the request body did not arrive within {seconds:g} s", code="request_timeout",
            headers={"Connection": "close"},
        )


async def api_error_response(request: Request, exc: Exception) -> Response:
    """Starlette's exception handler for `ApiError`."""
    assert isinstance(exc, ApiError)
    return exc.respond(request)


async def internal_error_response(request: Request, exc: Exception) -> Response:
    """Starlette's handler of last resort: an error nobody foresaw becomes a JSON 500 that
    closes the connection, with the traceback in the log (never in the answer)."""
    exc.logged = True  # type: ignore[attr-defined]  # the server's guard must not log it twice
    log.error(
        "unexpected error answering a request",
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"method": request.method, "path": request.url.path, "status": 500, "code": "internal_error"},
    )
    return ApiError(
        500, "internal error; the box logged it", type="server_error", code="internal_error", headers={"Connection": "close"}
    ).response()


ERROR_HANDLERS = {ApiError: api_error_response, Exception: internal_error_response}


async def read_json_object(request: Request) -> dict:
    """The admin API's request body: a JSON object (an empty body is an empty object)."""
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise ApiError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


async def read_field(request: Request, name: str) -> str:
    """One required, non-empty string field of an admin request's JSON body."""
    value = (await read_json_object(request)).get(name)
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"'{name}' is required", param=name)
    return value.strip()
