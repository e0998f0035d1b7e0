"""Where DSpark runs: a CUDA GPU when there is one, otherwise the CPU, unless told otherwise."""

from __future__ import annotations

import torch


def pick_device(requested: str | None = None) -> torch.device:
    """`requested` ("cpu", "cuda", "cuda:1") wins; None or "auto" picks CUDA when available."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{requested}' requested but torch sees no CUDA GPU")
    return device
