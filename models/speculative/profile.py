"""SPS(B): what one verify step of B tokens costs the target on this machine.

Measured once per machine, llama.cpp build and model (a decode of B tokens after a fixed
context, median of a few repeats, KV rolled back each time) and cached as JSON under the state
dir, because the whole scheduling decision rests on its shape: flat on a GPU (B tokens cost
about one), steep on a small CPU (B tokens cost nearly B). The pool measures a quick profile
(`QUICK_BATCH_SIZES`, `QUICK_REPEATS`: a few seconds) the first time a model loads;
`aibox models profile` measures the full one. A new llama.cpp build can change kernels, and
with them both the timings and the exact batch, so the build is part of the cache key.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from models.machine import cpu_model

DEFAULT_BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16)
# enough for the scheduler (it interpolates linearly and drafts at most 16): measured at load
QUICK_BATCH_SIZES = (1, 2, 4, 8, 16)
QUICK_REPEATS = 2


@dataclass
class SpsProfile:
    """Seconds per target forward for each measured batch size, linear in between and beyond."""

    batch_sizes: list[int]
    seconds: list[float]
    model: str = ""
    machine: dict = field(default_factory=dict)
    measured_at: float = 0.0
    # largest batch whose rows are bit-identical to one-token decodes (0: not measured)
    exact_batch: int = 0
    quick: bool = False  # the short profile measured at load, not `aibox models profile`'s

    def __post_init__(self) -> None:
        if not self.batch_sizes or len(self.batch_sizes) != len(self.seconds):
            raise ValueError("a profile needs one timing per batch size")
        if self.batch_sizes[0] != 1 or list(self.batch_sizes) != sorted(set(self.batch_sizes)):
            raise ValueError("profile batch sizes must be increasing and start at 1")
        if min(self.seconds) <= 0:
            raise ValueError("profile timings must be positive")
        # the scheduler asks every decode step; a lookup keeps that off the critical path
        self._table = [0.0] + [self._interpolate(b) for b in range(1, 65)]

    def step_seconds(self, b: int) -> float:
        if 0 < b < len(self._table):
            return self._table[b]
        return self._interpolate(b)

    def _interpolate(self, b: float) -> float:
        bs, ts = self.batch_sizes, self.seconds
        if b <= bs[-1]:
            return float(np.interp(b, bs, ts))
        if len(bs) == 1:
            return ts[0] * b
        slope = (ts[-1] - ts[-2]) / (bs[-1] - bs[-2])
        return ts[-1] + slope * (b - bs[-1])

    def sps(self, b: int) -> float:
        return 1.0 / self.step_seconds(b)

    def ceiling(self, tau: float, b: float) -> float:
        """Speed-up over plain decoding that τ tokens per step of B tokens (a mean, maybe
        fractional) allow, drafting free."""
        return tau * self.step_seconds(1) / self._interpolate(b)

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    @classmethod
    def from_json(cls, data: dict) -> "SpsProfile":
        return cls(
            batch_sizes=[int(b) for b in data["batch_sizes"]],
            seconds=[float(s) for s in data["seconds"]],
            model=str(data.get("model", "")),
            machine=dict(data.get("machine", {})),
            measured_at=float(data.get("measured_at", 0.0)),
            exact_batch=int(data.get("exact_batch", 0)),
            quick=bool(data.get("quick", False)),
        )


def machine_info(threads: int, backend: str = "llama.cpp-cpu") -> dict:
    """What makes timings comparable: CPU model, cores, threads used, backend and its build."""
    return {"cpu": cpu_model(), "cores": os.cpu_count() or 1, "threads": threads, "backend": backend, "build": llama_build()}


@functools.cache
def llama_build() -> str:
    """llama-cpp-python's version and a hash of the native libraries it ships: a rebuild with
    other flags or kernels keeps the version but changes the libraries. Found without
    importing llama_cpp, which would load them."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return "absent"
    digest = hashlib.sha256()
    for lib in sorted((Path(spec.origin).parent / "lib").glob("*.so")):
        digest.update(lib.name.encode())
        digest.update(lib.read_bytes())
    try:
        version = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"{version}+{digest.hexdigest()[:12]}"


def machine_id(info: dict) -> str:
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:12]


def profile_path(state_dir: Path, model: str, info: dict) -> Path:
    return state_dir / "spec" / "profiles" / machine_id(info) / f"{model}.json"


def load_profile(state_dir: Path, model: str, info: dict) -> SpsProfile | None:
    path = profile_path(state_dir, model, info)
    try:
        return SpsProfile.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"unreadable speculation profile {path}: {e}") from None


def save_profile(state_dir: Path, profile: SpsProfile) -> Path:
    path = profile_path(state_dir, profile.model, profile.machine)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(profile.to_json(), indent=2), encoding="utf-8")
    tmp.replace(path)
    return path


def exact_batch(target, context: Sequence[int], max_batch: int) -> int:
    """Largest B up to max_batch for which a batched decode reproduces one-by-one decodes bit for bit.

    Greedy speculation is token-identical to plain decoding only within that bound. Kernels
    can change with the batch size: on AVX-512 Xeons llama.cpp's repacked Q4_K matmul starts
    at 4 rows and shifts logits by up to 0.5, while SmolLM2's Q4_1 stays exact at 24.
    """
    base = len(context)
    target.rollback(0)
    logits = target.decode(list(context), all_logits=False).logits[-1]
    tokens, rows = [], []
    for _ in range(max_batch):
        tok = int(np.argmax(logits))
        tokens.append(tok)
        logits = target.decode([tok]).logits[-1]
        rows.append(logits)
    best = 1
    for b in range(2, max_batch + 1):
        target.rollback(base)
        if not np.array_equal(target.decode(tokens[:b]).logits, np.stack(rows[:b])):
            break
        best = b
    target.rollback(0)
    return best


def measure(
    target,
    model: str,
    machine: dict,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    context: int = 64,
    repeats: int = 5,
    progress: Callable[[int, int], None] | None = None,
    quick: bool = False,
) -> SpsProfile:
    """Time one decode of B tokens on top of `context` tokens, for each B; the cache is left empty."""
    vocab = target.n_vocab
    rng = np.random.default_rng(0)
    ctx_tokens = [int(t) for t in rng.integers(100, min(vocab, 30000), size=context)]
    target.rollback(0)
    target.decode(ctx_tokens, all_logits=False)
    seconds: list[float] = []
    for i, b in enumerate(batch_sizes):
        batch = [int(t) for t in rng.integers(100, min(vocab, 30000), size=b)]
        target.decode(batch)  # warm-up: first use of a batch shape allocates
        target.rollback(context)
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            target.decode(batch)
            runs.append(time.perf_counter() - start)
            target.rollback(context)
        # Two quick repeats have no robust median: take the faster one, which a stray
        # interruption cannot inflate. A wider batch never costs less than a narrower one,
        # so noise must not make verification look cheaper than decoding.
        cost = min(runs) if quick else statistics.median(runs)
        seconds.append(max(cost, seconds[-1]) if seconds else cost)
        if progress:
            progress(i + 1, len(batch_sizes))
    exact = exact_batch(target, ctx_tokens[:16], max(batch_sizes))
    return SpsProfile(list(batch_sizes), seconds, model=model, machine=machine, measured_at=time.time(), exact_batch=exact,
                      quick=quick)
