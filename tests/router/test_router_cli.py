"""`aibox route` as a user runs it: a dry run without a daemon, and asking a real running
daemon (the router built inside `aibox run`, over the admin socket)."""

from __future__ import annotations

import json
import subprocess
import sys

from aibox.process import DaemonProcess

KEYS = {"predicted_tokens", "length_class", "model", "candidates", "reason"}


def _route(config_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aibox", "--config", str(config_path), "route", *args],
                          capture_output=True, text=True, timeout=120)


def test_route_without_a_daemon(tmp_path, models_dir):
    config = tmp_path / "aibox.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\nmodels_dir = "{models_dir}"\n')
    out = _route(config, "--json", "/fast hello there")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert KEYS <= set(data) and data["daemon"] is False
    assert data["length_class"] == "short" and data["model"] == "smollm2-135m-instruct"
    assert all("expected_s" in c for c in data["candidates"])
    human = _route(config, "--model", "smollm2-135m-instruct", "Write a 500-word story")
    assert human.returncode == 0 and "user override" in human.stdout


def test_route_asks_the_running_daemon(tmp_path, models_dir):
    with DaemonProcess(tmp_path / "box", {"models_dir": str(models_dir), "logging": {"level": "warning"}}) as proc:
        out = _route(proc.config_path, "--json", "/fast hi")
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert data["daemon"] is True and KEYS <= set(data)
        loaded = next(c for c in data["candidates"] if c["model"] == "smollm2-135m-instruct")
        assert loaded["load_s"] == 0  # the daemon has the default model in memory: live state, not a guess
