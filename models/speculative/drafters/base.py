"""What a drafter is: something that proposes the next few tokens, cheaply, with a confidence.

The engine owns the target and the verify step; a drafter only guesses. The learned DSpark
drafter (its own issue) plugs in here too: it sets `uses_hidden` to receive the target's
final hidden states and returns exact draft distributions `q` when it samples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from models.sampling import SamplingParams

# Called with the confidences of the positions drafted so far plus the next one; True means
# "draft that next position". It must only see confidences that do not depend on the token
# about to be drafted, which keeps sampled verification exact.
Extend = Callable[[Sequence[float]], bool]


@dataclass
class Draft:
    """Proposed tokens x_1..x_k, the confidence c_j = P(x_j accepted | x_<j accepted) of each
    (known before x_j was chosen), and the exact distributions q_j they were sampled from, if any."""

    tokens: list[int] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    q: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    def truncate(self, n: int) -> "Draft":
        q = self.q[:n] if self.q is not None else None
        return Draft(self.tokens[:n], self.confidence[:n], q)


class Drafter(ABC):
    """A source of draft tokens for one request at a time."""

    name: str = "drafter"
    uses_hidden: bool = False
    # target layers whose outputs it reads before the final hidden state (models.speculative.layers)
    hidden_layers: tuple[int, ...] = ()

    def begin(self, prompt: Sequence[int]) -> None:
        """A new request starts with this prompt."""

    @abstractmethod
    def propose(
        self,
        context: Sequence[int],
        k: int,
        sampling: SamplingParams,
        extend: Extend | None = None,
        hidden: np.ndarray | None = None,
    ) -> Draft:
        """Up to k tokens that continue `context` (prompt and output so far, ending with the
        last emitted token). `hidden` holds the target's final hidden states for the tokens
        verified in the previous step, for drafters that use them."""

    def feed(self, context: Sequence[int], hidden: np.ndarray) -> None:
        """The target's hidden states for the tokens verified in the previous step, handed to
        drafters that use them even on steps they do not draft, so their context stays whole."""

    def observe(self, drafted: int, accepted: int) -> None:
        """Feedback after verification: of `drafted` tokens the first `accepted` were kept."""

    @property
    def seconds_per_token(self) -> float:
        """Measured cost of drafting one token; the scheduler charges it per drafted position."""
        return 0.0


class AcceptanceTracker:
    """Per-bucket acceptance rate with a prior, for drafters without their own confidence.

    Buckets let a drafter separate evidence it can tell apart before drafting (e.g. the length
    of a prompt-lookup match), so the estimate never depends on the drafted token itself.
    Old evidence fades (`decay` per update of a bucket) so the rate follows the text at hand.
    """

    def __init__(self, prior: Callable[[int], float], prior_weight: float, decay: float = 0.95) -> None:
        self.prior = prior
        self.prior_weight = prior_weight
        self.decay = decay
        self._accepted: dict[int, float] = {}
        self._trials: dict[int, float] = {}

    def rate(self, bucket: int) -> float:
        a = self._accepted.get(bucket, 0.0) + self.prior(bucket) * self.prior_weight
        n = self._trials.get(bucket, 0.0) + self.prior_weight
        return a / n

    def update(self, bucket: int, drafted: int, accepted: int) -> None:
        """A run of `drafted` tokens: the first `accepted` passed, the next (if any) failed."""
        trials = min(drafted, accepted + 1)
        self._trials[bucket] = self._trials.get(bucket, 0.0) * self.decay + trials
        self._accepted[bucket] = self._accepted.get(bucket, 0.0) * self.decay + accepted
