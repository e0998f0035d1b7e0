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


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively here. Without native support (AVX512-BF16 or AMX on a
    CPU) oneDNN emulates them, slower than fp32, so autocast would cost instead of save."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False
