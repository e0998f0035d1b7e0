"""What the box really has: accelerators (NVIDIA, AMD, Intel, Apple) with their memory, and
the system's memory, read at start; and from that, how a model is placed so that loading
never runs the box out of memory: how many layers go to the GPU (`n_gpu_layers`) and how
many models may be held at once (`max_loaded`).

Everything the system says comes through a `Probe` (commands and files), the one
boundary: tests hand in a fake one with the outputs real drivers print. Sources:
`nvidia-smi` for NVIDIA; the amdgpu sysfs files (`mem_info_vram_total`, `…_used`) for AMD;
the DRM vendor id for Intel, whose integrated GPUs share system memory; `sysctl` on Apple
Silicon, whose GPU uses unified memory (Metal lets it wire about three quarters of it).

Footprints are estimates, stated as such: weights (the file) plus 15% and 256 MiB for the
KV cache and compute buffers at a 4k context, and a reserve left free on each device.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from models.catalog import ModelCard

MIB = 1024 * 1024
GIB = 1024 * MIB
OVERHEAD_FRACTION = 0.15  # KV cache and compute buffers, relative to the weights
OVERHEAD_BYTES = 256 * MIB
RAM_RESERVE = 1 * GIB  # left to the system, the daemon and the page cache
VRAM_RESERVE = 512 * MIB  # left to the display and the driver
APPLE_GPU_SHARE = 0.75  # of unified memory Metal lets one process wire
VENDORS = {"0x10de": "nvidia", "0x1002": "amd", "0x8086": "intel"}
# Decode reads every weight once per token, so tokens/s is about bandwidth / file size.
# CPU: calibrated on a 2-core VM (see aibox.router.candidates); GPU: a conservative figure
# for consumer cards (250-1000 GB/s), marked as a prior until the box measures it.
CPU_BYTES_PER_S = 4.4e10
GPU_BYTES_PER_S = 2.5e11
MAX_TOK_S = 140.0


class Probe(Protocol):
    def run(self, argv: Sequence[str]) -> str | None: ...
    def read(self, path: str) -> str | None: ...
    def glob(self, pattern: str) -> list[str]: ...
    def system(self) -> str: ...
    def machine(self) -> str: ...


class SystemProbe:
    """The real system: commands with a timeout, files that may not exist."""

    def run(self, argv: Sequence[str]) -> str | None:
        if not shutil.which(argv[0]):
            return None
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    def read(self, path: str) -> str | None:
        try:
            return Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    def glob(self, pattern: str) -> list[str]:
        return sorted(glob.glob(pattern))

    def system(self) -> str:
        return platform.system()

    def machine(self) -> str:
        return platform.machine()


@dataclass(frozen=True)
class Accelerator:
    vendor: str  # "nvidia", "amd", "intel", "apple"
    name: str
    vram_total: int  # bytes; 0 where the GPU has no memory of its own
    vram_free: int
    shared_memory: bool = False  # uses system memory (integrated GPUs, Apple's unified memory)


@dataclass(frozen=True)
class Hardware:
    cores: int
    memory_total: int
    memory_available: int
    accelerators: list[Accelerator] = field(default_factory=list)
    gpu_offload: bool = False  # whether this llama.cpp build can put layers on a GPU

    @property
    def vram_free(self) -> int:
        """Memory free on accelerators llama.cpp can offload to (dedicated, or Apple's unified share)."""
        return sum(a.vram_free for a in self.accelerators if a.vram_free > 0)

    def as_dict(self) -> dict:
        return asdict(self) | {"vram_free": self.vram_free}


def _int(text: str | None) -> int | None:
    try:
        return int((text or "").strip(), 0)
    except ValueError:
        return None


def nvidia(probe: Probe) -> list[Accelerator]:
    out = probe.run(["nvidia-smi", "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"])
    gpus = []
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            continue
        total, free = _int(parts[1]), _int(parts[2])
        if total is None or free is None:  # "[N/A]" on some boards
            continue
        gpus.append(Accelerator("nvidia", parts[0], total * MIB, free * MIB))
    return gpus


def drm_devices(probe: Probe, skip: set[str]) -> list[Accelerator]:
    """AMD and Intel GPUs from the kernel's DRM sysfs (no vendor tool needed)."""
    found = []
    for card in probe.glob("/sys/class/drm/card[0-9]*"):
        if "-" in os.path.basename(card):  # connectors such as card0-HDMI-A-1
            continue
        vendor = VENDORS.get((probe.read(f"{card}/device/vendor") or "").strip().lower())
        if vendor is None or vendor in skip:
            continue
        device = (probe.read(f"{card}/device/device") or "").strip()
        name = (probe.read(f"{card}/device/product_name") or "").strip() or f"{vendor.upper()} GPU {device}".strip()
        total = _int(probe.read(f"{card}/device/mem_info_vram_total"))
        used = _int(probe.read(f"{card}/device/mem_info_vram_used"))
        if total:
            found.append(Accelerator(vendor, name, total, max(0, total - (used or 0))))
        else:
            found.append(Accelerator(vendor, name, 0, 0, shared_memory=True))
    return found


def meminfo(probe: Probe) -> tuple[int, int]:
    values = {}
    for line in (probe.read("/proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        number = _int(rest.strip().split(" ")[0]) if rest.strip() else None
        if number is not None:
            values[key] = number * 1024
    total = values.get("MemTotal", 0)
    return total, values.get("MemAvailable", values.get("MemFree", total))


def detect(probe: Probe | None = None, cores: int | None = None, gpu_offload: bool | None = None) -> Hardware:
    """The box as its system reports it; `gpu_offload` defaults to what the installed
    llama.cpp build supports."""
    probe = probe or SystemProbe()
    offload = _gpu_offload() if gpu_offload is None else gpu_offload
    cores = cores or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if probe.system() == "Darwin":
        total = _int(probe.run(["sysctl", "-n", "hw.memsize"])) or 0
        accelerators = []
        if probe.machine() == "arm64":
            chip = (probe.run(["sysctl", "-n", "machdep.cpu.brand_string"]) or "Apple Silicon").strip()
            share = int(total * APPLE_GPU_SHARE)
            accelerators.append(Accelerator("apple", f"{chip} GPU (Metal)", share, share, shared_memory=True))
        # macOS reports no "available" figure without paging statistics; the GPU share is what a load may take.
        return Hardware(cores, total, int(total * APPLE_GPU_SHARE), accelerators, gpu_offload=offload)
    total, available = meminfo(probe)
    accelerators = nvidia(probe)
    accelerators += drm_devices(probe, skip={"nvidia"} if accelerators else set())
    return Hardware(cores, total, available, accelerators, gpu_offload=offload)


def _gpu_offload() -> bool:
    try:
        import llama_cpp
    except ImportError:
        return False
    return bool(llama_cpp.llama_supports_gpu_offload())


# -- placing models ------------------------------------------------------------------


def footprint(size: int) -> int:
    """Bytes a model takes once loaded: weights plus KV cache and buffers (estimate)."""
    return int(size * (1 + OVERHEAD_FRACTION)) + OVERHEAD_BYTES


@dataclass(frozen=True)
class Placement:
    model: str
    size: int
    fits: bool
    n_gpu_layers: int  # llama.cpp's: 0 all on the CPU, -1 every layer on the GPU
    gpu_bytes: int
    ram_bytes: int
    expected_tok_s: float
    note: str

    def as_dict(self) -> dict:
        return asdict(self)


def place(card: ModelCard, hw: Hardware) -> Placement:
    """Where the model's layers go on this hardware, and whether it fits at all."""
    size = card.size or 0
    need = footprint(size)
    ram_budget = max(0, hw.memory_available - RAM_RESERVE)
    vram_budget = max(0, hw.vram_free - VRAM_RESERVE) if hw.gpu_offload else 0
    unified = any(a.shared_memory and a.vram_free for a in hw.accelerators)
    if vram_budget >= need:
        layers, gpu, ram = -1, need, 0
        note = "every layer on the GPU"
    elif vram_budget > OVERHEAD_BYTES and card.layers:
        per_layer = size * (1 + OVERHEAD_FRACTION) / (card.layers + 1)  # +1: embeddings and output
        layers = min(card.layers, int((vram_budget - OVERHEAD_BYTES) // per_layer))
        gpu = int(layers * per_layer) + OVERHEAD_BYTES
        ram = max(0, need - gpu)
        note = f"{layers} of {card.layers} layers on the GPU, the rest on the CPU"
    else:
        layers, gpu, ram = 0, 0, need
        if hw.accelerators and not hw.gpu_offload:
            note = "on the CPU: this llama.cpp build has no GPU offload"
        elif vram_budget and not card.layers:
            note = "on the CPU: too big for the GPU, and the card does not say its layer count to split it"
        else:
            note = "on the CPU"
    if unified and gpu:
        ram = ram + gpu  # unified memory: the GPU's share is system memory too
    fits = ram <= ram_budget if not unified else ram <= max(ram_budget, vram_budget)
    if not fits:
        note = f"does not fit: needs about {need / GIB:.1f} GiB, {ram_budget / GIB:.1f} GiB free after the reserve"
    bandwidth = GPU_BYTES_PER_S if layers == -1 else CPU_BYTES_PER_S
    tok_s = min(MAX_TOK_S, bandwidth / size) if size else 0.0
    return Placement(card.name, size, fits, layers, gpu, ram, round(tok_s, 1), note)


def max_loaded(placements: Iterable[Placement], hw: Hardware, cap: int) -> int:
    """How many models may be held at once so that even the largest ones together fit:
    the pool keeps up to this many, so its worst case is the k biggest loaded at once."""
    fitting = sorted((p for p in placements if p.fits), key=lambda p: p.ram_bytes + p.gpu_bytes, reverse=True)
    ram_budget = max(0, hw.memory_available - RAM_RESERVE)
    vram_budget = max(0, hw.vram_free - VRAM_RESERVE) if hw.gpu_offload else 0
    k = ram = gpu = 0
    for p in fitting:
        if ram + p.ram_bytes > ram_budget or gpu + p.gpu_bytes > vram_budget:
            break
        ram, gpu, k = ram + p.ram_bytes, gpu + p.gpu_bytes, k + 1
    return max(1, min(cap, k))
