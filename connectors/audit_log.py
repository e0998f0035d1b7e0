"""The audit log of access decisions: who, where, what was decided; never what was said.

Every inbound message gets one entry, so writing each one synchronously would put a
database commit on the path of every reply. Entries are queued and written in batches
from a worker thread; `flush` is awaited on shutdown so none is lost.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from sqlalchemy import insert

from aibox.store import Store
from aibox.store.schema import utcnow
from connectors.tables import AuditEntry

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, store: Store, flush_every: float = 0.5, batch: int = 500) -> None:
        self.store = store
        self.flush_every = flush_every
        self.batch = batch
        self._pending: list[dict[str, object]] = []
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def record(
        self,
        platform: str,
        decision: str,
        chat_id: str | None = None,
        sender_id: str | None = None,
        detail: str = "",
    ) -> None:
        self._pending.append(
            {"at": utcnow(), "platform": platform, "chat_id": chat_id, "sender_id": sender_id,
             "decision": decision, "detail": detail[:256]}
        )
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self.flush_every)
        await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            while self._pending:
                entries, self._pending = self._pending[: self.batch], self._pending[self.batch :]
                try:
                    await asyncio.to_thread(self._write, entries)
                except Exception:
                    log.exception("could not write %d audit entries", len(entries))

    def _write(self, entries: list[dict[str, object]]) -> None:
        """One executemany: ORM objects would cost more than the message they describe."""
        with self.store.session() as s:
            s.execute(insert(AuditEntry), entries)

    def recent(self, limit: int = 100, since: datetime | None = None) -> list[dict[str, object]]:
        """The latest entries, newest first, as plain dicts for the admin API."""
        with self.store.session() as s:
            q = s.query(AuditEntry).order_by(AuditEntry.id.desc())
            if since is not None:
                q = q.filter(AuditEntry.at >= since)
            return [
                {
                    "at": e.at.isoformat(), "platform": e.platform, "chat_id": e.chat_id,
                    "sender_id": e.sender_id, "decision": e.decision, "detail": e.detail,
                }
                for e in q.limit(limit)
            ]
