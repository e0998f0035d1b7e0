"""Fallback on failing local models, with the real SmolLM2 serving as the next candidate:
a model whose file is missing (cannot load), and a model whose queue is full (busy)."""

from __future__ import annotations

import pytest

from sqlalchemy import select

from aibox.router.fallback import AllModelsFailed, Backends, FallbackStream
from aibox.store import Store
from aibox.store.schema import Generation
from aibox.usage import UsageLog, UsageTags
from models.catalog import Catalog
from models.pool import ModelPool, PoolSettings
from models.remote import RemoteModels
from models.sampling import SamplingParams

HI = [{"role": "user", "content": "Say hello."}]
SMOL = "smollm2-135m-instruct"


@pytest.fixture
def catalog(tmp_path):
    cards = tmp_path / "cards"
    cards.mkdir()
    smol = Catalog.load().get(SMOL)
    (cards / "ghost.toml").write_text(f'name = "ghost"\nfile = "ghost.gguf"\nsize = 10\nsha256 = "{"0" * 64}"\n')
    (cards / "twin.toml").write_text(
        f'name = "smol-twin"\nfile = "{smol.file}"\nsize = {smol.size}\nsha256 = "{smol.sha256}"\ncontext_length = 2048\n'
    )
    return Catalog.load(cards)


API = UsageTags("api")


@pytest.fixture
def usage(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'aibox.db'}")
    yield UsageLog(store)
    store.close()


async def recorded(usage: UsageLog) -> list[tuple[str, int]]:
    """What the usage log wrote: (model, completion tokens) per generation."""
    await usage.drain()
    with usage.store.session() as s:
        return [tuple(row) for row in s.execute(select(Generation.model, Generation.completion_tokens))]


@pytest.fixture
async def backends(catalog, models_dir, usage):
    pool = ModelPool(catalog, PoolSettings(models_dir=models_dir, threads=1, n_ctx=2048, queue_size=1))
    remotes = RemoteModels(catalog)
    yield Backends(catalog, pool, remotes, usage)
    await remotes.close()
    await pool.close()


async def test_a_model_that_cannot_load_hands_over_with_one_short_line(backends, usage):
    stream = FallbackStream(backends, ["ghost", SMOL], HI, SamplingParams(max_tokens=8, temperature=0), API)
    text = await stream.text()
    note, _, answer = text.partition("\n\n")
    assert note == f"(ghost cannot be loaded; answered by {SMOL}.)"
    assert answer.strip()
    assert stream.model == SMOL and stream.failures[0][0] == "ghost"
    finished = await recorded(usage)
    assert finished and finished[0][0] == SMOL and finished[0][1] > 0


async def test_a_busy_model_hands_over_to_the_next(backends):
    params = SamplingParams(max_tokens=64, temperature=0)
    hog = await backends.pool.stream("smol-twin", HI, params)  # fills smol-twin's queue of one
    try:
        text = await FallbackStream(backends, ["smol-twin", SMOL], HI, SamplingParams(max_tokens=8, temperature=0), API).text()
        assert text.startswith(f"(smol-twin is busy; answered by {SMOL}.)\n\n")
    finally:
        hog.cancel()
        await hog.text()


async def test_no_note_when_the_chosen_model_serves(backends):
    text = await FallbackStream(backends, [SMOL, "ghost"], HI, SamplingParams(max_tokens=8, temperature=0), API).text()
    assert not text.startswith("(")


async def test_all_failing_is_one_error_naming_each_model(backends):
    with pytest.raises(AllModelsFailed, match="ghost cannot be loaded"):
        await FallbackStream(backends, ["ghost"], HI, SamplingParams(max_tokens=8), API).text()
