"""A fake chat platform in a process of its own, for `aibox bench pipeline`.

The platform is not on the box in real life, so its CPU should not count against the
box's pipeline: this process runs one of the stand-ins from aibox/bench/platforms (the
ones the connector tests use, speaking the real wire protocol) and is driven over stdin
and stdout with one JSON object per line:

    -> {"ready": {settings keys pointing a connector at this server}}
    <- {"webhook": URL}                    where to post webhooks (WhatsApp)
    <- {"say": {"chat": ID, "text": T}}    a person writes T in chat ID
    -> {"reply": {"chat": ID, "latency_ms": F, "text": T}}
    <- {"finish": true}
    -> {"counts": {ID: messages the bot posted in ID}}
    (stdin closed)                         the server stops; the connector has stopped first

Latency is measured here, on the platform's side: from the moment the person's message
exists on the platform to the moment the bot's first reply to it arrives. Both stamps
come from this process's clock.

    python -m aibox.bench.platform_host telegram|whatsapp|discord|slack
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from aibox.bench.platforms.discord import FakeDiscord
from aibox.bench.platforms.slack import FakeSlack
from aibox.bench.platforms.telegram import TelegramServer
from aibox.bench.platforms.whatsapp import FakeWhatsApp

PLATFORMS = ("telegram", "whatsapp", "discord", "slack")

Say = Callable[[str, str], Awaitable[Any]]


async def _start(platform: str, stack: AsyncExitStack) -> tuple[Any, dict[str, Any], Say]:
    """The running server, the settings that point a connector at it, and how a person writes."""
    if platform == "telegram":
        tg = await stack.enter_async_context(TelegramServer())

        async def say_tg(chat: str, text: str) -> None:
            tg.user_message(int(chat), text)

        settings = {"token": tg.token, "base_url": tg.base_url, "base_file_url": tg.base_file_url, "poll_timeout_s": 10}
        return tg, settings, say_tg
    if platform == "whatsapp":
        meta = await stack.enter_async_context(FakeWhatsApp())
        settings = {
            "access_token": meta.access_token, "app_secret": meta.app_secret, "verify_token": "bench",
            "phone_number_id": meta.phone_number_id, "graph_url": meta.graph_url, "listen_port": 0,
        }
        return meta, settings, meta.user_message
    if platform == "discord":
        dc = await stack.enter_async_context(FakeDiscord(token="bench-discord-token"))

        async def say_dc(chat: str, text: str) -> None:
            await dc.user_says(chat, f"7{chat}", text)

        return dc, {"token": dc.token, "api_base": dc.api_base, "gateway_url": dc.gateway_url}, say_dc
    if platform == "slack":
        sl = await stack.enter_async_context(FakeSlack())

        async def say_sl(chat: str, text: str) -> None:
            await sl.user_says(chat, f"U{chat[1:]}", text)

        return sl, {"bot_token": sl.bot_token, "app_token": sl.app_token, "api_base": sl.api_base}, say_sl
    raise ValueError(f"unknown platform {platform!r}")


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _exchange(server: Any, say: Say, chat: str, text: str) -> None:
    before = len(server.outbox.in_chat(chat))
    started = time.perf_counter()
    await say(chat, text)
    try:
        reply = (await server.outbox.wait_for_posts(chat, before + 1, timeout=30))[before]
    except TimeoutError:
        _emit({"reply": {"chat": chat, "latency_ms": None, "text": None}})
        return
    _emit({"reply": {"chat": chat, "latency_ms": (reply.created_at - started) * 1000, "text": reply.text}})


async def serve(platform: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()
    async with AsyncExitStack() as stack:
        server, settings, say = await _start(platform, stack)
        _emit({"ready": settings})
        while line := await reader.readline():
            command = json.loads(line)
            if "webhook" in command:
                server.webhook_url = command["webhook"]
            elif "say" in command:
                task = loop.create_task(_exchange(server, say, command["say"]["chat"], command["say"]["text"]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif "finish" in command:
                await asyncio.sleep(0.5)  # a reply sent twice would show up by now
                _emit({"counts": {m.chat_id: len(server.outbox.in_chat(m.chat_id)) for m in server.outbox.all()}})


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m aibox.bench.platform_host",
        description="A local stand-in of one chat platform, driven over stdin and stdout (see the module doc).",
    )
    parser.add_argument("platform", choices=PLATFORMS)
    asyncio.run(serve(parser.parse_args().platform))


if __name__ == "__main__":
    main()
