"""The OpenAI-compatible HTTP API: chat completions (streaming and not), models, health,
readiness and Prometheus metrics. Any OpenAI client library works against it.

`"model": "auto"` asks the router (aibox/router) to pick the model for the request and
serve it with its fallback chain; the response's `model` names the one that answered."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from aibox.api.errors import ApiError, api_error_response
from aibox.metrics import CONTENT_TYPE, Metrics
from aibox.router import Router
from aibox.router.fallback import AllModelsFailed, FallbackStream
from aibox.usage import UsageTags
from models.catalog import Catalog, CatalogError
from models.chat_template import TemplateRenderError
from models.pool import BusyError, ModelUnavailableError
from models.runtime import ContextLengthError
from models.sampling import SamplingParams
from models.stream import GenerationStats, TextStream

AUTO = "auto"


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's request this box honours; unknown fields are ignored as
    OpenAI does, wrong types of known fields are refused."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    n: Literal[1] = 1
    stream_options: dict[str, Any] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def sampling(self, default_max: int) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=self.max_completion_tokens or self.max_tokens or default_max,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=stop,
        )


@dataclass(frozen=True)
class ApiSettings:
    default_model: str
    max_tokens: int
    max_body_bytes: int
    api_key: str | None = None  # None: no key asked (loopback only)


def build_app(
    settings: ApiSettings, router: Router, catalog: Catalog, metrics: Metrics,
    loaded: Callable[[], Collection[str]], ready: Callable[[], bool],
) -> Starlette:
    """The API's app: answers come from `router` (named models and `auto` alike);
    `loaded` and `ready` are read for /v1/models and /readyz."""
    api = _Api(settings, router, catalog, metrics, loaded, ready)
    routes = [
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/models", api.list_models, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={ApiError: api_error_response, 404: _not_found, 405: _not_allowed})


async def _not_found(request: Request, _exc: Exception) -> Response:
    return ApiError(404, f"no route {request.url.path}", code="not_found").response()


async def _not_allowed(request: Request, _exc: Exception) -> Response:
    return ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed").response()


class _Started(TextStream):
    """A routed answer whose first piece is already in hand, so that every candidate
    failing becomes an HTTP error before the status line is sent, like a failing model is."""

    def __init__(self, stream: FallbackStream, pieces: AsyncIterator[str], first: str | None) -> None:
        self._stream = stream
        self._pieces = pieces
        self._first = first

    @classmethod
    async def start(cls, stream: FallbackStream) -> "_Started":
        pieces = aiter(stream)
        try:
            first = await anext(pieces)
        except StopAsyncIteration:
            first = None
        return cls(stream, pieces, first)

    @property
    def model(self) -> str:
        assert self._stream.model is not None
        return self._stream.model

    @property
    def stats(self) -> GenerationStats | None:
        return self._stream.stats

    def cancel(self) -> None:
        self._stream.cancel()

    async def __aiter__(self) -> AsyncIterator[str]:
        if self._first is not None:
            yield self._first
        async for piece in self._pieces:
            yield piece


class _Api:
    def __init__(
        self, settings: ApiSettings, router: Router, catalog: Catalog, metrics: Metrics,
        loaded: Callable[[], Collection[str]], ready: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.router = router
        self.catalog = catalog
        self.metrics_registry = metrics
        self.loaded = loaded
        self.ready = ready

    def _authorize(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer <key>)", type="authentication_error", code="invalid_api_key")

    async def _read_json(self, request: Request) -> Any:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body is {declared} bytes; the limit is {limit}", code="body_too_large")
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
        except ClientDisconnect:
            raise ApiError(400, "client disconnected while sending the body") from None
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"body is not valid JSON: {e}", code="invalid_json") from None

    async def chat_completions(self, request: Request) -> Response:
        self._authorize(request)
        data = await self._read_json(request)
        if not isinstance(data, dict):
            raise ApiError(400, "body must be a JSON object", code="invalid_request")
        try:
            req = ChatCompletionRequest.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            param = ".".join(str(p) for p in err["loc"])
            raise ApiError(400, f"'{param}': {err['msg']}", param=param, code="invalid_value") from None
        model = req.model or self.settings.default_model
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        stream = await self._open(model, messages, req.sampling(self.settings.max_tokens))
        completion_id = "chatcmpl-" + uuid.uuid4().hex
        created = int(time.time())
        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(
                self._sse(stream, completion_id, created, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            text = await stream.text()
        finally:
            stream.cancel()
        stats = stream.stats
        assert stats is not None
        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": stream.model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": _finish(stats.finish_reason)}
                ],
                "usage": _usage(stats),
            }
        )

    async def _open(self, model: str, messages: list[dict], params: SamplingParams) -> TextStream:
        tags = UsageTags("api")
        decision = None
        if model == AUTO:
            asked = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            try:
                decision = self.router.decide(asked)
            except LookupError as e:  # no model on the box at all
                raise ApiError(503, str(e), type="server_error", code="model_unavailable") from None
        try:
            if decision is not None:
                return await _Started.start(self.router.serve(decision, messages, params, tags))
            return await self.router.open(model, messages, params, tags)
        except CatalogError as e:
            raise ApiError(404, str(e), code="model_not_found", param="model") from None
        except ContextLengthError as e:
            raise ApiError(400, str(e), code="context_length_exceeded", param="messages") from None
        except TemplateRenderError as e:
            raise ApiError(400, str(e), code="invalid_messages", param="messages") from None
        except BusyError as e:
            raise ApiError(
                503, str(e), type="server_busy", code="model_busy", headers={"Retry-After": str(int(e.retry_after + 0.999))}
            ) from None
        except (ModelUnavailableError, AllModelsFailed) as e:
            raise ApiError(503, str(e), type="server_error", code="model_unavailable") from None

    async def _sse(self, stream: TextStream, completion_id: str, created: int, include_usage: bool) -> AsyncIterator[bytes]:
        def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
            body: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": stream.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else [],
            }
            if usage is not None:
                body["usage"] = usage
            return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            async for piece in stream:
                yield chunk({"content": piece})
            stats = stream.stats
            assert stats is not None
            yield chunk({}, _finish(stats.finish_reason))
            if include_usage:
                yield chunk({}, usage=_usage(stats))
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError:
            stream.cancel()
            raise
        except Exception as e:  # the status line is gone; report in-band as OpenAI does
            stream.cancel()
            yield b"data: " + json.dumps({"error": {"message": str(e), "type": "server_error"}}).encode() + b"\n\n"
        finally:
            stream.cancel()

    async def list_models(self, request: Request) -> Response:
        self._authorize(request)
        loaded = self.loaded()
        data = [
            {
                "id": card.name,
                "object": "model",
                "created": 0,
                "owned_by": "aibox",
                "roles": card.roles,
                "loaded": card.name in loaded,
                "available": self.router.available(card),
            }
            for card in self.catalog
        ]
        return JSONResponse({"object": "list", "data": data})

    async def healthz(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, _request: Request) -> Response:
        if self.ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "starting"}, status_code=503)

    async def metrics(self, request: Request) -> Response:
        self._authorize(request)
        return Response(self.metrics_registry.render(), media_type=CONTENT_TYPE)


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _usage(stats: GenerationStats) -> dict:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": stats.cached_tokens},
    }
