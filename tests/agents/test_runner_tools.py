"""The runner's tool loop: a call is run and its result goes back to the model before it
answers; the call grammar is offered (lazily) until the per-turn limit; bad calls come
back to the model as error text. The model here is a scripted stand-in (a real
llama.cpp model cannot be made to call a tool on cue): the test is about the loop, and
test_tools.py shows the grammar working on the real SmolLM2."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from agents import tools
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
    assert await ask(runner, "What is 17*23?") == "17 × 23 is 391."
    (first, first_params), (second, _) = pool.seen
    assert first_params.grammar == tools.call_grammar(["time", "calculator", "notes", "reminders"])
    assert first_params.grammar_trigger == tools.CALL_TRIGGER
    assert "calculator: exact arithmetic" in first[0]["content"], "the system prompt describes the granted tools"
    assert second[-2] == {"role": "assistant", "content": ' {"tool": "calculator", "arguments": {"expression": "17*23"}}'}
    assert second[-1]["content"].startswith("Tool result: 17*23 = 391")
    turns = await runner.sessions.history("telegram", "5", "assistant")
    assert [(t.role, t.text) for t in turns] == [("user", "What is 17*23?"), ("assistant", "17 × 23 is 391.")]


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
