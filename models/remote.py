"""Models served by another machine over the OpenAI-compatible chat API (vLLM, SGLang,
llama.cpp's server), for cards with a `remote` section.

A remote model streams like a local one (both are `models.stream.TextStream`s), so the
router treats it as one more candidate: it keeps its own count of requests in
flight and its own measured speed. Failures surface as `RemoteError` at once: refused
connection and HTTP errors before any text, a server that goes away or stalls
(`read_timeout_s` between chunks) during the answer, so the caller can fall back instead
of hanging. The API key comes from the secrets store and never appears in an error.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import httpx

from models.catalog import Catalog, ModelCard, RemoteEndpoint
from models.chat_template import Message
from models.sampling import SamplingParams
from models.stream import GenerationStats, TextStream

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
SPEED_WINDOW = 20


class RemoteError(Exception):
    """The remote server refused, failed or went away; the message says which, and `kind`
    is one of "unreachable", "timeout", "refused" or "broken" (failed mid-answer)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class RemoteSpeed:
    tok_s: float
    ttft_s: float
    runs: int


def request_body(endpoint: RemoteEndpoint, messages: Sequence[Message], params: SamplingParams) -> dict:
    body = {
        "model": endpoint.model,
        "messages": [dict(m) for m in messages],
        "stream": True,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
    }
    if params.top_k > 0:
        body["top_k"] = params.top_k
    if params.min_p > 0:
        body["min_p"] = params.min_p
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    if params.grammar:
        body["grammar"] = params.grammar
    if params.presence_penalty:
        body["presence_penalty"] = params.presence_penalty
    if params.frequency_penalty:
        body["frequency_penalty"] = params.frequency_penalty
    if params.repeat_penalty != 1.0:
        body["repeat_penalty"] = params.repeat_penalty
    if params.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in params.logit_bias}
    return body


class RemoteStream(TextStream):
    """An answer streaming from a remote server over server-sent events."""

    def __init__(self, owner: "RemoteModel", response: httpx.Response, started: float, prompt_tokens: int) -> None:
        self._owner = owner
        self._response = response
        self._started = started
        self.model = owner.card.name
        self.prompt_tokens = prompt_tokens
        self.stats: GenerationStats | None = None
        self._closed = False
        self._cancelled = False

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        stats = GenerationStats(prompt_tokens=self.prompt_tokens)
        pieces = 0
        finished = False
        try:
            async for line in self._response.aiter_lines():
                if self._cancelled:
                    stats.finish_reason = "cancelled"
                    finished = True
                    break
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    finished = True
                    break
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    raise RemoteError(f"{self.model}: the server sent a malformed stream chunk", "broken") from None
                usage = chunk.get("usage") or {}
                if usage.get("completion_tokens"):
                    stats.completion_tokens = usage["completion_tokens"]
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        if stats.ttft_s is None:
                            stats.ttft_s = time.perf_counter() - self._started
                        pieces += 1
                        yield text
                    if choice.get("finish_reason"):
                        stats.finish_reason = choice["finish_reason"]
                        finished = True
        except httpx.TimeoutException:
            raise RemoteError(f"{self.model}: the server stopped sending for {self._owner.read_timeout_s:.0f} s", "timeout") from None
        except httpx.HTTPError as e:
            raise RemoteError(f"{self.model}: the server went away mid-answer ({type(e).__name__})", "broken") from None
        finally:
            await self._close()
        if not finished:
            raise RemoteError(f"{self.model}: the server closed the stream before the answer was complete", "broken")
        stats.completion_tokens = stats.completion_tokens or pieces
        stats.total_s = time.perf_counter() - self._started
        self.stats = stats
        self._owner.observe(stats)

    async def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._owner.in_flight -= 1
            await self._response.aclose()

    def cancel(self) -> None:
        """Stops at the next chunk; closing the connection tells the server to stop generating."""
        self._cancelled = True


class RemoteModel:
    def __init__(self, card: ModelCard, read_timeout_s: float = READ_TIMEOUT_S) -> None:
        if card.remote is None:
            raise ValueError(f"{card.name} has no remote section")
        self.card = card
        self.endpoint = card.remote
        self.read_timeout_s = read_timeout_s
        self.in_flight = 0
        self._recent: deque[tuple[float, float]] = deque(maxlen=SPEED_WINDOW)
        self._client = httpx.AsyncClient(
            base_url=self.endpoint.base_url.rstrip("/"),
            timeout=httpx.Timeout(connect=CONNECT_TIMEOUT_S, read=read_timeout_s, write=30.0, pool=30.0),
        )

    def _headers(self) -> dict[str, str]:
        if self.endpoint.api_key is None:
            return {}
        return {"Authorization": f"Bearer {self.endpoint.api_key.get()}"}

    async def stream(self, messages: Sequence[Message], params: SamplingParams) -> RemoteStream:
        """Sends the request and waits for the response to start; refusals raise here."""
        started = time.perf_counter()
        request = self._client.build_request(
            "POST", "/chat/completions", json=request_body(self.endpoint, messages, params), headers=self._headers()
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException:
            raise RemoteError(f"{self.card.name}: {self.endpoint.base_url} did not answer in time", "timeout") from None
        except httpx.HTTPError as e:
            raise RemoteError(f"{self.card.name}: cannot reach {self.endpoint.base_url} ({type(e).__name__})", "unreachable") from None
        if response.status_code != 200:
            detail = (await response.aread()).decode("utf-8", "replace")[:200]
            await response.aclose()
            raise RemoteError(f"{self.card.name}: {self.endpoint.base_url} answered HTTP {response.status_code}: {detail}", "refused")
        self.in_flight += 1
        return RemoteStream(self, response, started, prompt_tokens=0)

    def observe(self, stats: GenerationStats) -> None:
        if stats.tokens_per_s > 0 and stats.ttft_s is not None:
            self._recent.append((stats.tokens_per_s, stats.ttft_s))

    def measured(self) -> RemoteSpeed | None:
        if not self._recent:
            return None
        rates = sorted(r for r, _ in self._recent)
        ttfts = sorted(t for _, t in self._recent)
        return RemoteSpeed(rates[len(rates) // 2], ttfts[len(ttfts) // 2], len(rates))

    async def close(self) -> None:
        await self._client.aclose()


class RemoteModels:
    """The remote models of a catalog, each connected on first use."""

    def __init__(self, catalog: Catalog, read_timeout_s: float = READ_TIMEOUT_S) -> None:
        self.catalog = catalog
        self.read_timeout_s = read_timeout_s
        self._models: dict[str, RemoteModel] = {}

    def get(self, name: str) -> RemoteModel:
        if name not in self._models:
            self._models[name] = RemoteModel(self.catalog.get(name), self.read_timeout_s)
        return self._models[name]

    def in_flight(self, name: str) -> int:
        model = self._models.get(name)
        return model.in_flight if model is not None else 0

    def measured(self, name: str) -> RemoteSpeed | None:
        model = self._models.get(name)
        return model.measured() if model is not None else None

    async def close(self) -> None:
        for model in self._models.values():
            await model.close()
        self._models.clear()
