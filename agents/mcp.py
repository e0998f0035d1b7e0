"""The MCP client: the owner's own services as agent tools, over the official `mcp` SDK.

Each `[mcp.servers.NAME]` is either a command the box starts and talks to over stdio,
or a streamable HTTP URL (headers from the secrets store). One supervisor task per
server holds the connection (the SDK's context managers must be entered and left in
one task), lists the tools on connect, re-lists them every `CHECK_S` (which is also how
a dead server is noticed) and reconnects with exponential backoff when the server dies;
`health()` is what `aibox status` and doctor show. A tool is named `NAME.tool`; a call
has the server's time limit and its result is cut to the server's budget with a note.
May import: aibox.config, aibox.secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

from aibox.config import McpServerConfig
from aibox.secrets import SecretError, redact

log = logging.getLogger(__name__)

CHECK_S = 30.0
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 300.0
CONNECT_TIMEOUT_S = 30.0
STOP_S = 10.0


class McpToolError(RuntimeError):
    """A call that could not be made or failed; the message is for the model."""


@dataclass(frozen=True)
class McpTool:
    server: str
    name: str  # the server's own name of the tool
    description: str
    input_schema: dict[str, Any]

    @property
    def qualified(self) -> str:
        return f"{self.server}.{self.name}"


@dataclass
class ServerState:
    name: str
    config: McpServerConfig
    state: str = "starting"  # starting, up, down, stopped
    tools: dict[str, McpTool] = field(default_factory=dict)
    restarts: int = 0
    last_error: str | None = None
    next_retry_at: float | None = None
    since: float = field(default_factory=time.time)
    client: Client | None = None
    task: asyncio.Task | None = None
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class McpClient:
    """All configured MCP servers. `start()` connects them; `reload()` applies a new config."""

    def __init__(self, servers: dict[str, McpServerConfig], log_dir: Path | None = None) -> None:
        self.configs = {n: c for n, c in servers.items() if c.enabled}
        self.log_dir = log_dir
        self.servers: dict[str, ServerState] = {}

    async def start(self, wait_s: float = CONNECT_TIMEOUT_S) -> None:
        """Starts every server and waits (at most `wait_s`) for each first connection attempt."""
        for name, config in self.configs.items():
            self._launch(name, config)
        await self._wait_ready(list(self.servers.values()), wait_s)

    async def reload(self, servers: dict[str, McpServerConfig], wait_s: float = CONNECT_TIMEOUT_S) -> None:
        """SIGHUP: servers whose config changed or that are new are (re)started, removed ones
        stopped, and the others re-list their tools."""
        wanted = {n: c for n, c in servers.items() if c.enabled}
        for name in list(self.servers):
            if name not in wanted or wanted[name] != self.servers[name].config:
                await self._stop(self.servers.pop(name))
        self.configs = wanted
        started = []
        for name, config in wanted.items():
            if name in self.servers:
                await self._refresh(self.servers[name])
            else:
                started.append(self._launch(name, config))
        await self._wait_ready(started, wait_s)

    async def close(self) -> None:
        for state in list(self.servers.values()):
            await self._stop(state)
        self.servers.clear()

    # -- what the tools see ----------------------------------------------------------

    def tools(self) -> dict[str, McpTool]:
        """Every tool of every connected server, by qualified name."""
        return {t.qualified: t for s in self.servers.values() if s.state == "up" for t in s.tools.values()}

    def tool(self, qualified: str) -> McpTool | None:
        return self.tools().get(qualified)

    def expand(self, grants: list[str]) -> list[str]:
        """The qualified names the grants `SERVER.tool` and `SERVER.*` cover right now."""
        names = []
        for qualified in self.tools():
            server = qualified.split(".", 1)[0]
            if qualified in grants or f"{server}.*" in grants:
                names.append(qualified)
        return names

    def needs_approval(self, qualified: str) -> bool:
        state = self.servers.get(qualified.split(".", 1)[0])
        return bool(state and state.config.approval)

    async def call(self, qualified: str, arguments: dict[str, Any]) -> str:
        server_name, _, tool_name = qualified.partition(".")
        state = self.servers.get(server_name)
        if state is None or state.state != "up" or state.client is None:
            why = f" ({state.last_error})" if state is not None and state.last_error else ""
            raise McpToolError(f"the MCP server {server_name!r} is not connected{why}; try again later")
        tool = state.tools.get(tool_name)
        if tool is None:
            raise McpToolError(f"the MCP server {server_name!r} has no tool {tool_name!r}")
        try:
            jsonschema.validate(arguments, tool.input_schema)
        except jsonschema.ValidationError as e:
            where = ".".join(str(p) for p in e.absolute_path) or "arguments"
            raise McpToolError(f"bad arguments for {qualified}: {where}: {e.message}") from None
        limit = state.config.timeout_s
        try:
            async with asyncio.timeout(limit):
                result = await state.client.call_tool(tool_name, arguments, read_timeout_seconds=limit)
        except TimeoutError:
            raise McpToolError(f"{qualified} did not answer within {limit:g} s") from None
        except Exception as e:  # the SDK raises MCPError, transport and validation errors alike
            message = redact(str(e)) or type(e).__name__
            if _is_connection_error(e):
                state.client, state.state, state.last_error = None, "down", message
                state.lost.set()
                raise McpToolError(f"the MCP server {server_name!r} went away during the call ({message}); it is being restarted") from None
            if "timed out" in message:
                raise McpToolError(f"{qualified} did not answer within {limit:g} s") from None
            raise McpToolError(f"{qualified} failed: {message}") from None
        return _render(result, state.config.max_result_chars)

    def health(self) -> dict[str, dict[str, Any]]:
        """Per server: state, tool count, restarts, the last error and when the next retry is."""
        now = time.time()
        return {
            name: {
                "state": s.state,
                "transport": "stdio" if s.config.command else "http",
                "tools": len(s.tools) if s.state == "up" else 0,
                "restarts": s.restarts,
                "last_error": s.last_error,
                "retry_in_s": round(max(0.0, s.next_retry_at - now), 1) if s.state == "down" and s.next_retry_at else None,
                "since": s.since,
            }
            for name, s in self.servers.items()
        }

    # -- supervision -------------------------------------------------------------------

    def _launch(self, name: str, config: McpServerConfig) -> ServerState:
        state = ServerState(name, config)
        self.servers[name] = state
        state.task = asyncio.create_task(self._supervise(state), name=f"mcp:{name}")
        return state

    async def _wait_ready(self, states: list[ServerState], wait_s: float) -> None:
        if states:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await asyncio.gather(*(s.ready.wait() for s in states))

    async def _stop(self, state: ServerState) -> None:
        state.state = "stopped"
        if state.task is not None:
            state.task.cancel()
            await asyncio.wait([state.task], timeout=STOP_S)  # the SDK's own shutdown is bounded; so is this wait

    async def _supervise(self, state: ServerState) -> None:
        backoff = BACKOFF_FIRST_S
        while True:
            state.lost.clear()
            connected_at = None
            try:
                async with contextlib.AsyncExitStack() as stack:
                    transport = await self._transport(state, stack)
                    async with asyncio.timeout(CONNECT_TIMEOUT_S):
                        client = await stack.enter_async_context(Client(transport, cache=None))
                        await self._list(state, client)
                    state.client, state.state, state.last_error = client, "up", None
                    state.since, state.next_retry_at, connected_at = time.time(), None, time.monotonic()
                    state.ready.set()
                    log.info("MCP server %s connected: %d tools", state.name, len(state.tools))
                    while not state.lost.is_set():
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(CHECK_S):
                                await state.lost.wait()
                        if not state.lost.is_set():
                            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                                await self._list(state, client)
                    raise ConnectionError("the connection was lost")
            except asyncio.CancelledError:
                state.client = None
                raise
            except BaseException as e:  # noqa: BLE001 - anyio wraps transport failures in exception groups
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                state.client, state.state = None, "down"
                state.last_error = redact(_describe(e))
                state.since = time.time()
                if connected_at is not None and time.monotonic() - connected_at > BACKOFF_MAX_S:
                    backoff = BACKOFF_FIRST_S  # it ran well for a while: this is a fresh failure
                state.next_retry_at = time.time() + backoff
                state.ready.set()
                log.warning("MCP server %s is down (%s); retrying in %.1f s", state.name, state.last_error, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            state.restarts += 1
            state.state = "starting"

    async def _transport(self, state: ServerState, stack: contextlib.AsyncExitStack) -> Any:
        config = state.config
        try:
            if config.command is not None:
                env = {k: v.get() for k, v in config.env.items()}
                errlog = stack.enter_context(self._errlog(state.name))
                return stdio_client(StdioServerParameters(command=config.command, args=config.args, env=env), errlog=errlog)
            headers = {k: v.get() for k, v in config.headers.items()}
        except SecretError as e:
            raise ConnectionError(f"secret: {e}") from None
        http = await stack.enter_async_context(create_mcp_http_client(headers=headers))
        return streamable_http_client(config.url, http_client=http)

    def _errlog(self, name: str) -> Any:
        """Where a stdio server's stderr goes: <logs>/mcp-NAME.log, else nowhere."""
        if self.log_dir is None:
            return open("/dev/null", "w")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return open(self.log_dir / f"mcp-{name}.log", "a", encoding="utf-8")

    async def _list(self, state: ServerState, client: Client) -> None:
        tools: dict[str, McpTool] = {}
        cursor = None
        while True:
            page = await client.list_tools(cursor=cursor, cache_mode="refresh")
            for t in page.tools:
                tools[t.name] = McpTool(state.name, t.name, (t.description or t.title or t.name).strip(), dict(t.input_schema or {"type": "object"}))
            cursor = page.next_cursor
            if cursor is None:
                break
        state.tools = tools

    async def _refresh(self, state: ServerState) -> None:
        if state.client is not None and state.state == "up":
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await self._list(state, state.client)
            except Exception:  # a failed re-list means the connection is gone: the supervisor reconnects
                state.lost.set()


def _is_connection_error(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, (ConnectionError, OSError)) or "connection closed" in text or "connect" in text and "error" in type(e).__name__.lower()


def _describe(e: BaseException) -> str:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _render(result: Any, budget: int) -> str:
    parts = []
    for block in result.content:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource" and getattr(block.resource, "text", None) is not None:
            parts.append(block.resource.text)
        else:
            parts.append(f"[{kind or 'content'}: {getattr(block, 'mime_type', None) or 'not text'}, not shown]")
    text = "\n".join(parts)
    if not text and result.structured_content is not None:
        text = str(result.structured_content)
    if result.is_error:
        text = f"error: {text or 'the tool reported an error'}"
    if len(text) > budget:
        text = text[:budget] + f"\n[result cut to {budget} of {len(text)} characters]"
    return text
