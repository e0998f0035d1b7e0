"""`aibox bench train-step`: the DSpark training step before and after cached top-k target
probabilities and bf16 autocast, on the same prepared data and from the same start.

The old step computes the target's full-vocabulary head and softmax on every supervised
position, in fp32 (`exact_loss`, no autocast); the new one reads the top-k rows `prepare`
stored and autocasts where the hardware does bf16 natively. Both runs start from the same
weights and draw the same batches and anchors, so their curves are comparable step for step:
CE against the target's token is the same quantity on both paths, and after the run both
models are scored with the exact loss on the same fixed blocks. Step time is measured with
torch on 2 threads over the whole run and on 1 thread over a shorter one.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from models.dspark.device import bf16_supported
from models.dspark_toolkit.data import PrepareSettings, batches, is_validation, load_examples, load_prompts, prepare
from models.dspark_toolkit.trainer import TrainSettings, build_model, evaluate_loss, make_optimizer, train_step
from models.machine import describe

VALIDATION_PERCENT = 8
WINDOW = 10  # steps per point of the reported CE curve


def prepared_data(gguf_path: Path, data_dir: Path, n_prompts: int, max_tokens: int, threads: int,
                  progress: Callable[[int, int], None] | None = None) -> Path:
    """The first n training-split prompts of the shipped set, answered by the target (resumable)."""
    prompts = [p for p in load_prompts() if not is_validation(p["id"], VALIDATION_PERCENT)][:n_prompts]
    prepare(gguf_path, data_dir, prompts, PrepareSettings(max_tokens=max_tokens), threads=threads, progress=progress)
    return data_dir


def _run(gguf_path: Path, examples: list, settings: TrainSettings, bf16: bool, steps: int, threads: int,
         progress: Callable[[str], None], label: str) -> tuple[list[dict], object]:
    device = torch.device("cpu")
    torch.set_num_threads(threads)
    model = build_model(gguf_path, settings, examples, device)  # seeded: the same start on every run
    opt, sched = make_optimizer(model, settings)
    gen = torch.Generator().manual_seed(settings.seed)
    stream = batches(examples, min(settings.batch_size, len(examples)), gen)
    model.train()
    rows = []
    for i in range(steps):
        rows.append(train_step(model, opt, sched, next(stream), gen, settings, device, bf16))
        progress(f"{label}: step {i + 1}/{steps}, {rows[-1]['seconds']:.2f} s")
    return rows, model


def _curve(rows: list[dict]) -> list[float]:
    return [round(statistics.fmean(r["ce"] for r in rows[i : i + WINDOW]), 4) for i in range(0, len(rows), WINDOW)]


def bench_train_step(
    gguf_path: Path,
    data_dir: Path,
    prompts: int = 30,
    max_tokens: int = 160,
    steps: int = 60,
    one_thread_steps: int = 10,
    settings: TrainSettings | None = None,
    progress: Callable[[str], None] = lambda _m: None,
) -> dict:
    """Old and new step side by side: seconds per step on 2 and 1 threads, CE curve, exact loss after `steps`."""
    prepared_data(gguf_path, data_dir, prompts, max_tokens, threads=2,
                  progress=lambda done, total: progress(f"preparing data: {done}/{total} prompts"))
    examples = load_examples(data_dir, VALIDATION_PERCENT, "train")
    if examples[0].top_ids is None:
        raise ValueError(f"{data_dir} was prepared without top-k probabilities; use another --data directory")
    base = replace(settings or TrainSettings(anchors=64, lr=1e-3, draft_vocab=16384), steps=steps)
    paths = {
        "old": (replace(base, exact_loss=True, bf16=False), False),
        "new": (replace(base, exact_loss=False), bf16_supported(torch.device("cpu"))),
    }
    before = torch.get_num_threads()
    result: dict = {"machine": describe(), "prompts": len(examples), "steps": steps, "one_thread_steps": one_thread_steps,
                    "answer_tokens": int(sum(int(e.answer.sum()) for e in examples)), "top_k": int(examples[0].top_ids.shape[1]), "ce_window": WINDOW,
                    "settings": {k: getattr(base, k) for k in ("batch_size", "anchors", "n_layers", "draft_vocab", "lr")}}
    try:
        for name, (s, bf16) in paths.items():
            rows, model = _run(gguf_path, examples, s, bf16, steps, 2, progress, f"{name} step, 2 threads")
            exact = evaluate_loss(model, examples, replace(base, exact_loss=True), torch.device("cpu"))
            quick, _ = _run(gguf_path, examples, s, bf16, one_thread_steps, 1, progress, f"{name} step, 1 thread")
            result[name] = {
                "loss_path": "exact" if s.exact_loss else f"top-{result['top_k']}",
                "bf16": bf16,
                # the first steps of a run allocate and warm up; the medians skip them
                "seconds_per_step_2_threads": statistics.median(r["seconds"] for r in rows[2:] or rows),
                "seconds_per_step_1_thread": statistics.median(r["seconds"] for r in quick[2:] or quick),
                "ce_curve": _curve(rows),
                "final_train_loss": rows[-1]["loss"],
                "exact_loss_after": exact["loss"],
                "exact_tv_after": exact["tv"],
                "tau_est_after": exact["tau_est"],
            }
    finally:
        torch.set_num_threads(before)
    old, new = result["old"], result["new"]
    result["speedup_1_thread"] = old["seconds_per_step_1_thread"] / new["seconds_per_step_1_thread"]
    result["speedup_2_threads"] = old["seconds_per_step_2_threads"] / new["seconds_per_step_2_threads"]
    result["exact_loss_ratio"] = new["exact_loss_after"] / old["exact_loss_after"]
    return result
