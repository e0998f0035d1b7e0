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
import hashlib
import json
import math
import operator
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from llama_cpp.llama_grammar import json_schema_to_gbnf
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.tool_calls import read_call, unwrap

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
    workspaces: Any = None  # agents.workspace.Workspaces
    web: Any = None  # agents.web_fetch.WebFetcher
    sandbox: Any = None  # agents.sandbox.Sandbox
    skills: Any = None  # agents.skills.Skills
    allowed_skills: tuple[str, ...] = ()  # the agent file's `skills`
    mcp: Any = None  # agents.mcp.McpClient


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


class FilesArgs(_Args):
    action: Literal["list", "read", "write", "append", "search", "edit"]
    path: str = Field(".", description="relative to your workspace")
    content: str | None = Field(None, description="for write and append")
    query: str | None = Field(None, description="for search: text to find, case-insensitive")
    old: str | None = Field(None, description="for edit: the exact text to replace (must occur once)")
    new: str | None = Field(None, description="for edit: the replacement")
    offset: int = Field(0, ge=0, description="for read: the character to start at")


class WebFetchArgs(_Args):
    url: str = Field(min_length=1, description="an http:// or https:// URL")


class RunArgs(_Args):
    language: Literal["python", "shell"]
    code: str = Field(min_length=1)


class SkillArgs(_Args):
    name: str = Field(min_length=1)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    args: type[_Args]
    run: Callable[[Any, ToolContext], Awaitable[str]]
    needs_approval: bool = False  # the owner approves each call (the approval flow reads this)


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


async def _files(args: FilesArgs, ctx: ToolContext) -> str:
    from agents.workspace import WorkspaceError

    try:
        ws = ctx.workspaces.for_agent(ctx.agent)
        if args.action == "list":
            return ws.list(args.path)
        if args.action == "read":
            return ws.read(args.path, args.offset)
        if args.action == "search":
            return ws.search(args.query or "", args.path)
        if args.action == "edit":
            if args.old is None or args.new is None:
                return "error: edit needs 'old' (the exact text) and 'new'"
            return ws.edit(args.path, args.old, args.new)
        if args.content is None:
            return f"error: {args.action} needs 'content'"
        return ws.write(args.path, args.content) if args.action == "write" else ws.append(args.path, args.content)
    except WorkspaceError as e:
        return f"error: {e}"


async def _web_fetch(args: WebFetchArgs, ctx: ToolContext) -> str:
    from agents.web_fetch import WebFetchError

    try:
        page = await ctx.web.fetch(args.url)
    except WebFetchError as e:
        return f"error: {e}"
    return page.render(ctx.web.settings.max_chars)


async def _run(args: RunArgs, ctx: ToolContext) -> str:
    from agents.sandbox import SandboxUnavailable

    workspace = ctx.workspaces.for_agent(ctx.agent).root
    try:
        result = await ctx.sandbox.run(workspace, args.language, args.code, network=ctx.agent in ctx.sandbox.settings.network_agents)
    except SandboxUnavailable as e:
        return f"error: refused to run: {e}. Code is never run outside a sandbox."
    return result.text()


async def _skill(args: SkillArgs, ctx: ToolContext) -> str:
    return ctx.skills.load(args.name, list(ctx.allowed_skills))


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool("time", "the current date and time", TimeArgs, _time),
        Tool("calculator", "exact arithmetic: + - * / // % ** and parentheses", CalculatorArgs, _calculator),
        Tool("notes", "the user's pinned notes: add, list or delete", NotesArgs, _notes),
        Tool("reminders", "schedule a reminder or a recurring job in plain language", RemindersArgs, _reminders),
        Tool("files", "your workspace files: list, read, write, append, search, or edit by exact replacement", FilesArgs, _files),
        Tool("web_fetch", "fetch a web page and read its text", WebFetchArgs, _web_fetch),
        Tool("run", "run Python or shell code in a sandbox whose only writable folder is your workspace", RunArgs, _run,
             needs_approval=True),
        Tool("skill", "load the instructions of one of your skills by name", SkillArgs, _skill),
    )
}


def _mcp_tool(name: str, mcp: Any) -> Tool | None:
    """An MCP server's tool in the registry's shape; its arguments are checked against the
    server's own JSON schema when it is called (agents/mcp.py), not by a pydantic model."""
    found = mcp.tool(name) if mcp is not None else None
    if found is None:
        return None
    schema = found.input_schema

    class McpArgs:
        @staticmethod
        def model_json_schema() -> dict[str, Any]:
            return dict(schema)

        @staticmethod
        def model_validate(data: Any) -> Any:
            return data

    async def run(args: dict[str, Any], ctx: ToolContext) -> str:
        from agents.mcp import McpToolError

        try:
            return await ctx.mcp.call(name, args)
        except McpToolError as e:
            return f"error: {e}"

    return Tool(name, found.description, McpArgs, run, needs_approval=mcp.needs_approval(name))  # type: ignore[arg-type]


def resolve(name: str, mcp: Any = None) -> Tool | None:
    """A built-in tool, or a tool an MCP server offers now (`SERVER.tool`)."""
    return TOOLS.get(name) or (_mcp_tool(name, mcp) if "." in name else None)


def expand(granted: list[str], mcp: Any = None) -> list[str]:
    """The concrete tool names an agent's grants cover now: built-ins as listed, and
    `SERVER.tool` / `SERVER.*` as the connected servers offer them."""
    names = [g for g in granted if g in TOOLS]
    return names + (mcp.expand(granted) if mcp is not None else [])


def is_granted(name: str, granted: list[str]) -> bool:
    return name in granted or ("." in name and f"{name.split('.', 1)[0]}.*" in granted)


@dataclass(frozen=True)
class ToolAudit:
    """What the audit log records of one call: never the arguments' text, only a digest."""

    agent: str
    tool: str
    args_digest: str
    result_chars: int
    duration_ms: int
    ok: bool
    needs_approval: bool


def argument_digest(arguments: Any) -> str:
    """sha256 of the canonical JSON of the arguments: equal calls match, and nothing of them is readable."""
    canonical = json.dumps(arguments, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


async def run_audited(call: ToolCall, granted: list[str], ctx: ToolContext) -> tuple[str, ToolAudit]:
    """`run_call` and the audit record of it."""
    started = time.monotonic()
    result = await run_call(call, granted, ctx)
    tool = resolve(call.tool, ctx.mcp)
    audit = ToolAudit(ctx.agent, call.tool, argument_digest(call.arguments), len(result),
                      round((time.monotonic() - started) * 1000), not result.startswith("error:"),
                      bool(tool and tool.needs_approval))
    return result, audit


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
    stripped = unwrap(text)  # a call in a ```json fence or Qwen's <tool_call> tags is still a call
    if not stripped.startswith("{"):
        return None
    try:
        data, _ = json.JSONDecoder(strict=False).raw_decode(stripped)  # the grammar lets raw newlines into strings
    except json.JSONDecodeError as e:
        return f"error: the tool call is not valid JSON ({e.msg})"
    found = read_call(data)
    if found is None or not isinstance(found.arguments, dict):
        return 'error: a tool call is {"tool": NAME, "arguments": {...}}'
    return ToolCall(found.tool, found.arguments)


async def run_call(call: ToolCall, granted: list[str], ctx: ToolContext) -> str:
    """Runs a validated call; every failure is returned as text, never raised."""
    tool = resolve(call.tool, ctx.mcp)
    if tool is None or not is_granted(call.tool, granted):
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
