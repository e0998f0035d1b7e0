"""Known tokens pushed through every path into the logs (message, arguments, exception
text, extra fields, library loggers, warnings, API error responses) come out as ***."""

from __future__ import annotations

import json
import logging
import signal
import warnings
from pathlib import Path

import httpx
import pytest

from aibox.logs import LOG_FILE, setup_logging
from aibox.process import DaemonProcess
from aibox.secrets import MASK, Secret

TOKEN = "tg-8843:AAF-known-test-token"
QUOTED = 'sl"ack\\tok-0451'


@pytest.fixture
def logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AIBOX_TEST_TG", TOKEN)
    (tmp_path / "slack").write_text(QUOTED + "\n")
    assert Secret("env:AIBOX_TEST_TG").get() == TOKEN
    assert Secret(f"file:{tmp_path / 'slack'}").get() == QUOTED
    setup_logging("debug", "json", tmp_path / "logs")
    logging.captureWarnings(True)
    yield tmp_path / "logs" / LOG_FILE
    logging.captureWarnings(False)
    setup_logging("info", "json")


def test_every_logging_path_is_redacted(logs: Path, capfd: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("aibox.test")
    log.info(f"message with {TOKEN} inline")
    log.info("argument %s and %r", TOKEN, QUOTED)
    log.warning("extra fields", extra={"token": TOKEN, "nested": {"k": [QUOTED]}})
    try:
        raise RuntimeError(f"connect failed for https://api.telegram.org/bot{TOKEN}/getMe")
    except RuntimeError:
        log.exception("exception text")
    logging.getLogger("httpx").warning("HTTP Request: POST https://api.telegram.org/bot%s/sendMessage", TOKEN)
    logging.getLogger("discord.gateway").error("identify with %s", QUOTED)
    warnings.warn(f"deprecated call with {TOKEN}", stacklevel=1)
    for handler in logging.getLogger().handlers:
        handler.flush()

    stderr = capfd.readouterr().err
    file_text = logs.read_text()
    for out in (stderr, file_text):
        assert TOKEN not in out and QUOTED not in out
        assert "8843:AAF" not in out and "ack\\\\tok" not in out and 'sl\\"ack' not in out
    entries = [json.loads(line) for line in file_text.splitlines()]
    assert len(entries) == 7
    assert entries[0]["msg"] == f"message with {MASK} inline"
    assert entries[2]["token"] == MASK
    assert "RuntimeError: connect failed for https://api.telegram.org/bot***/getMe" in entries[3]["exc"]
    assert entries[4]["logger"] == "httpx" and entries[5]["logger"] == "discord.gateway"
    assert entries[6]["logger"] == "py.warnings"


def test_text_format_is_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AIBOX_TEST_TG", TOKEN)
    Secret("env:AIBOX_TEST_TG").get()
    setup_logging("info", "text")
    try:
        raise ValueError(TOKEN)
    except ValueError:
        logging.getLogger("aibox.test").exception("failed with %s", TOKEN)
    err = capfd.readouterr().err
    setup_logging("info", "json")
    assert TOKEN not in err and "failed with ***" in err and "ValueError: ***" in err


def test_daemon_logs_and_error_responses_hide_the_api_key(tmp_path: Path, models_dir: Path) -> None:
    key = "sk-aibox-known-test-key-5521"
    daemon = DaemonProcess(tmp_path / "state", {"models_dir": str(models_dir), "logging": {"level": "debug"},
                                                "api": {"api_key": "env:AIBOX_TEST_API_KEY"}},
                           env={"AIBOX_TEST_API_KEY": key})
    bodies = []
    with daemon, httpx.Client(base_url=daemon.api, timeout=60) as client:
        auth = {"Authorization": f"Bearer {key}"}
        for body in ({"model": key, "messages": [{"role": "user", "content": "hi"}]},
                     {"model": "smollm2-135m-instruct", "messages": key},
                     {"model": "smollm2-135m-instruct", "messages": [{"role": key, "content": "x"}]}):
            r = client.post("/v1/chat/completions", json=body, headers=auth)
            assert 400 <= r.status_code < 500
            bodies.append(r.text)
        r = client.get("/v1/models", headers={"Authorization": f"Bearer {key}x"})
        assert r.status_code == 401
        bodies.append(r.text)
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(60) == 0
    for text in bodies:
        assert key not in text, text
    assert key not in daemon.log_path.read_text()
    assert key not in (tmp_path / "state" / "logs" / LOG_FILE).read_text()
