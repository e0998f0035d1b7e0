"""How the next token is chosen, and the target distribution p that speculative decoding must
reproduce exactly.

One `SamplingParams` travels from the API to whichever path serves it: llama.cpp's sampler
chain (`models.runtime`), a remote server (`models.remote`) or the speculative engine, which
draws from `probs` below. Plain decoding and verification in the engine both draw from this
same function of the logits, so the engine is lossless by construction at any temperature.
Filters run in llama.cpp's order (top-k, top-p, min-p on the unscaled distribution, then
temperature); top_k 0, top_p 1 and min_p 0 switch them off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.7  # 0: greedy
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # GBNF: constrains the output (tool calls as JSON)
    grammar_trigger: str | None = None  # regex over the output so far: the grammar applies once it matches
    # OpenAI's penalties (-2..2, 0 off) and llama.cpp's repeat penalty (1 off), over the answer so far
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.repeat_penalty <= 0:
            raise ValueError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")

    @property
    def penalized(self) -> bool:
        """Whether penalties or biases change the logits (only llama.cpp's sampler applies them)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repeat_penalty != 1.0 or self.logit_bias)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


# Greedy decoding: what benchmarks, evaluations and the engine's default measure, because
# its output can be compared token for token with plain decoding.
GREEDY = SamplingParams(temperature=0.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - np.max(logits, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def probs(logits: np.ndarray, s: SamplingParams) -> np.ndarray:
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
