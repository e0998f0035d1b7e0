"""DSpark as a drafter of the speculative engine.

Features are exactly what training saw: the target's final hidden state per position, as
llama.cpp returns it from the verify decode. The engine hands over the rows of the positions
it just committed to the KV cache: right after the prompt they end with the prompt's last
token, later they end right before the last context token (the bonus token, not decoded
yet). A block only ever attends to positions before its anchor, as in training. Each row
is fused and projected to every layer's keys and values once and kept, with its position,
so a proposal costs one pass over the γ block slots plus the serial sampling.
Positions the drafter never saw (a cached prompt prefix, a step another drafter took) are
simply missing from its context; keys carry their own positions, so nothing shifts.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from models.catalog import ModelCard
from models.dspark.checkpoint import load_checkpoint
from models.dspark.device import pick_device
from models.dspark.model import DSpark
from models.dspark.registry import dspark_checkpoint
from models.kv_cache import common_prefix
from models.sampling import SamplingParams, probs, sample
from models.speculative.drafters.base import Draft, Drafter, Extend


class DSparkDrafter(Drafter):
    name = "dspark"
    uses_hidden = True

    def __init__(self, model: DSpark, seed: int | None = None, name: str | None = None) -> None:
        self.model = model.eval()
        self.cfg = model.cfg
        self.hidden_layers = tuple(model.cfg.feature_layers)
        if name:
            self.name = name
        self.device = next(model.parameters()).device
        self.rng = np.random.default_rng(seed)
        self._seconds_per_token = 0.0
        self._draft_ids = model.draft_ids.cpu().numpy()
        self._reset()

    @classmethod
    def load(
        cls,
        checkpoint: Path | str,
        gguf_path: Path | str,
        device: str | None = None,
        seed: int | None = None,
        name: str | None = None,
    ) -> "DSparkDrafter":
        return cls(load_checkpoint(checkpoint, gguf_path, pick_device(device)), seed=seed, name=name)

    @property
    def seconds_per_token(self) -> float:
        return self._seconds_per_token

    def _reset(self) -> None:
        self._tokens: list[int] = []  # token at each position up to the last cached feature
        self._prompt_len = 0
        self._pos = torch.empty(0, dtype=torch.long, device=self.device)  # positions with features, ascending
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer, (1, Hk, N, hd)

    def _truncate(self, end: int) -> None:
        """Forget features at positions >= end."""
        n = int(torch.searchsorted(self._pos, torch.tensor(end, device=self.device)))
        if n == len(self._pos):
            return
        self._pos = self._pos[:n]
        self._kv = [(k[:, :, :n], v[:, :, :n]) for k, v in self._kv]

    def begin(self, prompt: Sequence[int]) -> None:
        keep = common_prefix(self._tokens, list(prompt))
        self._truncate(keep)
        self._tokens = self._tokens[:keep]
        self._prompt_len = len(prompt)

    def prime(self, tokens: Sequence[int], hidden: np.ndarray) -> None:
        """Features of a context the target decoded outside the engine (e.g. a cached prompt
        prefix): `hidden` has one row per token of `tokens`, from position 0."""
        if len(hidden) != len(tokens):
            raise ValueError(f"{len(hidden)} feature rows for {len(tokens)} tokens")
        self._reset()
        self._prompt_len = len(tokens)
        if len(tokens):
            self.feed(tokens, hidden)

    @torch.inference_mode()
    def feed(self, context: Sequence[int], hidden: np.ndarray) -> None:
        """The rows end with the last context token right after the prompt, else the one before it."""
        if not len(hidden):
            return
        if hidden.shape[1] != self.cfg.feature_dim:
            raise ValueError(
                f"{hidden.shape[1]} features a position for a drafter that reads {self.cfg.feature_dim} "
                f"(layers {list(self.hidden_layers)} and the final state): load the target with those layers"
            )
        end = len(context) if len(context) == self._prompt_len else len(context) - 1
        start = end - hidden.shape[0]
        if start < 0:
            raise ValueError(f"{hidden.shape[0]} feature rows for a context of {len(context)} tokens")
        self._truncate(start)
        pos = torch.arange(start, end, device=self.device)
        feats = torch.as_tensor(hidden, dtype=torch.float32, device=self.device).unsqueeze(0)
        new = self.model.context_kv(feats, pos.unsqueeze(0))
        if self._kv:
            self._kv = [(torch.cat([k, nk], dim=2), torch.cat([v, nv], dim=2)) for (k, v), (nk, nv) in zip(self._kv, new)]
        else:
            self._kv = new
        self._pos = torch.cat([self._pos, pos])
        self._tokens = list(context[:end])

    def _confidence(self, z: torch.Tensor | None, logits: torch.Tensor, j: int) -> float:
        if z is None:  # no confidence head (the DFlash baseline): the draft's own top probability
            return float(torch.softmax(logits.float(), dim=-1).max())
        temps = self.cfg.calibration
        t = temps[min(j, len(temps) - 1)] if temps else 1.0
        return 1.0 / (1.0 + math.exp(-float(z) / t))

    def _full_logits(self, logits: torch.Tensor) -> np.ndarray:
        """Draft-vocabulary logits spread over the target vocabulary; other tokens at -inf (q = 0)."""
        full = np.full(self.cfg.n_vocab, -np.inf)
        full[self._draft_ids] = logits.double().cpu().numpy()
        return full

    @torch.inference_mode()
    def propose(
        self,
        context: Sequence[int],
        k: int,
        sampling: SamplingParams,
        extend: Extend | None = None,
        hidden: np.ndarray | None = None,
    ) -> Draft:
        start = time.perf_counter()
        if hidden is not None:
            self.feed(context, hidden)
        k = min(k, self.cfg.block_size)
        if k <= 0 or not context:
            return Draft()
        model, G = self.model, self.cfg.block_size
        anchor = int(context[-1])
        ids = torch.full((1, G), anchor, dtype=torch.long, device=self.device)
        is_anchor = torch.zeros(1, G, dtype=torch.bool, device=self.device)
        is_anchor[0, 0] = True
        pos = torch.arange(len(context) - 1, len(context) - 1 + G, device=self.device).unsqueeze(0)
        if self._kv:  # context strictly before the anchor (its own feature may be cached already)
            n = int(torch.searchsorted(self._pos, torch.tensor(len(context) - 1, device=self.device)))
            ctx = [(k[:, :, :n], v[:, :, :n]) for k, v in self._kv]
        else:  # nothing seen yet: attend to the block alone
            hd, hk = self.cfg.head_dim, self.cfg.n_kv_heads
            empty = torch.empty(1, hk, 0, hd, device=self.device)
            ctx = [(empty, empty) for _ in model.layers]
        h = model.hidden(model.block_input(ids, is_anchor), pos, ctx, None)[0]  # (G, d)
        base = model.base_logits(h)  # (G, V_d)
        tokens: list[int] = []
        confidence: list[float] = []
        qs: list[np.ndarray] = []
        prev = anchor
        for j in range(k):
            code = model.prev_code(torch.tensor(prev, device=self.device))
            logits = base[j] + model.correction(code)
            confidence.append(self._confidence(model.confidence_logit(h[j], code), logits, j))
            if extend is not None and not extend(confidence):
                confidence.pop()
                break
            if sampling.greedy:
                x = int(self._draft_ids[int(torch.argmax(logits))])
            else:
                q = probs(self._full_logits(logits), sampling)
                x = sample(q, self.rng)
                qs.append(q)
            tokens.append(x)
            prev = x
        per = (time.perf_counter() - start) / max(len(tokens), 1)  # asking for nothing costs the pass too
        self._seconds_per_token = per if self._seconds_per_token == 0 else 0.8 * self._seconds_per_token + 0.2 * per
        return Draft(tokens, confidence, np.stack(qs) if qs else None)


def dspark_for_card(card: ModelCard, gguf_path: Path, device: str | None = None) -> DSparkDrafter | None:
    """The drafter the model's card names, loaded on its target; None if it names none on disk."""
    checkpoint = dspark_checkpoint(card)
    if checkpoint is None:
        return None
    return DSparkDrafter.load(checkpoint, gguf_path, device)
