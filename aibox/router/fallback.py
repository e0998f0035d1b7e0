"""Serving a routed request: the chosen model first, the next candidate when it fails.

`Backends` is the one way from the box to a model: the local pool or a remote server.
It records the figures of every generation it served (aibox/usage.py) and measures
prompts for the agent runner, so nothing above the router touches the pool.

A model fails when it cannot load (ModelUnavailableError), its queue is full
(BusyError), the prompt does not fit it, its remote server refuses or goes away
(RemoteError), or generation raises. The next model in the decision's order then
serves, and the reply starts with one short line saying so. When a model fails after
part of its answer was already streamed, that part cannot be unsent: a line says the
answer restarts, and the next model answers in full. Without notes (the HTTP API, whose
answer names the serving model in `model`), nothing is added to the text, and a failure
mid-answer ends the stream with the error instead of a second answer behind the first.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence

from aibox.usage import UsageLog, UsageTags
from models.catalog import Catalog, CatalogError
from models.chat_template import Message
from models.pool import BusyError, ModelPool, ModelUnavailableError
from models.remote import RemoteError, RemoteModels
from models.runtime import ContextLengthError
from models.sampling import SamplingParams
from models.stream import GenerationStats, TextStream

log = logging.getLogger("aibox.router")

FAILURES = (BusyError, ModelUnavailableError, RemoteError, ContextLengthError, CatalogError, RuntimeError, OSError)


class AllModelsFailed(Exception):
    """No candidate could serve the request; the message lists why each one failed, and
    `errors` holds each one's error, so a caller can tell a prompt too long for every
    model (the client's to fix) from models busy for now."""

    def __init__(self, message: str, errors: Sequence[BaseException] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors)


def _why(error: BaseException) -> str:
    if isinstance(error, BusyError):
        return "is busy"
    if isinstance(error, ModelUnavailableError):
        return "cannot be loaded"
    if isinstance(error, ContextLengthError):
        return "cannot fit the prompt"
    if isinstance(error, RemoteError):
        return {"unreachable": "is unreachable", "timeout": "did not answer in time", "refused": "refused the request"}.get(
            error.kind, "failed"
        )
    return "failed"


TokenCounter = Callable[[str], int]


class Backends:
    """Opens a stream on a model wherever it runs: the local pool or a remote server."""

    def __init__(self, catalog: Catalog, pool: ModelPool, remotes: RemoteModels, usage: UsageLog | None = None) -> None:
        self.catalog = catalog
        self.pool = pool
        self.remotes = remotes
        self.usage = usage

    async def open(self, model: str, messages: Sequence[Message], params: SamplingParams, tags: UsageTags) -> TextStream:
        card = self.catalog.get(model)
        if card.is_local:
            stream: TextStream = await self.pool.stream(model, messages, params)
        else:
            stream = await self.remotes.get(model).stream(messages, params)
        return Recorded(stream, self.usage, tags) if self.usage is not None else stream

    async def measure(self, order: Sequence[str]) -> tuple[int, TokenCounter]:
        """The context window and a token counter of the first model in `order` that loads,
        so a chosen model that cannot load leaves the turn to the fallback chain; for a
        remote model, its card's window and an estimate of four characters per token."""
        for i, model in enumerate(order):
            card = self.catalog.get(model)
            if not card.is_local:
                return card.context_length, lambda t: len(t) // 4 + 1
            try:
                worker = await self.pool.worker(model)
            except ModelUnavailableError:
                if i == len(order) - 1:
                    raise
                continue
            return worker.model.n_ctx, lambda t, w=worker: len(w.model.tokenize(t, special=False))
        raise ValueError("no model to measure the context with")


class Recorded(TextStream):
    """A model's stream whose figures go to the usage log once it finished."""

    def __init__(self, inner: TextStream, usage: UsageLog, tags: UsageTags) -> None:
        self._inner = inner
        self._usage = usage
        self._tags = tags
        self.model = inner.model

    @property
    def stats(self) -> GenerationStats | None:
        return self._inner.stats

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        try:
            async for piece in self._inner:
                yield piece
        finally:
            if self._inner.stats is not None:
                self._usage.record(self.model, self._inner.stats, self._tags)

    def cancel(self) -> None:
        self._inner.cancel()


class FallbackStream(TextStream):
    """Text of the answer from the first model in `order` that serves it.

    `model` is the one that served (set once it starts answering), `failures` what went
    wrong before, `stats` the serving generation's figures. `notes`: say in the text when
    another model answers than the one chosen (chat apps, where the text is all there is)."""

    def __init__(
        self, backends: Backends, order: Sequence[str], messages: Sequence[Message], params: SamplingParams, tags: UsageTags,
        notes: bool = True,
    ) -> None:
        if not order:
            raise ValueError("no model to try")
        self.backends = backends
        self.order = list(order)
        self.messages = list(messages)
        self.params = params
        self.tags = tags
        self.model: str | None = None
        self.stats: GenerationStats | None = None
        self.failures: list[tuple[str, str]] = []
        self.notes = notes
        self._errors: list[BaseException] = []
        self._current = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    def cancel(self) -> None:
        if self._current is not None:
            self._current.cancel()

    async def _iterate(self) -> AsyncIterator[str]:
        wanted = self.order[0]
        noted = False
        for model in self.order:
            sent_any = False
            try:
                stream = await self.backends.open(model, self.messages, self.params, self.tags)
                self._current = stream
                async for piece in stream:
                    if self.notes and not sent_any and not noted and model != wanted:
                        why = self.failures[0][1].split(":", 1)[0]
                        yield f"({wanted} {why}; answered by {model}.)\n\n"
                        noted = True
                    sent_any = True
                    self.model = model
                    yield piece
            except FAILURES as e:
                log.warning("model failed, falling back", extra={"model": model, "error": str(e), "streamed": sent_any})
                self._errors.append(e)
                if sent_any and not self.notes:
                    raise AllModelsFailed(f"{model} stopped mid-answer: {e}", [e]) from None
                if sent_any:
                    self.failures.append((model, f"stopped mid-answer: {e}"))
                    following = self._next_after(model)
                    if following:
                        yield f"\n\n({model} stopped mid-answer; {following} answers in full below.)\n\n"
                        noted = True
                else:
                    self.failures.append((model, f"{_why(e)}: {e}"))
                continue
            finally:
                if self._current is not None and self._current.stats is not None:
                    self.stats = self._current.stats
                self._current = None
            self.model = model
            return
        reasons = "; ".join(f"{m} {why}" for m, why in self.failures)
        raise AllModelsFailed(f"no model could answer: {reasons}", self._errors)

    def _next_after(self, model: str) -> str | None:
        i = self.order.index(model)
        return self.order[i + 1] if i + 1 < len(self.order) else None

