"""Tables of the box. Each concern keeps its tables in its own module and its own
Alembic migration branch (see migrations/versions); this module holds the shared base,
the runtime's usage log and the measured answer quality the router weighs beside it."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import DateTime, Float, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Generation(Base):
    """One finished (or failed) generation: what the router's length history and
    `aibox status` speed figures are computed from. No message text is stored here."""

    __tablename__ = "generations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    source: Mapped[str] = mapped_column(String(32), default="api")
    sender: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    agent: Mapped[str | None] = mapped_column(String(128), nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    total_ms: Mapped[float] = mapped_column(Float, default=0.0)
    finish_reason: Mapped[str] = mapped_column(String(32), default="stop")


class ModelQuality(Base):
    """Rate of right answers of one model on one kind of task, from `aibox models eval` on
    this box: the quality the router weighs against the speeds above."""

    __tablename__ = "model_quality"

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    items: Mapped[int] = mapped_column(Integer, default=0)
    correct: Mapped[int] = mapped_column(Integer, default=0)
    rate: Mapped[float] = mapped_column(Float, default=0.0)
    mean_s: Mapped[float] = mapped_column(Float, default=0.0)
    eval_set: Mapped[str] = mapped_column(String(32), default="")
    measured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
