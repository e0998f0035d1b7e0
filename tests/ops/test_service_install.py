"""`aibox service install|uninstall|status`: refusals, and the file layout it writes,
which must be the same however often install runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aibox.cli.main import app
from aibox.config import parse_config
from aibox.ops import service


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


def planned(plan: service.Plan, kind: str) -> list[service.Step]:
    return [s for s in plan.steps if s.kind == kind]


def test_plan_changes_nothing_and_lists_what_install_then_does(tmp_path: Path) -> None:
    """The dry run and the real install agree: what the plan marks todo is what install_files
    changes, and after it the plan finds nothing left to do on the files. Root plays the
    service user, so every directory can be owned as install owns it."""
    assert os.geteuid() == 0, "install_files gives the config directories to root"
    layout = service.Layout(tmp_path / "units", tmp_path / "etc", tmp_path / "lib", tmp_path / "log")
    config = parse_config({"service": {"user": "root", "memory_max": "3G"}, "connectors": {"slack": {"bot_token": "credential:slack_bot"}}})
    exe = service.entry_point()

    before = service.plan(config, layout, gpu=True)
    assert list(tmp_path.iterdir()) == [], "the dry run wrote something"
    todo = {s.target for s in before.steps if s.needed and s.kind in ("directory", "config", "unit", "drop-in")}
    done = service.install_files(config, exe, layout, 0, 0, gpu=True)
    assert todo == {line.split(" ")[-1] for line in done}, (todo, done)

    (unit,) = planned(before, "unit")
    assert unit.text == layout.unit_path.read_text() and "MemoryMax=3G" in unit.text
    (dropin,) = planned(before, "drop-in")
    assert dropin.text == layout.dropin_path.read_text()
    assert planned(before, "user")[0].needed is False, "the user exists"

    after = service.plan(config, layout, gpu=True)
    assert [s.target for s in after.steps if s.needed and s.kind != "systemctl"] == []
    assert [s.target for s in service.plan(config, layout, gpu=False).steps if s.needed and s.kind == "drop-in"] == [
        str(layout.dropin_path)], "without a GPU the plan removes the drop-in"


def test_plan_without_systemd_leaves_systemctl_undecided(tmp_path: Path) -> None:
    if service.systemd_running():
        pytest.skip("this machine runs systemd")
    layout = service.Layout(tmp_path / "units", tmp_path / "etc", tmp_path / "lib", tmp_path / "log")
    plan = service.plan(parse_config({"service": {"user": "aibox-no-such-user"}}), layout, gpu=False)
    assert [(s.target, s.needed) for s in planned(plan, "systemctl")] == [
        ("systemctl daemon-reload", True), ("systemctl enable aibox.service", None),
        ("systemctl start aibox.service", None), ("systemctl restart aibox.service", None)]
    (user,) = planned(plan, "user")
    assert user.needed and user.detail.startswith("useradd --system --user-group") and user.detail.endswith(" aibox-no-such-user")
    assert all(s.needed for s in planned(plan, "directory")), "a user that does not exist yet owns none of its directories"
    assert any(r.startswith("systemd is not running on this machine") for r in plan.refusals)


def test_dry_run_needs_neither_root_nor_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    layout = service.Layout()
    existed = {p: p.exists() for p in (layout.config_dir, layout.state_dir, layout.logs_dir, layout.unit_path, layout.dropin_path)}
    monkeypatch.setattr(service.os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(app, ["service", "install", "--dry-run", "--json", "--gpu"])
    plan = json.loads(result.output)
    assert "managing the service needs root: run it again with sudo" in plan["refusals"]
    assert result.exit_code == 1 and plan["would_install"] is False
    steps = {s["target"]: s for s in plan["steps"]}
    unit = steps[str(layout.unit_path)]
    assert unit["kind"] == "unit" and f"rendered from {service.TEMPLATE}" in unit["detail"]
    assert f"ExecStart={service.entry_point()} run --config {layout.config_path}" in unit["text"].splitlines()
    assert "DeviceAllow=char-nvidia-uvm rw" in steps[str(layout.dropin_path)]["text"]
    assert steps["systemctl daemon-reload"]["needed"] is True
    assert {p: p.exists() for p in existed} == existed, "the dry run changed the machine"


def test_dry_run_prints_the_plan_and_the_files() -> None:
    result = aibox("service", "install", "--dry-run", "--no-gpu")
    assert result.returncode in (0, 1), result.stderr
    assert (result.returncode == 1) == ("install would refuse here: " in result.stdout)
    lines = result.stdout.splitlines()
    assert lines[0] == "aibox service install --dry-run: what install would do; nothing was changed"
    assert any(line.startswith(" todo systemctl systemctl daemon-reload") for line in lines)
    assert any(line in (f"--- {service.Layout().unit_path} (would be written)", f"--- {service.Layout().unit_path} (already installed)")
               for line in lines)
    assert "[Service]" in lines and "PrivateDevices=yes" in lines, "the unit is printed as written, brackets and all"


def test_json_goes_with_dry_run() -> None:
    result = aibox("service", "install", "--json")
    assert result.returncode == 2 and "goes with --dry-run" in result.stderr
