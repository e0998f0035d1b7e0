"""The DSpark block drafter: a parallel backbone that drafts γ tokens in one pass, plus a serial
correction that makes each token depend on the one sampled before it.

One block is the anchor (the last token the target produced) followed by γ-1 mask slots;
block position i predicts the token at anchor + i + 1. All block positions attend to each
other (bidirectional) and to the target's context features before the anchor, which enter
every layer as extra keys and values (fused once by a linear layer and an RMSNorm, then
projected by each layer's own k/v). The embedding and LM head are the target's, frozen.

Serial correction: logit_k = base_k + W2 · W1[x_{k-1}] (W1: V_d+1 x r table, W2: r x V_d),
x_0 = anchor. Sampling left to right with it gives each draft token an exact probability q.
Confidence: c_k = sigmoid(w · [h_k ; W1[x_{k-1}]]), known before x_k is drawn.

A reduced draft vocabulary keeps only the most frequent tokens in the head; every other
token gets draft probability 0 (verification stays lossless: such tokens are never drafted,
and the residual max(0, p - q) still covers them). Row V_d of W1 stands for "any token
outside the draft vocabulary" (an anchor can be any token).

Shapes: B batch, A anchors, G = γ block size, Q = A·G block positions, C context length,
d model width, H heads, Hk kv heads, hd head dim, V target vocab, V_d draft vocab, r rank.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.dspark.target_weights import TargetShape


@dataclass
class DSparkConfig:
    n_vocab: int  # target vocabulary V
    d_model: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    rope_theta: float
    norm_eps: float
    n_layers: int = 2
    block_size: int = 5  # γ
    markov_rank: int = 64  # r; 0 turns the serial correction off (the DFlash baseline)
    confidence: bool = True
    draft_vocab_size: int = 0  # V_d; 0 means the whole target vocabulary
    calibration: list[float] = field(default_factory=list)  # per-position temperatures, from calibrate
    # target layers whose outputs are fused with the final hidden state (models.speculative.layers)
    feature_layers: list[int] = field(default_factory=list)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def vocab(self) -> int:
        return self.draft_vocab_size or self.n_vocab

    @property
    def feature_dim(self) -> int:
        """Width of one position's target features: each chosen layer's output, then the final state."""
        return self.d_model * (len(self.feature_layers) + 1)

    @classmethod
    def for_target(cls, shape: TargetShape, **overrides) -> "DSparkConfig":
        base = dict(
            n_vocab=shape.n_vocab,
            d_model=shape.d_model,
            n_heads=shape.n_heads,
            n_kv_heads=shape.n_kv_heads,
            ffn=shape.ffn,
            rope_theta=shape.rope_theta,
            norm_eps=shape.norm_eps,
        )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DSparkConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown DSpark config keys: {', '.join(sorted(unknown))}")
        return cls(**data)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding (rotate-half layout) of x (B, heads, T, hd) at integer positions pos (B, T)."""
    hd = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, device=x.device, dtype=torch.float32) / hd))  # (hd/2,)
    ang = pos.to(torch.float32).unsqueeze(-1) * inv  # (B, T, hd/2)
    cos = torch.cat([ang.cos(), ang.cos()], dim=-1).unsqueeze(1).to(x.dtype)  # (B, 1, T, hd)
    sin = torch.cat([ang.sin(), ang.sin()], dim=-1).unsqueeze(1).to(x.dtype)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: DSparkConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * hd, cfg.d_model, bias=False)

    def kv(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (with RoPE) and values of x (B, T, d) at positions pos (B, T): each (B, Hk, T, hd)."""
        B, T, _ = x.shape
        hd = self.cfg.head_dim
        k = self.k_proj(x).view(B, T, self.cfg.n_kv_heads, hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.cfg.n_kv_heads, hd).transpose(1, 2)
        return rope(k, pos, self.cfg.rope_theta), v

    def forward(
        self,
        x: torch.Tensor,  # (B, Q, d) block hidden states
        pos: torch.Tensor,  # (B, Q)
        ctx_k: torch.Tensor,  # (B, Hk, C, hd) injected context keys
        ctx_v: torch.Tensor,  # (B, Hk, C, hd)
        mask: torch.Tensor | None,  # (B, 1, Q, C + Q) True = may attend; None = everything
    ) -> torch.Tensor:
        B, Q, _ = x.shape
        hd = self.cfg.head_dim
        q = self.q_proj(x).view(B, Q, self.cfg.n_heads, hd).transpose(1, 2)  # (B, H, Q, hd)
        q = rope(q, pos, self.cfg.rope_theta)
        bk, bv = self.kv(x, pos)  # (B, Hk, Q, hd)
        k = torch.cat([ctx_k, bk], dim=2)  # (B, Hk, C + Q, hd)
        v = torch.cat([ctx_v, bv], dim=2)
        gqa = self.cfg.n_heads != self.cfg.n_kv_heads  # each kv head serves H / Hk query heads
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)  # (B, H, Q, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, Q, self.cfg.n_heads * hd))


class MLP(nn.Module):
    def __init__(self, cfg: DSparkConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.ffn, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.ffn, bias=False)
        self.down = nn.Linear(cfg.ffn, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Layer(nn.Module):
    def __init__(self, cfg: DSparkConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, pos, ctx_k, ctx_v, mask) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), pos, ctx_k, ctx_v, mask)
        return x + self.mlp(self.mlp_norm(x))


class DSpark(nn.Module):
    """Trainable parameters are everything but `embed`/`head` (the target's, kept out of the
    state dict). `draft_ids` (V_d,) lists the target token ids of the draft vocabulary."""

    def __init__(self, cfg: DSparkConfig, embed: torch.Tensor, head: torch.Tensor, draft_ids: torch.Tensor | None = None) -> None:
        super().__init__()
        if embed.shape != (cfg.n_vocab, cfg.d_model) or head.shape != (cfg.n_vocab, cfg.d_model):
            raise ValueError(
                f"target embedding/head shapes {tuple(embed.shape)}/{tuple(head.shape)} do not match "
                f"the drafter config ({cfg.n_vocab}, {cfg.d_model})"
            )
        if draft_ids is None:
            draft_ids = torch.arange(cfg.n_vocab)
        draft_ids = draft_ids.to(torch.long)
        if draft_ids.numel() != cfg.vocab:
            raise ValueError(f"draft vocabulary has {draft_ids.numel()} ids, config says {cfg.vocab}")
        self.cfg = cfg
        self.register_buffer("draft_ids", draft_ids.clone())
        # full id -> draft index; V_d for tokens outside the draft vocabulary
        to_draft = torch.full((cfg.n_vocab,), cfg.vocab, dtype=torch.long)
        to_draft[draft_ids] = torch.arange(cfg.vocab)
        self.register_buffer("to_draft", to_draft, persistent=False)
        full_head = head.detach().float()
        full_vocab = cfg.vocab == cfg.n_vocab and bool((draft_ids == torch.arange(cfg.n_vocab)).all())
        self.register_buffer("embed", embed.detach().float(), persistent=False)  # (V, d)
        self.register_buffer("full_head", full_head, persistent=False)  # (V, d): the target's logits
        self.register_buffer("head", full_head if full_vocab else full_head[draft_ids].contiguous(), persistent=False)  # (V_d, d)

        d = cfg.d_model
        self.fc = nn.Linear(cfg.feature_dim, d, bias=False)
        self.feat_norm = RMSNorm(d, cfg.norm_eps)
        self.mask_embed = nn.Parameter(torch.randn(d) * embed.float().std())
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(d, cfg.norm_eps)
        r = cfg.markov_rank
        if r > 0:
            self.markov_in = nn.Embedding(cfg.vocab + 1, r)  # W1
            self.markov_out = nn.Linear(r, cfg.vocab, bias=False)  # W2, starts at zero: no correction
            nn.init.normal_(self.markov_in.weight, std=1.0 / math.sqrt(r))
            nn.init.zeros_(self.markov_out.weight)
        self.conf = nn.Linear(d + r, 1) if cfg.confidence else None
        self._init_backbone()

    def _init_backbone(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() == 2 and not name.startswith("markov"):
                nn.init.normal_(p, std=0.02)
        # residual outputs small, so the untrained stack starts near the identity
        for layer in self.layers:
            nn.init.normal_(layer.attn.o_proj.weight, std=0.02 / math.sqrt(2 * self.cfg.n_layers))
            nn.init.normal_(layer.mlp.down.weight, std=0.02 / math.sqrt(2 * self.cfg.n_layers))

    # --- context ---------------------------------------------------------------------------

    def context_kv(self, feats: torch.Tensor, pos: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (k, v), each (B, Hk, C, hd), from target features (B, C, feature_dim) at
        positions (B, C). Intermediate layer outputs are the raw residual stream, whose scale
        differs a hundredfold between layers, so each is RMS-normalised before the fusion."""
        x = feats.to(self.embed.dtype)
        k, d = len(self.cfg.feature_layers), self.cfg.d_model
        if k:
            mid = x[..., : k * d].unflatten(-1, (k, d))  # (B, C, k, d)
            mid = mid * torch.rsqrt(mid.pow(2).mean(-1, keepdim=True) + self.cfg.norm_eps)
            x = torch.cat([mid.flatten(-2), x[..., k * d :]], dim=-1)
        fused = self.feat_norm(self.fc(x))  # (B, C, d)
        return [layer.attn.kv(fused, pos) for layer in self.layers]

    # --- block -----------------------------------------------------------------------------

    def block_input(self, ids: torch.Tensor, is_anchor: torch.Tensor) -> torch.Tensor:
        """(B, Q) ids and anchor flags -> (B, Q, d): the anchor's embedding, else the mask vector."""
        emb = self.embed[ids.clamp(min=0)]  # (B, Q, d)
        return torch.where(is_anchor.unsqueeze(-1), emb, self.mask_embed.to(emb.dtype))

    def hidden(
        self,
        x: torch.Tensor,  # (B, Q, d) block input
        pos: torch.Tensor,  # (B, Q)
        ctx: list[tuple[torch.Tensor, torch.Tensor]],
        mask: torch.Tensor | None,  # (B, 1, Q, C + Q)
    ) -> torch.Tensor:
        for layer, (k, v) in zip(self.layers, ctx):
            x = layer(x, pos, k, v, mask)
        return self.norm(x)  # (B, Q, d)

    def base_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., V_d): the frozen head over the draft vocabulary."""
        return h @ self.head.T

    def prev_code(self, prev: torch.Tensor) -> torch.Tensor | None:
        """W1[x_{k-1}] for full-vocabulary ids (...,) -> (..., r), or None without correction."""
        if self.cfg.markov_rank == 0:
            return None
        return self.markov_in(self.to_draft[prev])

    def correction(self, code: torch.Tensor | None) -> torch.Tensor | float:
        """W2 · W1[x_{k-1}] (..., V_d), or 0 without correction."""
        return 0.0 if code is None else self.markov_out(code)

    def confidence_logit(self, h: torch.Tensor, code: torch.Tensor | None) -> torch.Tensor | None:
        """w · [h_k ; W1[x_{k-1}]] (...,): the logit of P(x_k accepted | prefix accepted)."""
        if self.conf is None:
            return None
        feats = h if code is None else torch.cat([h, code], dim=-1)
        return self.conf(feats).squeeze(-1)

    def target_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """The target's own logits (..., V) from its final hidden states: llama.cpp's features
        are the post-norm hidden state (the last d of each feature row), so the target's head
        applied to them is its output."""
        return feats[..., -self.cfg.d_model :].to(self.full_head.dtype) @ self.full_head.T

    def forward_blocks(
        self,
        tokens: torch.Tensor,  # (B, L) prompt + answer ids, padded
        feats: torch.Tensor,  # (B, L, feature_dim) target features per position (rows past the last are ignored)
        label_mask: torch.Tensor,  # (B, L) 1 where the token is an answer token (supervised)
        anchors: torch.Tensor,  # (B, A)
        keep: torch.Tensor,  # (B, A) real anchors
    ) -> "BlockOutput":
        """Teacher-forced training pass over many blocks at once: the serial correction at
        position k uses the true token at k-1, as it would after a fully accepted prefix."""
        B, L = tokens.shape
        A, G = anchors.shape[1], self.cfg.block_size
        ctx = self.context_kv(feats, torch.arange(L, device=tokens.device).expand(B, L))
        pos, is_anchor = block_layout(anchors, G)  # (B, Q)
        inside = pos.clamp(max=L - 1)
        x = self.block_input(tokens.gather(1, inside), is_anchor)  # (B, Q, d)
        h = self.hidden(x, pos, ctx, block_mask(anchors, L, G)).view(B, A, G, -1)
        pos = pos.view(B, A, G)
        label_pos = pos + 1
        in_range = label_pos < L
        label_pos = label_pos.clamp(max=L - 1)
        labels = tokens.gather(1, label_pos.view(B, -1)).view(B, A, G)
        supervised = label_mask.gather(1, label_pos.view(B, -1)).view(B, A, G).bool()
        valid = (in_range & supervised & keep.unsqueeze(-1)).long().cumprod(dim=-1).bool()
        prev = tokens.gather(1, inside).view(B, A, G)  # x_{k-1}: the anchor, then true tokens
        code = self.prev_code(prev)
        logits = self.base_logits(h) + self.correction(code)  # (B, A, G, V_d)
        return BlockOutput(
            logits=logits,
            conf=self.confidence_logit(h, code),
            labels=labels,
            valid=valid,
            target_pos=pos.clamp(max=L - 1),
        )

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: every parameter and the draft vocabulary, not the target's tensors."""
        return {k: v for k, v in self.state_dict().items() if k not in ("embed", "head", "full_head", "to_draft")}


@dataclass
class BlockOutput:
    logits: torch.Tensor  # (B, A, G, V_d) corrected draft logits
    conf: torch.Tensor | None  # (B, A, G) confidence logits
    labels: torch.Tensor  # (B, A, G) target token ids (full vocabulary)
    valid: torch.Tensor  # (B, A, G) supervised: in range, an answer token, and every earlier slot too
    target_pos: torch.Tensor  # (B, A, G) position whose target features give p for that slot


def block_layout(anchors: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (B, A·G) of every block slot and anchor flags (B, A·G) for anchors (B, A)."""
    B, A = anchors.shape
    offsets = torch.arange(block_size, device=anchors.device)
    pos = (anchors.unsqueeze(-1) + offsets).reshape(B, A * block_size)
    is_anchor = (offsets == 0).expand(B, A, block_size).reshape(B, A * block_size)
    return pos, is_anchor


def block_mask(anchors: torch.Tensor, ctx_len: int, block_size: int) -> torch.Tensor:
    """(B, 1, A·G, C + A·G) bool: slot of block a sees context keys before anchor a and every
    slot of its own block, nothing else (no other block, nothing at or after its anchor)."""
    B, A = anchors.shape
    Q = A * block_size
    block_of_q = torch.arange(Q, device=anchors.device) // block_size  # (Q,)
    anchor_of_q = anchors[:, block_of_q]  # (B, Q)
    ctx_keys = torch.arange(ctx_len, device=anchors.device)  # (C,)
    sees_ctx = ctx_keys.view(1, 1, -1) < anchor_of_q.unsqueeze(-1)  # (B, Q, C)
    sees_block = (block_of_q.view(-1, 1) == block_of_q.view(1, -1)).expand(B, Q, Q)  # (B, Q, Q)
    return torch.cat([sees_ctx, sees_block], dim=-1).unsqueeze(1)


def sample_anchors(label_mask: torch.Tensor, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to n random anchors per row (B, A) and which are real (B, A), from label_mask (B, L):
    position t is an anchor candidate when the token at t + 1 is an answer token."""
    B, L = label_mask.shape
    cand = torch.zeros_like(label_mask, dtype=torch.bool)
    cand[:, :-1] = label_mask[:, 1:].bool()
    score = torch.rand(B, L, generator=generator, device=label_mask.device)
    score = torch.where(cand, score, torch.full_like(score, 2.0))
    order = score.argsort(dim=1)[:, :n]  # (B, n), candidates first
    keep = torch.gather(cand, 1, order)
    anchors = torch.where(keep, order, torch.zeros_like(order))
    return anchors, keep
