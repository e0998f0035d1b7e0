"""Connectors inside a real `aibox run` process answering with the real SmolLM2 model:
pairing approved from the `aibox pairing` CLI over the admin socket, a streamed model
answer in Telegram, and a connector with a bad token reported in `aibox status` while
the other keeps working.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from aibox.process import DaemonProcess
from aibox.bench.platforms.telegram import TelegramServer
from aibox.bench.platforms.whatsapp import FakeWhatsApp

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def aibox(*args: str, config: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "aibox", "--config", str(config), *args]
    return await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=120)


async def test_pairing_from_the_cli_then_a_model_answer_and_a_failed_connector_in_status(
    tmp_path: Path, models_dir: Path
) -> None:
    async with TelegramServer() as telegram, FakeWhatsApp() as meta:
        config = {
            "models_dir": str(models_dir),
            "runtime": {"max_tokens": 24},
            "connectors": {
                "telegram": {
                    "token": telegram.token, "base_url": telegram.base_url,
                    "base_file_url": telegram.base_file_url, "poll_timeout_s": 2,
                },
                "whatsapp": {
                    "access_token": "EAAG-revoked-token", "app_secret": meta.app_secret, "verify_token": "v",
                    "phone_number_id": meta.phone_number_id, "graph_url": meta.graph_url, "listen_port": 0,
                },
            },
        }
        daemon = DaemonProcess(tmp_path / "box", config)
        await asyncio.to_thread(daemon.start)
        try:
            status = json.loads((await aibox("status", "--json", config=daemon.config_path)).stdout)
            assert status["connectors"]["telegram"]["state"] == "ok"
            assert status["connectors"]["whatsapp"]["state"] == "failed"
            assert "EAAG-revoked-token" not in json.dumps(status)
            shown = (await aibox("status", config=daemon.config_path)).stdout
            assert re.search(r"whatsapp\s.*failed", shown) and re.search(r"telegram\s.*ok", shown), shown

            telegram.user_message(31337, "hello box")
            await telegram.outbox.wait_for(lambda: len(telegram.outbox.in_chat("31337")) == 1, timeout=30)
            code = re.search(r"approve ([A-Z0-9]{8})", telegram.outbox.in_chat("31337")[0].text).group(1)

            listed = await aibox("pairing", "list", "--json", config=daemon.config_path)
            assert listed.returncode == 0, listed.stderr
            assert [p["code"] for p in json.loads(listed.stdout)["pending"]] == [code]
            wrong = await aibox("pairing", "approve", "ZZZZZZZZ", config=daemon.config_path)
            assert wrong.returncode == 1 and "no pending pairing code" in wrong.stderr
            approved = await aibox("pairing", "approve", code, config=daemon.config_path)
            assert approved.returncode == 0, approved.stderr
            assert "as owner" in approved.stdout
            await telegram.outbox.wait_for(lambda: len(telegram.outbox.in_chat("31337")) == 2, timeout=30)

            telegram.user_message(31337, "What is the capital of France?")
            await telegram.outbox.wait_for(lambda: len(telegram.outbox.in_chat("31337")) == 3, timeout=60)
            # The daemon logs the generation once the model has finished; the final edit
            # follows within one pacing interval. (The model's words are not checked: on a
            # shared 2-core machine a 135M model says something different every run.)
            db = tmp_path / "box" / "aibox.db"
            await telegram.outbox.wait_for(lambda: _generations(db, "telegram") == 1, timeout=120)
            await asyncio.sleep(2.5)
            answer = telegram.outbox.in_chat("31337")[2]
            assert answer.text.strip() and answer.reply_to is not None
            assert all(b.startswith(a.rstrip()) for a, b in zip(answer.versions, answer.versions[1:])), answer.versions
            assert "31337" in telegram.outbox.typing

            revoked = await aibox("pairing", "revoke", "telegram:31337", config=daemon.config_path)
            assert revoked.returncode == 0 and "telegram:31337" in revoked.stdout
        finally:
            assert await asyncio.to_thread(daemon.stop) == 0, daemon.log_tail()


def _generations(db: Path, source: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM generations WHERE source = ?", (source,)).fetchone()[0]
