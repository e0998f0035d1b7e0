"""How many tokens a request's answer will have, before any model runs.

Two sources, blended: linear models over the text features, fitted on the shipped
labelled prompt set (weights in data/estimator.json, refitted with `python -m
aibox.router.fit`): two L2-regularised logistic regressions decide the length
class (is the answer at least 60 tokens? over 200?), and a ridge regression on
log(tokens) gives the token count within that class; and the real answer lengths this box has produced
for the same sender and agent (the `generations` table), which pull the prediction
towards what that person or agent actually gets as they use the box. Explicit hints
(/fast, /long, a requested word count) override both.
"""

from __future__ import annotations

import json
import math
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
    """Class boundaries from two logistic regressions, the token count from a ridge
    regression on log(1 + tokens) kept inside the predicted class."""

    def __init__(self, weights: list[float], cap: int, over_short: list[float] | None = None,
                 over_long: list[float] | None = None) -> None:
        for w in (weights, over_short, over_long):
            if w is not None and len(w) != len(VECTOR_NAMES):
                raise ValueError(f"estimator weights have {len(w)} entries, the features {len(VECTOR_NAMES)}")
        self.weights = np.asarray(weights, dtype=float)
        self.over_short = np.asarray(over_short, dtype=float) if over_short is not None else None
        self.over_long = np.asarray(over_long, dtype=float) if over_long is not None else None
        self.cap = cap

    @classmethod
    def load(cls, path: Path = WEIGHTS) -> "LengthModel":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no estimator weights at {path}; run `python -m aibox.router.fit`") from None
        if data.get("features") != VECTOR_NAMES:
            raise ValueError(f"{path} was fitted on other features; refit with `python -m aibox.router.fit`")
        return cls(data["weights"], data["cap"], data.get("over_short"), data.get("over_long"))

    def log_tokens(self, features: Features) -> float:
        return float(np.dot(self.weights, features.vector()))

    def tokens(self, features: Features) -> float:
        """Predicted answer length, inside the predicted class's range."""
        tokens = min(self.cap, max(1.0, math.expm1(self.log_tokens(features))))
        if self.over_short is None or self.over_long is None:
            return tokens
        x = features.vector()
        if np.dot(self.over_short, x) < 0:
            return min(tokens, SHORT_MAX - 1)
        if np.dot(self.over_long, x) > 0:
            return max(tokens, LONG_MIN + 1)
        return min(max(tokens, SHORT_MAX), LONG_MIN)


def _penalty(n: int, l2: float) -> np.ndarray:
    penalty = l2 * np.eye(n)
    penalty[0, 0] = 0.0  # the bias is not penalised
    return penalty


def fit(rows: list[dict], l2: float = 1.0) -> np.ndarray:
    """Ridge on log(1 + tokens)."""
    x = np.array([extract(r["text"]).vector() for r in rows])
    y = np.array([math.log1p(r["tokens"]) for r in rows])
    return np.linalg.solve(x.T @ x + _penalty(x.shape[1], l2), x.T @ y)


def fit_logistic(rows: list[dict], above: int, l2: float) -> np.ndarray:
    """P(tokens >= above) by Newton's method on the L2-penalised log-likelihood."""
    x = np.array([extract(r["text"]).vector() for r in rows])
    y = np.array([float(r["tokens"] >= above) for r in rows])
    w = np.zeros(x.shape[1])
    penalty = _penalty(x.shape[1], l2)
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        grad = x.T @ (p - y) + penalty @ w
        hess = x.T @ (x * (p * (1 - p))[:, None]) + penalty + 1e-6 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def fit_model(rows: list[dict], cap: int, l2: float) -> LengthModel:
    return LengthModel(fit(rows, l2).tolist(), cap, fit_logistic(rows, SHORT_MAX, l2).tolist(),
                       fit_logistic(rows, LONG_MIN + 1, l2).tolist())


def load_prompts(path: Path = PROMPTS) -> list[dict]:
    """The labelled prompts, each once (parallel labelling workers may both label one)."""
    rows: dict[str, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows.setdefault(row["id"], row)
    return list(rows.values())


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
