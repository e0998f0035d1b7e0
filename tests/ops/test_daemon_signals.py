"""Signals as systemd sends them to a real `aibox run`: SIGTERM lets work in flight finish
and exits 0; SIGHUP re-reads the config without dropping a connection."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx

from aibox.process import DaemonProcess


CHEF = 'name = "chef"\ndescription = "Recipes"\nsystem_prompt = "You suggest recipes."\n'


def log_entries(state: Path) -> list[dict]:
    path = state / "logs" / "aibox.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_log(state: Path, msg: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in log_entries(state):
            if entry["msg"] == msg:
                return entry
        time.sleep(0.1)
    raise AssertionError(f"no log line {msg!r}: {log_entries(state)[-5:]}")


def test_sigterm_finishes_the_stream_in_flight_then_exits_0(tmp_path: Path, models_dir: Path) -> None:
    # A long stop timeout: on a loaded 2-core machine even a few tokens can take many seconds.
    daemon = DaemonProcess(tmp_path / "state", {"models_dir": str(models_dir), "service": {"stop_timeout_s": 200}})
    with daemon:
        body = {"model": "smollm2-135m-instruct", "stream": True, "max_tokens": 12, "temperature": 0,
                "messages": [{"role": "user", "content": "Count from one to one hundred in words."}]}
        chunks, finish = [], None
        with httpx.Client(base_url=daemon.api, timeout=120) as client, client.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choice = json.loads(line[6:])["choices"][0]
                if not chunks:
                    daemon.proc.send_signal(signal.SIGTERM)
                chunks.append(choice["delta"].get("content") or "")
                finish = choice.get("finish_reason") or finish
        assert finish in ("length", "stop"), "the stream was cut instead of finished"
        assert len(chunks) > 2
        assert daemon.proc.wait(200) == 0, daemon.log_tail()
    assert wait_for_log(tmp_path / "state", "stopped")


def test_sighup_reloads_config_keeping_connections(tmp_path: Path, models_dir: Path) -> None:
    state = tmp_path / "state"
    daemon = DaemonProcess(state, {"models_dir": str(models_dir)})
    with daemon, httpx.Client(base_url=daemon.api, timeout=60) as client:
        assert client.get("/healthz").status_code == 200
        config = daemon.config_path.read_text()
        daemon.config_path.write_text(config + '\n[logging]\nlevel = "debug"\n')
        (state / "agents").mkdir(exist_ok=True)
        (state / "agents" / "chef.toml").write_text(CHEF)
        assert "chef" not in [a["name"] for a in daemon.admin("GET", "/agents")["agents"]]
        daemon.proc.send_signal(signal.SIGHUP)
        assert wait_for_log(state, "config reloaded")["source"] == str(daemon.config_path)
        assert "chef" in [a["name"] for a in daemon.admin("GET", "/agents")["agents"]], "agents are re-read"
        assert client.get("/healthz").status_code == 200, "the kept-alive connection still serves"
        daemon.config_path.write_text(config + "\n[api]\nport = 99999\n")
        daemon.proc.send_signal(signal.SIGHUP)
        failed = wait_for_log(state, "reload failed, keeping the running config")
        assert "api.port" in failed["error"]
        assert client.get("/healthz").status_code == 200
        assert daemon.admin("GET", "/status")["ready"]
        assert daemon.stop() == 0
    for path in (state / "aibox.db", state / "logs" / "aibox.log"):
        assert path.stat().st_mode & 0o007 == 0, f"{path} is open to other users"
