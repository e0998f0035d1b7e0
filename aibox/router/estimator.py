"""How many tokens a request's answer will have, before any model runs.

Two sources, blended: a ridge regression on log(tokens) over the text features, fitted
on the shipped labelled prompt set (weights in data/estimator.json, refitted with
`python -m aibox.router.estimator`), and the real answer lengths this box has produced
for the same sender and agent (the `generations` table), which pull the prediction
towards what that person or agent actually gets as they use the box. Explicit hints
(/fast, /long, a requested word count) override both.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from aibox.router.features import VECTOR_NAMES, Features, extract
from aibox.store import Store
from aibox.store.schema import Generation

DATA_DIR = Path(__file__).parent / "data"
WEIGHTS = DATA_DIR / "estimator.json"
PROMPTS = DATA_DIR / "prompts.jsonl"

SHORT_MAX = 60  # under 60 tokens: short
LONG_MIN = 200  # over 200 tokens: long
# History counts as much as this many prompts' worth of the text model: with 8 past
# answers from a sender and agent, the two weigh the same.
HISTORY_PRIOR = 8
HISTORY_WINDOW = 50


def length_class(tokens: float) -> str:
    if tokens < SHORT_MAX:
        return "short"
    if tokens > LONG_MIN:
        return "long"
    return "medium"


@dataclass(frozen=True)
class Estimate:
    tokens: int
    length_class: str
    source: str  # what decided it: "model", "model+history", "hint", "requested length"
    history_n: int = 0


class LengthModel:
    """Ridge regression from feature vectors to log(1 + tokens)."""

    def __init__(self, weights: list[float], cap: int) -> None:
        if len(weights) != len(VECTOR_NAMES):
            raise ValueError(f"estimator weights have {len(weights)} entries, the features {len(VECTOR_NAMES)}")
        self.weights = np.asarray(weights, dtype=float)
        self.cap = cap

    @classmethod
    def load(cls, path: Path = WEIGHTS) -> "LengthModel":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no estimator weights at {path}; run `python -m aibox.router.estimator`") from None
        if data.get("features") != VECTOR_NAMES:
            raise ValueError(f"{path} was fitted on other features; refit with `python -m aibox.router.estimator`")
        return cls(data["weights"], data["cap"])

    def log_tokens(self, features: Features) -> float:
        return float(np.dot(self.weights, features.vector()))

    def tokens(self, features: Features) -> float:
        return float(min(self.cap, max(1.0, math.expm1(self.log_tokens(features)))))


def fit(rows: list[dict], l2: float = 1.0) -> np.ndarray:
    """Ridge on log(1 + tokens); the bias is not penalised."""
    x = np.array([extract(r["text"]).vector() for r in rows])
    y = np.array([math.log1p(r["tokens"]) for r in rows])
    penalty = l2 * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    return np.linalg.solve(x.T @ x + penalty, x.T @ y)


def load_prompts(path: Path = PROMPTS) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Estimator:
    """Text model plus per-sender/agent history from the store."""

    def __init__(self, model: LengthModel, store: Store | None = None) -> None:
        self.model = model
        self.store = store

    def history(self, sender: str | None, agent: str | None) -> list[int]:
        """Recent real answer lengths for this sender (and agent, when given)."""
        if self.store is None or (sender is None and agent is None):
            return []
        query = select(Generation.completion_tokens).where(Generation.finish_reason != "cancelled")
        if sender is not None:
            query = query.where(Generation.sender == sender)
        if agent is not None:
            query = query.where(Generation.agent == agent)
        query = query.order_by(Generation.id.desc()).limit(HISTORY_WINDOW)
        with self.store.session() as s:
            return [n for n in s.scalars(query) if n > 0]

    def estimate(self, features: Features, sender: str | None = None) -> Estimate:
        if features.hint == "fast":
            return Estimate(min(SHORT_MAX - 1, int(self.model.tokens(features))), "short", "hint /fast")
        if features.hint == "long":
            tokens = max(LONG_MIN + 1, int(self.model.tokens(features)))
            return Estimate(tokens, "long", "hint /long")
        if features.requested_tokens is not None:
            tokens = min(self.model.cap, features.requested_tokens)
            return Estimate(tokens, length_class(tokens), "requested length")
        log_model = self.model.log_tokens(features)
        past = self.history(sender, features.agent)
        if not past:
            tokens = self.model.tokens(features)
            return Estimate(int(round(tokens)), length_class(tokens), "model")
        log_hist = sum(math.log1p(n) for n in past) / len(past)
        blended = (HISTORY_PRIOR * log_model + len(past) * log_hist) / (HISTORY_PRIOR + len(past))
        tokens = min(self.model.cap, max(1.0, math.expm1(blended)))
        return Estimate(int(round(tokens)), length_class(tokens), "model+history", len(past))


def evaluate(model: LengthModel, rows: list[dict]) -> dict:
    """Length-class accuracy and a confusion table on labelled rows."""
    confusion: dict[str, dict[str, int]] = {c: {d: 0 for d in ("short", "medium", "long")} for c in ("short", "medium", "long")}
    correct = 0
    for r in rows:
        truth = length_class(r["tokens"])
        guess = Estimator(model).estimate(extract(r["text"])).length_class
        confusion[truth][guess] += 1
        correct += truth == guess
    return {"n": len(rows), "accuracy": correct / len(rows) if rows else 0.0, "confusion": confusion}


def main(argv: list[str] | None = None) -> int:
    """Fits the weights on the train split and prints test accuracy."""
    rows = load_prompts()
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    if len(train) < 20:
        print(f"only {len(train)} labelled training prompts in {PROMPTS}; label more first", file=sys.stderr)
        return 1
    cap = max(r["max_tokens"] for r in rows)
    weights = fit(train)
    model = LengthModel(weights.tolist(), cap)
    result = {"train": evaluate(model, train), "test": evaluate(model, test)}
    WEIGHTS.write_text(
        json.dumps({"features": VECTOR_NAMES, "weights": [round(w, 6) for w in weights], "cap": cap,
                    "trained_on": len(train), "label_model": rows[0]["model"]}, indent=1) + "\n",
        encoding="utf-8",
    )
    print(json.dumps({k: {"n": v["n"], "accuracy": round(v["accuracy"], 3)} for k, v in result.items()}))
    print(json.dumps(result["test"]["confusion"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
