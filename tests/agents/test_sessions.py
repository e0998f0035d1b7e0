"""Session memory: turns through the store, a prompt that fits the window, compaction
into a running summary that deletes nothing, and the chat commands that manage it.

The first tests use a word-count tokenizer and a stub summariser that lists what it was
given: they are about what reaches the prompt and what stays in the store, not about
the model's words. The last test runs the real agent runner with the real SmolLM2 model
as the summariser."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from agents.sessions import Sessions
from agents.definition import parse_agent
from agents.tables import Turn
from aibox.store import Store
from connectors.base import InboundMessage


def words(text: str) -> int:
    return len(text.split())


class ListingSummariser:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]]]] = []

    async def __call__(self, previous: str, turns: list[tuple[str, str]]) -> str:
        self.calls.append((previous, turns))
        return (previous + " | " if previous else "") + "; ".join(text for _, text in turns)


def spec(recent: int = 4, reserve: int = 16, summarise: bool = True):
    return parse_agent({"name": "a", "system_prompt": "Be brief.",
                        "memory": {"recent_turns": recent, "reserve_tokens": reserve, "summarise": summarise}}, "a.toml")


@pytest.fixture
def sessions(tmp_path: Path) -> Sessions:
    return Sessions(Store.open(f"sqlite:///{tmp_path / 'db.sqlite'}"))


async def talk(sessions: Sessions, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await sessions.add_turn("tg", "1", "a", "user", f"question {i}")
        await sessions.add_turn("tg", "1", "a", "assistant", f"answer {i}")


async def test_prompt_has_system_notes_and_recent_turns(sessions: Sessions) -> None:
    await talk(sessions, 2)
    await sessions.remember("tg", "1", "a", "my cat is called Miso")
    messages = await sessions.build_context(spec(recent=10), "tg", "1", "It is Monday.", words, 4096, ListingSummariser())
    assert messages[0]["role"] == "system"
    assert "Be brief." in messages[0]["content"] and "It is Monday." in messages[0]["content"]
    assert "- my cat is called Miso" in messages[0]["content"]
    assert [m["content"] for m in messages[1:]] == ["question 0", "answer 0", "question 1", "answer 1"]
    other = await sessions.build_context(spec(), "tg", "2", "", words, 4096, None)
    assert len(other) == 1 and "Miso" not in other[0]["content"], "notes and turns belong to their own chat"


async def test_compaction_folds_old_turns_into_a_summary_and_deletes_nothing(sessions: Sessions) -> None:
    summariser = ListingSummariser()
    await talk(sessions, 5)
    messages = await sessions.build_context(spec(recent=4), "tg", "1", "", words, 4096, summariser)
    assert [m["content"] for m in messages[1:]] == ["question 3", "answer 3", "question 4", "answer 4"]
    assert "question 0; answer 0; question 1; answer 1; question 2; answer 2" in messages[0]["content"]
    summary, upto = await sessions.summary("tg", "1", "a")
    assert summary.startswith("question 0") and upto > 0

    await talk(sessions, 2, start=5)  # the running summary grows from the previous one
    messages = await sessions.build_context(spec(recent=4), "tg", "1", "", words, 4096, summariser)
    previous, folded = summariser.calls[-1]
    assert previous == summary and [t for _, t in folded] == ["question 3", "answer 3", "question 4", "answer 4"]
    assert [m["content"] for m in messages[1:]] == ["question 5", "answer 5", "question 6", "answer 6"]

    everything = await sessions.all_turns("tg", "1", "a")
    assert len(everything) == 14, "compaction must not delete a single turn"
    with sessions.store.session() as s:
        assert s.scalar(select(func.count()).select_from(Turn)) == 14


async def test_the_window_limits_the_recent_turns(sessions: Sessions) -> None:
    await sessions.add_turn("tg", "1", "a", "user", "long " * 60)
    await sessions.add_turn("tg", "1", "a", "assistant", "short answer")
    await sessions.add_turn("tg", "1", "a", "user", "and now?")
    summariser = ListingSummariser()
    messages = await sessions.build_context(spec(recent=10, reserve=20), "tg", "1", "", words, 60, summariser)
    total = sum(words(m["content"]) + 8 for m in messages)
    assert total <= 60 - 20, f"prompt of {total} tokens does not leave the reserve free"
    assert messages[-1]["content"] == "and now?"
    assert summariser.calls and summariser.calls[0][1][0][1].startswith("long long")


async def test_without_summaries_old_turns_leave_the_prompt_but_not_the_store(sessions: Sessions) -> None:
    await talk(sessions, 5)
    messages = await sessions.build_context(spec(recent=2, summarise=False), "tg", "1", "", words, 4096, ListingSummariser())
    assert [m["content"] for m in messages[1:]] == ["question 4", "answer 4"]
    assert (await sessions.summary("tg", "1", "a")) == ("", 0)
    assert len(await sessions.all_turns("tg", "1", "a")) == 10


async def test_reset_starts_fresh_and_keeps_history(sessions: Sessions) -> None:
    await talk(sessions, 2)
    await sessions.reset("tg", "1", "a")
    assert await sessions.history("tg", "1", "a") == []
    assert len(await sessions.all_turns("tg", "1", "a")) == 4


async def test_runner_commands_and_compaction_with_the_real_model(real_box) -> None:  # noqa: ANN001 - fixture
    """The real runner and SmolLM2: /remember, /forget, /history, /reset, /agents, /use,
    and compaction whose summary the real fast model writes."""
    agent = ('name = "tiny"\ndescription = "short memory"\nsystem_prompt = "Answer in a few words."\n'
             "[memory]\nrecent_turns = 2\n"
             '[model]\npolicy = "pinned"\nname = "smollm2-135m-instruct"\n')
    async with real_box("tiny", agent, runtime={"max_tokens": 12}) as runner:

        async def say(text: str, n: int = [0]) -> str:  # noqa: B006 - a message id counter
            n[0] += 1
            return "".join([p async for p in runner(InboundMessage("telegram", "9", "9", str(n[0]), text))])

        assert "→ tiny" in await say("/agents")
        assert (await say("/remember I live in Lisbon")).startswith("Noted (")
        for question in ("Hello!", "What is two plus two?", "Name a fruit."):
            assert (await say(question)).strip()
        summary, upto = await runner.sessions.summary("telegram", "9", "tiny")
        assert summary.strip() and upto > 0, "older turns are summarised by the real model"
        assert len(await runner.sessions.all_turns("telegram", "9", "tiny")) == 6
        history = await say("/history")
        assert "user: Hello!" in history and "user: Name a fruit." in history
        notes = await say("/forget")
        assert "I live in Lisbon" in notes
        note_id = notes.split("\n")[1].split(":")[0]
        assert await say(f"/forget {note_id}") == f"Forgot note {note_id}."
        assert (await say("/reset")).startswith("Started a fresh conversation with tiny")
        assert await say("/history") == "No turns yet in this conversation."
        assert (await say("/use coder")).startswith("Now talking to coder")
        assert (await say("/use nobody")).startswith("no agent named 'nobody'")
