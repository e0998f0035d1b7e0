"""The speculative generation loop: draft, verify in one target forward, keep what the target agrees with.

The prompt is decoded the way plain decoding does it (one batch, last row's logits); after
that the KV cache holds the context except its last token, and each step decodes that token
plus the draft as one batch, so a step that drafts nothing is exactly a plain decode step
(B = 1) and the profile's SPS(1 + ℓ) is what a step costs.
The KV cache is rolled back past rejected tokens; what stays in it is always text that was
emitted (or accepted beyond a stop), and the target's token record says so for KV reuse.
"""

from __future__ import annotations

import time
from typing import Iterator, Sequence

import numpy as np

from models.kv_cache import common_prefix
from models.sampling import GREEDY, SamplingParams
from models.speculative.drafters.base import Draft, Drafter
from models.speculative.metrics import SpecStats
from models.speculative.scheduler import Scheduler
from models.speculative.target import StepOutput, Target
from models.speculative.verify import verify


class SpecEngine:
    """Generates from `target`; with no drafter it is plain decoding through the same code path.

    `fixed_length` drafts exactly that many tokens every step (benchmarks); otherwise the
    scheduler picks the length from the profile and the drafter's confidences.
    """

    def __init__(
        self,
        target: Target,
        drafter: Drafter | None = None,
        scheduler: Scheduler | None = None,
        fixed_length: int | None = None,
    ) -> None:
        if drafter is not None and fixed_length is None and scheduler is None:
            raise ValueError("a drafter needs either a scheduler or a fixed draft length")
        if drafter is not None and drafter.uses_hidden and not getattr(target, "hidden", False):
            raise ValueError(f"drafter '{drafter.name}' needs the target's hidden states: load the target with hidden=True")
        self.target = target
        self.drafter = drafter
        self.scheduler = scheduler
        self.fixed_length = fixed_length
        self.max_draft = fixed_length if fixed_length is not None else (scheduler.max_draft if scheduler else 0)

    def generate(
        self,
        prompt: Sequence[int],
        max_tokens: int,
        sampling: SamplingParams = GREEDY,
        stats: SpecStats | None = None,
    ) -> Iterator[int]:
        """Yield generated tokens until an end-of-generation token (not yielded) or max_tokens."""
        if not prompt:
            raise ValueError("prompt must contain at least one token")
        if max_tokens <= 0:
            return
        stats = stats if stats is not None else SpecStats()
        rng = np.random.default_rng(sampling.seed)
        step = self._prefill(prompt)
        next_logits, hidden = step.logits[-1:], step.hidden
        context = list(prompt)
        if self.drafter is not None:
            self.drafter.begin(prompt)
        n_ctx = self._n_ctx()
        produced = 0
        while produced < max_tokens:
            base = self.target.n_past
            room = min(self.max_draft, max_tokens - produced - 1, n_ctx - base - 2)
            t0 = time.perf_counter()
            draft = self._draft(context, room, sampling, hidden)
            t1 = time.perf_counter()
            if next_logits is not None:
                # right after the prompt: its last row is known, the draft alone is decoded
                out = self.target.decode(draft.tokens) if len(draft) else None
                rows = np.concatenate([next_logits, out.logits]) if out is not None else next_logits
                feats = out.hidden if out is not None else None
                kept = base
            else:
                out = self.target.decode([context[-1]] + draft.tokens)
                rows, feats = out.logits, out.hidden
                kept = base + 1
            verdict = verify(draft.tokens, rows, sampling, rng, draft.q)
            t2 = time.perf_counter()
            self.target.rollback(kept + verdict.accepted)
            next_logits = None
            hidden = feats[: self.target.n_past - base] if feats is not None else None
            if self.drafter is not None and len(draft):
                self.drafter.observe(len(draft), verdict.accepted)
            stats.record(len(draft), verdict.accepted, len(verdict.tokens), t1 - t0, t2 - t1)
            for tok in verdict.tokens:
                if self.target.is_eog(tok):
                    return
                yield tok
                produced += 1
                context.append(tok)
                if produced >= max_tokens:
                    return

    def _n_ctx(self) -> int:
        llm = getattr(self.target, "llm", None)
        return llm.n_ctx() if llm is not None else getattr(self.target, "n_ctx", 1 << 30)

    def _prefill(self, prompt: Sequence[int]) -> StepOutput:
        """Decode the prompt past the longest prefix already cached, exactly as plain decoding
        does (one batch, logits of the last row), so the first token's logits are the same."""
        common = min(common_prefix(self.target.tokens, list(prompt)), len(prompt) - 1)
        self.target.rollback(common)
        uses_hidden = self.drafter is not None and self.drafter.uses_hidden
        return self.target.decode(list(prompt[common:]), all_logits=uses_hidden)

    def _draft(self, context: list[int], room: int, sampling: SamplingParams, hidden: np.ndarray | None) -> Draft:
        if self.drafter is None or room <= 0:
            return Draft()
        feats = hidden if self.drafter.uses_hidden else None
        if self.fixed_length is not None:
            return self.drafter.propose(context, room, sampling, None, feats)
        scheduler = self.scheduler
        drafter = self.drafter

        def extend(conf: Sequence[float]) -> bool:
            return scheduler.should_extend(conf, drafter.seconds_per_token)

        return drafter.propose(context, room, sampling, extend, feats)
