"""How many draft tokens to verify: the DSpark rule, driven by the measured SPS(B) profile.

Expected speed of a step that verifies ℓ drafted tokens is
    (1 + a_1 + ... + a_ℓ) / (draft time + SPS⁻¹(1 + ℓ)),   a_j = c_1 · ... · c_j,
and ℓ = 0 is a plain decode step. Positions are admitted one at a time and drafting stops at
the first position that does not improve the speed. On a GPU SPS(B) is flat, so this
reproduces the paper's greedy rule. On a small CPU one more token costs almost one more
step until B ≈ 8 and much less after, so a one-step greedy test would never start
speculating even on text that is pure copy; the test therefore looks ahead, asking whether
some longer run at the current confidence would improve the speed. The lookahead only uses
c_1..c_{j+1}, all known before x_{j+1} is drafted, so whether x_{j+1} is verified never
depends on x_{j+1} itself: that keeps sampled verification exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from models.speculative.profile import SpsProfile

# An improvement smaller than this is noise in the profile, not a reason to draft.
MIN_GAIN = 1.01


@dataclass
class Assessment:
    """Whether speculation can pay with a drafter on this machine, and why."""

    pays: bool
    break_even_confidence: float | None
    best_length: int
    ceiling: float
    reason: str


class Scheduler:
    def __init__(self, profile: SpsProfile, max_draft: int = 16) -> None:
        if max_draft < 0:
            raise ValueError("max_draft must be >= 0")
        self.profile = profile
        # beyond the exact batch, batched logits differ from plain decoding's: not lossless
        self.capped = 0 < profile.exact_batch < profile.batch_sizes[-1]
        self.max_draft = min(max_draft, profile.exact_batch - 1) if self.capped else max_draft

    def rate(self, survival: Sequence[float], draft_seconds: float) -> float:
        """Expected tokens per second of one step verifying len(survival) drafted tokens."""
        return (1.0 + sum(survival)) / (draft_seconds + self.profile.step_seconds(1 + len(survival)))

    def should_extend(self, confidences: Sequence[float], seconds_per_token: float = 0.0) -> bool:
        """Given c_1..c_{j+1}, draft and verify position j+1?"""
        j = len(confidences) - 1
        if j < 0 or j >= self.max_draft:
            return False
        survival = _survival(confidences[:j])
        tokens = 1.0 + sum(survival)
        current = tokens / (j * seconds_per_token + self.profile.step_seconds(1 + j))
        c = min(max(confidences[j], 0.0), 1.0)
        last = survival[-1] if survival else 1.0
        for m in range(1, self.max_draft - j + 1):
            last *= c
            tokens += last
            rate = tokens / ((j + m) * seconds_per_token + self.profile.step_seconds(1 + j + m))
            if rate > current * MIN_GAIN:
                return True
        return False

    def choose_length(self, confidences: Sequence[float], seconds_per_token: float = 0.0) -> int:
        """How many of the drafted positions to verify (the same rule, applied position by position)."""
        n = 0
        while n < len(confidences) and self.should_extend(confidences[: n + 1], seconds_per_token):
            n += 1
        return n

    def plan(self, requests: Sequence[Sequence[float]], seconds_per_token: float = 0.0) -> list[int]:
        """Share one verify batch across requests in flight.

        Maximises Θ = τ / (draft time + SPS⁻¹(B)), B = Σ(1 + ℓ_r), τ = Σ(1 + Σ_j a_rj): candidates
        (request, position) are admitted in order of survival a; a request's run ends at its
        first position that does not improve Θ, looking ahead along that request's own
        confidence as `should_extend` does, so admitting x_rj depends only on what is known
        before x_rj is drafted.
        """
        candidates = sorted(
            ((a, r, j) for r, conf in enumerate(requests) for j, a in enumerate(_survival(conf))),
            key=lambda c: (-c[0], c[1], c[2]),
        )
        lengths = [0] * len(requests)
        tau = float(len(requests))
        batch = len(requests)
        drafted = 0
        budget = self.max_draft * max(len(requests), 1)

        def theta(t: float, b: int, d: int) -> float:
            return t / (d * seconds_per_token + self.profile.step_seconds(b))

        closed: set[int] = set()
        for a, r, j in candidates:
            if r in closed or j != lengths[r] or drafted >= budget:
                continue
            previous = _survival(requests[r])[j - 1] if j else 1.0
            c = a / previous if previous > 0 else 0.0
            current = theta(tau, batch, drafted)
            gain, projected = False, 0.0
            for m in range(1, budget - drafted + 1):
                projected += a * c ** (m - 1)
                if theta(tau + projected, batch + m, drafted + m) > current * MIN_GAIN:
                    gain = True
                    break
            if not gain:
                closed.add(r)
                continue
            lengths[r] += 1
            tau += a
            batch += 1
            drafted += 1
        return lengths

    def assess(self, seconds_per_token: float = 0.0) -> Assessment:
        """Can speculation pay here at all, and from which per-token acceptance rate on?"""
        plain = self.rate([], 0.0)
        best_len, ceiling = 0, 1.0
        for n in range(1, self.max_draft + 1):
            speedup = self.rate([1.0] * n, n * seconds_per_token) / plain
            if speedup > ceiling:
                best_len, ceiling = n, speedup
        b8 = self.profile.step_seconds(8) / self.profile.step_seconds(1)
        cost = f"a verify step of 8 tokens costs {b8:.1f} single steps"
        if self.capped:
            cost += (
                f"; batches above {self.profile.exact_batch} tokens are not bit-identical to single decodes"
                f" here, so drafts stop at {self.max_draft}"
            )
        if ceiling <= MIN_GAIN:
            return Assessment(
                False, None, 0, ceiling,
                f"never pays: even drafts that are always accepted are slower than plain decoding ({cost})",
            )
        lo, hi = 0.0, 1.0
        for _ in range(30):
            mid = (lo + hi) / 2
            if self.choose_length([mid] * self.max_draft, seconds_per_token) > 0:
                hi = mid
            else:
                lo = mid
        return Assessment(
            True, hi, best_len, ceiling,
            f"pays when drafts are accepted at >= {hi:.0%} per token (at most {ceiling:.2f}x with "
            f"{best_len} drafted tokens; {cost}); below that the scheduler decodes plainly",
        )


def _survival(confidences: Sequence[float]) -> list[float]:
    out, a = [], 1.0
    for c in confidences:
        a *= min(max(c, 0.0), 1.0)
        out.append(a)
    return out
