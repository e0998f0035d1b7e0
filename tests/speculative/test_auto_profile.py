"""Acceleration on by default: a fresh box measures a quick verify-cost profile the first time
a model loads, caches it per machine and llama.cpp build, and attaches the accelerator where
that profile says it pays, with no manual step (real SmolLM2 through the pool)."""

from __future__ import annotations

import logging

from models.catalog import Catalog
from models.pool import ModelPool, PoolSettings
from models.sampling import SamplingParams
from models.speculative import profile as profile_module
from models.speculative.accelerator import plan
from models.speculative.profile import QUICK_BATCH_SIZES, SpsProfile, load_profile, machine_info, profile_path, save_profile
from models.speculative.prompts import COPY_HEAVY

NAME = "smollm2-135m-instruct"
THREADS = 1


def _records(caplog, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


async def test_fresh_box_profiles_at_first_load_and_reuses_it(tmp_path, models_dir, caplog):
    caplog.set_level(logging.INFO)
    state = tmp_path / "state"  # empty: nothing measured on this machine yet
    settings = PoolSettings(models_dir=models_dir, threads=THREADS, n_ctx=1024, state_dir=state)
    catalog = Catalog.load()
    pool = ModelPool(catalog, settings)
    worker = await pool.worker(NAME)
    path = profile_path(state, NAME, machine_info(THREADS))
    assert sorted((state / "spec" / "profiles").rglob("*.json")) == [path]
    profile = load_profile(state, NAME, machine_info(THREADS))
    assert profile.quick and profile.batch_sizes == list(QUICK_BATCH_SIZES) and profile.exact_batch >= 1
    [measured] = _records(caplog, "speculation profile measured")
    assert measured.model == NAME and measured.seconds > 0 and measured.path == str(path)  # its cost is in the log

    decision = plan(catalog.get(NAME), catalog, models_dir, state, THREADS)
    assert (worker.accelerator is not None) == decision.pays
    [decided] = _records(caplog, "speculative decoding on" if decision.pays else "speculative decoding off")
    assert decided.reason == decision.reason and "prompt lookup" in decided.reason
    assert worker.model.cached_tokens == []  # the measurement left the context empty for the first request

    params = SamplingParams(max_tokens=24, temperature=0.0)
    text = await (await pool.stream(NAME, [{"role": "user", "content": COPY_HEAVY[0]}], params)).text()
    assert text
    if worker.accelerator is not None:
        assert worker.accelerator.last is not None and worker.accelerator.last.steps > 0  # answered speculatively
    await pool.close()

    stamp = path.stat().st_mtime_ns
    caplog.clear()
    pool = ModelPool(catalog, settings)
    again = await pool.worker(NAME)
    assert not _records(caplog, "speculation profile measured") and _records(caplog, "speculation profile cached")
    assert path.stat().st_mtime_ns == stamp
    assert (again.accelerator is not None) == decision.pays
    await pool.close()


def test_the_cache_key_follows_the_llama_cpp_build(tmp_path, monkeypatch):
    info = machine_info(THREADS)
    assert info["build"] == profile_module.llama_build() and "+" in info["build"]
    save_profile(tmp_path, SpsProfile([1, 2], [0.01, 0.02], model="m", machine=info))
    assert load_profile(tmp_path, "m", info) is not None
    monkeypatch.setattr(profile_module, "llama_build", lambda: "0.3.36+another-build")
    rebuilt = machine_info(THREADS)
    assert profile_path(tmp_path, "m", rebuilt) != profile_path(tmp_path, "m", info)
    assert load_profile(tmp_path, "m", rebuilt) is None  # measured again under the new build
