"""`aibox bench pipeline` as a user runs it: a real subprocess, a fake platform in a
process of its own, every message answered once; the figures themselves are not checked
(speed is for the benchmark to report, not for tests to assert)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_pipeline_answers_every_message_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    cmd = [sys.executable, "-m", "aibox", "bench", "pipeline", "-p", "telegram", "-p", "whatsapp",
           "--messages", "20", "--chats", "4", "--think-ms", "0", "--json", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert [x["platform"] for x in data["results"]] == ["telegram", "whatsapp"]
    for result in data["results"]:
        assert result["errors"] == 0 and result["messages"] == 20, result
        assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert "p50 ms" in r.stdout and data["machine"]["cores"] >= 1
