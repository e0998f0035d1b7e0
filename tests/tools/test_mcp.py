"""The MCP client against real MCP servers written with the SDK (tests/tools/mcp_server.py):
over stdio and over streamable HTTP on 127.0.0.1 with a bearer token from the secrets
store; tools named SERVER.tool, granted per agent, time limits, result budgets, a dead
server restarted with backoff, and health as doctor shows it."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agents import mcp as mcp_module
from agents import tools
from agents.mcp import McpClient, McpToolError
from agents.tools import ToolCall, ToolContext
from aibox.config import McpServerConfig

SERVER = str(Path(__file__).with_name("mcp_server.py"))


def stdio(**kwargs) -> McpServerConfig:
    return McpServerConfig(command=sys.executable, args=[SERVER], **kwargs)


@pytest.fixture
async def client():
    made: list[McpClient] = []

    async def make(servers: dict[str, McpServerConfig]) -> McpClient:
        c = McpClient(servers)
        made.append(c)
        await c.start()
        return c

    yield make
    for c in made:
        await c.close()


@pytest.fixture(scope="module")
def http_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MCP_TEST_TOKEN": "tok-3b9f2c"}
    proc = subprocess.Popen([sys.executable, SERVER, "--http", str(port)], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


async def test_stdio_tools_are_discovered_and_called(client) -> None:
    c = await client({"calc": stdio()})
    assert {"calc.add", "calc.shout", "calc.slow", "calc.big"} <= set(c.tools())
    assert c.tool("calc.add").input_schema["required"] == ["a", "b"]
    assert await c.call("calc.add", {"a": 2, "b": 40}) == "42"
    assert c.health()["calc"]["state"] == "up" and c.health()["calc"]["transport"] == "stdio"


async def test_bad_arguments_time_limit_budget_and_tool_errors(client) -> None:
    c = await client({"calc": stdio(timeout_s=1, max_result_chars=100)})
    with pytest.raises(McpToolError, match="bad arguments for calc.add"):
        await c.call("calc.add", {"a": "two"})
    with pytest.raises(McpToolError, match="did not answer within 1 s"):
        await c.call("calc.slow", {"seconds": 10})
    cut = await c.call("calc.big", {"chars": 5000})
    assert cut.startswith("x" * 100) and cut.endswith("[result cut to 100 of 5000 characters]")
    assert (await c.call("calc.fail", {})).startswith("error: ")
    with pytest.raises(McpToolError, match="has no tool"):
        await c.call("calc.nope", {})


async def test_dead_server_is_restarted_with_backoff(client, monkeypatch) -> None:
    monkeypatch.setattr(mcp_module, "BACKOFF_FIRST_S", 0.5)
    c = await client({"calc": stdio()})
    with pytest.raises(McpToolError, match="went away"):
        await c.call("calc.crash", {})
    health = c.health()["calc"]
    assert health["state"] in ("down", "starting") and health["last_error"]
    with pytest.raises(McpToolError, match="not connected"):
        await c.call("calc.add", {"a": 1, "b": 1})
    for _ in range(100):
        if c.health()["calc"]["state"] == "up":
            break
        await asyncio.sleep(0.1)
    assert c.health()["calc"]["restarts"] == 1
    assert await c.call("calc.add", {"a": 1, "b": 1}) == "2"


async def test_a_server_that_cannot_start_is_reported_down(client, monkeypatch) -> None:
    monkeypatch.setattr(mcp_module, "BACKOFF_FIRST_S", 60)
    c = await client({"gone": McpServerConfig(command="/nonexistent/mcp-server")})
    health = c.health()["gone"]
    assert health["state"] == "down" and health["retry_in_s"] > 0 and health["tools"] == 0
    assert c.tools() == {}


async def test_streamable_http_with_a_header_from_the_secrets_store(client, http_server, monkeypatch) -> None:
    monkeypatch.setenv("WX_TOKEN", "Bearer tok-3b9f2c")
    c = await client({"wx": McpServerConfig(url=http_server, headers={"Authorization": "env:WX_TOKEN"})})
    assert c.health()["wx"]["state"] == "up" and c.health()["wx"]["transport"] == "http"
    assert await c.call("wx.shout", {"text": "storm"}) == "STORM"


async def test_streamable_http_refused_without_the_token(client, http_server, monkeypatch) -> None:
    monkeypatch.setattr(mcp_module, "BACKOFF_FIRST_S", 60)
    monkeypatch.setenv("WX_TOKEN", "Bearer wrong")
    c = await client({"wx": McpServerConfig(url=http_server, headers={"Authorization": "env:WX_TOKEN"})})
    health = c.health()["wx"]
    assert health["state"] == "down" and "wrong" not in str(health)


async def test_grants_per_agent_and_through_the_tool_registry(client) -> None:
    c = await client({"calc": stdio(approval=True)})
    ctx = ToolContext("telegram", "1", "1", "assistant", "UTC", mcp=c)
    assert tools.expand(["time", "calc.add"], c) == ["time", "calc.add"]
    assert set(tools.expand(["calc.*"], c)) == set(c.tools())
    assert (await tools.run_call(ToolCall("calc.add", {"a": 1, "b": 2}), ["time"], ctx)).startswith("error: unknown tool")
    assert (await tools.run_call(ToolCall("calc.shout", {"text": "a"}), ["calc.add"], ctx)).startswith("error: unknown tool")
    result, audit = await tools.run_audited(ToolCall("calc.add", {"a": 1, "b": 2}), ["calc.*"], ctx)
    assert result == "3" and audit.tool == "calc.add" and audit.needs_approval and audit.result_chars == 1
    resolved = tools.resolve("calc.add", c)
    assert resolved is not None and resolved.args.model_json_schema()["required"] == ["a", "b"]
    assert tools.resolve("calc.nope", c) is None and tools.resolve("calc.add", None) is None


async def test_reload_adds_removes_and_keeps(client) -> None:
    c = await client({"a": stdio()})
    kept = c.servers["a"]
    await c.reload({"a": stdio(), "b": stdio()})
    assert c.servers["a"] is kept and c.health()["b"]["state"] == "up"
    await c.reload({"b": stdio()})
    assert "a" not in c.health() and not any(name.startswith("a.") for name in c.tools())
