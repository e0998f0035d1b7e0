"""Which trained DSpark drafter belongs to a model: its card names a checkpoint directory,
`drafters = { dspark = "drafters/<model>" }`, relative to the `models` package (where shipped
drafters live) unless absolute. Finding one and reading what it recorded need no torch, so
callers that only ask (`aibox models info`, the pool's plan) stay light; loading one is
`models.dspark.drafter.dspark_for_card`."""

from __future__ import annotations

import json
from pathlib import Path

from models.catalog import ModelCard

MODELS_PACKAGE = Path(__file__).resolve().parent.parent
# What a checkpoint directory holds: the trained weights (fp16) and the architecture.
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
EVAL = "eval.json"  # what `aibox draft eval` measured, written beside the checkpoint


def dspark_checkpoint(card: ModelCard) -> Path | None:
    """The card's DSpark checkpoint directory, if it names one that is complete on disk."""
    value = card.drafters.get("dspark")
    if not value:
        return None
    path = Path(value).expanduser()
    path = path if path.is_absolute() else MODELS_PACKAGE / path
    return path if (path / WEIGHTS).is_file() and (path / CONFIG).is_file() else None


def recorded_acceptance(checkpoint: Path) -> list[float] | None:
    """Share of steps in which each draft position was kept, at a fixed draft length on
    held-out prompts, as `aibox draft eval` measured it; None if it was never evaluated."""
    try:
        result = json.loads((checkpoint / EVAL).read_text(encoding="utf-8"))
        row = next(r for r in result["results"] if r["drafter"] == "dspark")
        return [float(a) for a in row["acceptance_by_position"]]
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None
