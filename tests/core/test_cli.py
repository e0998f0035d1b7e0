"""The `aibox` command as a user runs it: a real subprocess, real exit codes, one-line
errors on stderr, JSON on stdout."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aibox.process import DaemonProcess


def aibox(*args: str, config=None, input: str | None = None, env=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "aibox"]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, input=input, timeout=300, env=env)


@pytest.fixture
def config_file(tmp_path, models_dir):
    path = tmp_path / "aibox.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\nmodels_dir = "{models_dir}"\n')
    return path


def test_help_everywhere():
    for args in ([], ["models"], ["models", "pull"], ["bench"], ["run"], ["chat"], ["status"]):
        r = aibox(*args, "--help")
        assert r.returncode == 0, (args, r.stderr)
        assert "Usage" in r.stdout


def test_models_list_and_info_json(config_file):
    r = aibox("models", "list", "--json", config=config_file)
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["smollm2-135m-instruct"]["present"] is True
    info = json.loads(aibox("models", "info", "qwen2.5-coder-1.5b-instruct", "--json", config=config_file).stdout)
    assert info["sha256"] == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert info["sources"][0]["url"].startswith("https://huggingface.co/Qwen/")


def test_verify_ok_and_unknown_model_exit_codes(config_file):
    r = aibox("models", "verify", "smollm2-135m-instruct", "--json", config=config_file)
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True
    r = aibox("models", "info", "gpt-17", config=config_file)
    assert r.returncode == 66
    assert r.stderr.startswith("aibox: error: unknown model 'gpt-17'")
    assert len(r.stderr.strip().splitlines()) == 1


def test_broken_config_exits_78_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[api]\nport = 'x'\n")
    r = aibox("models", "list", config=bad)
    assert r.returncode == 78
    assert "key 'api.port'" in r.stderr and "Traceback" not in r.stderr
    r = aibox("run", config=bad)
    assert r.returncode == 78


def test_status_without_daemon_exits_69(config_file):
    r = aibox("status", config=config_file)
    assert r.returncode == 69
    assert "not running" in r.stderr


def test_run_refuses_non_loopback_without_key(config_file):
    r = aibox("run", "--host", "0.0.0.0", "--no-pull", config=config_file)
    assert r.returncode == 78
    assert "api.api_key" in r.stderr


def test_chat_and_status_against_running_daemon(tmp_path, models_dir):
    with DaemonProcess(tmp_path / "box", {"models_dir": str(models_dir)}) as proc:
        r = aibox("chat", "--temperature", "0", "--max-tokens", "20", "What is 2+2?", config=proc.config_path)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip()
        r = aibox("chat", "--temperature", "0", "--max-tokens", "10", "-", config=proc.config_path, input="Say hi")
        assert r.returncode == 0 and r.stdout.strip()
        status = json.loads(aibox("status", "--json", config=proc.config_path).stdout)
        assert status["ready"] and status["models"][0]["name"] == "smollm2-135m-instruct"
        r = aibox("chat", "-m", "nope", "hi", config=proc.config_path)
        assert r.returncode == 1 and "unknown model 'nope'" in r.stderr
        assert proc.stop() == 0
