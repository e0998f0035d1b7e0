"""Logging for a daemon: one JSON object per line on stderr (the journal keeps it),
with every known secret redacted on the way out, whatever path it took into the message.

Under systemd each stderr line starts with a `<N>` syslog priority, which journald strips
and files as the entry's PRIORITY, so `journalctl -p warning` works. The same JSON lines
also go to `aibox.log` in the logs dir (rotated), which `aibox logs [-f]` reads.
May import: aibox.secrets.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
import time
from collections import deque
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aibox.secrets import redact

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
# uvicorn's copy of its message with terminal colours: never wanted in a log file
_DROPPED = {"color_message"}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in _DROPPED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # Redact each value before encoding too: JSON escaping could otherwise split a token
        # that contains a quote or backslash so that the final pass no longer sees it.
        return encodable(redact(json.dumps(_redact_values(entry), default=lambda o: redact(str(o)), ensure_ascii=False)))


def encodable(line: str) -> str:
    """The line without terminal escapes and with any lone surrogate (text a client sent
    that is not valid Unicode) spelled as `\\udXXX`, so that writing it never fails."""
    line = _ANSI.sub("", line)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return line.encode("utf-8", "backslashreplace").decode("utf-8")
    return line


def _redact_values(value: Any) -> Any:
    if isinstance(value, str):
        return _ANSI.sub("", redact(value))
    if isinstance(value, dict):
        return {k: _redact_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_redact_values(v) for v in value]
    return value


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return encodable(redact(super().format(record)))


_SYSLOG_PRIORITY = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}
LOG_FILE = "aibox.log"


class JournalPrefix(logging.Formatter):
    """Prefixes a line with `<N>` so journald records its level (SyslogLevelPrefix=)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_SYSLOG_PRIORITY.get(record.levelname, 6)}>{self.inner.format(record)}"


def stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM to the device:inode of the stream it connected."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str = "info", fmt: str = "json", logs_dir: Path | None = None) -> None:
    """Routes all loggers (ours and the libraries') through one redacting handler, plus a
    rotated JSON file in `logs_dir` when given."""
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalPrefix(formatter) if stderr_is_journal() else formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    if logs_dir is not None:
        logs_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            logs_dir / LOG_FILE, maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8")
        file_handler.setFormatter(JsonFormatter())
        os.chmod(logs_dir / LOG_FILE, 0o640)
        root.addHandler(file_handler)
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access", "apscheduler.executors.default"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def read_log(path: Path, lines: int = 50, follow: bool = False, poll_s: float = 0.5) -> Iterator[str]:
    """The last `lines` lines of the log, then (with `follow`) each new line as it is written,
    across rotation: when the file is replaced or truncated, reading starts again at its top."""
    if not path.exists() and not follow:
        return
    while not path.exists():
        time.sleep(poll_s)
    f = path.open("r", encoding="utf-8", errors="replace")
    try:
        yield from (line.rstrip("\n") for line in deque(f, maxlen=lines) if lines > 0)
        if not follow:
            return
        inode = os.fstat(f.fileno()).st_ino
        pending = ""
        while True:
            chunk = f.readline()
            if chunk:
                pending += chunk
                if pending.endswith("\n"):
                    yield pending.rstrip("\n")
                    pending = ""
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_ino != inode or st.st_size < f.tell()):
                f.close()
                f = path.open("r", encoding="utf-8", errors="replace")
                inode = os.fstat(f.fileno()).st_ino
                continue
            time.sleep(poll_s)
    finally:
        f.close()
