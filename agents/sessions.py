"""Conversations and their memory: turns, pinned notes and a running summary, all in
the store.

The prompt for a turn is built to fit the model's context window: the system prompt,
the pinned notes, the summary of older turns, then as many recent turns as fit (at
most the agent's `memory.recent_turns`). Turns that no longer fit are folded into the
summary by the fast model; the turns themselves stay in the store (compaction only
moves `summarised_upto`), so `/history`, backups and a later re-summary lose nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select

from agents.definition import AgentDefinition
from agents.tables import ChatAgent, ChatModel, ChatSession, Note, Turn
from aibox.store import Store
from aibox.store.schema import utcnow
from models.chat_template import Message

TokenCounter = Callable[[str], int]
Summariser = Callable[[str, list[tuple[str, str]]], Awaitable[str]]

# Per-message overhead of chat templates (role markers, separators), in tokens.
MESSAGE_OVERHEAD = 8


@dataclass(frozen=True)
class TurnView:
    id: int
    role: str
    text: str
    at: datetime


@dataclass(frozen=True)
class NoteView:
    id: int
    text: str


class Sessions:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -- sessions and turns ---------------------------------------------------------

    def _open_session(self, s, platform: str, chat_id: str, agent: str) -> ChatSession:  # noqa: ANN001 - SQLAlchemy session
        row = s.scalars(
            select(ChatSession)
            .where(ChatSession.platform == platform, ChatSession.chat_id == chat_id, ChatSession.agent == agent,
                   ChatSession.closed_at.is_(None))
            .order_by(ChatSession.id.desc())
        ).first()
        if row is None:
            row = ChatSession(platform=platform, chat_id=chat_id, agent=agent, summary="", summarised_upto=0)
            s.add(row)
            s.flush()
        return row

    async def add_turn(self, platform: str, chat_id: str, agent: str, role: str, text: str) -> int:
        def write() -> int:
            with self.store.session() as s:
                session = self._open_session(s, platform, chat_id, agent)
                turn = Turn(session_id=session.id, role=role, text=text)
                s.add(turn)
                s.flush()
                return turn.id

        return await asyncio.to_thread(write)

    async def reset(self, platform: str, chat_id: str, agent: str) -> None:
        """Starts a fresh conversation; the old one stays in the store."""

        def write() -> None:
            with self.store.session() as s:
                self._open_session(s, platform, chat_id, agent).closed_at = utcnow()

        await asyncio.to_thread(write)

    async def history(self, platform: str, chat_id: str, agent: str, limit: int = 10) -> list[TurnView]:
        def read() -> list[TurnView]:
            with self.store.session() as s:
                session = self._open_session(s, platform, chat_id, agent)
                rows = s.scalars(select(Turn).where(Turn.session_id == session.id).order_by(Turn.id.desc()).limit(limit))
                return [TurnView(t.id, t.role, t.text, t.created_at) for t in reversed(list(rows))]

        return await asyncio.to_thread(read)

    async def all_turns(self, platform: str, chat_id: str, agent: str) -> list[TurnView]:
        """Every turn of every session of this chat and agent, oldest first."""

        def read() -> list[TurnView]:
            with self.store.session() as s:
                ids = select(ChatSession.id).where(
                    ChatSession.platform == platform, ChatSession.chat_id == chat_id, ChatSession.agent == agent
                )
                rows = s.scalars(select(Turn).where(Turn.session_id.in_(ids)).order_by(Turn.id))
                return [TurnView(t.id, t.role, t.text, t.created_at) for t in rows]

        return await asyncio.to_thread(read)

    async def summary(self, platform: str, chat_id: str, agent: str) -> tuple[str, int]:
        def read() -> tuple[str, int]:
            with self.store.session() as s:
                session = self._open_session(s, platform, chat_id, agent)
                return session.summary, session.summarised_upto

        return await asyncio.to_thread(read)

    # -- notes --------------------------------------------------------------------

    async def remember(self, platform: str, chat_id: str, agent: str, text: str) -> int:
        def write() -> int:
            with self.store.session() as s:
                note = Note(platform=platform, chat_id=chat_id, agent=agent, text=text)
                s.add(note)
                s.flush()
                return note.id

        return await asyncio.to_thread(write)

    async def forget(self, platform: str, chat_id: str, agent: str, note_id: int | None) -> int:
        """Deletes one note (or all with None): the user asked for it to go, so it goes."""

        def write() -> int:
            with self.store.session() as s:
                where = [Note.platform == platform, Note.chat_id == chat_id, Note.agent == agent]
                if note_id is not None:
                    where.append(Note.id == note_id)
                return s.execute(delete(Note).where(*where)).rowcount

        return await asyncio.to_thread(write)

    async def notes(self, platform: str, chat_id: str, agent: str) -> list[NoteView]:
        def read() -> list[NoteView]:
            with self.store.session() as s:
                rows = s.scalars(
                    select(Note).where(Note.platform == platform, Note.chat_id == chat_id, Note.agent == agent).order_by(Note.id)
                )
                return [NoteView(n.id, n.text) for n in rows]

        return await asyncio.to_thread(read)

    # -- which agent a chat talks to --------------------------------------------------

    async def chosen_agent(self, platform: str, chat_id: str) -> str | None:
        def read() -> str | None:
            with self.store.session() as s:
                row = s.get(ChatAgent, (platform, chat_id))
                return row.agent if row else None

        return await asyncio.to_thread(read)

    async def choose_agent(self, platform: str, chat_id: str, agent: str) -> None:
        def write() -> None:
            with self.store.session() as s:
                s.merge(ChatAgent(platform=platform, chat_id=chat_id, agent=agent))

        await asyncio.to_thread(write)

    # -- which model a chat asked for ----------------------------------------------

    async def chosen_model(self, platform: str, chat_id: str) -> str | None:
        def read() -> str | None:
            with self.store.session() as s:
                row = s.get(ChatModel, (platform, chat_id))
                return row.model if row else None

        return await asyncio.to_thread(read)

    async def choose_model(self, platform: str, chat_id: str, model: str | None) -> None:
        """`None` hands the choice back to the router."""

        def write() -> None:
            with self.store.session() as s:
                row = s.get(ChatModel, (platform, chat_id))
                if model is None:
                    if row is not None:
                        s.delete(row)
                else:
                    s.merge(ChatModel(platform=platform, chat_id=chat_id, model=model))

        await asyncio.to_thread(write)

    # -- the prompt ---------------------------------------------------------------

    async def build_context(
        self,
        definition: AgentDefinition,
        platform: str,
        chat_id: str,
        system_extra: str,
        count: TokenCounter,
        window: int,
        summarise: Summariser | None,
    ) -> list[Message]:
        """The messages for the next answer, ending with the latest user turn (already
        stored with `add_turn`). Folds turns that do not fit into the summary first."""
        agent = definition.name
        notes = await self.notes(platform, chat_id, agent)
        summary, upto = await self.summary(platform, chat_id, agent)
        turns = [t for t in await self.history(platform, chat_id, agent, limit=10_000) if t.id > upto]
        budget = window - definition.memory.reserve_tokens
        system = _system_text(definition, system_extra, notes, summary)
        used = count(system) + MESSAGE_OVERHEAD
        keep: list[TurnView] = []
        for turn in reversed(turns):
            cost = count(turn.text) + MESSAGE_OVERHEAD
            if len(keep) >= definition.memory.recent_turns or (keep and used + cost > budget):
                break
            keep.insert(0, turn)
            used += cost
        older = turns[: len(turns) - len(keep)]
        if older and summarise is not None and definition.memory.summarise:
            summary = await summarise(summary, [(t.role, t.text) for t in older])
            await self._save_summary(platform, chat_id, agent, summary, older[-1].id)
            system = _system_text(definition, system_extra, notes, summary)
            while len(keep) > 1 and count(system) + sum(count(t.text) + MESSAGE_OVERHEAD for t in keep) > budget:
                keep.pop(0)
            room = budget - count(_system_text(definition, system_extra, notes, "")) - MESSAGE_OVERHEAD * 2
            room -= sum(count(t.text) + MESSAGE_OVERHEAD for t in keep)
            system = _system_text(definition, system_extra, notes, _tail(summary, room, count))
        messages: list[Message] = [{"role": "system", "content": system}]
        messages += [{"role": t.role, "content": t.text} for t in keep]
        return messages

    async def _save_summary(self, platform: str, chat_id: str, agent: str, summary: str, upto: int) -> None:
        def write() -> None:
            with self.store.session() as s:
                session = self._open_session(s, platform, chat_id, agent)
                session.summary = summary
                session.summarised_upto = upto

        await asyncio.to_thread(write)


def _tail(summary: str, room: int, count: TokenCounter) -> str:
    """The newest part of the summary that fits in `room` tokens (the stored one stays whole)."""
    while summary and count(summary) > max(0, room):
        cut = summary.find(" ", len(summary) // 4)
        summary = "…" + summary[cut + 1:] if cut != -1 and room > 0 else ""
    return summary


def _system_text(definition: AgentDefinition, extra: str, notes: list[NoteView], summary: str) -> str:
    parts = [definition.system_prompt.strip()]
    if extra:
        parts.append(extra)
    if notes:
        parts.append("Notes the user asked you to remember:\n" + "\n".join(f"- {n.text}" for n in notes))
    if summary:
        parts.append("Summary of the earlier conversation:\n" + summary)
    return "\n\n".join(parts)
