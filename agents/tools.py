"""Tools an agent may call, denied unless its file grants them.

A tool call is one JSON object, `{"tool": NAME, "arguments": {...}}`, and the model
cannot write anything else once it starts a call: the sampling grammar (GBNF, built
from the granted tools' JSON schemas with llama-cpp-python's converter) is a lazy
llama.cpp grammar that takes over when the answer opens with "{". The call is still
validated before it runs, because a grammar limits shapes, not values. Whatever goes wrong (an
unknown or ungranted tool, bad arguments, a failing tool) becomes an error text for the
model to read; nothing here raises into the daemon.
"""

from __future__ import annotations

import ast
import json
import math
import operator
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from llama_cpp.llama_grammar import json_schema_to_gbnf
from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_CALLS_PER_TURN = 3
# The grammar is lazy: it starts to apply when the answer opens with "{" (a call), so
# prose answers pay nothing for it and a "{" later in prose (code, JSON examples) is free.
CALL_TRIGGER = r"^\s*(\{[\s\S]*)"


class CalculatorError(ValueError):
    pass


@dataclass
class ToolContext:
    """Who is asking, and the services a tool may use on their behalf."""

    platform: str
    chat_id: str
    sender_id: str | None
    agent: str
    timezone: str
    notes: Any = None  # agents.sessions.Sessions
    jobs: Any = None  # agents.scheduled_jobs.ScheduledJobs


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TimeArgs(_Args):
    timezone: str | None = Field(None, description="IANA zone like Europe/Berlin; default: the user's")


class CalculatorArgs(_Args):
    expression: str = Field(min_length=1, max_length=200)


class NotesArgs(_Args):
    action: Literal["add", "list", "delete"]
    text: str | None = None
    id: int | None = None


class RemindersArgs(_Args):
    request: str = Field(min_length=1, description='e.g. "in 20 minutes remind me to check the oven"')


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    args: type[_Args]
    run: Callable[[Any, ToolContext], Awaitable[str]]


async def _time(args: TimeArgs, ctx: ToolContext) -> str:
    name = args.timezone or ctx.timezone
    try:
        now = datetime.now(ZoneInfo(name))
    except (ZoneInfoNotFoundError, ValueError):
        return f"error: unknown time zone {name!r}"
    return f"{now:%A %Y-%m-%d %H:%M} ({name})"


async def _calculator(args: CalculatorArgs, _ctx: ToolContext) -> str:
    try:
        value = calculate(args.expression)
    except CalculatorError as e:
        return f"error: {e}"
    return f"{args.expression} = {value:g}" if isinstance(value, float) else f"{args.expression} = {value}"


async def _notes(args: NotesArgs, ctx: ToolContext) -> str:
    if args.action == "add":
        if not args.text:
            return "error: 'text' is required to add a note"
        note_id = await ctx.notes.remember(ctx.platform, ctx.chat_id, ctx.agent, args.text)
        return f"saved note {note_id}"
    if args.action == "delete":
        if args.id is None:
            return "error: 'id' is required to delete a note"
        return "deleted" if await ctx.notes.forget(ctx.platform, ctx.chat_id, ctx.agent, args.id) else f"error: no note {args.id}"
    notes = await ctx.notes.notes(ctx.platform, ctx.chat_id, ctx.agent)
    return "\n".join(f"{n.id}: {n.text}" for n in notes) or "no notes"


async def _reminders(args: RemindersArgs, ctx: ToolContext) -> str:
    from agents.schedule import ScheduleError

    try:
        created = await ctx.jobs.create_from_text(args.request, ctx.platform, ctx.chat_id, ctx.sender_id, ctx.agent, ctx.timezone)
    except ScheduleError as e:
        return f"error: {e}"
    return created.confirmation


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool("time", "the current date and time", TimeArgs, _time),
        Tool("calculator", "exact arithmetic: + - * / // % ** and parentheses", CalculatorArgs, _calculator),
        Tool("notes", "the user's pinned notes: add, list or delete", NotesArgs, _notes),
        Tool("reminders", "schedule a reminder or a recurring job in plain language", RemindersArgs, _reminders),
    )
}


@dataclass(frozen=True)
class ToolCall:
    tool: str
    arguments: dict[str, Any]


def call_schema(granted: list[str]) -> dict[str, Any]:
    variants = []
    for name in granted:
        schema = TOOLS[name].args.model_json_schema()
        schema.pop("title", None)
        variants.append({
            "type": "object",
            "properties": {"tool": {"const": name}, "arguments": schema},
            "required": ["tool", "arguments"],
        })
    return variants[0] if len(variants) == 1 else {"oneOf": variants}


def call_grammar(granted: list[str]) -> str:
    """GBNF for exactly one call to a granted tool."""
    return json_schema_to_gbnf(json.dumps(call_schema(granted)))


def describe(granted: list[str]) -> str:
    """What the system prompt tells the model about its tools."""
    if not granted:
        return ""
    lines = [
        "You can use tools. To use one, answer with only a JSON object "
        '{"tool": NAME, "arguments": {...}} and nothing else; you will get the result back. Tools:'
    ]
    for name in granted:
        props = TOOLS[name].args.model_json_schema().get("properties", {})
        lines.append(f"- {name}: {TOOLS[name].description}; arguments: {json.dumps(sorted(props))}")
    return "\n".join(lines)


def parse_call(text: str) -> ToolCall | str | None:
    """A tool call, an error text for the model when it tried one badly, or None for prose."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        data = json.loads(stripped, strict=False)  # the grammar lets raw newlines into strings
    except json.JSONDecodeError as e:
        return f"error: the tool call is not valid JSON ({e.msg})"
    if not isinstance(data, dict) or not isinstance(data.get("tool"), str) or not isinstance(data.get("arguments", {}), dict):
        return 'error: a tool call is {"tool": NAME, "arguments": {...}}'
    return ToolCall(data["tool"], data.get("arguments", {}))


async def run_call(call: ToolCall, granted: list[str], ctx: ToolContext) -> str:
    """Runs a validated call; every failure is returned as text, never raised."""
    tool = TOOLS.get(call.tool)
    if tool is None or call.tool not in granted:
        allowed = ", ".join(granted) or "none"
        return f"error: unknown tool {call.tool!r}; tools you may use: {allowed}"
    try:
        args = tool.args.model_validate(call.arguments)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}" for err in e.errors())
        return f"error: bad arguments for {call.tool}: {problems}"
    try:
        return await tool.run(args, ctx)
    except Exception as e:  # a tool's bug is the model's error message, not the daemon's crash
        return f"error: {call.tool} failed: {type(e).__name__}: {e}"


# -- the calculator ---------------------------------------------------------------

BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPONENT = 10_000
MAX_MAGNITUDE = 10 ** 100


def calculate(expression: str) -> int | float:
    """Arithmetic on numbers only: the expression is parsed, never evaluated as code.
    Names, calls, attributes and anything else are refused, as are results too large
    to be useful (so `9**9**9` cannot eat the box's memory)."""
    try:
        tree = ast.parse(expression.replace("^", "**").replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError:
        raise CalculatorError(f"cannot read {expression!r} as arithmetic") from None
    return _eval(tree.body)


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError("exponent too large")
        try:
            value = BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("result too large") from None
        if isinstance(value, complex):
            raise CalculatorError("the result is not a real number")
        if isinstance(value, int) and abs(value) > MAX_MAGNITUDE or isinstance(value, float) and not math.isfinite(value):
            raise CalculatorError("result too large")
        return value
    raise CalculatorError(f"only numbers and + - * / // % ** are allowed, not {type(node).__name__}")
