"""Which trained DSpark drafter belongs to a model: its card names a checkpoint directory,
`drafters = { dspark = "dspark/checkpoints/<model>" }`, relative to the `models` package
(where shipped drafters live) unless absolute."""

from __future__ import annotations

from pathlib import Path

from models.catalog import ModelCard
from models.dspark.checkpoint import CONFIG, WEIGHTS
from models.dspark.drafter import DSparkDrafter

MODELS_PACKAGE = Path(__file__).resolve().parent.parent


def dspark_checkpoint(card: ModelCard) -> Path | None:
    """The card's DSpark checkpoint directory, if it names one that is complete on disk."""
    value = card.drafters.get("dspark")
    if not value:
        return None
    path = Path(value).expanduser()
    path = path if path.is_absolute() else MODELS_PACKAGE / path
    return path if (path / WEIGHTS).is_file() and (path / CONFIG).is_file() else None


def dspark_for_card(card: ModelCard, gguf_path: Path, device: str | None = None) -> DSparkDrafter | None:
    checkpoint = dspark_checkpoint(card)
    return DSparkDrafter.load(checkpoint, gguf_path, device) if checkpoint else None
