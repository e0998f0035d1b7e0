"""The serial correction and the draft distribution q that rejection sampling relies on."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import chisquare

from models.dspark.drafter import DSparkDrafter
from models.sampling import GREEDY, SamplingParams, probs, sample
from models.speculative.verify import verify_sampled
from tests.dspark.conftest import tiny_model

T1 = SamplingParams(temperature=1.0, top_k=0, top_p=1.0)


def _expected_q(model, context: list[int], hidden: np.ndarray, prev: int, j: int) -> np.ndarray:
    """q_j written out from the parameters: softmax(h_j · head^T + W2 · W1[x_{j-1}]) over the target vocabulary."""
    with torch.no_grad():
        G = model.cfg.block_size
        n = len(context)
        feats = torch.tensor(hidden).unsqueeze(0)
        ctx = model.context_kv(feats, torch.arange(n - 1 - len(hidden), n - 1).unsqueeze(0))
        x = torch.cat([model.embed[context[-1]].view(1, 1, -1), model.mask_embed.expand(1, G - 1, -1)], dim=1)
        h = model.hidden(x, torch.arange(n - 1, n - 1 + G).unsqueeze(0), ctx, None)[0, j]
        logits = h @ model.head.T + model.markov_out.weight @ model.markov_in.weight[model.to_draft[prev]]
    full = np.full(model.cfg.n_vocab, -np.inf)
    full[model.draft_ids.numpy()] = logits.double().numpy()
    z = np.exp(full - full.max())
    return z / z.sum()


def test_q_is_the_corrected_softmax_given_the_previous_sampled_token() -> None:
    model = tiny_model(draft_ids=list(range(0, 40, 2)) + [1])
    context = [5, 1, 9]  # the anchor (9) is outside the draft vocabulary, so it is never the obvious guess
    hidden = np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)
    seen_second: dict[int, np.ndarray] = {}
    for seed in range(40):
        drafter = DSparkDrafter(model, seed=seed)
        draft = drafter.propose(context, 3, T1, None, hidden)
        assert len(draft) == 3 and draft.q.shape == (3, 40)
        prev = context[-1]
        for j, x in enumerate(draft.tokens):
            np.testing.assert_allclose(draft.q[j], _expected_q(model, context, hidden, prev, j), rtol=1e-5, atol=1e-9)
            assert draft.q[j][x] > 0
            prev = x
        assert all(draft.q[:, t].sum() == 0 for t in range(40) if t % 2 and t != 1)  # outside the draft vocabulary
        seen_second.setdefault(draft.tokens[0], draft.q[1])
    # the same block, a different first token: the second distribution moves with it
    assert len(seen_second) >= 2
    qs = list(seen_second.values())
    assert not np.allclose(qs[0], qs[1])


def test_without_correction_q_does_not_depend_on_the_previous_token() -> None:
    model = tiny_model(rank=0)
    hidden = np.zeros((1, 32), dtype=np.float32)
    seconds = {}
    for seed in range(30):
        d = DSparkDrafter(model, seed=seed).propose([3, 4], 2, T1, None, hidden)
        seconds[d.tokens[0]] = d.q[1]
    qs = list(seconds.values())
    assert len(qs) >= 2 and np.allclose(qs[0], qs[1])


def test_drafted_tokens_follow_q() -> None:
    model = tiny_model(vocab=12, draft_ids=[0, 2, 3, 5, 8, 11], rank=4)
    hidden = np.ones((3, 32), dtype=np.float32)
    drafter = DSparkDrafter(model, seed=1)
    n = 3000
    counts = np.zeros(12)
    q = None
    for _ in range(n):
        d = drafter.propose([1, 2, 3, 4], 1, T1, None, hidden[:0])
        counts[d.tokens[0]] += 1
        q = d.q[0]
    drafter.begin([1, 2, 3, 4])
    keep = q > 0
    assert counts[~keep].sum() == 0
    assert chisquare(counts[keep], q[keep] * n).pvalue > 1e-3


def test_rejection_sampling_with_dspark_drafts_reproduces_the_target() -> None:
    """First emitted token of verify_sampled with real DSpark drafts and q is distributed as p."""
    model = tiny_model(vocab=10, rank=4, block=3)
    rng = np.random.default_rng(7)
    p_logits = rng.standard_normal((4, 10)) * 1.5
    p = probs(p_logits[0], T1)
    drafter = DSparkDrafter(model, seed=3)
    hidden = np.ones((2, 32), dtype=np.float32)
    n = 4000
    counts = np.zeros(10)
    for _ in range(n):
        d = drafter.propose([1, 2, 3], 3, T1, None, hidden[:0])
        verdict = verify_sampled(d.tokens, p_logits, T1, rng, d.q)
        counts[verdict.tokens[0]] += 1
    assert chisquare(counts, p * n).pvalue > 1e-3
    assert sample(p, rng) in range(10)


def test_confidence_uses_the_hidden_state_and_the_previous_token_code() -> None:
    model = tiny_model()
    model.cfg.calibration = [1.0, 2.0, 0.5, 1.0]
    hidden = np.zeros((1, 32), dtype=np.float32)
    d = DSparkDrafter(model, seed=0).propose([7, 8], 3, GREEDY, None, hidden)
    with torch.no_grad():
        x = torch.cat([model.embed[8].view(1, 1, -1), model.mask_embed.expand(1, 3, -1)], dim=1)
        ctx = model.context_kv(torch.zeros(1, 1, 32), torch.zeros(1, 1, dtype=torch.long))
        h = model.hidden(x, torch.arange(1, 5).unsqueeze(0), ctx, None)[0]
        prev = [8] + d.tokens[:-1]
        for j in range(3):
            z = model.conf(torch.cat([h[j], model.markov_in.weight[model.to_draft[prev[j]]]])).item()
            assert abs(d.confidence[j] - 1 / (1 + np.exp(-z / model.cfg.calibration[j]))) < 1e-6


def test_extend_stops_before_a_token_is_drawn() -> None:
    model = tiny_model()
    asked: list[int] = []

    def extend(conf) -> bool:
        asked.append(len(conf))
        return len(conf) <= 2

    d = DSparkDrafter(model, seed=0).propose([1, 2], 4, GREEDY, extend, np.zeros((1, 32), dtype=np.float32))
    assert d.tokens and len(d.tokens) == 2 and len(d.confidence) == 2
    assert asked == [1, 2, 3]
