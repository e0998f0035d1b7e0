"""Slack's HTTP Events API does not redeliver an event it got a 200 for, so the 200 must
wait until the message is in the inbox. A real `aibox run` (with the real SmolLM2
model) in HTTP mode gets a signed DM while its database is briefly locked by another
writer, is killed with SIGKILL the moment the 200 arrives, and is started again: the
message must be in the inbox and be answered.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from aibox.bench.platforms.slack import FakeSlack, post_signed
from aibox.process import DaemonProcess

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

OWNER = "U0000OWNR"
LOCKED_S = 1.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inbox(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM agent_inbox GROUP BY status").fetchall())


def _lock_for_a_while(db: Path, locked: threading.Event) -> None:
    """Another writer holds the database's write lock for `LOCKED_S` (a backup, a migration)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    locked.set()
    time.sleep(LOCKED_S)
    conn.execute("ROLLBACK")
    conn.close()


async def test_the_ack_waits_for_the_inbox_so_a_kill_after_it_loses_nothing(tmp_path: Path, models_dir: Path) -> None:
    async with FakeSlack() as slack:
        port = _free_port()
        config = {
            "models_dir": str(models_dir),
            "runtime": {"max_tokens": 12},
            "connectors": {
                "slack": {
                    "mode": "http", "bot_token": slack.bot_token, "signing_secret": slack.signing_secret,
                    "api_base": slack.api_base, "events_port": port, "allow_from": [OWNER], "edit_interval_s": 0.2,
                },
            },
        }
        daemon = DaemonProcess(tmp_path / "box", config)
        db = tmp_path / "box" / "aibox.db"
        await asyncio.to_thread(daemon.start)
        try:
            locked = threading.Event()
            holder = threading.Thread(target=_lock_for_a_while, args=(db, locked))
            holder.start()
            await asyncio.to_thread(locked.wait)
            url = f"http://127.0.0.1:{port}/slack/events"
            status, _ = await post_signed(url, slack.event_body("D700", OWNER, "Say hi."), slack.signing_secret)
            await asyncio.to_thread(daemon.kill)
            await asyncio.to_thread(holder.join)
        finally:
            await asyncio.to_thread(daemon.kill)
        assert status == 200
        assert _inbox(db) == {"pending": 1}, "Slack had its 200, so the message must be in the inbox"

        await asyncio.to_thread(daemon.start)
        try:
            await slack.outbox.wait_for(lambda: _inbox(db) == {"answered": 1}, timeout=120)
            recovered = (await asyncio.to_thread(daemon.admin, "GET", "/status"))["agents"]["recovered_at_start"]
        finally:
            assert await asyncio.to_thread(daemon.stop) == 0, daemon.log_tail()
    assert recovered == 1
    [reply] = slack.outbox.in_chat("D700")
    assert reply.text.strip()
