"""`aibox bench spec`: plain decoding, each drafter at fixed lengths, and `auto`, on the same
prompts in one process, with every figure a ratio to plain decoding measured alongside.

Runs alternate drafter by drafter within each prompt so that load from elsewhere on the
machine hits all of them alike. Greedy decoding throughout, so "lossless" is a plain
comparison of token lists against plain decoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from models.catalog import Catalog, ModelCard
from models.dspark.drafter import dspark_for_card
from models.dspark.registry import dspark_checkpoint
from models.files import is_present, model_path
from models.machine import describe
from models.speculative.accelerator import dspark_can_pay
from models.speculative.drafters.auto import AutoDrafter
from models.speculative.drafters.base import Drafter
from models.speculative.drafters.draft_model import DraftModelDrafter
from models.speculative.drafters.prompt_lookup import PromptLookupDrafter
from models.speculative.engine import SpecEngine
from models.speculative.metrics import SpecStats
from models.speculative.profile import load_profile, machine_info, measure, save_profile
from models.speculative.prompts import PROMPT_SETS, chat_prompt
from models.speculative.scheduler import Scheduler
from models.speculative.target import LlamaTarget

PROMPT_LOOKUP_LENGTHS = (4, 8)
DRAFT_MODEL_LENGTHS = (2, 4)
DSPARK_LENGTHS = (5,)


@dataclass
class _Cell:
    seconds: float = 0.0
    tokens: int = 0
    lossless: bool = True
    stats: SpecStats = field(default_factory=SpecStats)


def bench_spec(
    card: ModelCard,
    catalog: Catalog,
    models_dir: Path,
    state_dir: Path,
    threads: int,
    quick: bool = False,
    progress: Callable[[str], None] = lambda _m: None,
) -> dict:
    prompts_per_set, max_tokens = (3, 48) if quick else (8, 96)
    dspark = dspark_for_card(card, model_path(card, models_dir))  # needs the target's hidden states
    target = LlamaTarget.load(model_path(card, models_dir), n_ctx=2048, threads=threads, hidden=dspark is not None,
                              layers=dspark.hidden_layers if dspark else ())
    info = machine_info(threads)
    profile = load_profile(state_dir, card.name, info)
    if profile is None:
        progress(f"profiling {card.name}")
        profile = measure(target, card.name, info, repeats=3 if quick else 5)
        save_profile(state_dir, profile)
    scheduler = Scheduler(profile)

    draft_model = _draft_model(card, catalog, models_dir, threads)
    engines: dict[str, Callable[[], SpecEngine]] = {"plain": lambda: SpecEngine(target)}
    for k in PROMPT_LOOKUP_LENGTHS:
        engines[f"prompt_lookup@{k}"] = lambda k=k: SpecEngine(target, PromptLookupDrafter(), fixed_length=k)
    if draft_model is not None:
        for k in DRAFT_MODEL_LENGTHS:
            engines[f"draft_model@{k}"] = lambda k=k: SpecEngine(target, draft_model, fixed_length=k)
    if dspark is not None:
        for k in DSPARK_LENGTHS:
            engines[f"dspark@{k}"] = lambda k=k: SpecEngine(target, dspark, fixed_length=k)
    # what the runtime's accelerator would ask here, in its order
    auto_drafters: list[Drafter] = [PromptLookupDrafter()] + ([draft_model] if draft_model else [])
    if dspark is not None and dspark_can_pay(scheduler, dspark_checkpoint(card))[0]:
        auto_drafters.append(dspark)
    auto = AutoDrafter(scheduler, auto_drafters)
    engines["auto"] = lambda: SpecEngine(target, auto, scheduler)

    # warm-up: first decodes of each batch shape allocate
    warm = chat_prompt(target, "Hello")
    for make in engines.values():
        list(make().generate(warm, 8))

    cells: dict[tuple[str, str], _Cell] = {}
    for set_name, texts in PROMPT_SETS.items():
        for i, text in enumerate(texts[:prompts_per_set]):
            progress(f"{set_name} {i + 1}/{prompts_per_set}")
            prompt = chat_prompt(target, text)
            # the prompt is cached once; every run decodes only its last token, so the
            # figures compare generation, not prefill
            target.rollback(0)
            cached = target.decode(prompt[:-1], all_logits=dspark is not None)
            if dspark is not None:
                dspark.prime(prompt[:-1], cached.hidden)
            reference: list[int] | None = None
            for name, make in engines.items():
                cell = cells.setdefault((name, set_name), _Cell())
                target.rollback(len(prompt) - 1)
                start = time.perf_counter()
                out = list(make().generate(prompt, max_tokens, stats=cell.stats))
                cell.seconds += time.perf_counter() - start
                cell.tokens += len(out)
                if reference is None:
                    reference = out
                elif out != reference:
                    cell.lossless = False

    results = []
    for (name, set_name), cell in cells.items():
        plain = cells[("plain", set_name)]
        tok_s = cell.tokens / cell.seconds
        stats = cell.stats
        mean_batch = 1 + stats.drafted / stats.steps if stats.steps else 1.0
        results.append(
            {
                "drafter": name,
                "prompt_set": set_name,
                "tok_s": round(tok_s, 2),
                "speedup": round(tok_s / (plain.tokens / plain.seconds), 3),
                "tau": round(stats.tau, 3),
                "lossless": cell.lossless,
                "ceiling": round(profile.ceiling(stats.tau, mean_batch), 3),
                "mean_batch": round(mean_batch, 2),
                "tokens": cell.tokens,
                "acceptance_by_position": [round(a, 3) for a in stats.acceptance],
                "draft_ms": round(stats.draft_s * 1000, 1),
                "verify_ms": round(stats.verify_s * 1000, 1),
            }
        )
    return {
        "model": card.name,
        "machine": describe() | {"threads": threads},
        "profile": profile.to_json(),
        "settings": {"prompts_per_set": prompts_per_set, "max_tokens": max_tokens, "quick": quick},
        "results": results,
    }


def _draft_model(card: ModelCard, catalog: Catalog, models_dir: Path, threads: int) -> DraftModelDrafter | None:
    for name in card.draft_models:
        if name in catalog and is_present(catalog.get(name), models_dir):
            return DraftModelDrafter.load(model_path(catalog.get(name), models_dir), n_ctx=2048, threads=threads)
    return None


def plot(result: dict, path: Path) -> None:
    """Speed-up over plain and τ per drafter, one group of bars per prompt set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r["prompt_set"] for r in result["results"]))
    drafters = list(dict.fromkeys(r["drafter"] for r in result["results"]))
    by = {(r["drafter"], r["prompt_set"]): r for r in result["results"]}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(drafters)
    for ax, key, label in ((axes[0], "speedup", "speed-up vs plain (same run)"), (axes[1], "tau", "τ (tokens per target forward)")):
        for j, d in enumerate(drafters):
            xs = [i + j * width for i in range(len(sets))]
            ax.bar(xs, [by[(d, s)][key] for s in sets], width, label=d)
        ax.set_xticks([i + width * (len(drafters) - 1) / 2 for i in range(len(sets))], sets)
        ax.set_title(label)
        if key == "speedup":
            ax.axhline(1.0, color="black", linewidth=0.8)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['model']} on {result['machine']['summary']}, {result['machine']['threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
