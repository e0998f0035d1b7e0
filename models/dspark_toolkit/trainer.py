"""Training a drafter on prepared data.

Loss per block position k (1-based), weighted exp(-(k-1)/decay) and normalised over the
supervised positions: ce · CE(target's token) + tv · TV(q_k, p_k) + conf · BCE(c_k, 1 - TV),
where p_k is the target's distribution at that position and 1 - TV is the analytic
acceptance rate of a sampled draft. The DFlash baseline is the same backbone without serial
correction or confidence head, trained with CE only.

Where p comes from: data prepared with top-k target probabilities (format 2) gives the k most
likely ids and their probabilities, and TV is bounded by
    ½ (Σ_top-k |q_i - p_i| + (1 - Σ_top-k q_i) + (1 - Σ_top-k p_i)),
exact when the top-k covers every token the draft or the target gives mass to, so the step
never computes the target's full-vocabulary head (49,152 wide for SmolLM2: about a third of
the old step) nor its softmax. The exact path (`exact_loss`, and format-1 data) applies the
frozen head to the cached features. The draft forward runs under bf16 autocast where the
hardware does bf16 natively (`models.dspark.device.bf16_supported`); the loss is fp32.

A run directory holds the shipped checkpoint (model.safetensors, config.json) and, under
`.train/`, what resuming needs: optimizer and scheduler state, the log and the loss curve.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from models.dspark.checkpoint import load_checkpoint, save_checkpoint
from models.dspark.device import bf16_supported
from models.dspark.model import DSpark, DSparkConfig, sample_anchors
from models.dspark.target_weights import load_embedding_and_head, read_shape
from models.dspark_toolkit.data import DataError, Example, batches, collate, collate_top_k, feature_layers, load_examples

STATE_DIR = ".train"


@dataclass
class TrainSettings:
    steps: int = 600
    batch_size: int = 4
    anchors: int = 32
    lr: float = 6e-4
    warmup: float = 0.04
    decay: float = 4.0
    clip: float = 1.0
    ce_weight: float = 0.1
    tv_weight: float = 0.9
    conf_weight: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    validation_percent: int = 8
    # architecture (used when a run starts; a resumed run keeps its own)
    n_layers: int = 2
    ffn: int | None = None
    block_size: int = 5
    markov_rank: int = 64
    draft_vocab: int = 0
    baseline: bool = False  # DFlash: no serial correction, no confidence head, CE only
    exact_loss: bool = False  # p from the target's full head even where the data has top-k probabilities
    bf16: bool | None = None  # autocast the draft forward; None: where the hardware does bf16 natively

    def effective(self) -> "TrainSettings":
        if not self.baseline:
            return self
        return TrainSettings(**{**asdict(self), "ce_weight": 1.0, "tv_weight": 0.0, "conf_weight": 0.0, "markov_rank": 0})


def position_weights(block_size: int, decay: float, device: torch.device) -> torch.Tensor:
    """exp(-(k-1)/decay) for k = 1..γ: early positions matter most, since later ones only
    count when everything before them was accepted."""
    return torch.exp(-torch.arange(block_size, device=device, dtype=torch.float32) / decay)


def exact_tv(model: DSpark, q: torch.Tensor, feats: torch.Tensor, target_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TV(q, p) (B, A, G) with p from the target's head on the cached features, and the target's greedy ids."""
    B, A, G, Vd = q.shape
    with torch.no_grad():
        idx = target_pos.view(B, A * G, 1).expand(-1, -1, feats.shape[-1])
        p = torch.softmax(model.target_logits(feats.gather(1, idx)).view(B, A, G, -1), dim=-1)  # (B, A, G, V)
        p_draft = p if Vd == p.shape[-1] else p[..., model.draft_ids]  # (B, A, G, V_d)
        outside = (1.0 - p_draft.sum(-1)).clamp(min=0.0)  # target mass the draft vocabulary cannot cover
        target_top = p.argmax(-1)
    return 0.5 * ((q - p_draft).abs().sum(-1) + outside), target_top


def top_k_rows(top: tuple[torch.Tensor, torch.Tensor], target_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached top-k ids and probabilities (B, A, G, k) of each block slot, from rows (B, L, k)."""
    top_ids, top_probs = top
    B, A, G = target_pos.shape
    k = top_ids.shape[-1]
    idx = target_pos.view(B, A * G, 1).expand(-1, -1, k)
    return top_ids.gather(1, idx).view(B, A, G, k), top_probs.gather(1, idx).view(B, A, G, k)


def top_k_tv(q_top: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The bound on TV(q, p) from q and p on the target's top-k ids (..., k): mass outside the
    top-k is counted as if q and p never overlapped there, so it is never below the true TV."""
    leftover = (1.0 - q_top.sum(-1)).clamp(min=0.0) + (1.0 - p.sum(-1)).clamp(min=0.0)
    return 0.5 * ((q_top - p).abs().sum(-1) + leftover)


def block_loss(
    model: DSpark,
    tokens: torch.Tensor,
    feats: torch.Tensor,
    mask: torch.Tensor,
    anchors: torch.Tensor,
    keep: torch.Tensor,
    settings: TrainSettings,
    top: tuple[torch.Tensor, torch.Tensor] | None = None,
    bf16: bool = False,
) -> dict[str, torch.Tensor]:
    """Loss and its parts, plus per-position statistics (greedy acceptance with a correct prefix).
    `top`: cached top-k target rows (`collate_top_k`); without them p comes from the full head."""
    cast = torch.autocast(tokens.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with cast:
        out = model.forward_blocks(tokens, feats, mask, anchors, keep)
    B, A, G, Vd = out.logits.shape
    log_q = torch.log_softmax(out.logits, dim=-1, dtype=torch.float32)
    label_d = model.to_draft[out.labels]
    in_vocab = label_d < Vd
    label_slot = label_d.clamp(max=Vd - 1).unsqueeze(-1)
    if top is None:
        ce = -log_q.gather(-1, label_slot).squeeze(-1) * in_vocab
        tv, target_top = exact_tv(model, log_q.exp(), feats, out.target_pos)
    else:
        ids, p = top_k_rows(top, out.target_pos)
        slot = model.to_draft[ids]  # V_d for ids outside the draft vocabulary: q is 0 there
        # one gather for CE and TV: each gather's backward fills a full-vocabulary gradient
        picked = log_q.gather(-1, torch.cat([label_slot, slot.clamp(max=Vd - 1)], dim=-1))
        ce = -picked[..., 0] * in_vocab
        tv = top_k_tv(picked[..., 1:].exp() * (slot < Vd), p)
        target_top = ids[..., 0]
    w = position_weights(G, settings.decay, tokens.device) * out.valid  # (B, A, G)
    total_w = w.sum().clamp(min=1e-8)
    loss = (w * (settings.ce_weight * ce + settings.tv_weight * tv)).sum() / total_w
    bce = torch.zeros((), device=tokens.device)
    if out.conf is not None and settings.conf_weight > 0:
        bce = (w * F.binary_cross_entropy_with_logits(out.conf.float(), (1.0 - tv).detach(), reduction="none")).sum() / total_w
        loss = loss + settings.conf_weight * bce
    with torch.no_grad():
        hit = (model.draft_ids[log_q.argmax(-1)] == target_top) & out.valid  # fp32: bf16 argmax is slow on CPU
        per_pos = out.valid.sum((0, 1)).clamp(min=1)
        accept = hit.sum((0, 1)) / per_pos  # (G,)
    return {
        "loss": loss,
        "ce": (w * ce).sum() / total_w,
        "tv": (w * tv).sum() / total_w,
        "bce": bce,
        "accept": accept,
        "supervised": out.valid.sum(),
    }


def expected_tau(accept: list[float]) -> float:
    """1 + Σ_k Π_{j≤k} a_j: tokens per step at greedy if positions failed independently."""
    tau, run = 1.0, 1.0
    for a in accept:
        run *= a
        tau += run
    return tau


def _lr_lambda(steps: int, warmup: float) -> Callable[[int], float]:
    warm = max(1, int(steps * warmup))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))

    return f


def choose_draft_vocab(examples: list[Example], size: int, n_vocab: int) -> torch.Tensor:
    """The `size` most frequent tokens of the training data (ids ascending); all when size is 0."""
    if size <= 0 or size >= n_vocab:
        return torch.arange(n_vocab)
    counts = torch.zeros(n_vocab, dtype=torch.long)
    for e in examples:
        counts += torch.bincount(e.tokens, minlength=n_vocab)
    return counts.argsort(descending=True, stable=True)[:size].sort().values


def build_model(
    gguf_path: Path, settings: TrainSettings, examples: list[Example], device: torch.device, layers: list[int] | None = None
) -> DSpark:
    shape = read_shape(gguf_path)
    s = settings.effective()
    cfg = DSparkConfig.for_target(
        shape,
        n_layers=s.n_layers,
        ffn=s.ffn,
        block_size=s.block_size,
        markov_rank=s.markov_rank,
        confidence=not s.baseline,
        draft_vocab_size=s.draft_vocab if 0 < s.draft_vocab < shape.n_vocab else 0,
        feature_layers=list(layers or []),
    )
    width = examples[0].features.shape[1] if examples else cfg.feature_dim
    if width != cfg.feature_dim:
        raise DataError(f"the data has {width} features a position, a drafter over layers {cfg.feature_layers} needs {cfg.feature_dim}")
    embed, head = load_embedding_and_head(gguf_path)
    draft_ids = choose_draft_vocab(examples, cfg.draft_vocab_size, shape.n_vocab)
    torch.manual_seed(s.seed)
    return DSpark(cfg, embed, head, draft_ids).to(device)


def evaluate_loss(model: DSpark, examples: list[Example], settings: TrainSettings, device: torch.device, seed: int = 1234) -> dict:
    """Mean loss and per-position acceptance on fixed anchors of `examples` (no gradients)."""
    gen = torch.Generator().manual_seed(seed)
    s = settings.effective()
    totals: dict[str, float] = {"loss": 0.0, "ce": 0.0, "tv": 0.0}
    accept = torch.zeros(s.block_size)
    n = 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), s.batch_size):
            batch = examples[i : i + s.batch_size]
            tokens, feats, mask = collate(batch, device)
            top = None if s.exact_loss else collate_top_k(batch, tokens.shape[1], device)
            anchors, keep = sample_anchors(mask.cpu(), s.anchors, gen)
            r = block_loss(model, tokens, feats, mask, anchors.to(device), keep.to(device), s, top)
            for k in totals:
                totals[k] += float(r[k])
            accept += r["accept"].cpu()
            n += 1
    accept = (accept / max(n, 1)).tolist()
    return {**{k: v / max(n, 1) for k, v in totals.items()}, "accept": accept, "tau_est": expected_tau(accept)}


def make_optimizer(model: DSpark, s: TrainSettings) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters, linear warm-up then cosine decay over s.steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, betas=(0.9, 0.95), weight_decay=0.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(s.steps, s.warmup))


def train_step(
    model: DSpark,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LambdaLR,
    batch: list[Example],
    gen: torch.Generator,
    s: TrainSettings,
    device: torch.device,
    bf16: bool,
) -> dict:
    """One optimizer step on a batch (anchors drawn from `gen`); returns its log row. The top-k
    path is taken unless s.exact_loss is set or the data has no top-k rows."""
    t0 = time.perf_counter()
    tokens, feats, mask = collate(batch, device)
    top = None if s.exact_loss else collate_top_k(batch, tokens.shape[1], device)
    anchors, keep = sample_anchors(mask.cpu(), s.anchors, gen)
    r = block_loss(model, tokens, feats, mask, anchors.to(device), keep.to(device), s, top, bf16)
    opt.zero_grad(set_to_none=True)
    r["loss"].backward()
    params = [p for group in opt.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, s.clip)
    opt.step()
    sched.step()
    return {
        "loss": round(float(r["loss"].detach()), 5),
        "ce": round(float(r["ce"].detach()), 5),
        "tv": round(float(r["tv"].detach()), 5),
        "bce": round(float(r["bce"].detach()), 5),
        "accept": [round(a, 4) for a in r["accept"].tolist()],
        "grad_norm": round(float(grad_norm), 4),
        "lr": sched.get_last_lr()[0],
        "seconds": round(time.perf_counter() - t0, 3),
    }


def train(
    data_dir: Path,
    gguf_path: Path,
    out_dir: Path,
    settings: TrainSettings,
    device: torch.device,
    progress: Callable[[int, int, dict], None] | None = None,
    max_minutes: float | None = None,
) -> dict:
    """Trains (or resumes) until settings.steps or max_minutes; checkpoints along the way."""
    state_dir = out_dir / STATE_DIR
    state_path = state_dir / "state.pt"
    train_set = load_examples(data_dir, settings.validation_percent, "train")
    val_set = load_examples(data_dir, settings.validation_percent, "val")
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        # a resumed run keeps its architecture and schedule; how each step computes its loss may change
        settings = TrainSettings(**{**state["settings"], "steps": settings.steps, "checkpoint_every": settings.checkpoint_every,
                                    "exact_loss": settings.exact_loss, "bf16": settings.bf16})
        model = load_checkpoint(out_dir, gguf_path, device)
        model.load_state_dict(state["model"])  # full precision; the shipped file is fp16
    else:
        state = None
        model = build_model(gguf_path, settings, train_set, device, feature_layers(data_dir))
    s = settings.effective()
    opt, sched = make_optimizer(model, s)
    gen = torch.Generator().manual_seed(s.seed)
    log: list[dict] = []
    step = 0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        log, step = state["log"], state["step"]
    stream = batches(train_set, min(s.batch_size, len(train_set)), gen)
    started = time.monotonic()
    bf16 = bf16_supported(device) if s.bf16 is None else s.bf16
    loss_path = "exact" if s.exact_loss or train_set[0].top_ids is None else f"top-{train_set[0].top_ids.shape[1]}"
    meta = {"target": gguf_path.name, "train": asdict(s), "data": str(data_dir), "loss_path": loss_path, "bf16": bf16}

    def checkpoint(extra: dict | None = None) -> None:
        save_checkpoint(model, out_dir, {**meta, "steps_done": step, **(extra or {})})
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_suffix(".tmp")
        torch.save({"settings": asdict(settings), "model": model.trainable_state(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "generator": gen.get_state(), "log": log, "step": step}, tmp)
        tmp.replace(state_path)
        (state_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log), encoding="utf-8")
        plot_loss(log, state_dir / "loss.png")

    model.train()
    while step < s.steps:
        if max_minutes is not None and time.monotonic() - started > max_minutes * 60:
            break
        step += 1
        row = {"step": step, **train_step(model, opt, sched, next(stream), gen, s, device, bf16)}
        log.append(row)
        if progress:
            progress(step, s.steps, row)
        if step % s.checkpoint_every == 0 or step == s.steps:
            checkpoint()
    val = evaluate_loss(model, val_set, settings, device)
    checkpoint({"validation": val})
    return {"steps_done": step, "steps": s.steps, "finished": step >= s.steps, "validation": val, "out": str(out_dir),
            "loss_path": loss_path, "bf16": bf16}


def plot_loss(log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log:
        return
    steps = [r["step"] for r in log]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "ce", "tv"):
        ax1.plot(steps, [r[key] for r in log], label=key, linewidth=0.8)
    ax1.set_xlabel("step")
    ax1.set_title("training loss")
    ax1.legend()
    for k in range(len(log[0]["accept"])):
        ax2.plot(steps, [r["accept"][k] for r in log], label=f"position {k + 1}", linewidth=0.8)
    ax2.set_xlabel("step")
    ax2.set_ylim(0, 1)
    ax2.set_title("greedy acceptance, correct prefix (train batches)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
