"""A deterministic stand-in for the model, and the daemon-side wiring around a connector.

Connector tests are about delivery (streaming, splitting, retries, reconnects), not
about what a model says, so the answer comes from `ScriptedResponder`: the same input
always streams the same text in the same chunks. `wired` connects a connector to the
real gateway (pairing, audit log, reply streamer) on a real SQLite store; with
`inbox=True` also the inbox and the outbound journal, as the daemon wires them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aibox.store import Store
from connectors.audit_log import AuditLog
from connectors.base import Connector, InboundMessage
from connectors.gateway import Gateway, Redelivery
from connectors.inbox import Inbox
from connectors.outbound import Journal
from connectors.pairing import Pairing
from connectors.reply import ChatPacer, ReplyStreamer, RetryPolicy
from connectors.settings import ConnectorSettings


def echo(msg: InboundMessage) -> str:
    return f"You said: {msg.text}"


class ScriptedResponder:
    """Streams `answer(msg)` in `chunks` pieces, `delay` seconds apart; records each call."""

    def __init__(self, answer: Callable[[InboundMessage], str] = echo, chunks: int = 4, delay: float = 0.0) -> None:
        self.answer = answer
        self.chunks = chunks
        self.delay = delay
        self.calls: list[InboundMessage] = []
        self.started = asyncio.Event()

    def __call__(self, msg: InboundMessage) -> AsyncIterator[str]:
        self.calls.append(msg)
        return self._stream(self.answer(msg))

    async def _stream(self, text: str) -> AsyncIterator[str]:
        self.started.set()
        size = max(1, -(-len(text) // self.chunks))
        for start in range(0, len(text), size):
            if self.delay:
                await asyncio.sleep(self.delay)
            yield text[start : start + size]


@dataclass
class Wiring:
    gateway: Gateway
    pairing: Pairing
    audit: AuditLog
    store: Store
    inbox: Inbox | None = None


@asynccontextmanager
async def wired(
    connector: Connector, settings: ConnectorSettings, responder: ScriptedResponder, state_dir: Path, *,
    inbox: bool = False, policy: RetryPolicy | None = None, redelivery: Redelivery | None = None,
) -> AsyncIterator[Wiring]:
    """Starts `connector` behind a real gateway; stops it and drains replies on exit."""
    store = Store.open(f"sqlite:///{state_dir / 'aibox.db'}")
    pairing = Pairing(store)
    audit = AuditLog(store)
    kept = Inbox(store) if inbox else None
    gateway = Gateway(pairing, audit, responder, inbox=kept, redelivery=redelivery)
    target = Journal(connector, kept) if kept is not None else connector
    streamer = ReplyStreamer(target, pacer=ChatPacer(settings.edit_interval_s), policy=policy)
    sink = gateway.attach(connector, settings, streamer)
    await connector.start(sink)
    try:
        yield Wiring(gateway, pairing, audit, store, kept)
    finally:
        await gateway.drain(timeout=5.0)
        await connector.stop()
        store.close()
