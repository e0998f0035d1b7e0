"""`auto`: for each step, the first drafter whose guess the scheduler finds worth verifying.

Prompt lookup costs nothing, so it is asked first. A drafter with a cost of its own (a
draft model, DSpark) is asked only while two measurements allow it: the scheduler says
drafts at its measured cost per token could pay at all, and the seconds it actually saved
per consultation on this machine, over its recent consultations, are not negative. Asking
costs a forward pass even when the confidences then say "draft nothing", so a drafter whose
guesses are rarely kept is a loss that only this second measure shows. A drafter that stops
paying is probed again now and then, since the text at hand changes.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Sequence

import numpy as np

from models.sampling import SamplingParams
from models.speculative.drafters.base import Draft, Drafter, Extend
from models.speculative.scheduler import Scheduler

# Consultations the payoff is averaged over, how many it needs before it may close the
# gate, and how many skipped chances a closed drafter waits before a probe: twice as many
# after each probe that does not reopen it, up to PROBE_MAX (a probe of DSpark makes a whole
# request pay for hidden states).
PAYOFF_WINDOW = 16
PAYOFF_MIN = 8
PROBE_EVERY = 32
PROBE_MAX = 1024


class Payoff:
    """Seconds one drafter saved per consultation: every accepted token spares a plain decode
    step; the verify step's extra rows and the drafter's own time are the price."""

    def __init__(self) -> None:
        self.gains: deque[float] = deque(maxlen=PAYOFF_WINDOW)
        self.skipped = 0
        self.wait = PROBE_EVERY

    @property
    def open(self) -> bool:
        return len(self.gains) < PAYOFF_MIN or sum(self.gains) >= 0.0

    @property
    def due(self) -> bool:
        """Ask it now: it pays, or it has waited long enough for a probe."""
        return self.open or self.skipped >= self.wait

    def record(self, gain_s: float) -> None:
        probe = not self.open
        self.gains.append(gain_s)
        self.skipped = 0
        if self.open:
            self.wait = PROBE_EVERY
        elif probe:
            self.wait = min(2 * self.wait, PROBE_MAX)

    @property
    def mean_s(self) -> float | None:
        return sum(self.gains) / len(self.gains) if self.gains else None


class AutoDrafter(Drafter):
    name = "auto"

    def __init__(self, scheduler: Scheduler, drafters: Sequence[Drafter]) -> None:
        if not drafters:
            raise ValueError("auto needs at least one drafter")
        self.scheduler = scheduler
        self.drafters = list(drafters)
        # Whether this request gets the target's hidden states; the runtime switches them
        # off (see `wants_hidden`) when no drafter that reads them is worth asking.
        self.uses_hidden = any(d.uses_hidden for d in self.drafters)
        layers = {d.hidden_layers for d in self.drafters if d.uses_hidden}
        if len(layers) > 1:
            raise ValueError(f"drafters read different target layers {sorted(layers)}; one target serves one set")
        self.hidden_layers = layers.pop() if layers else ()
        self.payoff = {d.name: Payoff() for d in self.drafters}
        self._used: Drafter | None = None
        self._consult_s = 0.0

    def wants_hidden(self) -> bool:
        """Should the next request pay for hidden states (all prompt rows out of the prefill)?"""
        return any(d.uses_hidden and self._worth_asking(d) for d in self.drafters)

    def _worth_asking(self, d: Drafter) -> bool:
        return self.scheduler.should_extend([1.0], d.seconds_per_token) and self.payoff[d.name].due

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
        sampling: SamplingParams,
        extend: Extend | None = None,
        hidden: np.ndarray | None = None,
    ) -> Draft:
        self._used = None
        if hidden is not None:
            for d in self.drafters:
                if d.uses_hidden:
                    d.feed(context, hidden)
        for d in self.drafters:
            cost = d.seconds_per_token
            if not self.scheduler.should_extend([1.0], cost):
                continue  # too slow here even if every guess were kept
            if not self._worth_asking(d) or (d.uses_hidden and not self.uses_hidden):
                self.payoff[d.name].skipped += 1  # a chance missed; enough of them and it is probed again
                continue

            def own_extend(conf: Sequence[float], cost: float = cost) -> bool:
                return self.scheduler.should_extend(conf, cost)

            start = time.perf_counter()
            draft = d.propose(context, k, sampling, own_extend)
            self._consult_s = time.perf_counter() - start
            if len(draft):
                self._used = d
                return draft
            if d.seconds_per_token > 0:  # asked for nothing, paid for the asking
                self.payoff[d.name].record(-self._consult_s)
        return Draft()

    def observe(self, drafted: int, accepted: int) -> None:
        d = self._used
        if d is None:
            return
        d.observe(drafted, accepted)
        if d.seconds_per_token > 0:
            step = self.scheduler.profile.step_seconds
            saved = accepted * step(1) - (step(1 + drafted) - step(1)) - self._consult_s
            self.payoff[d.name].record(saved)
