"""The runner's tool loop: a call is run and its result goes back to the model before it
answers; the call grammar is offered (lazily) until the per-turn limit; bad calls come
back to the model as error text. The model here is a scripted stand-in (a real
llama.cpp model cannot be made to call a tool on cue): the test is about the loop, and
test_tools.py shows the grammar working on the real SmolLM2."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agents import tool_calls, tools
from agents.long_answers import LongAnswers
from agents.tables import JobInfo
from aibox.router import Decision
from agents.runner import AgentRunner
from aibox.config import parse_config
from aibox.daemon import Daemon
from aibox.store import Store
from connectors.base import InboundMessage


@dataclass
class ScriptedStream:
    pieces: list[str]
    model: str = "smollm2-135m-instruct"
    stats: None = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._go()

    def cancel(self) -> None: ...

    async def _go(self) -> AsyncIterator[str]:
        for piece in self.pieces:
            yield piece


class Words:
    n_ctx = 4096

    def tokenize(self, text: str, special: bool) -> list[str]:
        return text.split()


@dataclass
class ScriptedPool:
    answers: list[list[str]]
    seen: list[tuple[list, object]] = field(default_factory=list)

    async def worker(self, _model: str):  # noqa: ANN201 - what the runner reads of a worker
        return type("W", (), {"model": Words()})()

    async def stream(self, _model: str, messages: list, params: object) -> ScriptedStream:
        self.seen.append((list(messages), params))
        return ScriptedStream(self.answers.pop(0))

    async def close(self) -> None: ...


def runner_with(tmp_path: Path, answers: list[list[str]]) -> tuple[AgentRunner, ScriptedPool]:
    config = parse_config({"state_dir": str(tmp_path), "models_dir": str(tmp_path / "models")})
    daemon = Daemon(config)
    pool = ScriptedPool(answers)
    daemon.pool = pool  # the scripted stand-in for llama.cpp, see the module docstring
    return daemon.build(Store.open(config.store_url)).runner, pool


async def ask(runner: AgentRunner, text: str) -> str:
    return "".join([p async for p in runner(InboundMessage("telegram", "5", "5", "1", text))])


async def test_a_tool_call_runs_and_its_result_reaches_the_model(tmp_path: Path) -> None:
    runner, pool = runner_with(tmp_path, [
        [" ", '{"tool": "calculator", ', '"arguments": {"expression": "17*23"}}'],
        ["17 × 23 is ", "391."],
    ])
    assert await ask(runner, "Multiply seventeen by twenty-three") == "17 × 23 is 391."
    (first, first_params), (second, _) = pool.seen
    assert first_params.grammar == tools.call_grammar(["time", "calculator", "notes", "reminders"])
    assert first_params.grammar_trigger == tools.CALL_TRIGGER
    assert "calculator: exact arithmetic" in first[0]["content"], "the system prompt describes the granted tools"
    assert second[-2] == {"role": "assistant", "content": '{"tool": "calculator", "arguments": {"expression": "17*23"}}'}
    assert second[-1]["content"].startswith("Tool result: 17*23 = 391")
    turns = await runner.sessions.history("telegram", "5", "assistant")
    assert [(t.role, t.text) for t in turns] == [("user", "Multiply seventeen by twenty-three"), ("assistant", "17 × 23 is 391.")]


async def test_bad_calls_go_back_as_errors_and_the_limit_ends_the_loop(tmp_path: Path) -> None:
    calls = [['{"tool": "shell", "arguments": {"cmd": "rm -rf /"}}'],
             ['{"tool": "calculator", "arguments": {"expr": "1"}}'],
             ['{"tool": "calculator", "arguments": {"expression": "__import__(\'os\')"}}'],
             ["I could not work it out."]]
    runner, pool = runner_with(tmp_path, calls)
    assert await ask(runner, "Break things") == "I could not work it out."
    results = [messages[-1]["content"] for messages, _ in pool.seen[1:]]
    assert results[0].startswith("Tool result: error: unknown tool 'shell'")
    assert results[1].startswith("Tool result: error: bad arguments for calculator: expression: Field required; expr: Extra inputs")
    assert results[2].startswith("Tool result: error: only numbers and + - * / // % ** are allowed, not Call")
    assert pool.seen[-1][1].grammar is None, "after the last allowed call the model must answer in prose"


async def test_prose_that_starts_like_text_streams_untouched(tmp_path: Path) -> None:
    runner, pool = runner_with(tmp_path, [["Hello", " there, {curly} friend."]])
    assert await ask(runner, "hi") == "Hello there, {curly} friend."
    assert len(pool.seen) == 1


# -- no answer path may post a tool call as text --------------------------------------

CALL_FORMS = {
    "fenced json after prose": ["Sure! ```json\n", '{"tool": "calculator", ', '"arguments": {"expression": "2+2"}}', "\n```"],
    "qwen tool_call tags": ["<tool_", 'call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>'],
    "name and parameters": ['{"name": "calculator", "parameters": {"expression": "2+2"}}'],
    "bare object mid-answer": ["Let me check. ", '{"tool": "calculator", "arguments": {"expression": "2+2"}}', " The result is 5."],
}


def assert_no_raw_call(text: str) -> None:
    for marker in ('"tool"', '"name"', "<tool_call>", "```json", '"arguments"', '"parameters"'):
        assert marker not in text, f"a raw tool call reached the user: {text!r}"


@pytest.mark.parametrize("form", list(CALL_FORMS))
async def test_streamed_turn_runs_a_call_in_any_form(tmp_path: Path, form: str) -> None:
    runner, pool = runner_with(tmp_path, [CALL_FORMS[form], ["That makes 4."]])
    reply = await ask(runner, "Add two and two for me")
    assert_no_raw_call(reply)
    assert reply.endswith("That makes 4.")
    assert pool.seen[1][0][-1]["content"].startswith("Tool result: 2+2 = 4"), "the call ran and its result went back"


async def test_a_call_past_the_limit_is_dropped_and_an_error_is_never_the_answer(tmp_path: Path) -> None:
    bad = ['{"tool": "calculator", "arguments": {"expression": "x"}}']
    runner, _ = runner_with(tmp_path, [bad, bad, bad, bad])
    assert await ask(runner, "Keep adding") == "I could not finish that with the tools I have; please ask again in other words."


async def test_a_call_past_the_limit_is_dropped_not_posted(tmp_path: Path) -> None:
    call = ['{"tool": "calculator", "arguments": {"expression": "1+1"}}']
    runner, pool = runner_with(tmp_path, [call, call, call, ["```json\n", *call, "\n```"]])
    reply = await ask(runner, "Keep adding")
    assert_no_raw_call(reply)
    assert reply == "1+1 = 2", "past the limit the last tool result is the answer, the call is not"


async def test_scheduled_job_answer_runs_its_call(tmp_path: Path) -> None:
    runner, pool = runner_with(tmp_path, [CALL_FORMS["qwen tool_call tags"], ["Four."]])
    job = JobInfo(id="j1", platform="telegram", chat_id="5", sender_id="5", agent="assistant", kind="ask",
                  task="add two and two", schedule="every day", timezone="UTC")
    answer = await runner.ask(job)
    assert answer == "Four."
    assert pool.seen[1][0][-1]["content"].startswith("Tool result: 2+2 = 4")


@dataclass
class Poster:
    """The outbound path's side of a long answer, recorded (the real one needs a chat platform)."""

    sent: list[str] = field(default_factory=list)
    platforms: set[str] = field(default_factory=lambda: {"telegram"})

    async def deliver(self, platform: str, chat_id: str, text: str) -> str:
        self.sent.append(text)
        return str(len(self.sent))

    async def edit(self, platform: str, chat_id: str, message_id: str, text: str) -> str:
        return message_id


async def test_long_background_answer_runs_its_call(tmp_path: Path) -> None:
    runner, pool = runner_with(tmp_path, [["```json\n", '{"tool": "calculator", "arguments": {"expression": "12345*6789"}}', "\n```"],
                                          ["12345 × 6789 = 83810205."]])
    poster = Poster()
    runner.long_answers = LongAnswers(poster)
    # the router's length prediction, stood in: this message is to be answered in the background
    runner.router.decide = lambda *a, **k: Decision("smollm2-135m-instruct", 900, "long", "chat", "stand-in", [], [], "test")
    definition = runner.registry.default()
    ack = "".join([p async for p in runner.turn(definition, "telegram", "5", "5", "Write it out: 12345 * 6789 using the tool", "telegram")])
    assert ack.startswith("On it")
    for job in list(runner.long_answers._jobs.get("telegram:5", ())):
        await job.task
    assert poster.sent[-1] == "12345 × 6789 = 83810205."
    for text in poster.sent:
        assert_no_raw_call(text)


def test_the_splitter_leaves_prose_code_and_json_examples_alone() -> None:
    text = 'Use `a < b` and {curly} braces.\n```python\nreturn {"tool": 1}\n```\nOr ```json\n{"name": "Alice", "age": 3}\n```'
    splitter = tool_calls.CallSplitter()
    shown = "".join(splitter.feed(ch) for ch in text) + splitter.finish()
    assert shown == text and splitter.call is None


@pytest.mark.parametrize(
    ("text", "call"),
    [("17 * 23", ("calculator", {"expression": "17 * 23"})),
     ("What is 12345 * 6789? Use the calculator.", ("calculator", {"expression": "12345 * 6789"})),
     ("what's (2+3)^2?", ("calculator", {"expression": "(2+3)^2"})),
     ("What time is it now?", ("time", {})),
     ("what's the date today", ("time", {})),
     ("Write a Python function that adds two numbers", None),
     ("In 1984, what happened?", None),
     ("2024", None)],
)
def test_calls_a_message_plainly_asks_for(text: str, call: tuple | None) -> None:
    found = tool_calls.obvious_call(text, ["time", "calculator"])
    assert (found.tool, found.arguments) == call if call else found is None
    assert tool_calls.obvious_call(text, []) is None, "only granted tools"


async def test_time_and_arithmetic_through_the_real_model(real_box, qwen05_path: Path) -> None:  # noqa: ANN001 - fixture
    """The real runner, router and Qwen2.5 0.5B through llama.cpp at temperature 0: the
    answers carry the tools' results, not invented ones, and no call text."""
    agent = ('name = "helper"\nsystem_prompt = "You are a helpful assistant. Answer briefly."\n'
             'tools = ["time", "calculator"]\n[model]\npolicy = "pinned"\nname = "qwen2.5-coder-0.5b-instruct"\n'
             "temperature = 0.0\nmax_tokens = 48\n")
    async with real_box("helper", agent) as runner:
        product = await ask(runner, "17 * 23")
        assert "391" in product and "341" not in product, product
        assert_no_raw_call(product)
        before = datetime.now(ZoneInfo("UTC"))
        now = await ask(runner, "What time is it now?")
        after = datetime.now(ZoneInfo("UTC"))
        assert_no_raw_call(now)
        assert any(f"{t:%H:%M}" in now for t in (before, after)), now
        assert_no_raw_call(await ask(runner, "Write a Python function that adds two numbers"))
