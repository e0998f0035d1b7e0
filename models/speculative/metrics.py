"""What one speculative request did: τ, per-position acceptance, time spent drafting and verifying."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpecStats:
    tokens: int = 0
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0
    # per draft position j (0-based): how often it was verified, and how often it was kept
    position_drafted: list[int] = field(default_factory=list)
    position_accepted: list[int] = field(default_factory=list)

    def record(self, drafted: int, accepted: int, emitted: int, draft_s: float, verify_s: float) -> None:
        self.steps += 1
        self.tokens += emitted
        self.drafted += drafted
        self.accepted += accepted
        self.draft_s += draft_s
        self.verify_s += verify_s
        while len(self.position_drafted) < drafted:
            self.position_drafted.append(0)
            self.position_accepted.append(0)
        for j in range(drafted):
            self.position_drafted[j] += 1
            if j < accepted:
                self.position_accepted[j] += 1

    @property
    def tau(self) -> float:
        """Tokens emitted per target forward, the bonus/correction token included."""
        return self.tokens / self.steps if self.steps else 0.0

    @property
    def acceptance(self) -> list[float]:
        return [a / d if d else 0.0 for a, d in zip(self.position_accepted, self.position_drafted)]

    def as_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "steps": self.steps,
            "tau": round(self.tau, 4),
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_by_position": [round(a, 4) for a in self.acceptance],
            "position_drafted": list(self.position_drafted),
            "position_accepted": list(self.position_accepted),
            "draft_ms": round(self.draft_s * 1000, 3),
            "verify_ms": round(self.verify_s * 1000, 3),
        }
