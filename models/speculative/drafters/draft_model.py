"""A smaller model with the same vocabulary drafting for its bigger sibling.

It keeps its own KV cache in step with the accepted text: before each proposal it rolls back
to the longest prefix it shares with the context and decodes the rest in one batch. Its
confidence in position j is its top probability there, computed before x_j is drawn, then
calibrated by the acceptance it actually sees (small models are over-confident).
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from models.kv_cache import common_prefix
from models.sampling import SamplingParams, probs, sample, softmax
from models.speculative.drafters.base import Draft, Drafter, Extend
from models.speculative.target import LlamaTarget


class DraftModelDrafter(Drafter):
    name = "draft_model"

    def __init__(self, model: LlamaTarget, seed: int | None = None) -> None:
        self.model = model
        self.rng = np.random.default_rng(seed)
        self._seconds_per_token = 0.0
        self._predicted = 1.0
        self._observed = 1.0
        self._last: list[float] = []

    @classmethod
    def load(cls, path, n_ctx: int = 4096, threads: int | None = None, seed: int | None = None) -> "DraftModelDrafter":
        return cls(LlamaTarget.load(path, n_ctx=n_ctx, threads=threads), seed=seed)

    @property
    def seconds_per_token(self) -> float:
        return self._seconds_per_token

    def begin(self, prompt: Sequence[int]) -> None:
        self._predicted = 1.0
        self._observed = 1.0

    def _sync(self, context: Sequence[int]) -> np.ndarray:
        """Bring the draft KV to context[:-1] + feed the last token; return its next-token logits."""
        common = common_prefix(self.model.tokens, list(context[:-1]))
        self.model.rollback(common)
        return self.model.decode(list(context[common:]), all_logits=False).logits[-1]

    def _calibrate(self, c: float) -> float:
        return min(1.0, c * self._observed / self._predicted)

    def propose(
        self,
        context: Sequence[int],
        k: int,
        sampling: SamplingParams,
        extend: Extend | None = None,
        hidden: np.ndarray | None = None,
    ) -> Draft:
        if k <= 0:
            return Draft()
        start = time.perf_counter()
        logits = self._sync(context)
        tokens: list[int] = []
        confidence: list[float] = []
        raw: list[float] = []
        qs: list[np.ndarray] = []
        while len(tokens) < k:
            q = probs(logits, sampling) if not sampling.greedy else None
            top = float(q.max()) if q is not None else float(softmax(logits).max())
            confidence.append(self._calibrate(top))
            if extend is not None and not extend(confidence):
                confidence.pop()
                break
            raw.append(top)
            if q is None:
                x = int(np.argmax(logits))
            else:
                x = sample(q, self.rng)
                qs.append(q)
            tokens.append(x)
            if len(tokens) < k:
                logits = self.model.decode([x]).logits[-1]
        per = (time.perf_counter() - start) / max(len(tokens), 1)  # asking for nothing costs a decode too
        self._seconds_per_token = per if self._seconds_per_token == 0 else 0.8 * self._seconds_per_token + 0.2 * per
        self._last = raw
        return Draft(tokens, confidence, np.stack(qs) if qs else None)

    def observe(self, drafted: int, accepted: int) -> None:
        trials = min(drafted, accepted + 1)
        self._predicted += sum(self._last[:trials])
        self._observed += accepted
