"""Prompt lookup: continue the text the way it continued the last time its tail appeared.

Edits, rewrites and summaries of a given text copy long runs of it, and code repeats
identifiers; a suffix match of the last few tokens against the prompt and the output so
far finds those runs for free. The longest match wins, the most recent among equals.
Confidence is the acceptance rate measured so far for matches of that length, which is
known before the drafted tokens are looked at. Before any evidence, a one-token match is
a poor bet (about 0.2 per token) and an eight-token match a good one (about 0.94): the
prior 1 - 0.8 · 0.7^(n-1). The estimate lives as long as the drafter, across requests.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from models.sampling import SamplingParams
from models.speculative.drafters.base import AcceptanceTracker, Draft, Drafter, Extend


def match_prior(length: int) -> float:
    return 1.0 - 0.8 * 0.7 ** max(length - 1, 0)


class PromptLookupDrafter(Drafter):
    name = "prompt_lookup"

    def __init__(self, max_ngram: int = 8, min_ngram: int = 1, prior_weight: float = 2.0) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.tracker = AcceptanceTracker(match_prior, prior_weight)
        self._last_bucket = 0

    def find(self, context: Sequence[int], k: int) -> tuple[list[int], int]:
        """The continuation (up to k tokens) after the best earlier match of the context's tail,
        and the match length in tokens; ([], 0) when nothing matches."""
        arr = np.asarray(context, dtype=np.int64)
        n = len(arr)
        if n < self.min_ngram + 1 or k <= 0:
            return [], 0
        # candidate i: arr[i] is an earlier occurrence of the last token, with something after it
        cand = np.flatnonzero(arr[: n - 1] == arr[n - 1])
        if cand.size == 0:
            return [], 0
        length = 1
        while length < self.max_ngram:
            ok = cand >= length
            if not ok.any():
                break
            ext = cand[ok]
            ext = ext[arr[ext - length] == arr[n - 1 - length]]
            if ext.size == 0:
                break
            cand = ext
            length += 1
        if length < self.min_ngram:
            return [], 0
        start = int(cand[-1]) + 1
        return arr[start : start + k].tolist(), length

    def propose(
        self,
        context: Sequence[int],
        k: int,
        sampling: SamplingParams,
        extend: Extend | None = None,
        hidden: np.ndarray | None = None,
    ) -> Draft:
        tokens, length = self.find(context, k)
        self._last_bucket = length
        rate = self.tracker.rate(length)
        confidence = [rate] * len(tokens)
        if extend is not None:
            n = 0
            while n < len(tokens) and extend(confidence[: n + 1]):
                n += 1
            tokens, confidence = tokens[:n], confidence[:n]
        return Draft(tokens, confidence)

    def observe(self, drafted: int, accepted: int) -> None:
        if drafted:
            self.tracker.update(self._last_bucket, drafted, accepted)
