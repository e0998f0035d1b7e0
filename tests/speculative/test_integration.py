"""The runtime uses the engine only where the measured profile says it pays, with unchanged
output; the CLI measures and shows the profile; /metrics carries the per-request figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aibox.metrics import Metrics
from models.catalog import Catalog
from models.pool import ModelPool, PoolSettings
from models.runtime import LocalModel
from models.sampling import SamplingParams
from models.speculative.accelerator import Accelerator, plan
from models.speculative.drafters.auto import PAYOFF_MIN
from models.speculative.profile import SpsProfile, machine_info, save_profile
from models.speculative.prompts import CHAT, CODE, COPY_HEAVY

NAME = "smollm2-135m-instruct"
THREADS = 1  # the box is shared; see tests/spec/test_engine.py
FLAT = [0.0060, 0.0061, 0.0062, 0.0064, 0.0066]  # GPU-shaped: speculation pays
STEEP = [0.006, 0.012, 0.024, 0.048, 0.096]  # every token costs a full step: it never pays
# SmolLM2 on this 2-core VM, measured with `aibox models profile` (2 threads).
CPU_SIZES = [1, 2, 3, 4, 6, 8, 12, 16]
CPU = [0.0121, 0.0165, 0.0218, 0.0250, 0.0353, 0.0408, 0.0637, 0.0762]
# A big model on a GPU: a step costs 200 ms at any batch, so a DSpark pass on this CPU is cheap beside it.
SLOW_FLAT = [0.200, 0.2001, 0.2002, 0.2004, 0.2008]


def _profile(state_dir, seconds):
    save_profile(state_dir, SpsProfile([1, 2, 4, 8, 16], seconds, model=NAME, machine=machine_info(THREADS)))


@pytest.fixture(scope="module")
def local_model(models_dir):
    card = Catalog.load().get(NAME)
    model = LocalModel(card, models_dir / card.file, threads=THREADS, n_ctx=2048, state_cache_bytes=64 << 20)
    yield model
    model.close()


def _run(fn, *args):
    pieces: list[str] = []
    stats = fn(*args, pieces.append, lambda: False)
    return "".join(pieces), stats


def test_plan_needs_a_profile_and_says_why(tmp_path, models_dir):
    catalog = Catalog.load()
    card = catalog.get(NAME)
    none = plan(card, catalog, models_dir, tmp_path, THREADS)
    assert not none.pays and "aibox models profile" in none.reason
    _profile(tmp_path, STEEP)
    steep = plan(card, catalog, models_dir, tmp_path, THREADS)
    assert not steep.pays and "never pays" in steep.reason
    _profile(tmp_path, FLAT)
    flat = plan(card, catalog, models_dir, tmp_path, THREADS)
    assert flat.pays and flat.drafters == ["prompt_lookup", "dspark"]  # the card ships a DSpark drafter
    assert flat.dspark and "DSpark can pay" in flat.reason


def test_dspark_is_not_loaded_where_its_recorded_acceptance_cannot_pay(tmp_path, models_dir, local_model):
    """This CPU's measured SmolLM2 profile: prompt lookup can pay (on copy-heavy text), but the
    shipped drafter's recorded acceptance (τ 1.28) cannot, even with free drafting."""
    save_profile(tmp_path, SpsProfile(CPU_SIZES, CPU, model=NAME, machine=machine_info(THREADS)))
    catalog = Catalog.load()
    decision = plan(catalog.get(NAME), catalog, models_dir, tmp_path, THREADS)
    assert decision.pays and not decision.dspark
    assert "DSpark not loaded" in decision.reason and "τ 1.28" in decision.reason
    acc = Accelerator.for_model(local_model, catalog, models_dir, tmp_path, THREADS)
    assert [d.name for d in acc.drafter.drafters] == ["prompt_lookup"]


def test_only_greedy_requests_without_grammar_are_accelerated():
    assert Accelerator.applies(SamplingParams(temperature=0.0))
    assert not Accelerator.applies(SamplingParams(temperature=0.7))
    assert not Accelerator.applies(SamplingParams(temperature=0.0, grammar='root ::= "a"'))


def test_accelerated_generation_equals_plain_runtime_output(tmp_path, models_dir, local_model):
    _profile(tmp_path, FLAT)
    acc = Accelerator.for_model(local_model, Catalog.load(), models_dir, tmp_path, THREADS)
    assert acc is not None
    params = SamplingParams(max_tokens=40, temperature=0.0)
    for text in (COPY_HEAVY[0], COPY_HEAVY[6], "What is the capital of France?"):
        prompt = local_model.chat_tokens([{"role": "user", "content": text}])
        plain, plain_stats = _run(local_model.generate, prompt, params)
        fast, fast_stats = _run(acc.generate, local_model, prompt, params)
        assert fast == plain
        assert fast_stats.completion_tokens == plain_stats.completion_tokens
        assert fast_stats.finish_reason == plain_stats.finish_reason
        # the model's KV bookkeeping stays true, so the next turn reuses the cache
        assert local_model.cached_tokens == acc.target.tokens
    spec = fast_stats.extra["speculative"]
    assert spec["steps"] > 0 and spec["tau"] >= 1.0
    assert acc.last is not None


def test_stop_strings_and_length_limit_behave_as_plain(tmp_path, models_dir, local_model):
    _profile(tmp_path, FLAT)
    acc = Accelerator.for_model(local_model, Catalog.load(), models_dir, tmp_path, THREADS)
    prompt = local_model.chat_tokens([{"role": "user", "content": COPY_HEAVY[3]}])
    for params in (SamplingParams(max_tokens=7, temperature=0.0), SamplingParams(max_tokens=60, temperature=0.0, stop=("dog",))):
        assert _run(acc.generate, local_model, prompt, params)[0] == _run(local_model.generate, prompt, params)[0]
        assert _run(acc.generate, local_model, prompt, params)[1].finish_reason == _run(local_model.generate, prompt, params)[1].finish_reason


def test_runtime_drafts_with_dspark_where_it_pays_and_output_is_unchanged(tmp_path, models_dir):
    """Without KV reuse both paths decode each prompt in one batch, so the comparison is like
    for like and DSpark sees every prompt's hidden states (with reuse it sees those of the
    part decoded, and a prefix decoded in other batches can round differently either way)."""
    _profile(tmp_path, SLOW_FLAT)
    card = Catalog.load().get(NAME)
    local_model = LocalModel(card, models_dir / card.file, threads=THREADS, n_ctx=2048, state_cache_bytes=0, kv_reuse=False)
    acc = Accelerator.for_model(local_model, Catalog.load(), models_dir, tmp_path, THREADS)
    assert [d.name for d in acc.drafter.drafters] == ["prompt_lookup", "dspark"]
    params = SamplingParams(max_tokens=40, temperature=0.0)
    for text in (CHAT[1], CODE[2], CHAT[5]):  # little to copy: prompt lookup rarely has a guess
        prompt = local_model.chat_tokens([{"role": "user", "content": text}])
        plain, plain_stats = _run(local_model.generate, prompt, params)
        fast, fast_stats = _run(acc.generate, local_model, prompt, params)
        assert fast == plain and fast_stats.finish_reason == plain_stats.finish_reason
        assert not acc.target.hidden  # the next plain request does not pay for hidden states
    gains = acc.drafter.payoff["dspark"].gains
    assert len(gains) >= PAYOFF_MIN and max(gains) > 0  # asked, and some of its guesses were kept
    local_model.close()


def test_runtime_skips_hidden_states_once_dspark_stops_paying(tmp_path, models_dir, local_model):
    _profile(tmp_path, SLOW_FLAT)
    acc = Accelerator.for_model(local_model, Catalog.load(), models_dir, tmp_path, THREADS)
    payoff = acc.drafter.payoff["dspark"]
    for _ in range(PAYOFF_MIN):
        payoff.record(-1.0)  # as measured on a machine where its passes cost more than they save
    assert not acc.drafter.wants_hidden()
    dspark = acc.drafter.drafters[1]
    prompt = local_model.chat_tokens([{"role": "user", "content": CHAT[1]}])
    params = SamplingParams(max_tokens=12, temperature=0.0)
    seen = len(dspark._pos)
    fast, _ = _run(acc.generate, local_model, prompt, params)
    assert fast == _run(local_model.generate, prompt, params)[0]
    assert len(dspark._pos) == seen and len(payoff.gains) == PAYOFF_MIN  # no features, not asked
    assert payoff.skipped > 0


async def test_pool_attaches_accelerator_only_where_it_pays(tmp_path, models_dir):
    settings = PoolSettings(models_dir=models_dir, threads=THREADS, n_ctx=1024, state_dir=tmp_path)
    _profile(tmp_path, STEEP)
    pool = ModelPool(Catalog.load(), settings)
    assert (await pool.worker(NAME)).accelerator is None
    await pool.close()
    _profile(tmp_path, FLAT)
    pool = ModelPool(Catalog.load(), settings)
    worker = await pool.worker(NAME)
    assert worker.accelerator is not None
    messages = [{"role": "user", "content": COPY_HEAVY[0]}]
    params = SamplingParams(max_tokens=30, temperature=0.0)
    fast = await (await pool.stream(NAME, messages, params)).text()
    await pool.close()
    plain_pool = ModelPool(Catalog.load(), PoolSettings(models_dir=models_dir, threads=THREADS, n_ctx=1024))
    plain = await (await plain_pool.stream(NAME, messages, params)).text()
    await plain_pool.close()
    assert fast == plain and fast


def test_metrics_export_speculation_figures():
    from models.speculative.metrics import SpecStats
    from models.stream import GenerationStats

    spec = SpecStats()
    spec.record(drafted=4, accepted=2, emitted=3, draft_s=0.001, verify_s=0.02)
    spec.record(drafted=0, accepted=0, emitted=1, draft_s=0.0, verify_s=0.01)
    stats = GenerationStats(prompt_tokens=5, completion_tokens=4, total_s=0.1)
    stats.extra["speculative"] = spec.as_dict()
    m = Metrics()
    m.observe(NAME, stats)
    text = m.render().decode()
    assert f'aibox_spec_tokens_per_forward_sum{{model="{NAME}"}} 2.0' in text
    assert f'aibox_spec_accepted_tokens_total{{model="{NAME}",position="2"}} 1.0' in text
    assert f'aibox_spec_drafted_tokens_total{{model="{NAME}",position="3"}} 1.0' in text
    assert f'aibox_spec_verify_seconds_total{{model="{NAME}"}} 0.03' in text


def aibox(config, *args):
    return subprocess.run([sys.executable, "-m", "aibox", "--config", str(config), *args], capture_output=True, text=True, timeout=300)


def test_cli_profile_then_info(tmp_path, models_dir):
    config = tmp_path / "aibox.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\nmodels_dir = "{models_dir}"\n[runtime]\nthreads = {THREADS}\n')
    before = json.loads(aibox(config, "models", "info", NAME, "--json").stdout)["speculation"]
    assert before["profile"] is None and not before["pays"] and "aibox models profile" in before["reason"]
    r = aibox(config, "models", "profile", NAME, "--repeats", "1", "--json")
    assert r.returncode == 0, r.stderr
    measured = json.loads(r.stdout)
    assert measured["profile"]["batch_sizes"][0] == 1
    after = json.loads(aibox(config, "models", "info", NAME, "--json").stdout)["speculation"]
    assert after["profile"]["seconds"] == measured["profile"]["seconds"]
    assert after["drafters"] == ["prompt_lookup", "dspark"]
    assert after["reason"]
    r = aibox(config, "models", "profile", "no-such-model")
    assert r.returncode == 66 and "unknown model" in r.stderr
