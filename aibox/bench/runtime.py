"""`aibox bench runtime`: the daemon against raw llama-cpp-python on the same model, in one
run, and the time to first token of turn 10 of a chat with and without KV reuse.

Raw and daemon runs alternate prompt by prompt so that load from elsewhere on the
machine hits both alike; the figures that matter are the ratios."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import llama_cpp

from models.machine import describe
from aibox.process import DaemonProcess
from models.catalog import ModelCard
from models.files import model_path

PROMPTS = [
    "Explain how a bicycle stays upright while moving.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "List ten uses for a paperclip and explain each briefly.",
    "Describe the water cycle to a ten-year-old.",
]

CHAT_TURNS = [
    "Hi! I'm planning a vegetable garden. Where should I start?",
    "What vegetables are easiest for a beginner?",
    "How often should I water tomatoes?",
    "What about pests? Any natural ways to keep them away?",
    "Which plants grow well next to each other?",
    "How do I make compost at home?",
    "When is the best time to plant carrots?",
    "Can I grow herbs indoors over the winter?",
    "How much sunlight do peppers need?",
    "Thanks! Can you summarise the three most important tips?",
]


@dataclass
class Run:
    ttft_s: float
    tok_s: float
    tokens: int
    text: str


def _rate(n_tokens: int, first: float, last: float) -> float:
    return (n_tokens - 1) / (last - first) if n_tokens > 1 and last > first else 0.0


def raw_run(llm: llama_cpp.Llama, prompt: str, max_tokens: int) -> Run:
    """What a user of llama-cpp-python writes: create_chat_completion, streaming."""
    llm.reset()
    start = time.perf_counter()
    first = last = 0.0
    pieces: list[str] = []
    n = 0
    for chunk in llm.create_chat_completion(
        [{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0.0, stream=True
    ):
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            now = time.perf_counter()
            first = first or now
            last = now
            pieces.append(piece)
            n += 1
    return Run(first - start, _rate(n, first, last), n, "".join(pieces))


def daemon_run(client: httpx.Client, api: str, messages: list[dict], max_tokens: int) -> Run:
    """Through the HTTP API with SSE, as an OpenAI client sees it."""
    start = time.perf_counter()
    first = last = 0.0
    pieces: list[str] = []
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    with client.stream("POST", f"{api}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                piece = choice["delta"].get("content")
                if piece:
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    pieces.append(piece)
    return Run(first - start, _rate(len(pieces), first, last), len(pieces), "".join(pieces))


def chat_turn10_ttft(client: httpx.Client, api: str, max_tokens: int) -> tuple[float, list[float]]:
    """Two chats interleaved turn by turn (so each turn of one evicts the other from the
    context), returns turn 10's time to first token in chat A and all of A's."""
    chats: dict[str, list[dict]] = {"A": [], "B": []}
    ttfts: list[float] = []
    for turn, text in enumerate(CHAT_TURNS):
        for name, history in chats.items():
            history.append({"role": "user", "content": text if name == "A" else f"(second chat) {text}"})
            run = daemon_run(client, api, history, max_tokens)
            history.append({"role": "assistant", "content": run.text})
            if name == "A":
                ttfts.append(run.ttft_s)
    return ttfts[-1], ttfts


def bench_runtime(card: ModelCard, models_dir: Path, threads: int, max_tokens: int = 128, rounds: int = 2, progress: Callable[[str], None] = print) -> dict:
    path = model_path(card, models_dir)
    progress(f"loading {card.name} in-process (raw llama-cpp-python)")
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=4096, n_threads=threads, n_threads_batch=threads, flash_attn=True, verbose=False
    )
    raw: list[Run] = []
    daemon: list[Run] = []
    reuse: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="aibox-bench-") as tmp:
        base = {"default_model": card.name, "models_dir": str(models_dir), "logging": {"level": "warning"}}
        progress("starting the daemon")
        with DaemonProcess(Path(tmp) / "reuse", base | {"runtime": {"threads": threads}}) as proc, httpx.Client(timeout=None) as client:
            daemon_run(client, proc.api, [{"role": "user", "content": "Hello"}], 8)
            for r in range(rounds):
                for i, prompt in enumerate(PROMPTS):
                    progress(f"round {r + 1}/{rounds}, prompt {i + 1}/{len(PROMPTS)}")
                    raw.append(raw_run(llm, prompt, max_tokens))
                    daemon.append(daemon_run(client, proc.api, [{"role": "user", "content": prompt}], max_tokens))
            progress("10-turn chats with KV reuse")
            t10, series = chat_turn10_ttft(client, proc.api, 48)
            reuse["with_reuse"] = {"turn10_ttft_s": t10, "ttft_by_turn_s": series}
        llm.close()
        progress("10-turn chats without KV reuse")
        off = base | {"runtime": {"threads": threads, "kv_reuse": False}}
        with DaemonProcess(Path(tmp) / "noreuse", off) as proc, httpx.Client(timeout=None) as client:
            t10, series = chat_turn10_ttft(client, proc.api, 48)
            reuse["without_reuse"] = {"turn10_ttft_s": t10, "ttft_by_turn_s": series}

    raw_tok_s = statistics.median(r.tok_s for r in raw)
    daemon_tok_s = statistics.median(r.tok_s for r in daemon)
    same = sum(a.text == b.text for a, b in zip(raw, daemon))
    return {
        "model": card.name,
        "machine": describe(),
        "max_tokens": max_tokens,
        "raw": {"tok_s": raw_tok_s, "ttft_s": statistics.median(r.ttft_s for r in raw), "runs": [asdict(r) | {"text": None} for r in raw]},
        "daemon": {"tok_s": daemon_tok_s, "ttft_s": statistics.median(r.ttft_s for r in daemon), "runs": [asdict(r) | {"text": None} for r in daemon]},
        "daemon_overhead_pct": 100.0 * (raw_tok_s - daemon_tok_s) / raw_tok_s if raw_tok_s else None,
        "identical_outputs": f"{same}/{len(raw)}",
        "kv_reuse": reuse,
        "turn10_ttft_speedup": reuse["without_reuse"]["turn10_ttft_s"] / reuse["with_reuse"]["turn10_ttft_s"],
    }
