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

from models.machine import describe
from aibox.process import DaemonProcess
from aibox.router.estimator import Estimator, LengthModel, evaluate, length_class, load_prompts
from aibox.router.features import extract

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
    pieces = 0
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
                    pieces += 1
    done = time.perf_counter()
    return {"id": row["id"], "class": length_class(row["tokens"]), "model": model, "pieces": pieces,
            "ttft_s": (first or done) - arrived, "total_s": done - arrived}


async def replay(proc: DaemonProcess, policy: str, workload: list[dict], max_tokens: int) -> list[dict]:
    async with httpx.AsyncClient(base_url=proc.api, timeout=None) as api:
        start = time.perf_counter()
        return list(await asyncio.gather(*(one_request(api, policy, r, start, max_tokens) for r in workload)))


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
    progress: Callable[[str], None] = print,
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
    with tempfile.TemporaryDirectory(prefix="aibox-bench-router-") as tmp:
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
    router, fast, long = results["router"], results[FAST], results[LONG]
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
        "targets": {
            "accuracy_at_least_85pct": accuracy["accuracy"] >= 0.85,
            "router_mean_total_below_both": router["mean_total_s"] < min(fast["mean_total_s"], long["mean_total_s"]),
            "router_short_p95_ttft_within_10pct_of_fast": router["short_p95_ttft_s"] <= 1.10 * fast["short_p95_ttft_s"],
        },
    }
