"""The torch target (for CUDA boxes) loads the same GGUF and agrees with llama.cpp; the engine
runs on it unchanged. Here it runs on the CPU as a reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.speculative.drafters.prompt_lookup import PromptLookupDrafter
from models.speculative.engine import SpecEngine
from models.speculative.prompts import COPY_HEAVY, chat_prompt
from models.speculative.target import LlamaTarget
from models.speculative.torch_target import TorchTarget


@pytest.fixture(scope="module")
def pair(smollm2_path):
    torch.set_num_threads(1)
    return LlamaTarget.load(smollm2_path, n_ctx=512, threads=1), TorchTarget.load(smollm2_path, n_ctx=512)


def test_torch_forward_agrees_with_llama_cpp(pair):
    ref, tt = pair
    prompt = chat_prompt(ref, "Write a Python function that reverses a string.")
    a = ref.decode(prompt).logits
    ref.rollback(0)
    b = tt.decode(prompt).logits
    tt.rollback(0)
    assert a.shape == b.shape
    # llama.cpp quantises activations for its dot products, torch does not: close, not equal
    agree = np.mean(np.argmax(a, -1) == np.argmax(b, -1))
    corr = np.mean([np.corrcoef(a[i], b[i])[0, 1] for i in range(len(prompt))])
    assert agree > 0.9 and corr > 0.99


def test_torch_kv_rollback_and_eog(pair):
    _, tt = pair
    tt.rollback(0)
    full = tt.decode([1, 2, 3, 4, 5]).logits
    tt.rollback(3)
    again = tt.decode([4, 5]).logits
    assert np.allclose(full[3:], again, atol=1e-3)
    assert tt.n_past == 5 and tt.tokens == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="cannot roll back"):
        tt.rollback(9)
    assert tt.is_eog(2)  # SmolLM2's <|endoftext|> / eos id
    tt.rollback(0)


def test_engine_on_torch_target_matches_its_plain_greedy(pair):
    ref, tt = pair
    prompt = chat_prompt(ref, COPY_HEAVY[0])
    plain = list(SpecEngine(tt).generate(prompt, 16))
    tt.rollback(0)
    fast = list(SpecEngine(tt, PromptLookupDrafter(), fixed_length=4).generate(prompt, 16))
    tt.rollback(0)
    assert fast == plain and len(plain) > 4
