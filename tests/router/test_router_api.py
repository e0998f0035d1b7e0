"""The router inside a real `aibox run`: `"model": "auto"` in the OpenAI API, and an
agent whose model cannot load handing its chat turn to the next candidate (real
Telegram connector against the local Bot API server, real SmolLM2 answering)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from aibox.process import DaemonProcess
from models.catalog import Catalog
from aibox.bench.platforms.telegram import TelegramServer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SMOL = "smollm2-135m-instruct"
CHAT = 6202


def test_auto_routes_a_short_chat_to_the_fast_model(tmp_path: Path, models_dir: Path) -> None:
    config = {"models_dir": str(models_dir), "logging": {"level": "warning"}, "runtime": {"threads": 1}}
    with DaemonProcess(tmp_path / "box", config) as proc:
        body = {"model": "auto", "messages": [{"role": "user", "content": "/fast hi there"}], "max_tokens": 8,
                "temperature": 0}
        r = httpx.post(f"{proc.api}/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["model"] == SMOL
        assert data["choices"][0]["message"]["content"].strip()
        assert data["usage"]["completion_tokens"] > 0

        models = []
        with httpx.stream("POST", f"{proc.api}/v1/chat/completions", json=body | {"stream": True}, timeout=120) as s:
            assert s.status_code == 200
            lines = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        models = {json.loads(line[6:])["model"] for line in lines[:-1]}
        assert models == {SMOL}


def _broken_box(tmp_path: Path, models_dir: Path) -> tuple[Path, Path]:
    """A models folder with SmolLM2 and a file of the right size for card `broken` whose
    bytes do not match its checksum: present, so the router may pick it, but unloadable."""
    smol = Catalog.load().get(SMOL)
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / smol.file).symlink_to(models_dir / smol.file)
    (folder / "broken.gguf").write_bytes(b"\0" * 4096)
    state = tmp_path / "box"
    (state / "cards").mkdir(parents=True)
    (state / "cards" / "broken.toml").write_text(f'name = "broken"\nfile = "broken.gguf"\nsize = 4096\nsha256 = "{"1" * 64}"\n')
    (state / "agents").mkdir()
    (state / "agents" / "pinned.toml").write_text(
        'name = "pinned"\ndescription = "Pinned to a model that cannot load."\ndefault = true\n'
        'system_prompt = "Answer briefly."\n[model]\npolicy = "pinned"\nname = "broken"\nmax_tokens = 12\ntemperature = 0\n'
    )
    return folder, state


async def test_agent_pinned_to_an_unloadable_model_is_answered_by_the_next(tmp_path: Path, models_dir: Path) -> None:
    folder, state = _broken_box(tmp_path, models_dir)
    async with TelegramServer() as telegram:
        config = {
            "models_dir": str(folder), "runtime": {"threads": 1},
            "agents": {"default_agent": "pinned"},
            "connectors": {"telegram": {
                "token": telegram.token, "base_url": telegram.base_url, "base_file_url": telegram.base_file_url,
                "poll_timeout_s": 1, "allow_from": [str(CHAT)], "edit_interval_s": 0.2,
            }},
        }
        daemon = DaemonProcess(state, config)
        await asyncio.to_thread(daemon.start)
        try:
            asked = str(telegram.user_message(CHAT, "Say hello."))
            await telegram.outbox.wait_for(
                lambda: any(m.reply_to == asked and "answered by" in m.text for m in telegram.outbox.in_chat(str(CHAT))),
                timeout=180)
            await asyncio.sleep(1.0)  # the reply's final edit
            [reply] = [m for m in telegram.outbox.in_chat(str(CHAT)) if m.reply_to == asked]
            note, _, answer = reply.text.partition("\n\n")
            assert note == f"(broken cannot be loaded; answered by {SMOL}.)"
            assert answer.strip()
        finally:
            assert await asyncio.to_thread(daemon.stop) == 0, daemon.log_tail()


async def test_a_chat_picks_its_model_with_slash_model_over_the_router(tmp_path: Path, models_dir: Path, qwen15_path: Path) -> None:
    """/model NAME is the user's override for that chat: it wins over the cards (SmolLM2 is
    ruled out of code) until /model auto gives the choice back to the router."""
    from sqlalchemy import select

    from aibox.store import Store
    from aibox.store.schema import Generation

    async with TelegramServer() as telegram:
        config = {
            "models_dir": str(models_dir), "runtime": {"threads": 1, "max_tokens": 8},
            "connectors": {"telegram": {
                "token": telegram.token, "base_url": telegram.base_url, "base_file_url": telegram.base_file_url,
                "poll_timeout_s": 1, "allow_from": [str(CHAT)], "edit_interval_s": 0.2,
            }},
        }
        daemon = DaemonProcess(tmp_path / "box", config)
        await asyncio.to_thread(daemon.start)
        store = Store.open(f"sqlite:///{tmp_path / 'box' / 'aibox.db'}")

        async def ask(text: str) -> str:
            asked = str(telegram.user_message(CHAT, text))
            await telegram.outbox.wait_for(
                lambda: any(m.reply_to == asked for m in telegram.outbox.in_chat(str(CHAT))), timeout=300)
            await asyncio.sleep(1.0)  # the reply's final edit
            return next(m.text for m in telegram.outbox.in_chat(str(CHAT)) if m.reply_to == asked)

        def answered_by() -> list[str]:
            with store.session() as s:
                return list(s.scalars(select(Generation.model).where(Generation.source == "telegram").order_by(Generation.id)))

        async def answer_model(text: str) -> str | None:
            before = len(answered_by())
            await ask(text)
            for _ in range(1200):  # the row is written in the background, after a long job finishes
                models = answered_by()
                if len(models) > before:
                    return models[-1]
                await asyncio.sleep(0.1)
            return None

        code = "Write a Python function that reverses a list."
        try:
            assert "not a model this box can answer with" in await ask("/model ghost")
            assert "qwen2.5-coder-0.5b-instruct" in await ask("/model"), "a fast model that also drafts is a choice"
            assert (await ask(f"/model {SMOL}")).startswith(f"This chat now uses {SMOL}")
            assert await answer_model(code) == SMOL
            assert (await ask("/model auto")).startswith("The box picks the model")
            # the router again: the 135M card rules itself out of code, either coder model may answer
            assert await answer_model(code) in {"qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct"}
        finally:
            assert await asyncio.to_thread(daemon.stop) == 0, daemon.log_tail()
