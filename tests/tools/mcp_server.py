"""A real MCP server for the tests, written with the SDK's MCPServer (mcp 2's name for FastMCP).

`python mcp_server.py` serves over stdio; `python mcp_server.py --http PORT` serves
streamable HTTP on 127.0.0.1 and, like a hosted server, answers 401 to a request
without the bearer token in $MCP_TEST_TOKEN.
"""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("aibox-test")


@server.tool()
def add(a: int, b: int) -> int:
    """Adds two integers."""
    return a + b


@server.tool()
def shout(text: str) -> str:
    """The text in capitals."""
    return text.upper()


@server.tool()
def big(chars: int) -> str:
    """A text of `chars` characters."""
    return "x" * chars


@server.tool()
async def slow(seconds: float) -> str:
    """Answers after `seconds`."""
    await asyncio.sleep(seconds)
    return "done"


@server.tool()
def crash() -> str:
    """Ends the server process at once, as a crashing server does."""
    os._exit(3)


@server.tool()
def fail() -> str:
    """Raises, so the client gets an error result."""
    raise RuntimeError("the weather service is down")


def http_app(token: str):
    from starlette.responses import JSONResponse

    app = server.streamable_http_app(host="127.0.0.1")

    async def guarded(scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            if headers.get(b"authorization", b"").decode() != f"Bearer {token}":
                await JSONResponse({"error": "unauthorized"}, status_code=401)(scope, receive, send)
                return
        await app(scope, receive, send)

    return guarded


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        import uvicorn

        uvicorn.run(http_app(os.environ["MCP_TEST_TOKEN"]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
    else:
        server.run("stdio")
