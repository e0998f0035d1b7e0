"""Speculative decoding with DSpark drafts on the real SmolLM2 target: greedy output is
token for token plain greedy decoding, whatever the drafter proposes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.dspark.drafter import DSparkDrafter
from models.dspark.model import DSpark, DSparkConfig
from models.dspark.target_weights import load_embedding_and_head, read_shape
from models.speculative.engine import SpecEngine
from models.speculative.metrics import SpecStats
from models.speculative.profile import SpsProfile
from models.speculative.prompts import CHAT, CODE, COPY_HEAVY, chat_prompt
from models.speculative.scheduler import Scheduler
from models.speculative.target import LlamaTarget

# a GPU-shaped profile: the scheduler drafts long and often, so many drafts get rejected
GPU = SpsProfile([1, 2, 4, 8, 16], [0.0100, 0.0101, 0.0102, 0.0105, 0.0115])


@pytest.fixture(scope="module")
def target(smollm2_path) -> LlamaTarget:
    return LlamaTarget.load(smollm2_path, n_ctx=2048, threads=1, hidden=True)


@pytest.fixture(scope="module")
def drafter(smollm2_path) -> DSparkDrafter:
    shape = read_shape(smollm2_path)
    embed, head = load_embedding_and_head(smollm2_path)
    torch.manual_seed(0)
    cfg = DSparkConfig.for_target(shape, n_layers=1, ffn=128, markov_rank=16, draft_vocab_size=4096)
    model = DSpark(cfg, embed, head, torch.arange(4096))
    return DSparkDrafter(model, seed=0)


def plain_greedy(target: LlamaTarget, prompt: list[int], max_tokens: int) -> list[int]:
    """Reference written independently of the engine: one decode per token, argmax."""
    target.rollback(0)
    logits = target.decode(prompt, all_logits=False).logits[-1]
    out: list[int] = []
    while len(out) < max_tokens:
        tok = int(np.argmax(logits))
        if target.is_eog(tok):
            break
        out.append(tok)
        logits = target.decode([tok]).logits[-1]
    return out


def test_greedy_identity_with_dspark_drafts(target, drafter) -> None:
    prompts = CHAT[:2] + CODE[:2] + COPY_HEAVY[:2]
    stats = SpecStats()
    for i, text in enumerate(prompts):
        prompt = chat_prompt(target, text)
        want = plain_greedy(target, prompt, 32)
        if i % 2:
            engine = SpecEngine(target, drafter, fixed_length=5)
        else:
            engine = SpecEngine(target, drafter, scheduler=Scheduler(GPU, max_draft=5))
        target.rollback(0)
        got = list(engine.generate(prompt, 32, stats=stats))
        assert got == want, f"prompt {i}: speculative output differs from plain decoding"
    assert stats.drafted > 60  # the drafter really drafted (and was mostly rejected)


def test_features_follow_the_context_across_requests(target, drafter) -> None:
    """The drafter keeps one feature per verified position; a new prompt keeps only the shared prefix."""
    engine = SpecEngine(target, drafter, fixed_length=3)
    first = chat_prompt(target, CHAT[0])
    target.rollback(0)
    out = list(engine.generate(first, 12))
    assert drafter._pos.tolist() == list(range(len(first) + len(out) - 1))[: len(drafter._pos)]
    assert len(drafter._pos) >= len(first) - 1
    second = chat_prompt(target, CHAT[1])
    shared = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    drafter.begin(second)
    assert int(drafter._pos.max()) < shared


def test_primed_prompt_prefix_is_used_and_output_stays_plain(target, drafter) -> None:
    """The benchmark's flow: the prompt prefix is decoded outside the engine, then handed over."""
    prompt = chat_prompt(target, COPY_HEAVY[5])
    want = plain_greedy(target, prompt, 24)
    target.rollback(0)
    cached = target.decode(prompt[:-1], all_logits=True)
    drafter.prime(prompt[:-1], cached.hidden)
    got = list(SpecEngine(target, drafter, fixed_length=5).generate(prompt, 24))
    assert got == want
    assert drafter._pos[: len(prompt)].tolist() == list(range(len(prompt)))  # every prompt position, anchor included


LAYERS = [7, 15, 22]


@pytest.fixture(scope="module")
def layered(smollm2_path) -> DSparkDrafter:
    """An untrained drafter that fuses three intermediate layers with the final state."""
    shape = read_shape(smollm2_path)
    embed, head = load_embedding_and_head(smollm2_path)
    torch.manual_seed(1)
    cfg = DSparkConfig.for_target(shape, n_layers=1, ffn=128, markov_rank=16, draft_vocab_size=4096, feature_layers=LAYERS)
    return DSparkDrafter(DSpark(cfg, embed, head, torch.arange(4096)), seed=0)


def test_drafter_over_intermediate_layers_needs_them_and_stays_lossless(smollm2_path, target, layered) -> None:
    assert layered.hidden_layers == tuple(LAYERS)
    prompt = chat_prompt(target, CODE[3])
    target.rollback(0)
    with pytest.raises(ValueError, match="load the target with those layers"):
        list(SpecEngine(target, layered, fixed_length=4).generate(prompt, 4))
    with_layers = LlamaTarget.load(smollm2_path, n_ctx=2048, threads=1, hidden=True, layers=LAYERS)
    want = plain_greedy(with_layers, prompt, 32)
    stats = SpecStats()
    with_layers.rollback(0)
    got = list(SpecEngine(with_layers, layered, fixed_length=4).generate(prompt, 32, stats=stats))
    assert got == want and stats.drafted > 20


def test_runtime_serves_a_drafter_over_intermediate_layers(smollm2_path, layered) -> None:
    """The daemon's model gets a capturing context when its drafter reads layers; its plain
    and accelerated answers stay the same."""
    from models.catalog import Catalog
    from models.runtime import LocalModel
    from models.sampling import SamplingParams
    from models.speculative.accelerator import Accelerator
    from models.speculative.drafters.prompt_lookup import PromptLookupDrafter

    card = Catalog.load().get("smollm2-135m-instruct")
    model = LocalModel(card, smollm2_path, threads=1, n_ctx=2048, state_cache_bytes=0, kv_reuse=False)
    slow_flat = SpsProfile([1, 2, 4, 8, 16], [0.2, 0.2001, 0.2002, 0.2004, 0.2008])
    acc = Accelerator(model, Scheduler(slow_flat), [PromptLookupDrafter(), layered])
    assert acc.target.layers == LAYERS
    params = SamplingParams(max_tokens=24, temperature=0.0)
    prompt = model.chat_tokens([{"role": "user", "content": CHAT[2]}])
    fast: list[str] = []
    acc.generate(model, prompt, params, fast.append, lambda: False)
    plain: list[str] = []
    model.generate(prompt, params, plain.append, lambda: False)
    assert "".join(fast) == "".join(plain) and fast
    assert acc.drafter.payoff["dspark"].gains  # it was asked, with the layers it reads
    model.close()
