"""Refits the length estimator's weights (data/estimator.json) on the train split of the
labelled prompts, choosing the regularisation by cross-validation within the train split,
so the test split stays unseen until the accuracy it prints.

    python -m aibox.router.fit [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import sys

from aibox.router.estimator import PROMPTS, WEIGHTS, LengthModel, evaluate, fit_model, load_prompts
from aibox.router.features import VECTOR_NAMES

L2_CHOICES = (0.1, 0.3, 1.0, 3.0)
FOLDS = 5


def cross_validated_accuracy(rows: list[dict], cap: int, l2: float) -> float:
    correct = 0.0
    for k in range(FOLDS):
        train = [r for i, r in enumerate(rows) if i % FOLDS != k]
        held = [r for i, r in enumerate(rows) if i % FOLDS == k]
        correct += evaluate(fit_model(train, cap, l2), held)["accuracy"] * len(held)
    return correct / len(rows)


def save(model: LengthModel, l2: float, trained_on: int, label_model: str) -> None:
    assert model.over_short is not None and model.over_long is not None
    WEIGHTS.write_text(
        json.dumps({"features": VECTOR_NAMES, "weights": [round(w, 6) for w in model.weights],
                    "over_short": [round(w, 6) for w in model.over_short],
                    "over_long": [round(w, 6) for w in model.over_long],
                    "cap": model.cap, "l2": l2, "trained_on": trained_on, "label_model": label_model}, indent=1) + "\n",
        encoding="utf-8",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aibox.router.fit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the accuracy without writing the weights")
    args = parser.parse_args(argv)
    rows = load_prompts()
    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    if len(train) < 20:
        print(f"only {len(train)} labelled training prompts in {PROMPTS}; label more first", file=sys.stderr)
        return 1
    cap = max(r["max_tokens"] for r in rows)
    l2 = max(L2_CHOICES, key=lambda c: cross_validated_accuracy(train, cap, c))
    model = fit_model(train, cap, l2)
    result = {"train": evaluate(model, train), "test": evaluate(model, test)}
    if not args.dry_run:
        save(model, l2, len(train), rows[0]["model"])
    print(json.dumps({"l2": l2} | {k: {"n": v["n"], "accuracy": round(v["accuracy"], 3)} for k, v in result.items()}))
    print(json.dumps(result["test"]["confusion"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
