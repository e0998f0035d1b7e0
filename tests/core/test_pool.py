"""The model pool: cap on loaded models, idle unload, bounded queues, cancellation, and a
missing model file reported clearly. Two catalog names point at the same real SmolLM2 file
(a user card in the state dir), so the pool holds two real models without a second download."""

from __future__ import annotations

import asyncio

import pytest

from models.catalog import Catalog
from models.kv_cache import SavedState, StateCache
from models.pool import BusyError, ModelPool, ModelUnavailableError, PoolSettings
from models.sampling import SamplingParams

Q = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture
def catalog(tmp_path):
    cards = tmp_path / "cards"
    cards.mkdir()
    smol = Catalog.load().get("smollm2-135m-instruct")
    (cards / "twin.toml").write_text(
        f'name = "smol-twin"\nfile = "{smol.file}"\nsize = {smol.size}\nsha256 = "{smol.sha256}"\ncontext_length = 2048\n'
    )
    (cards / "ghost.toml").write_text(f'name = "ghost"\nfile = "ghost.gguf"\nsize = 10\nsha256 = "{"0" * 64}"\n')
    return Catalog.load(cards)


def _pool(catalog, models_dir, **kw) -> ModelPool:
    settings = PoolSettings(models_dir=models_dir, threads=2, n_ctx=2048, **kw)
    return ModelPool(catalog, settings)


async def test_cap_on_loaded_models_evicts_the_least_recently_used(catalog, models_dir):
    pool = _pool(catalog, models_dir, max_loaded=1)
    try:
        s = await pool.stream("smollm2-135m-instruct", Q, SamplingParams(max_tokens=4, temperature=0))
        assert await s.text()
        assert list(pool.loaded) == ["smollm2-135m-instruct"]
        s = await pool.stream("smol-twin", Q, SamplingParams(max_tokens=4, temperature=0))
        assert await s.text()
        assert list(pool.loaded) == ["smol-twin"]
    finally:
        await pool.close()


async def test_idle_models_are_unloaded_after_keep_alive(catalog, models_dir):
    pool = _pool(catalog, models_dir, keep_alive_s=0.2)
    try:
        await (await pool.stream("smollm2-135m-instruct", Q, SamplingParams(max_tokens=2, temperature=0))).text()
        assert await pool.reap_idle() == []
        await asyncio.sleep(0.3)
        assert await pool.reap_idle() == ["smollm2-135m-instruct"]
        assert pool.loaded == {}
    finally:
        await pool.close()


async def test_full_queue_is_a_busy_error_not_a_wait(catalog, models_dir):
    pool = _pool(catalog, models_dir, queue_size=2)
    try:
        long = SamplingParams(max_tokens=200, temperature=0)
        a = await pool.stream("smollm2-135m-instruct", Q, long)
        b = await pool.stream("smollm2-135m-instruct", Q, long)
        with pytest.raises(BusyError) as e:
            await pool.stream("smollm2-135m-instruct", Q, long)
        assert e.value.retry_after >= 1
        a.cancel()
        b.cancel()
        await a.text()
        await b.text()
        again = await pool.stream("smollm2-135m-instruct", Q, SamplingParams(max_tokens=2, temperature=0))
        assert await again.text()
    finally:
        await pool.close()


async def test_closing_a_stream_cancels_its_generation(catalog, models_dir):
    pool = _pool(catalog, models_dir)
    try:
        s = await pool.stream("smollm2-135m-instruct", Q, SamplingParams(max_tokens=500, temperature=0))
        pieces = []
        async for piece in s:
            pieces.append(piece)
            if len(pieces) == 3:
                break
        for _ in range(200):
            if s.stats is not None:
                break
            await asyncio.sleep(0.05)
        assert s.stats is not None and s.stats.finish_reason == "cancelled"
        assert s.stats.completion_tokens < 50
        assert pool.loaded["smollm2-135m-instruct"].depth == 0
    finally:
        await pool.close()


async def test_missing_model_file_is_reported_with_the_fix(catalog, models_dir):
    pool = _pool(catalog, models_dir)
    with pytest.raises(ModelUnavailableError, match="aibox models pull ghost"):
        await pool.stream("ghost", Q, SamplingParams())


def test_state_cache_is_bounded_in_bytes_and_prefers_longest_prefix():
    cache = StateCache(capacity_bytes=100)
    cache.put(SavedState((1, 2, 3), b"x" * 40))
    cache.put(SavedState((1, 2, 9, 9), b"y" * 40))
    state, n = cache.best([1, 2, 9, 9, 5])
    assert state.tokens == (1, 2, 9, 9) and n == 4
    cache.put(SavedState((7,), b"z" * 40))  # over 100 bytes: the least recently used goes
    assert len(cache) == 2 and cache.size <= 100
    assert cache.best([1, 2, 3])[0].tokens == (1, 2, 9, 9), "(1, 2, 3) was evicted"
    cache.put(SavedState((8,), b"w" * 500))  # larger than the whole cache: not kept
    assert cache.size <= 100
