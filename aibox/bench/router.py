"""`aibox bench router`: how well the router predicts answer lengths, and what routing
buys against single-model policies on a mixed workload, measured in one run.

Accuracy is the length class (short < 60 tokens, long > 200) on the held-out test split
of the shipped labelled prompts. The workload is drawn from the same split, mixed across
length classes, with Poisson arrivals (a fixed seed, so every policy sees the same
requests at the same moments), replayed through a real `aibox run` with the real models
over its HTTP API. Policies: always the fast model, always the long model, and the
router (`"model": "auto"`, so the daemon decides with its live queues and the decision's
own cost is inside the measured time). The daemon stays up across the policies and both
models are loaded before timing starts.

Quality: the held-out test split of the evaluation set (aibox.router.quality, which `aibox
models eval` never measures on) is replayed the same way, as a mixed workload of every task
kind with Poisson arrivals, and each answer is scored by the item's own check. The daemon's
store gets this box's measured quality per model and kind first (from `quality_from`), so
the router decides as it would here.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import select

from models.machine import describe
from aibox.process import DaemonProcess
from aibox.router import quality
from aibox.router.estimator import Estimator, LengthModel, evaluate, length_class, load_prompts
from aibox.router.features import extract
from aibox.store import Store
from aibox.store.schema import ModelQuality

FAST = "smollm2-135m-instruct"
LONG = "qwen2.5-coder-1.5b-instruct"
# Share of each length class in the replayed workload: mostly chat, some long jobs.
MIX = {"short": 0.5, "medium": 0.2, "long": 0.3}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def pick_workload(rows: list[dict], n: int, mean_gap_s: float, seed: int) -> list[dict]:
    """n test prompts in the MIX proportions, with Poisson arrival times."""
    rng = random.Random(seed)
    by_class: dict[str, list[dict]] = {"short": [], "medium": [], "long": []}
    for r in rows:
        by_class[length_class(r["tokens"])].append(r)
    chosen: list[dict] = []
    for cls, share in MIX.items():
        pool = by_class[cls][:]
        rng.shuffle(pool)
        chosen += pool[: max(1, round(n * share))] if pool else []
    rng.shuffle(chosen)
    chosen = chosen[:n]
    t = 0.0
    out = []
    for r in chosen:
        out.append(r | {"arrival_s": round(t, 3)})
        t += rng.expovariate(1.0 / mean_gap_s)
    return out


async def one_request(api: httpx.AsyncClient, policy: str, row: dict, start: float, max_tokens: int) -> dict:
    await asyncio.sleep(max(0.0, start + row["arrival_s"] - time.perf_counter()))
    arrived = time.perf_counter()
    model = "auto" if policy == "router" else policy
    body = {"model": model, "messages": [{"role": "user", "content": row["text"]}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    first = None
    pieces: list[str] = []
    async with api.stream("POST", "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            model = chunk.get("model", model)
            for choice in chunk.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    first = first or time.perf_counter()
                    pieces.append(choice["delta"]["content"])
    done = time.perf_counter()
    return {"id": row["id"], "class": length_class(row["tokens"]), "model": model, "pieces": len(pieces),
            "text": "".join(pieces), "ttft_s": (first or done) - arrived, "total_s": done - arrived}


async def replay(proc: DaemonProcess, policy: str, workload: list[dict], max_tokens: int) -> list[dict]:
    async with httpx.AsyncClient(base_url=proc.api, timeout=None) as api:
        start = time.perf_counter()
        return list(await asyncio.gather(*(one_request(api, policy, r, start, r.get("max_tokens", max_tokens))
                                           for r in workload)))


# Kinds whose answers are a word or a number: the short requests of the quality workload.
SHORT_KINDS = {"fact", "arithmetic", "translation"}


def quality_workload(per_kind: int, mean_gap_s: float, seed: int) -> tuple[list[dict], dict[str, quality.Item]]:
    """Held-out evaluation items of every kind, shuffled, with Poisson arrival times."""
    items = quality.stratified(quality.load_items(), per_kind, split="test")
    rng = random.Random(seed)
    rng.shuffle(items)
    rows, t = [], 0.0
    for it in items:
        # "tokens" stands for the length class: the kinds answered in a word count as short.
        rows.append({"id": it.id, "text": it.prompt, "max_tokens": it.max_tokens, "arrival_s": round(t, 3),
                     "tokens": 1 if it.kind in SHORT_KINDS else 100})
        t += rng.expovariate(1.0 / mean_gap_s)
    return rows, {it.id: it for it in items}


def copy_quality(source_url: str | None, target_url: str) -> int:
    """This box's measured quality into the benchmark daemon's store; returns rows copied."""
    if source_url is None:
        return 0
    source, target = Store.open(source_url), Store.open(target_url)
    try:
        with source.session() as s:
            rows = [{c.name: getattr(r, c.name) for c in ModelQuality.__table__.columns} for r in s.scalars(select(ModelQuality))]
        with target.session() as t:
            for row in rows:
                t.merge(ModelQuality(**row))
        return len(rows)
    finally:
        source.close()
        target.close()


def score_runs(runs: list[dict], items: dict[str, quality.Item]) -> dict:
    right = [quality.score(items[r["id"]], r["text"]).passed for r in runs]
    for r, ok in zip(runs, right):
        r["right"] = ok
    return summarise(runs) | {"right": sum(right), "right_pct": 100 * sum(right) / len(right) if right else 0.0}


def summarise(runs: list[dict]) -> dict:
    totals = [r["total_s"] for r in runs]
    ttfts = [r["ttft_s"] for r in runs]
    short_ttfts = [r["ttft_s"] for r in runs if r["class"] == "short"]
    return {
        "mean_total_s": statistics.mean(totals), "p95_total_s": percentile(totals, 0.95),
        "mean_ttft_s": statistics.mean(ttfts), "p95_ttft_s": percentile(ttfts, 0.95),
        "short_p95_ttft_s": percentile(short_ttfts, 0.95), "requests": len(runs),
        "models": {m: sum(1 for r in runs if r["model"] == m) for m in sorted({r["model"] for r in runs})},
    }


def bench_router(
    models_dir: Path, threads: int, quick: bool = False, max_tokens: int = 200, mean_gap_s: float = 6.0, seed: int = 7,
    progress: Callable[[str], None] = print, quality_from: str | None = None,
) -> dict:
    rows = load_prompts()
    test = [r for r in rows if r["split"] == "test"]
    model = LengthModel.load()
    accuracy = evaluate(model, test)
    n = 8 if quick else 24
    workload = pick_workload(test, n, mean_gap_s, seed)
    estimator = Estimator(model)
    predicted = {r["id"]: estimator.estimate(extract(r["text"])).length_class for r in workload}
    policies = [FAST, LONG, "router"]
    results: dict[str, dict] = {}
    runs: dict[str, list[dict]] = {}
    q_workload, q_items = quality_workload(2 if quick else 6, mean_gap_s / 2, seed)
    q_results: dict[str, dict] = {}
    q_runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="aibox-bench-router-") as tmp:
        copied = copy_quality(quality_from, f"sqlite:///{Path(tmp) / 'box' / 'aibox.db'}")
        config = {"default_model": FAST, "models_dir": str(models_dir), "logging": {"level": "warning"},
                  "runtime": {"threads": threads, "max_loaded": 2, "queue_size": 64}}
        progress("starting the daemon")
        with DaemonProcess(Path(tmp) / "box", config) as proc:
            progress("loading both models")
            warm = [{"id": "warm", "tokens": 1, "text": "Hello", "arrival_s": 0.0}]
            for name in (FAST, LONG):
                asyncio.run(replay(proc, name, warm, 4))
            for policy in policies:
                progress(f"replaying {len(workload)} requests: {policy}")
                runs[policy] = asyncio.run(replay(proc, policy, workload, max_tokens))
                results[policy] = summarise(runs[policy])
            for policy in policies:
                progress(f"replaying {len(q_workload)} held-out evaluation items: {policy}")
                q_runs[policy] = asyncio.run(replay(proc, policy, q_workload, max_tokens))
                q_results[policy] = score_runs(q_runs[policy], q_items)
    router, fast, long = results["router"], results[FAST], results[LONG]
    q_router, q_fast, q_long = q_results["router"], q_results[FAST], q_results[LONG]
    return {
        "machine": describe(),
        "label_model": rows[0]["model"],
        "label_cap_tokens": max(r["max_tokens"] for r in rows),
        "prompts": {"total": len(rows), "train": len(rows) - len(test), "test": len(test)},
        "accuracy": accuracy,
        "workload": [{"id": r["id"], "arrival_s": r["arrival_s"], "label_tokens": r["tokens"],
                      "class": length_class(r["tokens"]), "predicted_class": predicted[r["id"]]} for r in workload],
        "max_tokens": max_tokens,
        "mean_gap_s": mean_gap_s,
        "results": results,
        "runs": runs,
        "quality": {"items": len(q_workload), "measured_rows_copied": copied, "results": q_results, "runs": q_runs},
        "targets": {
            "accuracy_at_least_85pct": accuracy["accuracy"] >= 0.85,
            "router_mean_total_below_both": router["mean_total_s"] < min(fast["mean_total_s"], long["mean_total_s"]),
            "router_short_p95_ttft_within_10pct_of_fast": router["short_p95_ttft_s"] <= 1.10 * fast["short_p95_ttft_s"],
            "router_right_answers_within_3_points_of_long": q_router["right_pct"] >= q_long["right_pct"] - 3,
            "router_quality_mean_total_at_most_60pct_of_long": q_router["mean_total_s"] <= 0.6 * q_long["mean_total_s"],
            "router_quality_short_p95_ttft_within_10pct_of_fast": q_router["short_p95_ttft_s"] <= 1.10 * q_fast["short_p95_ttft_s"],
        },
    }
