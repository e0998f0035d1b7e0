"""A trained drafter on disk: `model.safetensors` (fp16 weights and the draft vocabulary) plus
`config.json` (architecture, calibration and how it was trained). The target's embedding and
head are not in it; they come from the target's GGUF when the drafter is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.dspark.model import DSpark, DSparkConfig
from models.dspark.registry import CONFIG, WEIGHTS
from models.dspark.target_weights import load_embedding_and_head, read_shape


class CheckpointError(ValueError):
    """A drafter checkpoint is missing, damaged, or made for another target."""


def save_checkpoint(model: DSpark, directory: Path, meta: dict | None = None) -> Path:
    """Writes both files atomically (temporary name, then rename); returns the weights path."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, t in model.trainable_state().items():
        t = t.detach().cpu()
        tensors[name] = t.to(torch.int32) if name == "draft_ids" else t.to(torch.float16)
    weights = directory / WEIGHTS
    tmp = weights.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(weights)
    write_config(directory, model.cfg, meta)
    return weights


def write_config(directory: Path, cfg: DSparkConfig, meta: dict | None = None) -> None:
    path = directory / CONFIG
    old_meta = read_config(directory)[1] if path.exists() else {}
    data = {"format": 1, "config": cfg.to_dict(), "meta": {**old_meta, **(meta or {})}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_config(directory: Path) -> tuple[DSparkConfig, dict]:
    path = directory / CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return DSparkConfig.from_dict(data["config"]), data.get("meta", {})
    except FileNotFoundError:
        raise CheckpointError(f"no drafter checkpoint at {directory} (missing {CONFIG})") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a DSpark config ({e})") from None


def load_checkpoint(directory: Path | str, gguf_path: Path | str, device: torch.device | str = "cpu") -> DSpark:
    """The drafter in `directory`, on the target in `gguf_path` (whose shape must match)."""
    directory = Path(directory)
    cfg, _ = read_config(directory)
    shape = read_shape(gguf_path)
    if (shape.n_vocab, shape.d_model) != (cfg.n_vocab, cfg.d_model):
        raise CheckpointError(
            f"drafter in {directory} was trained for vocab {cfg.n_vocab} / width {cfg.d_model}, "
            f"but {Path(gguf_path).name} has {shape.n_vocab} / {shape.d_model}"
        )
    try:
        state = load_file(str(directory / WEIGHTS))
    except FileNotFoundError:
        raise CheckpointError(f"no drafter weights at {directory / WEIGHTS}") from None
    embed, head = load_embedding_and_head(gguf_path)
    model = DSpark(cfg, embed, head, state["draft_ids"].to(torch.long))
    expected = set(model.trainable_state())
    if set(state) != expected:
        missing, extra = expected - set(state), set(state) - expected
        raise CheckpointError(f"{directory / WEIGHTS}: missing {sorted(missing)}, unexpected {sorted(extra)}")
    model.load_state_dict({k: v.float() if k != "draft_ids" else v.long() for k, v in state.items()})
    return model.to(device).eval()
