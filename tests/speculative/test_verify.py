"""Verification is lossless: greedy keeps the argmax path, rejection sampling reproduces p exactly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from models.sampling import GREEDY, SamplingParams, probs, sample
from models.speculative.verify import verify, verify_greedy, verify_sampled

T1 = SamplingParams(temperature=1.0, top_k=0, top_p=1.0)


def test_greedy_keeps_matching_prefix_and_corrects_first_mismatch():
    logits = np.zeros((4, 10))
    for row, tok in enumerate([3, 5, 7, 9]):
        logits[row, tok] = 1.0
    assert verify_greedy([3, 5, 7], logits).tokens == [3, 5, 7, 9]
    v = verify_greedy([3, 6, 7], logits)
    assert (v.accepted, v.tokens) == (1, [3, 5])
    v = verify_greedy([], logits[:1])
    assert (v.accepted, v.tokens) == (0, [3])


def test_verify_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="need 3 rows"):
        verify([1, 2], np.zeros((2, 5)), GREEDY, np.random.default_rng(0))


def test_sampling_filters_follow_top_k_top_p_min_p():
    logits = np.log(np.array([0.5, 0.25, 0.15, 0.1]))
    assert np.count_nonzero(probs(logits, SamplingParams(temperature=1.0, top_k=2, top_p=1.0))) == 2
    p = probs(logits, SamplingParams(temperature=1.0, top_k=0, top_p=0.7))
    assert np.count_nonzero(p) == 2 and p[0] == pytest.approx(2 / 3)
    assert np.count_nonzero(probs(logits, SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.35))) == 2
    assert probs(logits, GREEDY)[0] == 1.0
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)


def _joint_counts(run, n: int, vocab: int) -> np.ndarray:
    counts = np.zeros((vocab, vocab))
    for _ in range(n):
        a, b = run()
        counts[a, b] += 1
    return counts


def _chi2_joint(counts: np.ndarray, expected_p: np.ndarray) -> float:
    n = counts.sum()
    mask = expected_p.ravel() * n >= 5
    obs = counts.ravel()[mask]
    exp = expected_p.ravel()[mask] * n
    exp = exp * obs.sum() / exp.sum()
    return chisquare(obs, exp).pvalue


@pytest.mark.parametrize("with_q", [True, False])
def test_rejection_sampling_reproduces_target_on_synthetic_distributions(with_q):
    """Two draft positions with a q unlike p: the emitted pair (x1, x2) follows p(x1) p(x2 | x1)."""
    rng = np.random.default_rng(1)
    vocab = 6
    # p(x1) from row 0; p(x2 | x1) from row 1 when x1 was drafted, otherwise from a table
    p_logits = rng.normal(size=(vocab + 1, vocab)) * 1.5
    q_dist = rng.dirichlet(np.ones(vocab) * 0.7, size=2)
    p1 = probs(p_logits[0], T1)
    cond = np.stack([probs(p_logits[1 + a], T1) for a in range(vocab)])

    def run():
        x1 = sample(q_dist[0], rng)
        x2 = sample(q_dist[1], rng)
        logits = np.stack([p_logits[0], p_logits[1 + x1], p_logits[1 + x2]])
        q = q_dist if with_q else None
        v = verify_sampled([x1, x2], logits, T1, rng, q)
        if len(v.tokens) >= 2:
            return v.tokens[0], v.tokens[1]
        # rejected at x1: the next token comes from the target's conditional, as the engine does
        return v.tokens[0], sample(cond[v.tokens[0]], rng)

    counts = _joint_counts(run, 30000, vocab)
    expected = p1[:, None] * cond
    assert _chi2_joint(counts, expected) > 1e-3


def test_rejection_sampling_is_detected_when_wrong():
    """The chi-square check has power: accepting drafts blindly does not pass it."""
    rng = np.random.default_rng(2)
    vocab = 6
    p = probs(rng.normal(size=vocab) * 1.5, T1)
    q = rng.dirichlet(np.ones(vocab))
    counts = np.bincount([sample(q, rng) for _ in range(20000)], minlength=vocab)
    assert chisquare(counts, p * counts.sum()).pvalue < 1e-6


def test_rejection_sampling_reproduces_real_model_distribution(smollm2_path):
    """p: SmolLM2's real next-token distribution (T=0.8, top-k 12); q: the same model at T=2.5 after
    another prompt, a real but different distribution. Emitted tokens follow p."""
    from models.speculative.target import LlamaTarget

    target = LlamaTarget.load(smollm2_path, n_ctx=256)
    prompt = target.tokenize("<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n")
    other = target.tokenize("<|im_start|>user\nName an animal.<|im_end|>\n<|im_start|>assistant\n")
    p_logits = target.decode(prompt, all_logits=False).logits[-1]
    target.rollback(0)
    q_logits = target.decode(other, all_logits=False).logits[-1]
    s = SamplingParams(temperature=0.8, top_k=12, top_p=1.0)
    p = probs(p_logits, s)
    support = np.flatnonzero(p)
    q = probs(q_logits, SamplingParams(temperature=2.5, top_k=40, top_p=1.0))
    q = 0.5 * q + 0.5 * np.where(p > 0, 1.0 / len(support), 0.0)
    rng = np.random.default_rng(3)
    rows = np.stack([p_logits, p_logits])
    draws = []
    for _ in range(6000):
        x = sample(q, rng)
        draws.append(verify_sampled([x], rows, s, rng, q[None, :]).tokens[0])
    counts = np.array([draws.count(int(t)) for t in support])
    assert counts.sum() == len(draws), "a token outside the target's support was emitted"
    exp = p[support] * len(draws)
    keep = exp >= 5
    obs, exp = counts[keep], exp[keep]
    assert chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3
