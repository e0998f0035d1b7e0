"""Loaded models, each on its own worker thread, streamed to asyncio.

The pool loads a model on first use, keeps at most `max_loaded` in memory, unloads the
ones idle longer than `keep_alive_s`, and gives every model a bounded queue: when it is
full, the caller gets `BusyError` with a retry hint at once instead of waiting forever or
growing memory without bound.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from models.catalog import Catalog, ModelCard
from models.chat_template import Message
from models.files import VerifyError, is_present, verify
from models.runtime import LocalModel
from models.sampling import SamplingParams
from models.speculative.accelerator import Accelerator, profile_on_load
from models.stream import GenerationStats, TextStream

log = logging.getLogger(__name__)


# Retry-After bounds: no sooner than a second, never longer than a client would wait.
MIN_RETRY_S = 1.0
MAX_RETRY_S = 60.0
# How quickly the measured seconds per job follow a change of workload.
JOB_S_WEIGHT = 0.3
# A model whose load failed (memory, a corrupt file) may load once the operator acted or
# another model was unloaded: clients are told to look again after this long.
LOAD_RETRY_S = 30.0


class BusyError(Exception):
    """The model's queue is full; try again after `retry_after` seconds."""

    def __init__(self, model: str, retry_after: float) -> None:
        super().__init__(f"{model} is busy: its queue is full; retry in {retry_after:.0f} s")
        self.model = model
        self.retry_after = retry_after


class ModelUnavailableError(Exception):
    """The model cannot be loaded (a corrupt file, a load that failed, or not a local model);
    `retry_after` is set where trying again later can help."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelMissingError(ModelUnavailableError):
    """The model's file is not on this box: only `aibox models pull` helps, not retrying."""


@dataclass
class PoolSettings:
    models_dir: Path
    threads: int
    n_ctx: int = 8192
    max_loaded: int = 2
    keep_alive_s: float = 600.0
    queue_size: int = 8
    state_cache_bytes: int = 256 << 20
    kv_reuse: bool = True
    # where measured speculation profiles live; None keeps every model on plain decoding
    state_dir: Path | None = None


class _Job:
    _DONE = object()

    def __init__(self, prompt: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop) -> None:
        self.prompt = prompt
        self.params = params
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.stats: GenerationStats | None = None

    def put(self, item: object) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class LocalStream(TextStream):
    """An answer a worker thread is generating; pieces cross to asyncio through the job's queue."""

    def __init__(self, worker: "ModelWorker", job: _Job) -> None:
        self._worker = worker
        self._job = job
        self.model = worker.card.name
        self.prompt_tokens = len(job.prompt)

    @property
    def stats(self) -> GenerationStats | None:
        return self._job.stats

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        try:
            while True:
                item = await self._job.events.get()
                if item is _Job._DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._job.cancel.set()

    def cancel(self) -> None:
        self._job.cancel.set()


class ModelWorker:
    """One loaded model and the thread that runs its jobs one after another."""

    def __init__(
        self,
        model: LocalModel,
        queue_size: int,
        on_finished: Callable[[str, GenerationStats], None],
        accelerator: Accelerator | None = None,
    ) -> None:
        self.model = model
        self.accelerator = accelerator
        self.card = model.card
        self.queue_size = queue_size
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._on_finished = on_finished
        self.last_used = time.monotonic()
        self.recent_tok_s = 0.0
        self.job_s: float | None = None  # measured seconds per job, a moving average
        self._running_since: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"model-{self.card.name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting or running."""
        with self._lock:
            return self._pending

    def submit(self, prompt: list[int], params: SamplingParams) -> LocalStream:
        self.model.check_fits(prompt)
        self.model.check_params(params)
        with self._lock:
            if self._pending >= self.queue_size:
                raise BusyError(self.card.name, retry_after=self.retry_hint())
            self._pending += 1
        self.last_used = time.monotonic()
        job = _Job(prompt, params, asyncio.get_running_loop())
        self._jobs.put(job)
        return LocalStream(self, job)

    def retry_hint(self) -> float:
        """Seconds until the queue has room for sure: the jobs ahead times the measured
        seconds per job (before any job finished here, the running one's age so far).
        Reads the count without the lock: `submit` calls it while holding it."""
        per_job = self.job_s
        if per_job is None:
            since = self._running_since
            per_job = time.monotonic() - since if since is not None else MIN_RETRY_S
        return max(MIN_RETRY_S, min(MAX_RETRY_S, self._pending * per_job))

    def _measured(self, seconds: float) -> None:
        self.job_s = seconds if self.job_s is None else (1 - JOB_S_WEIGHT) * self.job_s + JOB_S_WEIGHT * seconds

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if job.cancel.is_set():
                    continue
                self._running_since = time.monotonic()
                if self.accelerator is not None and self.accelerator.applies(job.params):
                    job.stats = self.accelerator.generate(self.model, job.prompt, job.params, job.put, job.cancel.is_set)
                else:
                    job.stats = self.model.generate(job.prompt, job.params, job.put, job.cancel.is_set)
                if job.stats.tokens_per_s:
                    self.recent_tok_s = job.stats.tokens_per_s
                if job.stats.finish_reason != "cancelled":
                    self._measured(job.stats.total_s)
                self._on_finished(self.card.name, job.stats)
            except Exception as e:  # surfaced to the awaiting consumer, never kills the thread
                log.exception("generation failed on %s", self.card.name)
                job.put(e)
            finally:
                with self._lock:
                    self._pending -= 1
                self._running_since = None
                self.last_used = time.monotonic()
                job.put(_Job._DONE)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()
        if self.accelerator is not None:
            self.accelerator.close()
        self.model.close()


class ModelPool:
    def __init__(
        self,
        catalog: Catalog,
        settings: PoolSettings,
        on_finished: Callable[[str, GenerationStats], None] = lambda _m, _s: None,
    ) -> None:
        self.catalog = catalog
        self.settings = settings
        self._on_finished = on_finished
        self._workers: dict[str, ModelWorker] = {}
        self._loading: dict[str, asyncio.Future] = {}
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> dict[str, ModelWorker]:
        return dict(self._workers)

    async def worker(self, name: str) -> ModelWorker:
        """The running worker for a model, loading it (and evicting an idle one) if needed."""
        if name in self._workers:
            return self._workers[name]
        async with self._lock:
            if name in self._workers:
                return self._workers[name]
            card = self.catalog.get(name)
            if not card.is_local:
                raise ModelUnavailableError(f"{name} is a remote model; it does not run in this pool")
            # the file first: a model that cannot load must not cost a working one its place
            path = await asyncio.to_thread(self._verified, card)
            await self._make_room()
            model = await asyncio.to_thread(self._load, card, path)
            accelerator = await asyncio.to_thread(self._accelerate, model)
            worker = ModelWorker(model, self.settings.queue_size, self._on_finished, accelerator)
            self._workers[name] = worker
            return worker

    def _verified(self, card: ModelCard) -> Path:
        if not is_present(card, self.settings.models_dir):
            raise ModelMissingError(f"{card.name} is not on this box; run `aibox models pull {card.name}`")
        try:
            return verify(card, self.settings.models_dir)
        except VerifyError as e:
            raise ModelUnavailableError(str(e), retry_after=LOAD_RETRY_S) from None

    def _load(self, card: ModelCard, path: Path) -> LocalModel:
        log.info("loading model", extra={"model": card.name, "path": str(path)})
        try:
            return LocalModel(
                card,
                path,
                threads=self.settings.threads,
                n_ctx=self.settings.n_ctx,
                state_cache_bytes=self.settings.state_cache_bytes,
                kv_reuse=self.settings.kv_reuse,
            )
        except (ValueError, RuntimeError, OSError) as e:  # llama.cpp refused the file or ran out of memory
            raise ModelUnavailableError(f"{card.name} failed to load: {e}", retry_after=LOAD_RETRY_S) from None

    def _accelerate(self, model: LocalModel) -> Accelerator | None:
        """Speculative decoding for this model, if its measured profile says it pays here (a
        quick profile is measured the first time a model loads on this machine, before its
        worker exists, so no generation runs during it)."""
        if self.settings.state_dir is None:
            return None
        try:
            profile_on_load(model, self.settings.state_dir, self.settings.threads)
            return Accelerator.for_model(model, self.catalog, self.settings.models_dir, self.settings.state_dir, self.settings.threads)
        except (ValueError, OSError, RuntimeError) as e:  # a failed measurement costs the speed-up, not the model
            log.warning("speculative decoding unavailable", extra={"model": model.card.name, "error": str(e)})
            return None

    async def _make_room(self) -> None:
        while len(self._workers) >= self.settings.max_loaded:
            idle = [w for w in self._workers.values() if w.depth == 0]
            if not idle:
                busiest = min(self._workers.values(), key=lambda w: w.depth)
                raise BusyError(busiest.card.name, retry_after=busiest.retry_hint())
            victim = min(idle, key=lambda w: w.last_used)
            await self.unload(victim.card.name)

    async def unload(self, name: str) -> bool:
        worker = self._workers.pop(name, None)
        if worker is None:
            return False
        log.info("unloading model", extra={"model": name})
        await asyncio.to_thread(worker.close)
        return True

    async def stream(self, name: str, messages: Sequence[Message], params: SamplingParams) -> LocalStream:
        worker = await self.worker(name)
        prompt = await asyncio.to_thread(worker.model.chat_tokens, messages)
        return worker.submit(prompt, params)

    async def reap_idle(self) -> list[str]:
        """Unloads models idle longer than keep-alive; returns their names."""
        now = time.monotonic()
        expired = [
            name
            for name, w in self._workers.items()
            if w.depth == 0 and now - w.last_used > self.settings.keep_alive_s
        ]
        for name in expired:
            await self.unload(name)
        return expired

    async def close(self) -> None:
        for name in list(self._workers):
            await self.unload(name)
