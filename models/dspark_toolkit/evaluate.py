"""Held-out evaluation of drafters, side by side in one process on the same prompts.

Prompts are the speculation benchmark's sets (chat, code, copy-heavy: never in the training
prompt set). Every drafter drafts exactly γ tokens per step at temperature 0, so τ and the
per-position acceptance measure the drafter alone; plain decoding runs through the same
engine for the wall-clock reference and the lossless check (greedy output must be identical).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from models.dspark.drafter import DSparkDrafter
from models.dspark.registry import EVAL
from models.machine import describe
from models.speculative.drafters.base import Drafter
from models.speculative.drafters.prompt_lookup import PromptLookupDrafter
from models.speculative.engine import SpecEngine
from models.speculative.metrics import SpecStats
from models.speculative.prompts import PROMPT_SETS, chat_prompt
from models.speculative.target import LlamaTarget


def _run(target: LlamaTarget, drafter: Drafter | None, gamma: int, prompts: list[list[int]], max_tokens: int,
         tick: Callable[[], None]) -> tuple[list[list[int]], SpecStats, float]:
    engine = SpecEngine(target, drafter, fixed_length=gamma if drafter is not None else None)
    stats = SpecStats()
    outputs = []
    elapsed = 0.0
    for prompt in prompts:
        target.rollback(0)  # every prompt starts cold, the same for every drafter
        t0 = time.perf_counter()
        outputs.append(list(engine.generate(prompt, max_tokens, stats=stats)))
        elapsed += time.perf_counter() - t0
        tick()
    return outputs, stats, elapsed


def evaluate(
    gguf_path: Path,
    dspark_dir: Path,
    dflash_dir: Path | None,
    out_dir: Path,
    per_set: int = 10,
    max_tokens: int = 128,
    gamma: int = 5,
    device: torch.device = torch.device("cpu"),
    threads: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    dspark = DSparkDrafter.load(dspark_dir, gguf_path, str(device), name="dspark")
    drafters: list[tuple[str, Drafter | None]] = [("plain", None), ("dspark", dspark)]
    if dflash_dir is not None:
        dflash = DSparkDrafter.load(dflash_dir, gguf_path, str(device), name="dflash")
        if dflash.hidden_layers != dspark.hidden_layers:
            raise ValueError(f"the DFlash baseline reads layers {list(dflash.hidden_layers)}, DSpark {list(dspark.hidden_layers)}: train both on the same data")
        drafters.append(("dflash", dflash))
    target = LlamaTarget.load(gguf_path, n_ctx=4096, threads=threads, hidden=True, layers=dspark.hidden_layers)
    drafters.append(("prompt_lookup", PromptLookupDrafter()))
    sets = {name: prompts[:per_set] for name, prompts in PROMPT_SETS.items()}
    tokens = {name: [chat_prompt(target, p) for p in prompts] for name, prompts in sets.items()}
    total = len(drafters) * sum(len(t) for t in tokens.values())
    done = 0
    reference: dict[str, list[list[int]]] = {}
    plain_s: dict[str, float] = {}
    per_set_rows = []
    totals: dict[str, dict] = {}
    for name, drafter in drafters:
        for set_name, prompts in tokens.items():
            def tick() -> None:
                nonlocal done
                done += 1
                if progress:
                    progress(done, total, f"{name} on {set_name}")

            outputs, stats, elapsed = _run(target, drafter, gamma, prompts, max_tokens, tick)
            if drafter is None:
                reference[set_name], plain_s[set_name] = outputs, elapsed
            n_tokens = sum(len(o) for o in outputs)
            row = {
                "drafter": name,
                "prompt_set": set_name,
                "tok_s": n_tokens / elapsed if elapsed else 0.0,
                "speedup": plain_s[set_name] / elapsed if elapsed else 0.0,
                "tau": stats.tau,
                "acceptance_by_position": stats.acceptance,
                "lossless": outputs == reference[set_name],
                "tokens": n_tokens,
                "seconds": elapsed,
                "draft_ms": stats.draft_s * 1000,
                "verify_ms": stats.verify_s * 1000,
            }
            per_set_rows.append(row)
            agg = totals.setdefault(name, {"stats": SpecStats(), "tokens": 0, "seconds": 0.0, "lossless": True})
            _merge(agg["stats"], stats)
            agg["tokens"] += n_tokens
            agg["seconds"] += elapsed
            agg["lossless"] &= row["lossless"]
    plain_total = totals["plain"]["seconds"]
    results = []
    for name, agg in totals.items():
        st = agg["stats"]
        results.append({
            "drafter": name,
            "tau": st.tau,
            "acceptance_by_position": st.acceptance,
            "tok_s": agg["tokens"] / agg["seconds"] if agg["seconds"] else 0.0,
            "speedup": plain_total / agg["seconds"] if agg["seconds"] else 0.0,
            "lossless": agg["lossless"],
            "draft_ms_per_step": st.draft_s * 1000 / st.steps if st.steps else 0.0,
            "verify_ms_per_step": st.verify_s * 1000 / st.steps if st.steps else 0.0,
        })
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "model": gguf_path.name,
        "machine": describe()["summary"],
        "gamma": gamma,
        "temperature": 0.0,
        "max_tokens": max_tokens,
        "prompts": sum(len(t) for t in tokens.values()),
        "results": results,
        "per_set": per_set_rows,
        "json": str(out_dir / EVAL),
        "png": str(out_dir / "eval.png"),
    }
    Path(result["json"]).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot(result, Path(result["png"]))
    return result


def _merge(into: SpecStats, other: SpecStats) -> None:
    into.tokens += other.tokens
    into.steps += other.steps
    into.drafted += other.drafted
    into.accepted += other.accepted
    into.draft_s += other.draft_s
    into.verify_s += other.verify_s
    while len(into.position_drafted) < len(other.position_drafted):
        into.position_drafted.append(0)
        into.position_accepted.append(0)
    for j, (d, a) in enumerate(zip(other.position_drafted, other.position_accepted)):
        into.position_drafted[j] += d
        into.position_accepted[j] += a


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["results"] if r["drafter"] != "plain"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4))
    names = [r["drafter"] for r in rows]
    ax1.bar(names, [r["tau"] for r in rows])
    ax1.set_title(f"τ (tokens per target step), γ={result['gamma']}")
    for r in rows:
        acc = r["acceptance_by_position"]
        ax2.plot(range(1, len(acc) + 1), acc, marker="o", label=r["drafter"])
    ax2.set_ylim(0, 1)
    ax2.set_xticks(range(1, result["gamma"] + 1))
    ax2.set_xlabel("draft position")
    ax2.set_title("acceptance by position")
    ax2.legend()
    ax3.bar(names, [r["speedup"] for r in rows])
    ax3.axhline(1.0, color="grey", linewidth=0.8)
    ax3.set_title("wall-clock vs plain decoding")
    fig.suptitle(f"{result['model']} on {result['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
