"""The connectors' tables: the inbox, approved senders, pending pairing codes and the audit log.

Only the inbox holds message text (until the retention period ends); the audit log records
who, where and what was decided, never what was said. May import: aibox.store.schema.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Integer, String, Text
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


class InboxMessage(Base):
    """An inbound message, stored before the platform is told it arrived."""

    __tablename__ = "agent_inbox"

    key: Mapped[str] = mapped_column(String(320), primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str] = mapped_column(String(128))
    sender_id: Mapped[str] = mapped_column(String(128))
    message_id: Mapped[str] = mapped_column(String(128))
    sender_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    text: Mapped[str] = mapped_column(Text, default="")
    reply_to: Mapped[str | None] = mapped_column(String(128), nullable=True)
    is_direct: Mapped[bool] = mapped_column(Boolean, default=True)
    mentions_bot: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reply_message_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
