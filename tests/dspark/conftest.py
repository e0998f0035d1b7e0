"""Tiny synthetic drafters for the shape, mask and sampling tests (no GGUF needed)."""

from __future__ import annotations

import torch

from models.dspark.model import DSpark, DSparkConfig


def tiny_model(vocab: int = 40, draft_ids: list[int] | None = None, rank: int = 8, seed: int = 0, block: int = 4) -> DSpark:
    """A one-layer drafter over a random 'target' embedding; the serial correction is made
    non-zero (it starts at zero when trained from scratch) so its effect is visible."""
    torch.manual_seed(seed)
    cfg = DSparkConfig(n_vocab=vocab, d_model=32, n_heads=4, n_kv_heads=2, ffn=64, rope_theta=10000.0, norm_eps=1e-5,
                       n_layers=1, block_size=block, markov_rank=rank, draft_vocab_size=len(draft_ids) if draft_ids else 0)
    embed = torch.randn(vocab, 32) * 0.2  # logits of order 1: drafts are varied
    ids = torch.tensor(draft_ids) if draft_ids else None
    model = DSpark(cfg, embed, embed, ids)
    if rank:
        torch.nn.init.normal_(model.markov_out.weight, std=1.0)
    return model.eval()
