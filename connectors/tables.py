"""The connectors' tables: approved senders, pending pairing codes and the audit log.

None of them holds message text: the audit log records who, where and what was
decided, never what was said.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from aibox.store.schema import Base, utcnow


class ApprovedSender(Base):
    """A sender allowed to command the box on one platform, and with what role."""

    __tablename__ = "connector_senders"

    platform: Mapped[str] = mapped_column(String(32), primary_key=True)
    sender_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), default="user")
    name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    chat_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    approved_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PairingCode(Base):
    """A code handed to an unknown sender, waiting for the owner's approval."""

    __tablename__ = "connector_pairing_codes"

    code: Mapped[str] = mapped_column(String(16), primary_key=True)
    platform: Mapped[str] = mapped_column(String(32), index=True)
    sender_id: Mapped[str] = mapped_column(String(128))
    chat_id: Mapped[str] = mapped_column(String(128))
    name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class AuditEntry(Base):
    """One access decision about one inbound message (or one admin action)."""

    __tablename__ = "connector_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    platform: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    sender_id: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    decision: Mapped[str] = mapped_column(String(48))
    detail: Mapped[str] = mapped_column(String(256), default="")
