"""Hardware detection and model placement. The GPU cases fake the system at its one
boundary, the `Probe` (commands and sysfs files), with the outputs real drivers print:
this box has no GPU. The CPU case and `aibox models recommend` run on this box for real."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence

import pytest

from models.catalog import Catalog
from models.files import PullError, pull
from models.hardware import GIB, MIB, Hardware, detect, max_loaded, place

CATALOG = Catalog.load()


class FakeProbe:
    """Canned driver outputs standing in for the system (see the module docstring)."""

    def __init__(self, commands: dict[str, str] | None = None, files: dict[str, str] | None = None,
                 system: str = "Linux", machine: str = "x86_64") -> None:
        self.commands = commands or {}
        self.files = files or {}
        self._system, self._machine = system, machine

    def run(self, argv: Sequence[str]) -> str | None:
        return self.commands.get(" ".join(argv), self.commands.get(argv[0]))

    def read(self, path: str) -> str | None:
        return self.files.get(path)

    def glob(self, pattern: str) -> list[str]:
        prefix = pattern.split("card[")[0] + "card"
        return sorted({p.split("/device/")[0] for p in self.files if p.startswith(prefix)})

    def system(self) -> str:
        return self._system

    def machine(self) -> str:
        return self._machine


MEMINFO_32G = "MemTotal:       32768000 kB\nMemFree:         1000000 kB\nMemAvailable:   30000000 kB\n"
MEMINFO_8G = "MemTotal:        8192000 kB\nMemAvailable:    7000000 kB\n"


def test_nvidia_card_is_read_from_nvidia_smi():
    probe = FakeProbe({"nvidia-smi": "NVIDIA GeForce RTX 4070, 12282, 10240\n"}, {"/proc/meminfo": MEMINFO_32G})
    hw = detect(probe, cores=8, gpu_offload=True)
    (gpu,) = hw.accelerators
    assert gpu.vendor == "nvidia" and gpu.name == "NVIDIA GeForce RTX 4070"
    assert gpu.vram_total == 12282 * MIB and gpu.vram_free == 10240 * MIB
    assert hw.memory_total == 32768000 * 1024 and hw.memory_available == 30000000 * 1024
    seven = place(CATALOG.get("qwen2.5-coder-7b-instruct"), hw)
    assert seven.fits and seven.n_gpu_layers == -1 and seven.ram_bytes == 0
    fourteen = place(CATALOG.get("qwen2.5-coder-14b-instruct"), hw)  # ~10.6 GB with its cache: split
    assert fourteen.fits and 0 < fourteen.n_gpu_layers < 48 and fourteen.gpu_bytes <= 10240 * MIB - 512 * MIB
    assert "layers on the GPU" in fourteen.note
    assert seven.expected_tok_s > fourteen.expected_tok_s


def test_amd_and_intel_gpus_come_from_drm_sysfs():
    files = {
        "/proc/meminfo": MEMINFO_32G,
        "/sys/class/drm/card0/device/vendor": "0x1002\n",
        "/sys/class/drm/card0/device/product_name": "Radeon RX 7600 XT\n",
        "/sys/class/drm/card0/device/mem_info_vram_total": str(16 * GIB),
        "/sys/class/drm/card0/device/mem_info_vram_used": str(1 * GIB),
        "/sys/class/drm/card1/device/vendor": "0x8086\n",
        "/sys/class/drm/card1/device/device": "0x46a6\n",
        "/sys/class/drm/card1-eDP-1/status": "connected\n",
    }
    hw = detect(FakeProbe(files=files), cores=8, gpu_offload=True)
    amd, intel = hw.accelerators
    assert (amd.vendor, amd.name, amd.vram_total, amd.vram_free) == ("amd", "Radeon RX 7600 XT", 16 * GIB, 15 * GIB)
    assert intel.vendor == "intel" and intel.shared_memory and intel.vram_total == 0
    assert hw.vram_free == 15 * GIB  # the integrated GPU has no memory of its own to offload to
    assert place(CATALOG.get("qwen2.5-14b-instruct"), hw).n_gpu_layers == -1


def test_apple_silicon_offloads_into_unified_memory():
    probe = FakeProbe({"sysctl -n hw.memsize": str(16 * GIB), "sysctl -n machdep.cpu.brand_string": "Apple M2 Pro\n"},
                      system="Darwin", machine="arm64")
    hw = detect(probe, cores=8, gpu_offload=True)
    (gpu,) = hw.accelerators
    assert gpu.vendor == "apple" and gpu.name == "Apple M2 Pro GPU (Metal)"
    assert gpu.shared_memory and gpu.vram_total == 12 * GIB
    seven = place(CATALOG.get("qwen2.5-7b-instruct"), hw)
    assert seven.fits and seven.n_gpu_layers == -1
    assert seven.ram_bytes == seven.gpu_bytes  # unified: the GPU's share is system memory


def test_a_build_without_gpu_offload_keeps_layers_on_the_cpu():
    probe = FakeProbe({"nvidia-smi": "NVIDIA RTX A2000, 6138, 6000\n"}, {"/proc/meminfo": MEMINFO_32G})
    hw = detect(probe, cores=4, gpu_offload=False)
    p = place(CATALOG.get("qwen2.5-coder-1.5b-instruct"), hw)
    assert p.n_gpu_layers == 0 and "no GPU offload" in p.note


def test_small_memory_rules_out_big_models_and_sizes_max_loaded():
    hw = detect(FakeProbe(files={"/proc/meminfo": MEMINFO_8G}), cores=2, gpu_offload=False)
    assert hw.accelerators == []
    big = place(CATALOG.get("qwen2.5-14b-instruct"), hw)
    assert not big.fits and "does not fit" in big.note
    local = [place(CATALOG.get(n), hw) for n in ("smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct", "qwen2.5-7b-instruct")]
    assert all(p.fits for p in local)
    # 7B (~5.6 GB) + 1.5B (~1.5 GB) exceed the ~6.1 GB left after the reserve: only one at a time
    assert max_loaded(local, hw, cap=8) == 1
    roomy = Hardware(cores=2, memory_total=64 * GIB, memory_available=60 * GIB)
    assert max_loaded([place(CATALOG.get(p.model), roomy) for p in local], roomy, cap=8) == 3
    assert max_loaded([place(CATALOG.get(p.model), roomy) for p in local], roomy, cap=2) == 2


def test_this_box_for_real():
    hw = detect()
    assert hw.cores >= 1 and 0 < hw.memory_available <= hw.memory_total
    tiny = place(CATALOG.get("smollm2-135m-instruct"), hw)
    assert tiny.fits and tiny.ram_bytes + tiny.gpu_bytes > CATALOG.get("smollm2-135m-instruct").size


def test_models_recommend_lists_what_fits(tmp_path, models_dir):
    config = tmp_path / "aibox.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\nmodels_dir = "{models_dir}"\n')
    out = subprocess.run([sys.executable, "-m", "aibox", "--config", str(config), "models", "recommend", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    by_name = {m["model"]: m for m in data["models"]}
    assert by_name["smollm2-135m-instruct"]["fits"] and by_name["smollm2-135m-instruct"]["present"]
    assert by_name["qwen2.5-coder-7b-instruct"]["verified"] is False
    assert "qwen2.5-coder-0.5b-instruct" not in by_name or "fast" in by_name["qwen2.5-coder-0.5b-instruct"]["roles"]
    assert data["hardware"]["memory_total"] > 0 and data["max_loaded"] >= 1
    human = subprocess.run([sys.executable, "-m", "aibox", "--config", str(config), "models", "recommend"],
                           capture_output=True, text=True, timeout=120)
    assert human.returncode == 0 and "max_loaded" in human.stdout


def test_unverified_cards_are_refused_before_any_download(tmp_path):
    for name in ("qwen2.5-7b-instruct", "qwen2.5-coder-7b-instruct", "qwen2.5-14b-instruct", "qwen2.5-coder-14b-instruct"):
        card = CATALOG.get(name)
        assert card.sha256 == "" and card.layers > 0 and card.sources[0].url.startswith("https://huggingface.co/Qwen/")
        with pytest.raises(PullError, match="no sha256 pin"):
            pull(card, tmp_path)
    assert list(tmp_path.iterdir()) == []
