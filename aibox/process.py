"""A daemon in a child process, as systemd would run it: used by the benchmarks and the
tests that need a real `aibox run` (signals, sockets, crash and restart).
May import: nothing of the box.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx


class DaemonProcess:
    """Writes a config into `state_dir`, starts `aibox run` on it, waits until ready."""

    def __init__(self, state_dir: Path, config: dict[str, Any] | str, env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.config_path = state_dir / "aibox.toml"
        state_dir.mkdir(parents=True, exist_ok=True)
        text = config if isinstance(config, str) else _to_toml({"state_dir": str(state_dir)} | config)
        self.config_path.write_text(text)
        self.config_path.chmod(0o600)
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = state_dir / "daemon.log"
        self.api: str | None = None

    @property
    def admin_socket(self) -> Path:
        data = tomllib.loads(self.config_path.read_text())
        return Path(data.get("state_dir", self.state_dir)) / "admin.sock"

    def start(self, timeout: float = 120.0, extra_args: tuple[str, ...] = ()) -> "DaemonProcess":
        env = os.environ | {"PYTHONUNBUFFERED": "1"} | self.env
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aibox", "--config", str(self.config_path), "run", "--port", "0", *extra_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.log_tail()}")
            status = self.admin("GET", "/status", quiet=True)
            if status and status.get("ready"):
                self.api = status["api"]
                return self
            time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"daemon not ready after {timeout:.0f} s: {self.log_tail()}")

    def admin(self, method: str, path: str, quiet: bool = False, **kwargs: Any) -> Any:
        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.admin_socket)), base_url="http://aibox", timeout=60) as c:
                r = c.request(method, path, **kwargs)
                r.raise_for_status()
                return r.json()
        except (httpx.TransportError, httpx.HTTPStatusError):
            if quiet:
                return None
            raise

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as systemd stops it; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self) -> "DaemonProcess":
        return self.start() if self.proc is None else self

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM when the process that started it dies, so a killed
    benchmark or test run never leaves a daemon behind."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for configs: scalars, lists of scalars and nested tables."""
    lines, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables:
        name = f"{prefix}{key}"
        out += f"\n[{name}]\n" + _to_toml(value, prefix=f"{name}.")
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
