"""sd_notify against a real datagram socket, first from `Notifier` alone, then from a real
`aibox run` process that gets the socket through NOTIFY_SOCKET exactly as under systemd."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aibox.notify import Notifier
from aibox.process import DaemonProcess


class NotifySocket:
    """The service manager's end: a bound datagram socket that collects messages."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.messages: list[dict[str, str]] = []

    def wait_for(self, key: str, value: str | None = None, timeout: float = 60.0) -> dict[str, str]:
        """Reads messages until one carries key (=value); returns it."""
        deadline = time.monotonic() + timeout
        for message in self.messages:
            if key in message and (value is None or message[key] == value):
                self.messages.remove(message)
                return message
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            message = dict(line.split("=", 1) for line in data.decode().splitlines())
            if key in message and (value is None or message[key] == value):
                return message
            self.messages.append(message)
        raise AssertionError(f"no {key}={value} within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_path(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(str(tmp_path / "notify.sock"))
    yield s
    s.close()


@pytest.fixture
def notify_abstract() -> Iterator[NotifySocket]:
    s = NotifySocket(f"@aibox-test-{os.getpid()}-{time.monotonic_ns()}")
    yield s
    s.close()


def test_path_socket_receives_each_state(notify_path: NotifySocket) -> None:
    n = Notifier(notify_path.address, "", "")
    assert n.ready("up with 1 model")
    assert notify_path.wait_for("READY") == {"READY": "1", "MAINPID": str(os.getpid()), "STATUS": "up with 1 model"}
    n.status("loading\nmodel  x")
    assert notify_path.wait_for("STATUS")["STATUS"] == "loading model x"
    n.watchdog()
    notify_path.wait_for("WATCHDOG", "1")
    n.reloading()
    assert int(notify_path.wait_for("RELOADING", "1")["MONOTONIC_USEC"]) > 0
    n.stopping("bye")
    assert notify_path.wait_for("STOPPING", "1")["STATUS"] == "bye"
    n.close()


def test_abstract_namespace_socket(notify_abstract: NotifySocket) -> None:
    n = Notifier(notify_abstract.address, "", "")
    assert n.ready()
    assert notify_abstract.wait_for("READY")["READY"] == "1"


def test_without_socket_everything_is_a_no_op() -> None:
    n = Notifier("", "", "")
    assert not n.enabled and not n.ready() and not n.watchdog()


def test_missing_socket_is_reported_not_raised(tmp_path: Path) -> None:
    assert Notifier(str(tmp_path / "gone.sock"), "", "").ready() is False


def test_watchdog_interval_applies_only_to_its_pid() -> None:
    assert Notifier("x", "30000000", "").watchdog_s == 30.0
    assert Notifier("x", "30000000", str(os.getpid())).watchdog_s == 30.0
    assert Notifier("x", "30000000", str(os.getpid() + 1)).watchdog_s == 0.0
    assert Notifier("x", "junk", "").watchdog_s == 0.0


async def test_watchdog_loop_pings_at_half_the_interval(notify_path: NotifySocket) -> None:
    import asyncio

    n = Notifier(notify_path.address, "400000", "")
    task = asyncio.create_task(n.watchdog_loop())
    await asyncio.sleep(0.5)
    task.cancel()
    notify_path.sock.settimeout(0.1)
    pings = 0
    while True:
        try:
            pings += notify_path.sock.recv(64) == b"WATCHDOG=1"
        except TimeoutError:
            break
    assert pings >= 2


def test_daemon_speaks_sd_notify(tmp_path: Path, models_dir: Path, notify_abstract: NotifySocket) -> None:
    """READY=1 once serving, WATCHDOG=1 from the running loop, RELOADING=1/READY=1 on SIGHUP,
    STOPPING=1 and exit 0 on SIGTERM; the admin socket is 0660 while it runs."""
    env = {"NOTIFY_SOCKET": notify_abstract.address, "WATCHDOG_USEC": "1000000"}
    daemon = DaemonProcess(tmp_path / "state", {"models_dir": str(models_dir)}, env=env)
    with daemon:
        ready = notify_abstract.wait_for("READY", "1")
        assert ready["MAINPID"] == str(daemon.proc.pid)
        assert ready["STATUS"].startswith("ready: API http://127.0.0.1:")
        for _ in range(3):
            notify_abstract.wait_for("WATCHDOG", "1", timeout=5)
        mode = daemon.admin_socket.stat().st_mode & 0o777
        assert mode == 0o660, oct(mode)
        daemon.proc.send_signal(signal.SIGHUP)
        notify_abstract.wait_for("RELOADING", "1", timeout=30)
        assert notify_abstract.wait_for("READY", "1", timeout=30)["STATUS"].startswith("ready")
        assert daemon.admin("GET", "/status")["ready"], "SIGHUP must not stop the daemon"
        assert daemon.stop() == 0, daemon.log_tail()
    assert notify_abstract.wait_for("STOPPING", "1", timeout=5)
    assert not daemon.admin_socket.exists()


async def test_a_blocked_event_loop_stops_the_pings(notify_path: NotifySocket) -> None:
    """The pings come from the loop itself, so a loop stuck in blocking code goes quiet and
    systemd's watchdog fires: 1 s of blocking at a 0.1 s ping interval yields one ping, not ten."""
    import asyncio

    n = Notifier(notify_path.address, "200000", "")
    task = asyncio.create_task(n.watchdog_loop())
    await asyncio.sleep(0)
    time.sleep(1.0)
    task.cancel()
    notify_path.sock.settimeout(0.05)
    pings = 0
    while True:
        try:
            pings += notify_path.sock.recv(64) == b"WATCHDOG=1"
        except TimeoutError:
            break
    assert pings == 1


def test_pulling_the_default_model_extends_the_start_timeout(tmp_path: Path, smollm2_path: Path, notify_abstract: NotifySocket) -> None:
    """A first start that must pull its model asks systemd for more time as the pull
    progresses, instead of being killed by TimeoutStartSec=. The card's only source is
    a local path here, so the pull is a real one without the network."""
    state = tmp_path / "state"
    (state / "cards").mkdir(parents=True)
    shipped = (Path(__file__).parents[2] / "models" / "cards" / "smollm2-135m-instruct.toml").read_text()
    card = shipped.split("[[sources]]")[0] + f'[[sources]]\ntype = "path"\npath = "{smollm2_path}"\n'
    (state / "cards" / "smollm2-135m-instruct.toml").write_text(card)
    daemon = DaemonProcess(state, {"models_dir": str(tmp_path / "models")}, env={"NOTIFY_SOCKET": notify_abstract.address})
    with daemon:
        extend = notify_abstract.wait_for("EXTEND_TIMEOUT_USEC")
        assert extend["EXTEND_TIMEOUT_USEC"] == "60000000"
        assert extend["STATUS"].startswith("pulling smollm2-135m-instruct: ")
        notify_abstract.wait_for("READY", "1")
        assert (tmp_path / "models" / smollm2_path.name).stat().st_size == smollm2_path.stat().st_size
        assert daemon.stop() == 0
