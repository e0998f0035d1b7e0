"""Tools: deny by default, validated calls, errors as text for the model (never an
exception in the daemon), a calculator that cannot run code, and tool calls whose shape
llama.cpp's grammar enforces on the real SmolLM2 model."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents import tools
from agents.tools import CalculatorError, ToolCall, ToolContext, calculate, parse_call, run_call
from models.catalog import Catalog
from models.runtime import LocalModel
from models.sampling import SamplingParams

CTX = ToolContext("telegram", "1", "1", "assistant", "UTC")


@pytest.mark.parametrize(
    ("expression", "value"),
    [("2*(3+4)**2/7", 14.0), ("-3^2", -9), ("17 * 23", 391), ("7 // 2 + 7 % 2", 4), ("1.5e3 - 1", 1499.0)],
)
def test_calculator_does_arithmetic(expression: str, value: float) -> None:
    assert calculate(expression) == value


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("__import__('os').system('touch /tmp/pwned-by-calculator')", "not Call"),
        ("open('/etc/passwd').read()", "not Call"),
        ("(1).__class__", "not Attribute"),
        ("x + 1", "not Name"),
        ("[1, 2][0]", "not Subscript"),
        ("lambda: 1", "not Lambda"),
        ("9**9**9", "exponent too large"),
        ("10**99 * 10**99", "result too large"),
        ("1/0", "division by zero"),
        ("(-8) ** 0.5", "not a real number"),
        ("'a' * 3", "not Constant"),
        ("2 +", "cannot read"),
    ],
)
def test_calculator_refuses_everything_but_arithmetic(expression: str, problem: str) -> None:
    with pytest.raises(CalculatorError, match=problem):
        calculate(expression)
    assert not Path("/tmp/pwned-by-calculator").exists()


async def test_calls_are_validated_and_errors_go_back_as_text() -> None:
    granted = ["calculator", "time"]
    assert await run_call(ToolCall("calculator", {"expression": "6*7"}), granted, CTX) == "6*7 = 42"
    assert "error: unknown tool 'shell'; tools you may use: calculator, time" == await run_call(ToolCall("shell", {"cmd": "ls"}), granted, CTX)
    assert (await run_call(ToolCall("notes", {"action": "list"}), granted, CTX)).startswith("error: unknown tool 'notes'"), "ungranted is denied"
    assert (await run_call(ToolCall("calculator", {"expression": "1", "x": 2}), granted, CTX)).startswith("error: bad arguments for calculator: x:")
    assert (await run_call(ToolCall("calculator", {}), granted, CTX)) == "error: bad arguments for calculator: expression: Field required"
    assert (await run_call(ToolCall("calculator", {"expression": 5}), granted, CTX)).startswith("error: bad arguments")
    assert await run_call(ToolCall("calculator", {"expression": "os.system('x')"}), granted, CTX) == "error: only numbers and + - * / // % ** are allowed, not Call"
    assert await run_call(ToolCall("time", {"timezone": "Mars/Olympus"}), granted, CTX) == "error: unknown time zone 'Mars/Olympus'"
    # A tool that blows up (here: no notes service) is the model's error message, not the daemon's exception.
    assert (await run_call(ToolCall("notes", {"action": "list"}), ["notes"], CTX)).startswith("error: notes failed: AttributeError")


def test_parse_call() -> None:
    assert parse_call("The answer is 4.") is None
    assert parse_call('{"tool": "time", "arguments": {}}') == ToolCall("time", {})
    assert parse_call('{"tool": "calculator", "arguments": {"expression": "1+') .startswith("error: the tool call is not valid JSON")
    assert parse_call('{"name": "time"}') == 'error: a tool call is {"tool": NAME, "arguments": {...}}'


def test_no_tools_no_grammar_and_no_prompt() -> None:
    assert tools.describe([]) == ""
    assert 'tool ::= "\\"time\\""' in tools.call_grammar(["time"]) and "calculator" not in tools.call_grammar(["time"])


@pytest.fixture(scope="module")
def smollm2(smollm2_path: Path) -> LocalModel:
    card = Catalog.load().get("smollm2-135m-instruct")
    model = LocalModel(card, smollm2_path, threads=2, n_ctx=2048, state_cache_bytes=0)
    yield model
    model.close()


def _generate(model: LocalModel, messages: list, params: SamplingParams) -> tuple[str, str]:
    out: list[str] = []
    stats = model.generate(model.chat_tokens(messages), params, out.append)
    return "".join(out), stats.finish_reason


async def test_grammar_forces_a_valid_call_from_the_real_model(smollm2: LocalModel) -> None:
    granted = ["calculator", "time"]
    messages = [{"role": "system", "content": tools.describe(granted)}, {"role": "user", "content": "What is 17*23?"}]
    text, finish = _generate(smollm2, messages, SamplingParams(max_tokens=64, temperature=0.7, seed=1, grammar=tools.call_grammar(granted)))
    assert finish == "stop", f"the grammar only lets the model stop after a complete call: {text!r}"
    call = parse_call(text)
    assert isinstance(call, ToolCall) and call.tool in granted, text
    result = await run_call(call, granted, CTX)
    assert isinstance(result, str) and result, "whatever the model wrote, the tool answers with text"


def test_lazy_grammar_leaves_prose_alone_even_with_braces_later(smollm2: LocalModel) -> None:
    messages = [{"role": "user", "content": "Show a JSON example of a person with a name field."}]
    free, _ = _generate(smollm2, messages, SamplingParams(max_tokens=24, temperature=0))
    lazy, _ = _generate(smollm2, messages, SamplingParams(max_tokens=24, temperature=0, grammar=tools.call_grammar(["time"]),
                                                         grammar_trigger=tools.CALL_TRIGGER))
    assert not free.lstrip().startswith("{") and "{" in free, f"the prompt should give prose with JSON inside: {free!r}"
    assert lazy == free
