"""The target distribution p that speculative decoding must reproduce exactly.

Plain decoding and verification both draw from this same function of the logits, so the
engine is lossless by construction at any temperature. Filters run in llama.cpp's order
(top-k, top-p, min-p on the unscaled distribution, then temperature).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - np.max(logits, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def probs(logits: np.ndarray, s: Sampling) -> np.ndarray:
    """The distribution the next token is drawn from, for one row of logits (float64).

    Work happens on the top-k candidates only: a full pass over a 150k vocabulary in numpy
    costs more than the decode step it follows."""
    vocab = logits.shape[-1]
    out = np.zeros(vocab)
    if s.greedy:
        out[int(np.argmax(logits))] = 1.0
        return out
    if s.top_k and s.top_k < vocab:
        idx = np.argpartition(logits, vocab - s.top_k)[vocab - s.top_k :]
    else:
        idx = np.arange(vocab)
    sub = logits[idx].astype(np.float64)
    if s.top_p < 1.0 or s.min_p > 0.0:
        p = softmax(sub)
        keep = np.ones(len(idx), dtype=bool)
        if s.min_p > 0.0:
            keep &= p >= s.min_p * p.max()
        if s.top_p < 1.0:
            order = np.argsort(-p, kind="stable")
            before = np.cumsum(p[order]) - p[order]
            in_nucleus = np.zeros_like(keep)
            in_nucleus[order] = before < s.top_p
            keep &= in_nucleus
        idx, sub = idx[keep], sub[keep]
    out[idx] = softmax(sub / s.temperature)
    return out


def sample(p: np.ndarray, rng: np.random.Generator) -> int:
    """One draw from a probability vector (inverse CDF, robust to rounding)."""
    c = np.cumsum(p)
    return int(min(np.searchsorted(c, rng.random() * c[-1], side="right"), len(p) - 1))
