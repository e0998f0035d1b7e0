"""The shipped unit, as `aibox service install` renders it, passes systemd's own checks:
`systemd-analyze verify` and an offline security rating of at most 2.5 exposure."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aibox.config import parse_config
from aibox.ops.service import GPU_DROPIN, Layout, render_unit

MAX_EXPOSURE = 2.5


@pytest.fixture(scope="module")
def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: .ci/run installs the systemd package")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return path


@pytest.fixture
def config():
    return parse_config({
        "service": {"memory_max": "6G", "watchdog_s": 45, "stop_timeout_s": 20},
        "api": {"api_key": "credential:api_key"},
        "connectors": {"telegram": {"token": "credential:telegram_token", "dm_policy": "pairing"}},
    })


def aibox_exe() -> Path:
    return Path(sys.executable).parent / "aibox"


def write_unit(tmp_path: Path, text: str) -> Path:
    unit = tmp_path / "aibox.service"
    unit.write_text(text)
    return unit


def exposure(analyze: str, unit: Path) -> float:
    out = subprocess.run([analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True, cwd=unit.parent)
    match = re.search(r"Overall exposure level for aibox\.service: (\d+\.\d+)", out.stdout)
    assert match, out.stdout + out.stderr
    return float(match.group(1))


def test_rendered_unit_carries_the_config(config) -> None:
    text = render_unit(config, aibox_exe(), Layout())
    lines = text.splitlines()
    assert f"ExecStart={aibox_exe()} run --config /etc/aibox/aibox.toml" in lines
    assert "MemoryMax=6G" in lines and "WatchdogSec=45" in lines and "TimeoutStopSec=20" in lines
    assert "LoadCredential=api_key:/etc/aibox/credentials/api_key" in lines
    assert "LoadCredential=telegram_token:/etc/aibox/credentials/telegram_token" in lines
    assert "Type=notify" in lines and "CapabilityBoundingSet=" in lines


def test_verify_passes(analyze: str, tmp_path: Path, config) -> None:
    unit = write_unit(tmp_path, render_unit(config, aibox_exe(), Layout()))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path)
    print(out.stdout, out.stderr)
    assert out.returncode == 0, out.stderr
    assert "aibox.service" not in out.stderr, out.stderr


def test_verify_catches_a_broken_unit(analyze: str, tmp_path: Path, config) -> None:
    """The check above can fail: a missing executable is reported."""
    unit = write_unit(tmp_path, render_unit(config, tmp_path / "no-such-aibox", Layout()))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0 and "no-such-aibox" in out.stderr


def test_security_exposure_at_most_2_5(analyze: str, tmp_path: Path, config) -> None:
    score = exposure(analyze, write_unit(tmp_path, render_unit(config, aibox_exe(), Layout())))
    print(f"systemd-analyze security --offline=true: exposure {score}")
    assert score <= MAX_EXPOSURE


def test_gpu_variant_stays_at_most_2_5(analyze: str, tmp_path: Path, config) -> None:
    """The GPU drop-in trades PrivateDevices= for an NVIDIA-only device allow list."""
    dropin = [line for line in GPU_DROPIN.read_text().splitlines() if line and not line.startswith(("#", "["))]
    assert "DevicePolicy=closed" in dropin and "DeviceAllow=char-nvidia-frontend rw" in dropin
    text = render_unit(config, aibox_exe(), Layout()).replace("PrivateDevices=yes\n", "\n".join(dropin) + "\n")
    unit = write_unit(tmp_path, text)
    assert subprocess.run([analyze, "verify", str(unit)], capture_output=True, cwd=tmp_path).returncode == 0
    score = exposure(analyze, unit)
    print(f"GPU variant exposure {score}")
    assert score <= MAX_EXPOSURE


def test_score_reacts_to_weaker_hardening(analyze: str, tmp_path: Path, config) -> None:
    """The rating is not a constant: dropping the sandbox raises it past the limit."""
    weak = "\n".join(line for line in render_unit(config, aibox_exe(), Layout()).splitlines()
                     if not line.startswith(("Protect", "Private", "Restrict", "SystemCall", "CapabilityBoundingSet", "User=", "NoNew")))
    assert exposure(analyze, write_unit(tmp_path, weak + "\n")) > MAX_EXPOSURE
