"""Long answers in the background on the real SmolLM2: immediate acknowledgement, progress
by edits, the full answer at the end, and /cancel stopping generation. The outbound path is
a recorder of posts and edits here (connectors have their own wire tests); the generation
is real."""

from __future__ import annotations

import asyncio

import pytest

from agents.long_answers import LongAnswers
from models.catalog import Catalog
from models.pool import ModelPool, PoolSettings
from models.sampling import SamplingParams

SMOL = "smollm2-135m-instruct"
STORY = [{"role": "user", "content": "Write a very long story about a dragon who learns to cook."}]


class Chat:
    """Records what a long answer posts and edits, as one chat would show it."""

    def __init__(self) -> None:
        self.messages: dict[str, str] = {}
        self.edits: list[tuple[str, str]] = []
        self.sent: list[str] = []

    async def deliver(self, _platform: str, _chat_id: str, text: str) -> str:
        mid = str(len(self.messages) + 1)
        self.messages[mid] = text
        self.sent.append(text)
        return mid

    async def edit(self, _platform: str, _chat_id: str, mid: str, text: str) -> str:
        assert mid in self.messages
        self.messages[mid] = text
        self.edits.append((mid, text))
        return mid


@pytest.fixture
async def pool(models_dir):
    pool = ModelPool(Catalog.load(), PoolSettings(models_dir=models_dir, threads=1, n_ctx=2048))
    yield pool
    await pool.close()


async def test_long_answer_acknowledges_reports_progress_and_posts_the_answer(pool):
    chat = Chat()
    jobs = LongAnswers(chat, interval_s=0.2)
    stream = await pool.stream(SMOL, STORY, SamplingParams(max_tokens=120, temperature=0))
    job = await jobs.start("tg", "1", SMOL, stream, expected_s=10)
    assert chat.sent[0].startswith(f"Writing a long answer with {SMOL}")  # acknowledged before any text
    assert jobs.running("tg:1") == [job]
    await asyncio.wait_for(job.task, timeout=300)
    assert job.state == "done" and job.words > 0
    assert chat.sent[-1] == job.answer and job.answer.strip()
    assert chat.messages["1"].startswith(f"Done: {job.words} words")
    assert jobs.running("tg:1") == []


async def test_cancel_stops_generation_and_frees_the_model(pool):
    chat = Chat()
    jobs = LongAnswers(chat, interval_s=0.1)
    stream = await pool.stream(SMOL, STORY, SamplingParams(max_tokens=2000, temperature=0.7, seed=1))
    job = await jobs.start("tg", "2", SMOL, stream, expected_s=60)
    for _ in range(600):
        if any(text.startswith("Writing…") for _, text in chat.edits):
            break
        await asyncio.sleep(0.1)
    assert any(text.startswith("Writing…") for _, text in chat.edits), "no progress edit within 60 s"
    assert await jobs.cancel("tg:2") == 1
    assert job.state == "cancelled"
    assert chat.messages["1"].startswith("Cancelled after")
    assert len(chat.sent) == 1  # no answer posted after a cancel
    worker = pool.loaded[SMOL]
    for _ in range(100):
        if worker.depth == 0:
            break
        await asyncio.sleep(0.1)
    assert worker.depth == 0, "the generation kept running after /cancel"
    assert await jobs.cancel("tg:2") == 0
