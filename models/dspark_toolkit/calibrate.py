"""Calibration of the confidence head, so the scheduler's prefix survival a_j = Π c_i is honest.

On held-out blocks, with the prefix teacher-forced (what the drafter sees after a fully
accepted prefix), the event at position k is "the draft token equals the target's greedy
token" (temperature 0, what the engine serves by default). Per position k one temperature
T_k rescales the confidence logit, c_k = sigmoid(z_k / T_k), fitted by minimising the log
loss over the blocks whose prefix was accepted (c_k is a conditional probability).
The temperatures are fitted on half of the held-out blocks and the figures measured on the
other half. Reported before and after: ECE (15 equal-width bins), AUROC and Brier score, for the
per-position predictions c_k and for the cumulative predictions a_j.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.dspark.checkpoint import load_checkpoint, read_config, write_config
from models.dspark.model import DSpark, sample_anchors
from models.dspark_toolkit.data import DataError, collate, feature_layers, load_examples

# log-spaced candidate temperatures; the log loss is smooth in T, so a fine grid is exact enough
TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 400))


def ece(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: |mean prediction - frequency| per bin, weighted by bin size."""
    if len(p) == 0:
        return 0.0
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.sum() * abs(p[sel].mean() - y[sel].mean())
    return float(total / len(p))


def auroc(p: np.ndarray, y: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    i = 0
    while i < len(p):  # average ranks over ties
        j = i
        while j + 1 < len(p) and sorted_p[j + 1] == sorted_p[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def brier(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2)) if len(p) else 0.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def collect(model: DSpark, examples, anchors: int, device: torch.device, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Confidence logits z (N, G) and greedy acceptance events (N, G) of held-out blocks whose
    every position is supervised."""
    if model.conf is None:
        raise ValueError("this drafter has no confidence head (a DFlash baseline?); nothing to calibrate")
    gen = torch.Generator().manual_seed(seed)
    zs, hits = [], []
    with torch.no_grad():
        for i in range(0, len(examples), 4):
            tokens, feats, mask = collate(examples[i : i + 4], device)
            a, keep = sample_anchors(mask.cpu(), anchors, gen)
            out = model.forward_blocks(tokens, feats, mask, a.to(device), keep.to(device))
            B, A, G, _ = out.logits.shape
            idx = out.target_pos.view(B, A * G, 1).expand(-1, -1, feats.shape[-1])
            target_top = model.target_logits(feats.gather(1, idx)).view(B, A, G, -1).argmax(-1)
            hit = model.draft_ids[out.logits.argmax(-1)] == target_top
            full = out.valid.all(-1)  # blocks supervised to the end
            zs.append(out.conf[full].float().cpu().numpy())
            hits.append(hit[full].cpu().numpy().astype(np.float64))
    return np.concatenate(zs), np.concatenate(hits)


def fit_temperatures(z: np.ndarray, hit: np.ndarray) -> list[float]:
    """T_k minimising the log loss of sigmoid(z_k / T_k) on blocks whose prefix was accepted."""
    temps = []
    prefix_ok = np.ones(len(z), dtype=bool)
    for k in range(z.shape[1]):
        zk, yk = z[prefix_ok, k], hit[prefix_ok, k]
        if len(zk) < 10:
            temps.append(temps[-1] if temps else 1.0)
        else:
            p = np.clip(_sigmoid(zk[None, :] / TEMPERATURES[:, None]), 1e-7, 1 - 1e-7)
            nll = -(yk * np.log(p) + (1 - yk) * np.log(1 - p)).mean(axis=1)
            temps.append(float(TEMPERATURES[int(np.argmin(nll))]))
        prefix_ok &= hit[:, k] == 1
    return temps


def report(z: np.ndarray, hit: np.ndarray, temps: list[float]) -> dict:
    """Metrics of per-position predictions (where the prefix was accepted) and cumulative ones."""
    c = _sigmoid(z / np.asarray(temps)[None, :])
    prefix_ok = np.cumprod(np.concatenate([np.ones((len(hit), 1)), hit[:, :-1]], axis=1), axis=1).astype(bool)
    p_cond, y_cond = c[prefix_ok], hit[prefix_ok]
    p_cum, y_cum = np.cumprod(c, axis=1).ravel(), np.cumprod(hit, axis=1).ravel()
    out = {}
    for name, p, y in (("per_position", p_cond, y_cond), ("cumulative", p_cum, y_cum)):
        out[name] = {"ece": ece(p, y), "auroc": auroc(p, y), "brier": brier(p, y), "n": int(len(p))}
    return out


def calibrate(checkpoint: Path, gguf_path: Path, data_dir: Path, device: torch.device, anchors: int = 32,
              min_blocks: int = 50) -> dict:
    """Fits the temperatures, stores them in the checkpoint's config.json, returns the report."""
    cfg, meta = read_config(checkpoint)
    val_percent = meta.get("train", {}).get("validation_percent", 8)
    model = load_checkpoint(checkpoint, gguf_path, device)
    if feature_layers(data_dir) != model.cfg.feature_layers:
        raise DataError(f"{data_dir} was prepared with layers {feature_layers(data_dir)}, the drafter reads {model.cfg.feature_layers}")
    z, hit = collect(model, load_examples(data_dir, val_percent, "val"), anchors, device)
    if len(z) < min_blocks:
        raise ValueError(f"only {len(z)} held-out blocks; prepare more data before calibrating")
    ones = [1.0] * z.shape[1]
    # fit on half the blocks, report on the other half, so "after" is not measured on the fit data
    temps = fit_temperatures(z[::2], hit[::2])
    result = {
        "samples": int(len(z)),
        "temperatures": temps,
        "before": report(z[1::2], hit[1::2], ones),
        "after": report(z[1::2], hit[1::2], temps),
        "acceptance_by_position": hit.mean(axis=0).tolist(),
    }
    cfg.calibration = temps
    write_config(checkpoint, cfg, {"calibration": {k: result[k] for k in ("samples", "before", "after")}})
    return result
