"""Intermediate layer outputs read through llama.cpp's eval callback (models.speculative.layers) on
the real SmolLM2: they come out the same whatever the batch shape, so what `draft prepare`
captures one token at a time is what a verify step serves, and capturing changes nothing else."""

from __future__ import annotations

import numpy as np
import pytest

from models.speculative.prompts import COPY_HEAVY
from models.speculative.target import LlamaTarget

LAYERS = [7, 15, 22]
D = 576


@pytest.fixture(scope="module")
def pair(smollm2_path):
    plain = LlamaTarget.load(smollm2_path, n_ctx=512, threads=1, hidden=True)
    layered = LlamaTarget.load(smollm2_path, n_ctx=512, threads=1, hidden=True, layers=LAYERS)
    return plain, layered


def test_capture_adds_the_layers_and_changes_nothing_else(pair) -> None:
    plain, layered = pair
    tokens = layered.tokenize(COPY_HEAVY[0])[:40]
    plain.rollback(0)
    layered.rollback(0)
    a, b = plain.decode(tokens), layered.decode(tokens)
    assert b.hidden.shape == (len(tokens), D * (len(LAYERS) + 1))
    assert np.array_equal(a.logits, b.logits)
    assert np.array_equal(a.hidden, b.hidden[:, -D:])  # the final state comes last
    blocks = [b.hidden[:, i * D : (i + 1) * D] for i in range(len(LAYERS))]
    assert all(not np.allclose(x, y) for i, x in enumerate(blocks) for y in blocks[i + 1 :] + [a.hidden])
    # token by token, as prepare decodes an answer, gives the very same rows
    layered.rollback(0)
    single = np.concatenate([layered.decode([t]).hidden for t in tokens])
    assert np.array_equal(single, b.hidden)


def test_nothing_is_captured_while_hidden_states_are_off(pair) -> None:
    _, layered = pair
    tokens = layered.tokenize(COPY_HEAVY[1])[:8]
    layered.rollback(0)
    layered.set_hidden(False)
    try:
        assert layered.decode(tokens[:6]).hidden is None
    finally:
        layered.set_hidden(True)
    out = layered.decode(tokens[6:])  # rows of this decode only: nothing left over from before
    assert out.hidden.shape == (2, D * (len(LAYERS) + 1))


def test_layers_outside_the_model_are_refused(smollm2_path) -> None:
    with pytest.raises(ValueError, match="out of range"):
        LlamaTarget.load(smollm2_path, n_ctx=256, threads=1, hidden=True, layers=[29])
