"""Long answers in a chat, end to end: a real `aibox run` with the real models and the
real Telegram connector against the local Bot API server (aibox/bench/platforms/telegram.py).
A request the router predicts long is acknowledged at once and runs in the background on
the long model with a status message edited as it grows, and /cancel stops it (the
finished-answer path is in test_router_jobs.py; here answers are long so that the
cancel always lands mid-answer)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aibox.process import DaemonProcess
from aibox.bench.platforms.telegram import TelegramServer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CHAT = 6101
LONG_ASK = "Write a 500-word story about a dragon who learns to cook."


def _config(telegram: TelegramServer, models_dir: Path, max_tokens: int) -> dict:
    return {
        "models_dir": str(models_dir),
        "runtime": {"max_tokens": max_tokens, "threads": 1},
        "connectors": {
            "telegram": {
                "token": telegram.token, "base_url": telegram.base_url, "base_file_url": telegram.base_file_url,
                "poll_timeout_s": 1, "allow_from": [str(CHAT)], "edit_interval_s": 0.2,
                "rate_limit_per_minute": 600, "rate_limit_burst": 50,
            },
        },
    }


def _texts(telegram: TelegramServer) -> list[str]:
    return [m.text for m in telegram.outbox.in_chat(str(CHAT))]


async def test_long_answer_runs_in_the_background_and_cancel_stops_it(tmp_path: Path, models_dir: Path, qwen15_path: Path) -> None:
    async with TelegramServer() as telegram:
        daemon = DaemonProcess(tmp_path / "box", _config(telegram, models_dir, max_tokens=400))
        await asyncio.to_thread(daemon.start)
        try:
            asked = telegram.user_message(CHAT, LONG_ASK)
            try:
                await telegram.outbox.wait_for(lambda: any(t.startswith(("Writing…", "Done:")) for t in _texts(telegram)), timeout=600)
            except TimeoutError:
                pytest.fail(f"no progress in the chat: {_texts(telegram)}\n{daemon.log_tail()}")
            assert not any(t.startswith("Done:") for t in _texts(telegram)), f"the answer was too short to cancel: {_texts(telegram)}"
            messages = telegram.outbox.in_chat(str(CHAT))
            ack = next(m for m in messages if m.reply_to == str(asked))
            assert ack.text.startswith("On it: that is a long answer")
            status = next(m for m in messages if m.text.startswith("Writing…"))
            assert status.versions[0].startswith("Writing a long answer with qwen2.5-coder-1.5b-instruct")
            telegram.user_message(CHAT, "/cancel")
            await telegram.outbox.wait_for(lambda: "Stopped the long answer." in _texts(telegram), timeout=300)
            await telegram.outbox.wait_for(lambda: status.text.startswith("Cancelled after"), timeout=60)
            await asyncio.sleep(2)
            assert len(telegram.outbox.in_chat(str(CHAT))) == 3, "no answer is posted after /cancel"
        finally:
            assert await asyncio.to_thread(daemon.stop) == 0, daemon.log_tail()
