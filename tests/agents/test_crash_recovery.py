"""Nothing is lost: a real `aibox run` answering with the real SmolLM2 model is killed
with SIGKILL while it generates, restarted on the same state dir, and every one of 20
messages ends up with exactly one reply.

Messages come in through the real Telegram connector (python-telegram-bot) against the
local Telegram Bot API server in aibox/bench/platforms/telegram.py, because that is the path a
real message takes: long poll, the gateway's decision, the inbox, the reply streamer
with its edits. The fake server confirms updates as a real one does (a confirmed
update is never delivered again), so after the kill only the inbox can bring the
unanswered messages back. The model's words are not checked, only the replies; the
chats talk to a terse user agent (no tools, short memory) so that 20 real answers fit
in a test on a busy 2-core machine.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from aibox.process import DaemonProcess
from aibox.bench.platforms.telegram import TelegramServer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CHATS = (5101, 5102)
PER_CHAT = 10
TERSE = """
name = "terse"
description = "One-sentence answers."
system_prompt = "Answer in one short sentence."

[memory]
recent_turns = 2
summarise = false
"""


def _config(telegram: TelegramServer, models_dir: Path) -> dict:
    return {
        "models_dir": str(models_dir),
        "runtime": {"max_tokens": 16},
        "agents": {"default_agent": "terse"},
        "connectors": {
            "telegram": {
                "token": telegram.token, "base_url": telegram.base_url, "base_file_url": telegram.base_file_url,
                "poll_timeout_s": 1, "allow_from": [str(c) for c in CHATS], "edit_interval_s": 0.2,
                "rate_limit_per_minute": 600, "rate_limit_burst": 50,
            },
        },
    }


def _inbox(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM agent_inbox GROUP BY status").fetchall())


async def _wait_generating(daemon: DaemonProcess, timeout: float = 120) -> None:
    """Until the model is working on an answer (its queue is not empty)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = await asyncio.to_thread(daemon.admin, "GET", "/status", True)
        if status and any(m["queue_depth"] > 0 for m in status["models"]):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the model never started generating")


async def test_sigkill_mid_generation_then_restart_answers_every_message_exactly_once(tmp_path: Path, models_dir: Path) -> None:
    async with TelegramServer() as telegram:
        daemon = DaemonProcess(tmp_path / "box", _config(telegram, models_dir))
        db = tmp_path / "box" / "aibox.db"
        (tmp_path / "box" / "agents").mkdir()
        (tmp_path / "box" / "agents" / "terse.toml").write_text(TERSE)
        await asyncio.to_thread(daemon.start)
        asked: dict[tuple[str, str], str] = {}
        try:
            for i in range(PER_CHAT):
                for chat in CHATS:
                    text = f"Question {i} from chat {chat}: name a colour."
                    asked[(str(chat), str(telegram.user_message(chat, text)))] = text
            # Let a few answers finish, then kill the box while the model is busy.
            await telegram.outbox.wait_for(lambda: len(telegram.outbox.all()) >= 5, timeout=600)
            await _wait_generating(daemon)
            await asyncio.to_thread(daemon.kill)
        finally:
            await asyncio.to_thread(daemon.kill)
        killed_with = _inbox(db)
        assert killed_with.get("pending", 0) > 0, f"the kill came too late to test anything: {killed_with}"
        assert sum(killed_with.values()) == len(asked), "every message must be in the store before it is acknowledged"
        assert telegram.undelivered == 0, "the platform had been told every message arrived"

        await asyncio.to_thread(daemon.start)
        try:
            await telegram.outbox.wait_for(lambda: _inbox(db).get("answered", 0) == len(asked), timeout=600)
            await asyncio.sleep(3)  # any duplicate would be sent by now: edits are paced at 0.2 s
            status = await asyncio.to_thread(daemon.admin, "GET", "/status")
        finally:
            assert await asyncio.to_thread(daemon.stop) == 0, daemon.log_tail()

    assert status["agents"]["recovered_at_start"] == killed_with["pending"]
    replies: dict[tuple[str, str], list] = {key: [] for key in asked}
    for m in telegram.outbox.all():
        assert (m.chat_id, m.reply_to) in replies, f"a message that answers nothing: {m}"
        replies[(m.chat_id, m.reply_to)].append(m)
    counts = {key: len(found) for key, found in replies.items()}
    assert all(n == 1 for n in counts.values()), f"replies per message: {counts}"
    for (chat, message_id), [reply] in replies.items():
        assert reply.text.strip(), f"empty reply to {chat}/{message_id}"
        assert "cut short" not in reply.text, reply.text
