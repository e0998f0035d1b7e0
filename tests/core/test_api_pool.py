"""What the API's answers rest on in the pool and the fallback chain, on the real SmolLM2:
a missing model file costs no working model its place, Retry-After comes from the
measured time per job (and waiting that long is enough), and fallback notes stay out of
an answer when asked to (the API) and in it by default (chat apps)."""

from __future__ import annotations

import asyncio
import time

import pytest

from aibox.router.fallback import Backends, FallbackStream
from aibox.usage import UsageTags
from models.catalog import Catalog
from models.pool import MAX_RETRY_S, BusyError, ModelMissingError, ModelPool, PoolSettings
from models.remote import RemoteModels
from models.sampling import SamplingParams

SMOL = "smollm2-135m-instruct"
Q = [{"role": "user", "content": "Tell me about the sea."}]
GREEDY = SamplingParams(max_tokens=8, temperature=0)


@pytest.fixture
def catalog(tmp_path):
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "ghost.toml").write_text(f'name = "ghost"\nfile = "ghost.gguf"\nsize = 10\nsha256 = "{"0" * 64}"\n')
    return Catalog.load(cards)


def _pool(catalog, models_dir, **kw) -> ModelPool:
    return ModelPool(catalog, PoolSettings(models_dir=models_dir, threads=2, n_ctx=2048, **kw))


async def test_a_missing_file_unloads_no_working_model(catalog, models_dir):
    pool = _pool(catalog, models_dir, max_loaded=1)
    try:
        await pool.worker(SMOL)
        with pytest.raises(ModelMissingError, match="aibox models pull ghost"):
            await pool.worker("ghost")
        assert list(pool.loaded) == [SMOL]
    finally:
        await pool.close()


async def test_retry_after_comes_from_the_measured_time_per_job(catalog, models_dir):
    pool = _pool(catalog, models_dir, queue_size=2)
    job = SamplingParams(max_tokens=48, temperature=0)
    try:
        worker = await pool.worker(SMOL)
        prompt = worker.model.chat_tokens(Q)
        await worker.submit(prompt, job).text()  # one job measured
        streams = [worker.submit(prompt, job) for _ in range(2)]
        with pytest.raises(BusyError) as e:
            worker.submit(prompt, job)
        hint = e.value.retry_after
        assert worker.job_s is not None
        # two jobs ahead of the caller, each taking what jobs took here: not 2 x 5 s
        assert hint == pytest.approx(max(1.0, 2 * worker.job_s), rel=0.01)
        assert hint < MAX_RETRY_S
        consumers = [asyncio.create_task(s.text()) for s in streams]
        refused_at = time.monotonic()
        await asyncio.gather(*consumers)
        emptied_after = time.monotonic() - refused_at
        # the hint is what the wait turned out to be, give or take the variance of a shared CPU
        assert hint <= max(1.0, emptied_after * 2) + 1.0
        await worker.submit(prompt, job).text()
    finally:
        await pool.close()


async def _answer(pool: ModelPool, catalog: Catalog, notes: bool) -> tuple[str | None, str]:
    """Who served, and the text, when the first choice's file is missing."""
    stream = FallbackStream(Backends(catalog, pool, RemoteModels(catalog)), ["ghost", SMOL], Q, GREEDY, UsageTags("api"), notes)
    text = await stream.text()
    return stream.model, text


async def test_fallback_notes_are_left_out_when_asked(catalog, models_dir):
    pool = _pool(catalog, models_dir)
    try:
        plain = await (await pool.stream(SMOL, Q, GREEDY)).text()
        quiet = await _answer(pool, catalog, notes=False)
        noted = await _answer(pool, catalog, notes=True)
    finally:
        await pool.close()
    assert quiet == (SMOL, plain)
    assert noted == (SMOL, f"(ghost cannot be loaded; answered by {SMOL}.)\n\n" + plain)
