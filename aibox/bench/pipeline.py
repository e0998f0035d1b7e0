"""`aibox bench pipeline`: what the connector pipeline itself costs, per platform.

A message goes in at a fake of the platform, through the connector, the gateway (access
decision, audit log) and the reply streamer, to a stub model that answers instantly;
the clock stops when the platform receives the first byte of the reply (its
sendMessage / POST). The fakes are the servers the connector tests use
(aibox/bench/platforms), speaking each platform's real wire protocol to the real client
library; each runs in a process of its own (aibox/bench/platform_host.py), as the
platform runs elsewhere in real life, and measures the latency on its side.

100 chats talk at once, 1,000 measured messages in all after a warm-up round. Each chat
sends its next message once the previous one was answered and a think time has passed
(uniform between half and one and a half times `think_ms`, as people do; the chats start
staggered over one think time). With `think_ms = 0` every chat fires again at once: a
saturation test, where the figure is queueing for the CPU rather than the pipeline's
cost. Errors count replies that never came, came twice or came wrong.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from models.machine import describe
from aibox.bench.platform_host import PLATFORMS
from aibox.store import Store
from connectors.audit_log import AuditLog
from connectors.base import InboundMessage
from connectors.gateway import Gateway
from connectors.manager import connector_class
from connectors.pairing import Pairing

__all__ = ["available_platforms", "bench_pipeline"]

TARGET_P50_MS = 20.0
OPEN = {"dm_policy": "open", "rate_limit_per_minute": 1_000_000, "rate_limit_burst": 1_000_000}
CHAT_IDS: dict[str, Callable[[int], str]] = {
    "telegram": lambda i: str(100_000 + i),
    "whatsapp": lambda i: str(15_550_000_000 + i),
    "discord": lambda i: str(800_000 + i),
    "slack": lambda i: f"D{100_000 + i}",
}


async def _instant(msg: InboundMessage) -> AsyncIterator[str]:
    """The stub model: the whole answer at once, no thinking time."""
    yield f"ok {msg.text}"


class _Platform:
    """The platform host process, and the replies it reports, routed to the chat waiting."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.counts: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()

    async def read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            event = json.loads(line)
            if "reply" in event:
                future = self.waiting.pop(event["reply"]["chat"], None)
                if future is not None and not future.done():
                    future.set_result(event["reply"])
            elif "counts" in event:
                self.counts.set_result(event["counts"])

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())

    async def say(self, chat: str, text: str) -> dict[str, Any]:
        future = asyncio.get_running_loop().create_future()
        self.waiting[chat] = future
        self.send({"say": {"chat": chat, "text": text}})
        return await asyncio.wait_for(future, 30)


async def _start_platform(platform: str, stack: AsyncExitStack, log_dir: Path) -> tuple[_Platform, dict[str, Any]]:
    log = (log_dir / f"{platform}-host.log").open("wb")
    stack.callback(log.close)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aibox.bench.platform_host", platform,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
    )

    async def end() -> None:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    stack.push_async_callback(end)
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 60)
    if not first:
        log.flush()
        tail = (log_dir / f"{platform}-host.log").read_text(errors="replace")[-500:]
        raise RuntimeError(f"the fake {platform} did not start: {tail}")
    host = _Platform(proc)
    reader = asyncio.get_running_loop().create_task(host.read())
    stack.callback(reader.cancel)
    return host, json.loads(first)["ready"]


async def _bench_one(
    platform: str, messages: int, chats: int, warmup: int, think_s: float, progress: Callable[[str, int], None]
) -> dict[str, Any]:
    chat_id = CHAT_IDS[platform]
    async with AsyncExitStack() as stack:
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aibox-bench-")))
        host, pointing = await _start_platform(platform, stack, state)
        cls = connector_class(platform)
        settings = cls.settings_model.model_validate(pointing | OPEN)
        connector = cls(settings)  # type: ignore[call-arg]
        store = Store.open(f"sqlite:///{state / 'bench.db'}")
        stack.callback(store.close)
        gateway = Gateway(Pairing(store), AuditLog(store), _instant)
        await connector.start(gateway.attach(connector, settings))
        stack.push_async_callback(connector.stop)
        stack.push_async_callback(gateway.drain, 5.0)
        health = connector.health()
        if health.state != "ok":
            return {"platform": platform, "error": f"connector did not start: {health.state} {health.detail}"}
        if hasattr(connector, "webhook_url"):
            host.send({"webhook": connector.webhook_url})

        latencies: list[float] = []
        errors: list[str] = []
        per_chat = -(-(messages + warmup) // chats)
        done = 0

        async def talk(i: int) -> None:
            nonlocal done
            chat = chat_id(i)
            await asyncio.sleep(random.uniform(0, think_s))
            for n in range(per_chat):
                if n:
                    await asyncio.sleep(random.uniform(0.5, 1.5) * think_s)
                text = f"message {n} from chat {i}"
                try:
                    reply = await host.say(chat, text)
                except TimeoutError:
                    reply = {"latency_ms": None}
                if reply["latency_ms"] is None:
                    errors.append(f"{chat}: no reply to message {n}")
                    continue
                if reply["text"] != f"ok {text}":
                    errors.append(f"{chat}: wrong reply to message {n}")
                latencies.append(reply["latency_ms"])
                done += 1
                progress(platform, done)

        await asyncio.gather(*(talk(i) for i in range(chats)))
        host.send({"finish": True})
        counts = await asyncio.wait_for(host.counts, 30)
        for i in range(chats):
            extra = counts.get(chat_id(i), 0) - per_chat
            if extra > 0:
                errors.append(f"{chat_id(i)}: {extra} replies sent twice")
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
    found: dict[str, str | None] = {}
    for platform in PLATFORMS:
        try:
            connector_class(platform)
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
