"""`auto`: for each step, the first drafter whose guess the scheduler finds worth verifying.

Prompt lookup costs nothing, so it is asked first; a draft model is asked only while the
scheduler says that drafts at its measured cost could pay at all, so on a machine where it
cannot (a small CPU) it is tried once, timed, and then left alone.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from models.spec.drafters.base import Draft, Drafter, Extend
from models.spec.sampling import Sampling
from models.spec.scheduler import Scheduler


class AutoDrafter(Drafter):
    name = "auto"

    def __init__(self, scheduler: Scheduler, drafters: Sequence[Drafter]) -> None:
        if not drafters:
            raise ValueError("auto needs at least one drafter")
        self.scheduler = scheduler
        self.drafters = list(drafters)
        self.uses_hidden = any(d.uses_hidden for d in self.drafters)
        self._used: Drafter | None = None

    def begin(self, prompt: Sequence[int]) -> None:
        for d in self.drafters:
            d.begin(prompt)

    @property
    def seconds_per_token(self) -> float:
        return self._used.seconds_per_token if self._used else 0.0

    def propose(
        self,
        context: Sequence[int],
        k: int,
        sampling: Sampling,
        extend: Extend | None = None,
        hidden: np.ndarray | None = None,
    ) -> Draft:
        self._used = None
        for d in self.drafters:
            cost = d.seconds_per_token
            if not self.scheduler.should_extend([1.0], cost):
                continue

            def own_extend(conf: Sequence[float], cost: float = cost) -> bool:
                return self.scheduler.should_extend(conf, cost)

            draft = d.propose(context, k, sampling, own_extend, hidden if d.uses_hidden else None)
            if len(draft):
                self._used = d
                return draft
        return Draft()

    def observe(self, drafted: int, accepted: int) -> None:
        if self._used is not None:
            self._used.observe(drafted, accepted)
