"""AIBox as users get it: built into a wheel, installed outside the checkout and run from
elsewhere. Anything that only works from a source tree (files read next to the code,
imports of tests/) fails here while every other test passes.

The wheel is built from a copy of the checkout so that the build leaves no build/ or
egg-info behind in it; it is built and installed offline (no index, no build isolation:
the venv's setuptools builds it), and put on PYTHONPATH in front of the editable install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# what never goes into the wheel: VCS, environments, build output, the tests themselves
NOT_COPIED_AT_TOP = {".git", ".venv", "build", "dist", "tests", ".state", "bench-out", ".pytest_cache", ".whl"}
NOT_COPIED = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.gguf")


def _ignore(directory: str, names: list[str]) -> set[str]:
    ignored = set(NOT_COPIED(directory, names))
    if Path(directory) == ROOT:
        ignored |= NOT_COPIED_AT_TOP & set(names)
    return ignored


def pip(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args, "--no-deps", "--no-index", "--disable-pip-version-check"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=_ignore)
    pip("wheel", "--no-build-isolation", "--wheel-dir", str(base / "dist"), str(source))
    (wheel,) = (base / "dist").glob("aibox-*.whl")
    pip("install", "--target", str(base / "site"), str(wheel))
    return base / "site"


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("elsewhere")


def installed(site: Path, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The venv's Python (for the dependencies) with only the wheel's files for AIBox's own packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AIBOX_CONFIG", "CREDENTIALS_DIRECTORY")}
    env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_packages_come_from_the_wheel(site: Path, elsewhere: Path) -> None:
    result = installed(site, elsewhere, "-c", "import aibox, agents, connectors, models\n"
                       "for m in (aibox, agents, connectors, models): print(m.__file__)")
    assert result.returncode == 0, result.stderr
    for path in result.stdout.split():
        assert Path(path).is_relative_to(site), f"{path} is not the installed copy"


def test_help_runs(site: Path, elsewhere: Path) -> None:
    result = installed(site, elsewhere, "-m", "aibox", "--help")
    assert result.returncode == 0, result.stderr
    assert "service" in result.stdout and "doctor" in result.stdout


def test_service_dry_run_finds_the_unit_and_the_drop_in(site: Path, elsewhere: Path) -> None:
    result = installed(site, elsewhere, "-m", "aibox", "service", "install", "--dry-run", "--json", "--gpu")
    assert result.returncode in (0, 1), result.stderr
    plan = json.loads(result.stdout)
    assert result.returncode == (1 if plan["refusals"] else 0)
    steps = {s["kind"]: s for s in plan["steps"]}
    unit, dropin = steps["unit"], steps["drop-in"]
    assert unit["target"] == "/etc/systemd/system/aibox.service"
    assert unit["detail"] == f"0644, rendered from {site / 'aibox' / 'ops' / 'systemd' / 'aibox.service'}"
    assert "[Service]" in unit["text"] and "Type=notify" in unit["text"] and "ExecStart=" in unit["text"]
    assert dropin["target"] == "/etc/systemd/system/aibox.service.d/gpu.conf"
    assert dropin["detail"] == f"0644, copied from {site / 'aibox' / 'ops' / 'systemd' / 'gpu.conf'}"
    assert "DeviceAllow=char-nvidia-uvm rw" in dropin["text"]


def test_bench_pipeline_runs_from_the_wheel(site: Path, elsewhere: Path) -> None:
    """The stand-in platform servers ship in aibox/bench/platforms, so the pipeline benchmark
    needs no checkout; a short run (one platform, ten messages) shows it, figures unchecked."""
    out = elsewhere / "pipeline.json"
    result = installed(site, elsewhere, "-m", "aibox", "bench", "pipeline", "-p", "telegram", "--messages", "10",
                       "--chats", "2", "--think-ms", "0", "--json", str(out), timeout=300)
    assert result.returncode == 0, result.stderr
    (telegram,) = json.loads(out.read_text())["results"]
    assert telegram["platform"] == "telegram" and telegram["errors"] == 0 and telegram["messages"] == 10, telegram
