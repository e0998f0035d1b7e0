"""Lossless verification of a draft against the target's distributions.

Greedy: keep draft tokens while they equal the target's argmax; the first mismatch is
replaced by the argmax, so the output is exactly plain greedy decoding. Sampled: standard
speculative rejection sampling (accept x with min(1, p(x)/q(x)), on rejection draw from
normalised max(0, p - q), a bonus draw from the last row when all are accepted). Drafters
without an exact q are treated as deterministic (q one-hot on the draft), which reduces to
"accept when the target's own sample equals the draft token".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from models.sampling import SamplingParams, probs, sample


@dataclass
class Verdict:
    """`accepted` draft tokens survived; `tokens` is what to emit: them plus one target token."""

    accepted: int
    tokens: list[int]


def verify_greedy(draft: Sequence[int], logits: np.ndarray) -> Verdict:
    """logits has one row per draft token plus one: row j is the target's view after x_<=j-1."""
    targets = np.argmax(logits, axis=-1)
    n = 0
    while n < len(draft) and int(targets[n]) == draft[n]:
        n += 1
    return Verdict(n, list(draft[:n]) + [int(targets[n])])


def verify_sampled(
    draft: Sequence[int],
    logits: np.ndarray,
    sampling: SamplingParams,
    rng: np.random.Generator,
    q: np.ndarray | None = None,
) -> Verdict:
    """Rejection sampling; the emitted tokens are distributed exactly as plain sampling."""
    for j, x in enumerate(draft):
        p = probs(logits[j], sampling)
        if q is None:
            y = sample(p, rng)
            if y != x:
                return Verdict(j, list(draft[:j]) + [y])
            continue
        qx = float(q[j][x])
        if qx <= 0.0:
            raise ValueError(f"draft token {x} at position {j} has zero probability under its own q")
        if rng.random() < min(1.0, float(p[x]) / qx):
            continue
        residual = np.maximum(p - q[j], 0.0)
        total = residual.sum()
        y = sample(residual / total if total > 0 else p, rng)
        return Verdict(j, list(draft[:j]) + [y])
    bonus = sample(probs(logits[len(draft)], sampling), rng)
    return Verdict(len(draft), list(draft) + [bonus])


def verify(
    draft: Sequence[int],
    logits: np.ndarray,
    sampling: SamplingParams,
    rng: np.random.Generator,
    q: np.ndarray | None = None,
) -> Verdict:
    if logits.shape[0] != len(draft) + 1:
        raise ValueError(f"need {len(draft) + 1} rows of logits for {len(draft)} draft tokens, got {logits.shape[0]}")
    if sampling.greedy:
        return verify_greedy(draft, logits)
    return verify_sampled(draft, logits, sampling, rng, q)
