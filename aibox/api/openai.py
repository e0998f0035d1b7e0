"""The OpenAI-compatible HTTP API: chat completions (streaming and not), models, health,
readiness and Prometheus metrics. Any OpenAI client library works against it.

`"model": "auto"` asks the router (aibox/router) to pick the model for the request and
serve it with its fallback chain; the response's `model` names the one that answered."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from aibox.api.errors import ERROR_HANDLERS, ApiError
from aibox.metrics import CONTENT_TYPE, Metrics
from aibox.router import Router
from aibox.router.fallback import FAILURES, AllModelsFailed, FallbackStream
from aibox.usage import UsageTags
from models.catalog import Catalog, CatalogError, ModelCard
from models.chat_template import Message, TemplateRenderError
from models.pool import BusyError, ModelMissingError, ModelUnavailableError
from models.remote import RemoteError
from models.runtime import ContextLengthError, SamplingError
from models.sampling import SamplingParams
from models.stream import GenerationStats, TextStream

AUTO = "auto"
log = logging.getLogger("aibox.api")


# Parameters of OpenAI's API this box does not serve (yet): refused by name rather than
# silently ignored. Tools and JSON output come with the agents' tool calling.
_TOOLS_NEED = "this box does not run tool calls through the API yet; leave it out"
UNSUPPORTED: dict[str, str] = {
    "tools": _TOOLS_NEED,
    "tool_choice": _TOOLS_NEED,
    "functions": _TOOLS_NEED,
    "function_call": _TOOLS_NEED,
    "parallel_tool_calls": _TOOLS_NEED,
    "logprobs": "log probabilities are not returned by this box",
    "top_logprobs": "log probabilities are not returned by this box",
    "response_format": 'only {"type": "text"} is served; JSON modes are not supported yet',
    "audio": "this box's models answer in text only",
    "modalities": "this box's models answer in text only",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "this box does not search the web",
}


def _harmless(name: str, value: Any) -> bool:
    """Values of an unsupported parameter that ask for nothing: absent, empty, or the default."""
    if value is None or value == [] or value is False:
        return True
    if name == "tool_choice":
        return value == "none"
    if name == "response_format":
        return value == {"type": "text"}
    if name == "modalities":
        return value == ["text"]
    return False


class ChatCompletionRequest(BaseModel):
    """The request fields this box honours, strictly typed; `messages` are read by
    `parse_messages`, unsupported OpenAI fields are refused before this, other unknown
    fields are ignored as OpenAI does. top_k, min_p and repeat_penalty are llama.cpp's."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    messages: list[Any] = Field(min_length=1)
    stream: bool = False
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0, lt=1)] | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**64)] | None = None
    stop: str | list[str] | None = None
    n: Literal[1] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    repeat_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    stream_options: dict[str, Any] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key in v or {}:
            if not key.isdigit() or len(key) > 9:
                raise ValueError(f"keys must be token ids (integers as strings), got {key[:20]!r}")
        if v is not None and len(v) > 300:
            raise ValueError("at most 300 biased tokens")
        return v

    def sampling(self, default_max: int) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        defaults = SamplingParams()
        return SamplingParams(
            max_tokens=self.max_completion_tokens or self.max_tokens or default_max,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=defaults.top_k if self.top_k is None else self.top_k,
            min_p=defaults.min_p if self.min_p is None else self.min_p,
            seed=None if self.seed is None else self.seed % 2**32,  # llama.cpp seeds are 32-bit
            stop=stop,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repeat_penalty=self.repeat_penalty or 1.0,
            logit_bias=tuple((int(k), v) for k, v in (self.logit_bias or {}).items()),
        )


# Roles as the box's chat templates know them: a developer message is a system message,
# and a tool's result is read as a user turn (the box runs no tools for API clients).
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "user"}
_MEDIA_PARTS = {"image_url", "input_image", "image", "input_audio", "audio", "file", "input_file", "video_url"}


def parse_messages(raw: list[Any]) -> list[Message]:
    """The conversation as the templates take it; a 400 names the exact field at fault."""
    out: list[Message] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _invalid(where, "must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise _invalid(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {_short(role)}")
        content = m.get("content")
        if content is None:
            if role != "assistant":  # an assistant turn that only called tools or refused
                raise _invalid(f"{where}.content", "is required")
            content = m.get("refusal") if isinstance(m.get("refusal"), str) else ""
        text = _text(content, f"{where}.content")
        if role == "tool":
            text = f"Tool result:\n{text}"
        out.append({"role": ROLES[role], "content": text})
    return out


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _invalid(where, "must be a string or a list of content parts")
    pieces = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _MEDIA_PARTS:
            raise ApiError(400, f"'{at}': {kind} parts are not supported; this box's models read text only",
                           param=at, code="unsupported_content")
        if kind not in ("text", "refusal"):
            raise _invalid(f"{at}.type", f"must be 'text', got {_short(kind)}")
        value = part.get(kind)
        if not isinstance(value, str):
            raise _invalid(f"{at}.{kind}", "must be a string")
        pieces.append(value)
    return "".join(pieces)


def _invalid(param: str, problem: str) -> ApiError:
    return ApiError(400, f"'{param}' {problem}", param=param, code="invalid_value")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _param(loc: tuple) -> str:
    """A validation error's location as the request spells it (`stop[1]`), without
    pydantic's names for the union member or constraint it tried (`str`, `list[str]`)."""
    out = str(loc[0])
    for item in loc[1:]:
        if isinstance(item, int):
            out += f"[{item}]"
        elif isinstance(item, str) and item.isidentifier() and item not in ("str", "int", "float", "bool", "list", "dict"):
            out += f".{item}"
        elif isinstance(item, str) and item.isdigit():
            out += f"[{item!r}]"
    return out


# The deepest nesting a request may have: more only ever comes from a client gone wrong.
MAX_DEPTH = 32


def parse_json(body: bytes) -> Any:
    """The body as JSON, or a 400 saying what is wrong with it: not JSON, NaN or Infinity,
    nested deeper than MAX_DEPTH, numbers too long to read, or text that is not valid
    Unicode (a lone surrogate, which nothing downstream could encode)."""
    def constant(name: str) -> float:
        raise ValueError(f"{name} is not a JSON number")

    try:
        data = json.loads(body, parse_constant=constant)
    except RecursionError:
        raise ApiError(400, f"body is not valid JSON: nested deeper than {MAX_DEPTH} levels", code="invalid_json") from None
    except UnicodeDecodeError as e:
        raise ApiError(400, f"body is not valid JSON: not UTF-8 ({e.reason} at byte {e.start})", code="invalid_json") from None
    except ValueError as e:  # JSONDecodeError, and Python's limit on digits in an integer
        raise ApiError(400, f"body is not valid JSON: {e}", code="invalid_json") from None
    _check_tree(data)
    return data


def _check_tree(data: Any) -> None:
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ApiError(400, f"body is not valid JSON: nested deeper than {MAX_DEPTH} levels", code="invalid_json")
        if isinstance(value, str):
            _check_unicode(value, path)
        elif isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{key}" if path else key
                _check_unicode(key, path or "body")
                stack.append((item, child, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))


def _check_unicode(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        raise ApiError(
            400, f"'{path}' is not valid Unicode: lone surrogate U+{ord(bad):04X} at character {e.start}",
            param=path, code="invalid_encoding",
        ) from None


@dataclass(frozen=True)
class ApiSettings:
    default_model: str
    max_tokens: int
    max_body_bytes: int
    api_key: str | None = None  # None: no key asked (loopback only)


def build_app(
    settings: ApiSettings, router: Router, catalog: Catalog, metrics: Metrics,
    loaded: Callable[[], Collection[str]], ready: Callable[[], bool], extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The API's app: answers come from `router` (named models and `auto` alike);
    `loaded` and `ready` are read for /v1/models and /readyz; `extra_routes` are served
    beside them (the box's own page, aibox/api/ui.py)."""
    api = _Api(settings, router, catalog, metrics, loaded, ready)
    routes = [
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/models", api.list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", api.retrieve_model, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        *extra_routes,
    ]
    return Starlette(routes=routes, exception_handlers={**ERROR_HANDLERS, 404: _not_found, 405: _not_allowed})


async def _not_found(request: Request, _exc: Exception) -> Response:
    return ApiError(404, f"no route {request.url.path}", code="not_found").respond(request)


async def _not_allowed(request: Request, _exc: Exception) -> Response:
    return ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed").respond(request)


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
        return parse_json(bytes(body))

    async def chat_completions(self, request: Request) -> Response:
        self._authorize(request)
        data = await self._read_json(request)
        if not isinstance(data, dict):
            raise ApiError(400, "body must be a JSON object", code="invalid_request")
        for name, why in UNSUPPORTED.items():
            if not _harmless(name, data.get(name)):
                raise ApiError(400, f"'{name}' is not supported: {why}", param=name, code="unsupported_parameter")
        try:
            req = ChatCompletionRequest.model_validate(data)
        except ValidationError as e:
            # of a union's failed members, the one that got furthest names the field best (stop[1])
            first = e.errors()[0]["loc"][0]
            err = max((x for x in e.errors() if x["loc"][0] == first), key=lambda x: len(x["loc"]))
            param = _param(err["loc"])
            raise ApiError(400, f"'{param}': {err['msg']}", param=param, code="invalid_value") from None
        model = req.model or self.settings.default_model
        messages = parse_messages(req.messages)
        try:
            params = req.sampling(self.settings.max_tokens)
        except ValueError as e:
            raise ApiError(400, str(e), code="invalid_value") from None
        stream = await self._open(model, messages, params)
        completion_id = "chatcmpl-" + uuid.uuid4().hex
        created = int(time.time())
        if req.stream:
            include_usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(
                self._sse(stream, completion_id, created, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        text = await self._whole(request, stream)
        if text is None:
            return Response(status_code=499)  # nobody is there to read it
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

    async def _whole(self, request: Request, stream: TextStream) -> str | None:
        """The whole answer, or None when the client went away first: then the generation
        is cancelled, so the next request does not wait behind an answer nobody reads."""
        text = asyncio.ensure_future(stream.text())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({text, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not text.done():
                stream.cancel()
                text.cancel()
        try:
            return await text
        except asyncio.CancelledError:
            log.info("client went away; generation cancelled", extra={"path": request.url.path, "model": stream.model})
            return None
        except (*FAILURES, AllModelsFailed, SamplingError) as e:
            raise _api_error(e) from None
        finally:
            stream.cancel()

    async def _open(self, model: str, messages: list[Message], params: SamplingParams) -> TextStream:
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
                return await _Started.start(self.router.serve(decision, messages, params, tags, notes=False))
            return await self.router.open(model, messages, params, tags)
        except (*FAILURES, AllModelsFailed, SamplingError, TemplateRenderError) as e:
            raise _api_error(e) from None

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
        return JSONResponse({"object": "list", "data": [self._model_entry(card, loaded) for card in self.catalog]})

    def _model_entry(self, card: ModelCard, loaded: Collection[str]) -> dict:
        return {
            "id": card.name,
            "object": "model",
            "created": 0,
            "owned_by": "aibox",
            "roles": card.roles,
            "loaded": card.name in loaded,
            "available": self.router.available(card),
        }

    async def retrieve_model(self, request: Request) -> Response:
        self._authorize(request)
        name = request.path_params["model_id"]
        try:
            card = self.catalog.get(name)
        except CatalogError as e:
            raise ApiError(404, str(e), code="model_not_found", param="model") from None
        return JSONResponse(self._model_entry(card, self.loaded()))

    async def healthz(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, _request: Request) -> Response:
        if self.ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "starting"}, status_code=503)

    async def metrics(self, request: Request) -> Response:
        self._authorize(request)
        return Response(self.metrics_registry.render(), media_type=CONTENT_TYPE)


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (the body was read already, so
    the only message left to receive is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _api_error(e: BaseException) -> ApiError:
    """What a client should do about a model that could not answer: fix the request (4xx),
    retry after Retry-After (503 with the header), or give up (503 without it)."""
    if isinstance(e, (ModelMissingError, CatalogError)):
        return ApiError(404, str(e), code="model_not_found", param="model")
    if isinstance(e, ContextLengthError):
        return ApiError(400, str(e), code="context_length_exceeded", param="messages")
    if isinstance(e, SamplingError):
        return ApiError(400, str(e), code="invalid_value", param="logit_bias")
    if isinstance(e, TemplateRenderError):
        return ApiError(400, str(e), code="invalid_messages", param="messages")
    if isinstance(e, BusyError):
        return ApiError(503, str(e), type="server_busy", code="model_busy", headers=_retry_after(e.retry_after))
    errors = e.errors if isinstance(e, AllModelsFailed) else [e]
    hints = [h for h in map(_retry_hint, errors) if h is not None]
    if isinstance(e, AllModelsFailed) and not hints and any(isinstance(x, ContextLengthError) for x in errors):
        return ApiError(400, str(e), code="context_length_exceeded", param="messages")
    busy = any(isinstance(x, BusyError) for x in errors)
    return ApiError(
        503, str(e), type="server_busy" if busy else "server_error", code="model_busy" if busy else "model_unavailable",
        headers=_retry_after(min(hints)) if hints else {},
    )


# A remote server that was unreachable or slow may be back soon.
REMOTE_RETRY_S = 10.0


def _retry_hint(error: BaseException) -> float | None:
    if isinstance(error, (BusyError, ModelUnavailableError)):
        return error.retry_after
    if isinstance(error, RemoteError) and error.kind in ("unreachable", "timeout"):
        return REMOTE_RETRY_S
    return None


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _usage(stats: GenerationStats) -> dict:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": stats.cached_tokens},
    }
