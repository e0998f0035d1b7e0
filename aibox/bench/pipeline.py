"""`aibox bench pipeline`: what the connector pipeline itself costs, per platform.

A message goes in at a local fake of the platform (tests/servers/: the same servers the
connector tests use, speaking the real wire protocol to the real client library), through
the connector, the gateway (access decision, audit log) and the reply streamer, to a
stub model that answers instantly; the clock stops when the fake server receives the
first byte of the reply (its sendMessage / POST). The figure is therefore the pipeline's
overhead, with both the fake server and the connector sharing this machine's CPU.

100 chats talk at once, 1,000 measured messages in all after a warm-up round. Each chat
sends its next message once the previous one was answered and a think time has passed
(uniform between half and one and a half times `think_ms`, as people do; the chats start
staggered over one think time). With `think_ms = 0` every chat fires again at once: a
saturation test, where the figure is queueing for the CPU rather than the pipeline's
cost. Errors count replies that never came, came twice or came wrong.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aibox.bench.machine import describe
from aibox.secrets import Secret
from aibox.store import Store
from connectors.audit import AuditLog
from connectors.base import Connector, InboundMessage
from connectors.gateway import Gateway
from connectors.pairing import Pairing

PLATFORMS = ("telegram", "whatsapp", "discord", "slack")
TARGET_P50_MS = 20.0
OPEN = {"dm_policy": "open", "rate_limit_per_minute": 1_000_000, "rate_limit_burst": 1_000_000}


class BenchUnavailable(Exception):
    """The fake servers are not here (an installed package rather than a source checkout)."""


def _fake_servers() -> None:
    """The fake platforms live in the repository's tests/servers; make them importable."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "tests" / "servers").is_dir():
        raise BenchUnavailable(
            "the pipeline benchmark needs a source checkout: the fake platform servers live in tests/servers"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))


@dataclass
class _Rig:
    """One fake platform with a connector pointed at it."""

    connector: Connector
    settings: Any
    outbox: Any
    say: Callable[[str, str], Awaitable[Any]]
    chat: Callable[[int], str]
    after_start: Callable[[], None] = lambda: None


async def _rig(platform: str, stack: AsyncExitStack) -> _Rig:
    if platform == "telegram":
        from connectors.telegram import TelegramConnector, TelegramSettings
        from tests.servers.telegram import TelegramServer

        tg = await stack.enter_async_context(TelegramServer())
        settings = TelegramSettings(
            token=Secret(tg.token), base_url=tg.base_url, base_file_url=tg.base_file_url, poll_timeout_s=10, **OPEN
        )

        async def say_tg(chat: str, text: str) -> None:
            tg.user_message(int(chat), text)

        return _Rig(TelegramConnector(settings), settings, tg.outbox, say_tg, lambda i: str(100_000 + i))
    if platform == "whatsapp":
        from connectors.whatsapp import WhatsAppConnector, WhatsAppSettings
        from tests.servers.whatsapp import FakeWhatsApp

        meta = await stack.enter_async_context(FakeWhatsApp())
        settings = WhatsAppSettings(
            access_token=Secret(meta.access_token), app_secret=Secret(meta.app_secret), verify_token=Secret("bench"),
            phone_number_id=meta.phone_number_id, graph_url=meta.graph_url, listen_port=0, **OPEN,
        )
        connector = WhatsAppConnector(settings)

        def point_meta() -> None:
            meta.webhook_url = connector.webhook_url

        return _Rig(connector, settings, meta.outbox, meta.user_message, lambda i: str(15_550_000_000 + i), point_meta)
    if platform == "discord":
        from connectors.discord import DiscordConnector, DiscordSettings
        from tests.servers.discord import FakeDiscord

        dc = await stack.enter_async_context(FakeDiscord(token="bench-discord-token"))
        settings = DiscordSettings(token=Secret(dc.token), api_base=dc.api_base, gateway_url=dc.gateway_url, **OPEN)

        async def say_dc(chat: str, text: str) -> None:
            await dc.user_says(chat, f"7{chat}", text)

        return _Rig(DiscordConnector(settings), settings, dc.outbox, say_dc, lambda i: str(800_000 + i))
    if platform == "slack":
        from connectors.slack import SlackConnector, SlackSettings
        from tests.servers.slack import FakeSlack

        sl = await stack.enter_async_context(FakeSlack())
        settings = SlackSettings(
            bot_token=Secret(sl.bot_token), app_token=Secret(sl.app_token), api_base=sl.api_base, **OPEN
        )

        async def say_sl(chat: str, text: str) -> None:
            await sl.user_says(chat, f"U{chat[1:]}", text)

        return _Rig(SlackConnector(settings), settings, sl.outbox, say_sl, lambda i: f"D{100_000 + i}")
    raise ValueError(f"unknown platform {platform!r}")


async def _instant(msg: InboundMessage) -> AsyncIterator[str]:
    """The stub model: the whole answer at once, no thinking time."""
    yield f"ok {msg.text}"


async def _bench_one(
    platform: str, messages: int, chats: int, warmup: int, think_s: float, progress: Callable[[str, int], None]
) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        rig = await _rig(platform, stack)
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aibox-bench-")))
        store = Store.open(f"sqlite:///{state / 'bench.db'}")
        stack.callback(store.close)
        gateway = Gateway(Pairing(store), AuditLog(store), _instant)
        sink = gateway.attach(rig.connector, rig.settings)
        await rig.connector.start(sink)
        stack.push_async_callback(rig.connector.stop)
        stack.push_async_callback(gateway.drain, 5.0)
        health = rig.connector.health()
        if health.state != "ok":
            return {"platform": platform, "error": f"connector did not start: {health.state} {health.detail}"}
        rig.after_start()

        latencies: list[float] = []
        errors: list[str] = []
        per_chat = -(-(messages + warmup) // chats)
        done = 0

        async def talk(i: int) -> None:
            nonlocal done
            chat = rig.chat(i)
            await asyncio.sleep(random.uniform(0, think_s))
            for n in range(per_chat):
                if n:
                    await asyncio.sleep(random.uniform(0.5, 1.5) * think_s)
                text = f"message {n} from chat {i}"
                before = len(rig.outbox.in_chat(chat))
                started = time.perf_counter()
                await rig.say(chat, text)
                try:
                    reply = (await rig.outbox.wait_for_posts(chat, before + 1, timeout=30))[before]
                except TimeoutError:
                    errors.append(f"{chat}: no reply to message {n}")
                    continue
                if reply.text != f"ok {text}":
                    errors.append(f"{chat}: wrong reply to message {n}")
                latencies.append((reply.created_at - started) * 1000)
                done += 1
                progress(platform, done)

        await asyncio.gather(*(talk(i) for i in range(chats)))
        await asyncio.sleep(0.5)  # a reply sent twice would show up by now
        for i in range(chats):
            extra = len(rig.outbox.in_chat(rig.chat(i))) - per_chat
            if extra > 0:
                errors.append(f"{rig.chat(i)}: {extra} replies sent twice")
    measured = sorted(latencies[warmup:]) if len(latencies) > warmup else sorted(latencies)
    return {
        "platform": platform,
        "messages": len(measured),
        "chats": chats,
        "think_ms": think_s * 1000,
        "p50_ms": round(_percentile(measured, 50), 2),
        "p99_ms": round(_percentile(measured, 99), 2),
        "mean_ms": round(statistics.fmean(measured), 2) if measured else None,
        "max_ms": round(measured[-1], 2) if measured else None,
        "errors": len(errors),
        "error_samples": errors[:5],
    }


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    k = (len(values) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def available_platforms() -> dict[str, str | None]:
    """Per platform: None when it can be benchmarked, else why not."""
    _fake_servers()
    found: dict[str, str | None] = {}
    for platform in PLATFORMS:
        try:
            __import__(f"tests.servers.{platform}")
            __import__(f"connectors.{platform}")
            found[platform] = None
        except ImportError as e:
            found[platform] = f"not available: {e}"
    return found


def bench_pipeline(
    platforms: list[str] | None = None,
    messages: int = 1000,
    chats: int = 100,
    think_ms: float = 1000.0,
    progress: Callable[[str, int], None] = lambda _p, _n: None,
) -> dict[str, Any]:
    available = available_platforms()
    load_before = os.getloadavg()[0]
    wanted = platforms or list(PLATFORMS)
    results = []
    for platform in wanted:
        if available.get(platform, "unknown platform") is not None:
            results.append({"platform": platform, "error": available.get(platform, "unknown platform")})
            continue
        results.append(asyncio.run(_bench_one(platform, messages, chats, chats, think_ms / 1000, progress)))
    return {
        "machine": describe(),
        "load_avg_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "messages_per_platform": messages,
        "concurrent_chats": chats,
        "think_ms": think_ms,
        "target_p50_ms": TARGET_P50_MS,
        "results": results,
    }
