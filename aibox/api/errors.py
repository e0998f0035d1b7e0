"""Errors as OpenAI-style JSON bodies: every bad request gets a 4xx that names the problem."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from aibox.secrets import redact


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
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    def body(self) -> dict:
        return {"error": {"message": redact(self.message), "type": self.type, "param": self.param, "code": self.code}}


async def api_error_response(_request: Request, exc: Exception) -> Response:
    """Starlette's exception handler for `ApiError`."""
    assert isinstance(exc, ApiError)
    return exc.response()


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
