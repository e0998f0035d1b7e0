"""Scheduled jobs made from chat, end to end: a real `aibox run` (real SmolLM2 model),
the real Telegram connector against the local Bot API server, and the `aibox agents` /
`aibox jobs` CLI over the admin socket. A reminder is created in plain language and
delivered; a weekly job survives a restart and is cancelled from chat; agents are
managed from the CLI. The test writes the chat transcript to transcript.txt."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aibox.process import DaemonProcess
from aibox.bench.platforms.telegram import TelegramServer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

OWNER = 4242


async def aibox(*args: str, config: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "aibox", "--config", str(config), *args]
    return await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=120)


class Chat:
    """The owner's side of the Telegram chat, with a transcript."""

    def __init__(self, telegram: TelegramServer) -> None:
        self.telegram = telegram
        self.lines: list[str] = []

    async def say(self, text: str, timeout: float = 120) -> str:
        seen = len(self.telegram.outbox.in_chat(str(OWNER)))
        self.lines.append(f"owner> {text}")
        asked = str(self.telegram.user_message(OWNER, text))
        await self.telegram.outbox.wait_for(lambda: any(m.reply_to == asked for m in self.telegram.outbox.in_chat(str(OWNER))), timeout)
        await asyncio.sleep(0.5)  # the reply's final edit
        [reply] = [m for m in self.telegram.outbox.in_chat(str(OWNER))[seen:] if m.reply_to == asked]
        self.lines.append(f"box>   {reply.text}")
        return reply.text

    def unprompted(self) -> int:
        return sum(1 for m in self.telegram.outbox.in_chat(str(OWNER)) if m.reply_to is None)

    async def expect_new_unprompted(self, before: int, timeout: float) -> str:
        await self.telegram.outbox.wait_for(lambda: self.unprompted() > before, timeout)
        await asyncio.sleep(1.0)  # the answer's final edit
        text = [m for m in self.telegram.outbox.in_chat(str(OWNER)) if m.reply_to is None][before].text
        assert text.strip()
        self.lines.append(f"box>   {text}")
        return text

    async def expect_unprompted(self, pattern: str, timeout: float) -> str:
        def found() -> list:
            return [m for m in self.telegram.outbox.in_chat(str(OWNER)) if m.reply_to is None and re.search(pattern, m.text)]

        await self.telegram.outbox.wait_for(lambda: bool(found()), timeout)
        text = found()[0].text
        self.lines.append(f"box>   {text}")
        return text


async def test_a_reminder_from_chat_is_delivered_and_jobs_survive_a_restart(tmp_path: Path, models_dir: Path) -> None:
    async with TelegramServer() as telegram:
        config = {
            "models_dir": str(models_dir),
            "runtime": {"max_tokens": 16},
            "agents": {"timezone": "Europe/Berlin"},
            "connectors": {"telegram": {
                "token": telegram.token, "base_url": telegram.base_url, "base_file_url": telegram.base_file_url,
                "poll_timeout_s": 1, "owner": str(OWNER), "edit_interval_s": 0.2,
            }},
        }
        daemon = DaemonProcess(tmp_path / "box", config)
        cfg = daemon.config_path
        chat = Chat(telegram)
        await asyncio.to_thread(daemon.start)
        try:
            confirmed = await chat.say("remind me in 5 seconds to check the oven")
            assert re.match(r"Job j[0-9a-f]{6}: I'll remind you to check the oven, once at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(Europe/Berlin\)\. Next: ", confirmed), confirmed
            reminder = await chat.expect_unprompted(r"Reminder: check the oven", timeout=60)
            assert reminder == "⏰ Reminder: check the oven"
            reminder_id = confirmed.split(":")[0].removeprefix("Job ")
            for _ in range(20):  # the run is recorded just after the platform took the message
                history = json.loads((await aibox("jobs", "runs", reminder_id, "--json", config=cfg)).stdout)["runs"]
                if history and history[0]["status"] != "running":
                    break
                await asyncio.sleep(0.5)
            assert [(r["status"], r["missed"]) for r in history] == [("ok", 0)]

            assert (await chat.say("/remember my sister's birthday is on 12 March")).startswith("Noted (")
            before = chat.unprompted()
            asked = await chat.say("in 5 seconds summarise my notes")
            assert re.match(r"Job j[0-9a-f]{6}: I'll ask assistant: summarise my notes, once at ", asked), asked
            await chat.expect_new_unprompted(before, timeout=180)  # the agent's answer (SmolLM2's words are not checked)

            weekly = await chat.say("every Monday at 9 summarise my notes")
            job_id = re.match(r"Job (j[0-9a-f]{6}): I'll ask assistant: summarise my notes, every Monday at 09:00 \(Europe/Berlin\)\. Next: Mon ", weekly).group(1)
            assert job_id in await chat.say("/jobs")
            listed = json.loads((await aibox("jobs", "list", "--json", config=cfg)).stdout)["jobs"]
            by_id = {j["id"]: j for j in listed}
            assert set(by_id) == {job_id, "briefing-0"}, "the shipped briefing agent runs daily for the owner"
            assert (by_id["briefing-0"]["chat_id"], by_id["briefing-0"]["schedule"]) == (str(OWNER), "every day at 07:00 (Europe/Berlin)")
        finally:
            assert await asyncio.to_thread(daemon.stop) == 0, daemon.log_tail()

        await asyncio.to_thread(daemon.start)
        try:
            status = await aibox("status", config=cfg)
            assert status.returncode == 0 and "agents: assistant, briefing, coder" in status.stdout, status.stdout
            assert "inbox: " in status.stdout and "answered" in status.stdout
            relisted = json.loads((await aibox("jobs", "list", "--json", config=cfg)).stdout)["jobs"]
            assert {j["id"]: j for j in relisted} == by_id, "the jobs and their next runs survive the restart"
            assert await chat.say(f"/cancel {job_id}") == f"Cancelled job {job_id}."
            remaining = await chat.say("/jobs")
            assert job_id not in remaining and "briefing-0: Write today's briefing. (every day at 07:00 (Europe/Berlin); next " in remaining
            gone = await aibox("jobs", "cancel", job_id, config=cfg)
            assert gone.returncode == 1 and f"no active job '{job_id}'" in gone.stderr

            agents = json.loads((await aibox("agents", "list", "--json", config=cfg)).stdout)
            assert {a["name"] for a in agents["agents"]} >= {"assistant", "coder", "briefing"}
            bad = tmp_path / "bad.toml"
            bad.write_text('name = "bad"\nsystem_prompt = "x"\ntools = ["shell"]\n')
            refused = await aibox("agents", "add", str(bad), config=cfg)
            assert refused.returncode == 65 and "bad.toml: key 'tools': unknown tool 'shell'" in refused.stderr
            good = tmp_path / "pirate.toml"
            good.write_text('name = "pirate"\ndescription = "Talks like a pirate."\nsystem_prompt = "Talk like a pirate."\n')
            assert (await aibox("agents", "add", str(good), config=cfg)).returncode == 0
            assert (await aibox("agents", "disable", "coder", config=cfg)).returncode == 0
            assert "coder is disabled" in await chat.say("/use coder")
            assert (await chat.say("/use pirate")).startswith("Now talking to pirate")
            assert "→ pirate" in await chat.say("/agents")
            assert (await chat.say("Ahoy, who are you?")).strip()
            shown = json.loads((await aibox("agents", "show", "pirate", "--json", config=cfg)).stdout)
            assert shown["source"] == "user" and "Talk like a pirate." in shown["file"]
            assert (await aibox("agents", "rm", "pirate", config=cfg)).returncode == 0
            shipped = await aibox("agents", "rm", "assistant", config=cfg)
            assert shipped.returncode == 1 and "shipped agent" in shipped.stderr
        finally:
            assert await asyncio.to_thread(daemon.stop) == 0, daemon.log_tail()
    (tmp_path / "transcript.txt").write_text("\n".join(chat.lines) + "\n")
    print("\n".join(chat.lines))
