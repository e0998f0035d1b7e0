"""`aibox service install|uninstall|status`: refusals, and the file layout it writes,
which must be the same however often install runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aibox import service
from aibox.cli.main import app
from aibox.config import parse_config


def aibox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aibox", *args], capture_output=True, text=True)


@pytest.mark.skipif(service.systemd_running(), reason="would really install: this machine runs systemd")
@pytest.mark.parametrize("command", ["install", "uninstall"])
def test_refuses_without_systemd(command: str) -> None:
    assert os.geteuid() == 0, "the test runs as root so that only the systemd check can refuse"
    result = aibox("service", command)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "aibox: error: systemd is not running on this machine (no /run/systemd/system); "
        "start the box with `aibox run` under your own supervisor instead"]


def test_install_touches_nothing_when_refused(tmp_path: Path) -> None:
    layout = service.Layout(tmp_path / "units", tmp_path / "etc", tmp_path / "lib", tmp_path / "log")
    if service.systemd_running():
        pytest.skip("this machine runs systemd")
    with pytest.raises(service.ServiceError):
        service.install(parse_config({}), layout)
    assert list(tmp_path.iterdir()) == []


def test_refuses_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # Mocked euid: this machine's Python lives under /root (0700), so a real unprivileged
    # user cannot even start the interpreter to be refused.
    monkeypatch.setattr(service.os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(app, ["service", "install"])
    assert result.exit_code == 1
    assert "needs root: run it again with sudo" in result.output


def test_status_without_systemd_exits_1_and_says_so() -> None:
    if service.systemd_running():
        pytest.skip("this machine runs systemd")
    result = aibox("service", "status", "--json")
    assert result.returncode == 1
    assert '"systemd": "not running"' in result.stdout


def test_install_files_is_idempotent(tmp_path: Path) -> None:
    layout = service.Layout(tmp_path / "units", tmp_path / "etc", tmp_path / "lib", tmp_path / "log")
    config = parse_config({"service": {"memory_max": "3G"}, "connectors": {"slack": {"bot_token": "credential:slack_bot"}}})
    exe = Path(sys.executable).parent / "aibox"
    uid, gid = os.getuid(), os.getgid()

    first = service.install_files(config, exe, layout, uid, gid, gpu=False)
    assert len(first) == 6, first
    assert service.install_files(config, exe, layout, uid, gid, gpu=False) == []

    assert layout.config_path.stat().st_mode & 0o777 == 0o600
    assert layout.credentials_dir.stat().st_mode & 0o777 == 0o700
    assert layout.state_dir.stat().st_mode & 0o777 == 0o750
    assert f'state_dir = "{layout.state_dir}"' in layout.config_path.read_text()
    unit = layout.unit_path.read_text()
    assert "MemoryMax=3G" in unit and f"LoadCredential=slack_bot:{layout.credentials_dir}/slack_bot" in unit

    layout.config_path.write_text(layout.config_path.read_text() + "# edited by hand\n")
    layout.config_path.chmod(0o644)
    assert service.install_files(config, exe, layout, uid, gid, gpu=False) == [
        f"config {layout.config_path} made 0600 and owned by the service user"]
    assert layout.config_path.read_text().endswith("# edited by hand\n"), "an existing config is never overwritten"

    assert service.install_files(config, exe, layout, uid, gid, gpu=True) == [f"GPU drop-in {layout.dropin_path}"]
    assert "DeviceAllow=char-nvidia-uvm rw" in layout.dropin_path.read_text()
    assert service.install_files(config, exe, layout, uid, gid, gpu=False) == [f"removed GPU drop-in {layout.dropin_path}"]

    bigger = parse_config({"service": {"memory_max": "12G"}})
    assert service.install_files(bigger, exe, layout, uid, gid, gpu=False) == [f"unit {layout.unit_path}"]
    assert "MemoryMax=12G" in layout.unit_path.read_text()


@pytest.mark.parametrize("path", ["/home/ann/.venv/bin/aibox", "/root/.pyenv/versions/3.11.7/bin/python3.11", "/run/user/1000/x"])
def test_refuses_paths_the_service_cannot_see(path: str) -> None:
    with pytest.raises(service.ServiceError, match="inside a home directory"):
        service.check_outside_homes(Path("/opt/aibox/.venv/bin/aibox"), Path(path))


def test_accepts_system_paths() -> None:
    service.check_outside_homes(Path("/opt/aibox/.venv/bin/aibox"), Path("/usr/bin/python3.11"))
