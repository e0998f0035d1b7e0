"""Pairing: how an unknown sender becomes someone the box answers.

The sender writes to the bot and gets a short code; the owner approves it with `aibox
pairing approve CODE` (or `/pairing approve CODE` in chat). Codes expire after an hour
and at most three wait per platform, so a stranger cannot flood the owner with them.
The first sender approved on a platform becomes its owner, unless the config names one.

Approved senders are cached in memory: every inbound message asks about them, and
only this class changes them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select

from aibox.store import Store
from aibox.store.schema import utcnow
from connectors.tables import ApprovedSender, PairingCode

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud or typed on a phone
CODE_LENGTH = 8
CODE_TTL = timedelta(hours=1)
MAX_PENDING = 3
ROLES = ("owner", "admin", "user")


class PairingError(Exception):
    """The code is unknown or expired, or the sender is not paired; the message says which."""


@dataclass(frozen=True)
class Pending:
    code: str
    platform: str
    sender_id: str
    chat_id: str
    name: str | None
    expires_at: datetime


@dataclass(frozen=True)
class Approved:
    platform: str
    sender_id: str
    role: str
    name: str | None
    chat_id: str | None


class Pairing:
    def __init__(self, store: Store, configured_owners: dict[str, str | None] | None = None) -> None:
        self.store = store
        self.configured_owners = configured_owners or {}
        with store.session() as s:
            self._approved = {(a.platform, a.sender_id): _approved(a) for a in s.scalars(select(ApprovedSender))}

    def role(self, platform: str, sender_id: str) -> str | None:
        found = self._approved.get((platform, sender_id))
        return found.role if found else None

    def request(
        self, platform: str, sender_id: str, chat_id: str, name: str | None, now: datetime | None = None
    ) -> Pending | None:
        """The sender's pending code (reused while it is valid), a new one, or None when
        the platform already has `MAX_PENDING` codes waiting."""
        now = now or utcnow()
        with self.store.session() as s:
            s.execute(delete(PairingCode).where(PairingCode.expires_at <= now))
            waiting = list(s.scalars(select(PairingCode).where(PairingCode.platform == platform)))
            for row in waiting:
                if row.sender_id == sender_id:
                    return _pending(row)
            if len(waiting) >= MAX_PENDING:
                return None
            row = PairingCode(
                code=_new_code(), platform=platform, sender_id=sender_id, chat_id=chat_id,
                name=name, created_at=now, expires_at=now + CODE_TTL,
            )
            s.add(row)
            return _pending(row)

    def pending(self, now: datetime | None = None) -> list[Pending]:
        now = now or utcnow()
        with self.store.session() as s:
            s.execute(delete(PairingCode).where(PairingCode.expires_at <= now))
            return [_pending(r) for r in s.scalars(select(PairingCode).order_by(PairingCode.created_at))]

    def approved(self) -> list[Approved]:
        return sorted(self._approved.values(), key=lambda a: (a.platform, ROLES.index(a.role), a.sender_id))

    def approve(self, code: str, now: datetime | None = None) -> Approved:
        """Turns a pending code into an approved sender; the first on a platform without a
        configured owner becomes its owner."""
        now = now or utcnow()
        code = code.strip().upper().replace("-", "").replace(" ", "")
        with self.store.session() as s:
            row = s.get(PairingCode, code)
            if row is None:
                raise PairingError(f"no pending pairing code {code!r} (codes expire after one hour)")
            expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=timezone.utc)
            if expires <= now:
                s.delete(row)
                raise PairingError(f"pairing code {code!r} has expired; ask the sender to write again")
            has_owner = self.configured_owners.get(row.platform) or any(
                a.role == "owner" for a in self._approved.values() if a.platform == row.platform
            )
            sender = ApprovedSender(
                platform=row.platform, sender_id=row.sender_id, role="user" if has_owner else "owner",
                name=row.name, chat_id=row.chat_id, approved_at=now,
            )
            s.merge(sender)
            s.delete(row)
        approved = _approved(sender)
        self._approved[(approved.platform, approved.sender_id)] = approved
        return approved

    def deny(self, code: str) -> Pending:
        """Drops a pending code without approving it; the sender gets a new one if they write again."""
        code = code.strip().upper().replace("-", "").replace(" ", "")
        with self.store.session() as s:
            row = s.get(PairingCode, code)
            if row is None:
                raise PairingError(f"no pending pairing code {code!r} (codes expire after one hour)")
            pending = _pending(row)
            s.delete(row)
        return pending

    def revoke(self, sender: str, platform: str | None = None) -> list[Approved]:
        """Removes a sender ("ID" or "platform:ID") on every platform it matches."""
        if platform is None and ":" in sender:
            platform, _, sender = sender.partition(":")
        gone = [a for a in self._approved.values() if a.sender_id == sender and platform in (None, a.platform)]
        if not gone:
            raise PairingError(f"sender {sender!r} is not paired")
        with self.store.session() as s:
            for a in gone:
                s.execute(
                    delete(ApprovedSender).where(
                        ApprovedSender.platform == a.platform, ApprovedSender.sender_id == a.sender_id
                    )
                )
        for a in gone:
            self._approved.pop((a.platform, a.sender_id), None)
        return gone


def _new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def _pending(row: PairingCode) -> Pending:
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=timezone.utc)
    return Pending(row.code, row.platform, row.sender_id, row.chat_id, row.name, expires)


def _approved(row: ApprovedSender) -> Approved:
    return Approved(row.platform, row.sender_id, row.role, row.name, row.chat_id)
