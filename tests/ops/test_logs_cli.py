"""`aibox logs [-f]` reads the daemon's log file, and stderr under systemd carries the
syslog priority prefix journald files entries by."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from aibox.logs import LOG_FILE


def box(tmp_path: Path) -> tuple[Path, Path]:
    logs = tmp_path / "logs"
    logs.mkdir()
    cfg = tmp_path / "aibox.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n[logging]\ndir = "{logs}"\n')
    cfg.chmod(0o600)
    return cfg, logs / LOG_FILE


def entry(i: int, level: str = "info") -> str:
    return json.dumps({"ts": f"2026-11-29T10:00:{i:02d}.000+00:00", "level": level, "logger": "aibox.daemon", "msg": f"line {i}", "n": i})


def test_last_lines_pretty_and_raw(tmp_path: Path) -> None:
    cfg, log = box(tmp_path)
    log.write_text("".join(entry(i) + "\n" for i in range(10)))
    base = [sys.executable, "-m", "aibox", "--config", str(cfg), "logs"]
    pretty = subprocess.run([*base, "-n", "2"], capture_output=True, text=True, env=os.environ | {"COLUMNS": "200"})
    assert pretty.returncode == 0
    assert pretty.stdout.splitlines() == ["2026-11-29 10:00:08 info    aibox.daemon: line 8  n=8",
                                          "2026-11-29 10:00:09 info    aibox.daemon: line 9  n=9"]
    raw = subprocess.run([*base, "-n", "3", "--json"], capture_output=True, text=True)
    assert [json.loads(line)["n"] for line in raw.stdout.splitlines()] == [7, 8, 9]


def test_missing_log_is_a_one_line_error(tmp_path: Path) -> None:
    cfg, log = box(tmp_path)
    r = subprocess.run([sys.executable, "-m", "aibox", "--config", str(cfg), "logs"], capture_output=True, text=True)
    assert r.returncode == 66
    assert r.stderr.startswith(f"aibox: error: no log at {log} yet") and len(r.stderr.splitlines()) == 1


def test_follow_prints_new_lines_across_rotation(tmp_path: Path) -> None:
    cfg, log = box(tmp_path)
    log.write_text(entry(0) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "aibox", "--config", str(cfg), "logs", "-f", "--json", "-n", "1"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(proc.stdout.readline())["n"] == 0
        with log.open("a") as f:
            f.write(entry(1) + "\n")
        assert json.loads(proc.stdout.readline())["n"] == 1
        os.replace(log, log.with_name(LOG_FILE + ".1"))
        log.write_text(entry(2) + "\n")
        assert json.loads(proc.stdout.readline())["n"] == 2
    finally:
        proc.terminate()
        proc.wait(10)


def test_stderr_under_journald_carries_the_priority(tmp_path: Path) -> None:
    """JOURNAL_STREAM names the stream systemd connected; we make it name our file."""
    out = tmp_path / "stderr.txt"
    code = ("import logging; from aibox.logs import setup_logging; setup_logging('info', 'json');"
            "logging.getLogger('a').error('boom'); logging.getLogger('a').info('fine')")
    with out.open("w") as f:
        st = os.fstat(f.fileno())
        env = os.environ | {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        subprocess.run([sys.executable, "-c", code], stderr=f, env=env, check=True)
        subprocess.run([sys.executable, "-c", code], stderr=f, env=os.environ | {"JOURNAL_STREAM": "1:2"}, check=True)
    lines = out.read_text().splitlines()
    assert lines[0].startswith('<3>{"ts"') and json.loads(lines[0][3:])["msg"] == "boom"
    assert lines[1].startswith("<6>{")
    assert lines[2].startswith('{"ts"'), "another stream than the journal's gets plain JSON"
