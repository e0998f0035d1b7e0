"""What the drafter borrows from its target GGUF: shapes, the token embedding and the LM head.

The drafter's embedding and LM head are the target's own, frozen, so they are never trained
or shipped: they are dequantized from the GGUF each time a drafter is built. Models that tie
them (SmolLM2, small Qwens) have no `output.weight`; the embedding is then the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch


class TargetWeightsError(ValueError):
    """The GGUF lacks something the drafter needs."""


@dataclass(frozen=True)
class TargetShape:
    """The target's dimensions, which fix the drafter's width, heads and RoPE."""

    arch: str
    n_vocab: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    rope_theta: float
    norm_eps: float

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def _field(reader: gguf.GGUFReader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    value = f.parts[f.data[0]]
    if f.types and f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(value).decode("utf-8")
    return value.tolist()[0]


def _required(reader: gguf.GGUFReader, key: str, path: Path):
    value = _field(reader, key)
    if value is None:
        raise TargetWeightsError(f"{path}: GGUF has no '{key}'")
    return value


def read_shape(path: Path | str) -> TargetShape:
    path = Path(path)
    reader = gguf.GGUFReader(str(path))
    arch = _required(reader, "general.architecture", path)
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        raise TargetWeightsError(f"{path}: GGUF has no token_embd.weight")
    n_vocab = int(embd.shape[1])
    return TargetShape(
        arch=arch,
        n_vocab=n_vocab,
        d_model=int(_required(reader, f"{arch}.embedding_length", path)),
        n_layers=int(_required(reader, f"{arch}.block_count", path)),
        n_heads=int(_required(reader, f"{arch}.attention.head_count", path)),
        n_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv") or _required(reader, f"{arch}.attention.head_count", path)),
        ffn=int(_required(reader, f"{arch}.feed_forward_length", path)),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base") or 10000.0),
        norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon") or 1e-6),
    )


def _dequantize(tensor) -> np.ndarray:
    """A GGUF tensor as float32 rows x cols (GGUF lists shapes innermost first)."""
    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    rows, cols = int(tensor.shape[1]), int(tensor.shape[0])
    return np.ascontiguousarray(data.reshape(rows, cols), dtype=np.float32)


def load_embedding_and_head(path: Path | str, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(embedding V x d, LM head V x d), dequantized; the same tensor twice when tied."""
    path = Path(path)
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise TargetWeightsError(f"{path}: GGUF has no token_embd.weight")
    embed = torch.from_numpy(_dequantize(tensors["token_embd.weight"])).to(dtype)
    if "output.weight" in tensors:
        head = torch.from_numpy(_dequantize(tensors["output.weight"])).to(dtype)
    else:
        head = embed
    return embed, head
