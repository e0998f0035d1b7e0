"""sd_notify spoken by the daemon itself, so `Type=notify` works without libsystemd.

systemd hands the service a datagram socket in NOTIFY_SOCKET (a path, or an abstract
name written with a leading '@'). The daemon says READY=1 once models and connectors are
up, STATUS= lines as it goes, STOPPING=1 on shutdown, and WATCHDOG=1 from its event loop
at half of WATCHDOG_USEC: a loop that hangs stops the pings and systemd restarts the box.
Outside systemd there is no socket and every call is a cheap no-op.
May import: nothing of the box.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    """One connection to the service manager's notify socket (or none)."""

    def __init__(self, address: str | None = None, watchdog_usec: str | None = None, watchdog_pid: str | None = None) -> None:
        env = os.environ
        self.address = address if address is not None else env.get("NOTIFY_SOCKET", "")
        usec = watchdog_usec if watchdog_usec is not None else env.get("WATCHDOG_USEC", "")
        pid = watchdog_pid if watchdog_pid is not None else env.get("WATCHDOG_PID", "")
        self.watchdog_s = _watchdog_seconds(usec, pid)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        """Sends one datagram of KEY=VALUE lines; returns False (and logs once) when it cannot."""
        if not self.address:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode("utf-8"), target)
        except OSError as e:
            log.warning("sd_notify to %s failed: %s", self.address, e.strerror or e)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        lines = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            lines.append(f"STATUS={_one_line(status)}")
        return self.send(*lines)

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def reloading(self) -> bool:
        """Sent on SIGHUP; the next `ready()` ends the reload."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def extend_start(self, seconds: float, status: str) -> bool:
        """Asks systemd for `seconds` more start-up time (EXTEND_TIMEOUT_USEC) while a slow
        step, such as pulling the default model, is still making progress."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}", f"STATUS={_one_line(status)}")

    def stopping(self, status: str = "") -> bool:
        lines = ["STOPPING=1"]
        if status:
            lines.append(f"STATUS={_one_line(status)}")
        return self.send(*lines)

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    async def watchdog_loop(self) -> None:
        """Pings at half the watchdog interval for as long as the event loop runs it;
        runs forever as a task the daemon cancels on stop. Returns at once without a watchdog."""
        if not self.address or not self.watchdog_s:
            return
        interval = self.watchdog_s / 2
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_seconds(usec: str, pid: str) -> float:
    """WATCHDOG_USEC applies to us only if WATCHDOG_PID is unset or names this process."""
    if pid and pid.strip() != str(os.getpid()):
        return 0.0
    try:
        value = int(usec)
    except ValueError:
        return 0.0
    return value / 1_000_000 if value > 0 else 0.0


def _one_line(text: str) -> str:
    return " ".join(text.split())
