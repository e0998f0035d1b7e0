"""The same GGUF as a plain torch model, for CUDA boxes.

On a GPU a decode step is memory-bound, so verifying 8 tokens costs about what one costs
and speculation pays; llama-cpp-python wheels there are often CPU-only. The weights are
dequantized with the `gguf` package into a small nanoGPT-style forward for the Llama and
Qwen2 architectures (RMSNorm, rotary attention with grouped KV heads, SwiGLU MLP). On a CPU
it is the independent reference the tests compare llama.cpp against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGUFReader
from gguf.quants import dequantize

from models.speculative.target import StepOutput

SUPPORTED = ("llama", "qwen2")


def _field(reader: GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    return f.contents() if f is not None else default


class TorchTarget:
    def __init__(
        self,
        weights: dict[str, torch.Tensor],
        arch: str,
        n_layer: int,
        n_head: int,
        n_head_kv: int,
        eps: float,
        rope_base: float,
        n_ctx: int,
        eog: set[int],
        device: torch.device,
        dtype: torch.dtype,
        hidden: bool = False,
    ) -> None:
        self.w = weights
        self.arch = arch
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_head_kv = n_head_kv
        self.eps = eps
        self.n_ctx = n_ctx
        self.eog = eog
        self.device = device
        self.dtype = dtype
        self.hidden = hidden
        self.n_embd = weights["token_embd.weight"].shape[1]
        self.n_vocab = weights["token_embd.weight"].shape[0]
        self.head_dim = self.n_embd // n_head
        inv = 1.0 / (rope_base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim))
        ang = torch.outer(torch.arange(n_ctx, dtype=torch.float64), inv)
        self._cos = torch.cos(ang).to(device, torch.float32)
        self._sin = torch.sin(ang).to(device, torch.float32)
        shape = (n_layer, n_ctx, n_head_kv, self.head_dim)
        self._k = torch.zeros(shape, device=device, dtype=dtype)
        self._v = torch.zeros(shape, device=device, dtype=dtype)
        self._tokens: list[int] = []

    @classmethod
    def load(
        cls,
        path: Path | str,
        n_ctx: int = 4096,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        hidden: bool = False,
    ) -> "TorchTarget":
        """Dequantize a Llama or Qwen2 GGUF; CUDA in half precision when present, else CPU float32."""
        reader = GGUFReader(str(path))
        arch = str(_field(reader, "general.architecture", ""))
        if arch not in SUPPORTED:
            raise ValueError(f"{path}: architecture '{arch}' is not supported by the torch target (only {', '.join(SUPPORTED)})")
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dt = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
        weights: dict[str, torch.Tensor] = {}
        for t in reader.tensors:
            arr = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
            arr = arr.reshape([int(d) for d in reversed(t.shape)])
            weights[t.name] = torch.from_numpy(np.array(arr, dtype=np.float32)).to(dev, dt)
        if "output.weight" not in weights:
            weights["output.weight"] = weights["token_embd.weight"]
        eog = {
            int(v)
            for key in ("eos_token_id", "eot_token_id", "eom_token_id")
            if (v := _field(reader, f"tokenizer.ggml.{key}")) is not None
        }
        names = _field(reader, "tokenizer.ggml.tokens", [])
        for special in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>"):
            if special in names:
                eog.add(names.index(special))
        return cls(
            weights,
            arch=arch,
            n_layer=int(_field(reader, f"{arch}.block_count")),
            n_head=int(_field(reader, f"{arch}.attention.head_count")),
            n_head_kv=int(_field(reader, f"{arch}.attention.head_count_kv")),
            eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
            rope_base=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
            n_ctx=n_ctx,
            eog=eog,
            device=dev,
            dtype=dt,
            hidden=hidden,
        )

    @property
    def n_past(self) -> int:
        return len(self._tokens)

    @property
    def tokens(self) -> list[int]:
        return list(self._tokens)

    def is_eog(self, token: int) -> bool:
        return token in self.eog

    def rollback(self, n_keep: int) -> None:
        if n_keep < 0 or n_keep > self.n_past:
            raise ValueError(f"cannot roll back to {n_keep}: {self.n_past} tokens in the cache")
        del self._tokens[n_keep:]

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.w[name].float()).to(x.dtype)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        bias = self.w.get(name.replace(".weight", ".bias"))
        return F.linear(x, self.w[name], bias)

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """llama GGUFs store Q/K permuted for adjacent-pair rotation; qwen2 uses half rotation (NEOX)."""
        cos = self._cos[pos][:, None, :]
        sin = self._sin[pos][:, None, :]
        xf = x.float()
        if self.arch == "llama":
            a, b = xf[..., 0::2], xf[..., 1::2]
            out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
        else:
            half = self.head_dim // 2
            a, b = xf[..., :half], xf[..., half:]
            out = torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)
        return out.to(x.dtype)

    @torch.inference_mode()
    def decode(self, tokens: Sequence[int], all_logits: bool = True) -> StepOutput:
        if not tokens:
            raise ValueError("decode needs at least one token")
        start, n = self.n_past, len(tokens)
        if start + n > self.n_ctx:
            raise ValueError(f"context full: {start} + {n} tokens exceed n_ctx {self.n_ctx}")
        ids = torch.tensor(list(tokens), device=self.device)
        pos = torch.arange(start, start + n, device=self.device)
        x = self.w["token_embd.weight"][ids]
        end = start + n
        mask = torch.ones(n, end, dtype=torch.bool, device=self.device).tril(diagonal=start)
        group = self.n_head // self.n_head_kv
        for i in range(self.n_layer):
            p = f"blk.{i}."
            h = self._norm(x, p + "attn_norm.weight")
            q = self._linear(h, p + "attn_q.weight").view(n, self.n_head, self.head_dim)
            k = self._linear(h, p + "attn_k.weight").view(n, self.n_head_kv, self.head_dim)
            v = self._linear(h, p + "attn_v.weight").view(n, self.n_head_kv, self.head_dim)
            self._k[i, start:end] = self._rope(k, pos)
            self._v[i, start:end] = v
            q = self._rope(q, pos).transpose(0, 1)
            kk = self._k[i, :end].transpose(0, 1).repeat_interleave(group, dim=0)
            vv = self._v[i, :end].transpose(0, 1).repeat_interleave(group, dim=0)
            att = F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)
            x = x + self._linear(att.transpose(0, 1).reshape(n, self.n_embd), p + "attn_output.weight")
            h = self._norm(x, p + "ffn_norm.weight")
            gate = F.silu(self._linear(h, p + "ffn_gate.weight"))
            x = x + self._linear(gate * self._linear(h, p + "ffn_up.weight"), p + "ffn_down.weight")
        rows = x if all_logits else x[-1:]
        h = self._norm(rows, "output_norm.weight")
        logits = self._linear(h, "output.weight").float().cpu().numpy()
        self._tokens.extend(int(t) for t in tokens)
        hidden = h.float().cpu().numpy() if self.hidden else None
        return StepOutput(logits=logits, hidden=hidden)
