"""Errors as OpenAI-style JSON bodies: every bad request gets a 4xx that names the problem."""

from __future__ import annotations

from starlette.responses import JSONResponse

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
