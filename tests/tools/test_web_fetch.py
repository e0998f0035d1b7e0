"""web_fetch against a real HTTP server on 127.0.0.1: refused by default (a loopback
address), fetched when the owner allows the host, redirects to private or metadata
addresses refused, oversized bodies cut and slow servers timed out."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from aiohttp import web

from agents import tools
from agents.tools import ToolCall, ToolContext
from agents.web_fetch import WebFetcher, WebFetchError, refusal
from aibox.config import WebFetchConfig

PAGE = """<html><head><title>Tide tables</title><script>var tracking = 1;</script></head>
<body><nav>Home | About</nav><article><h1>Tide tables for Brest</h1>
<p>High water on Monday is at 06:12 and 18:40. The coefficient is 95, a spring tide.</p>
<p>Low water follows about six hours and twelve minutes after each high water.</p></article></body></html>"""


@pytest.fixture
async def server():
    async def page(_):
        return web.Response(text=PAGE, content_type="text/html")

    async def to_private(_):
        raise web.HTTPFound("http://10.0.0.7/admin")

    async def to_metadata(_):
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    async def to_localhost(request):
        raise web.HTTPFound(f"http://localhost:{request.url.port}/page")

    async def loop(request):
        raise web.HTTPFound("/loop")

    async def big(_):
        return web.Response(text="A" * 50_000, content_type="text/plain")

    async def slow(request):
        response = web.StreamResponse(headers={"content-type": "text/plain"})
        await response.prepare(request)
        for _ in range(100):  # a trickle: each byte in time, the whole never
            await response.write(b"x")
            await asyncio.sleep(0.2)
        return response

    app = web.Application()
    for path, handler in [("/page", page), ("/to-private", to_private), ("/to-metadata", to_metadata),
                          ("/to-localhost", to_localhost), ("/loop", loop), ("/big", big), ("/slow", slow)]:
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    await runner.cleanup()


def allowing(**kwargs) -> WebFetcher:
    return WebFetcher(WebFetchConfig(allow_hosts=["127.0.0.1"], **kwargs))


async def test_loopback_is_refused_by_default(server: str) -> None:
    with pytest.raises(WebFetchError, match="127.0.0.1 is a loopback address"):
        await WebFetcher(WebFetchConfig()).fetch(f"{server}/page")


async def test_hostname_resolving_to_loopback_is_refused(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    with pytest.raises(WebFetchError, match="localhost is a loopback address"):
        await WebFetcher(WebFetchConfig()).fetch(f"http://localhost:{port}/page")


async def test_allowed_host_is_fetched_as_readable_text(server: str) -> None:
    page = await allowing().fetch(f"{server}/page")
    assert page.status == 200 and page.title == "Tide tables"
    assert "High water on Monday is at 06:12" in page.text and "tracking" not in page.text


@pytest.mark.parametrize(("path", "problem"), [
    ("/to-private", "10.0.0.7 is a private address"),
    ("/to-metadata", "169.254.169.254 is a cloud metadata address"),
    ("/to-localhost", "localhost is a loopback address"),
])
async def test_redirects_are_checked_on_every_hop(server: str, path: str, problem: str) -> None:
    with pytest.raises(WebFetchError, match=problem):
        await allowing().fetch(f"{server}{path}")


async def test_redirect_limit(server: str) -> None:
    with pytest.raises(WebFetchError, match="more than 3 redirects"):
        await allowing(max_redirects=3).fetch(f"{server}/loop")


async def test_oversized_body_is_cut(server: str) -> None:
    page = await allowing(max_bytes=2048).fetch(f"{server}/big")
    assert page.truncated and page.text == "A" * 2048
    rendered = page.render(max_chars=500)
    assert "text cut to 500 of 2048 characters" in rendered and "larger than the download limit" in rendered


async def test_slow_server_times_out(server: str) -> None:
    with pytest.raises(WebFetchError, match="no complete answer within 1 s"):
        await allowing(timeout_s=1).fetch(f"{server}/slow")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/x", "http://user:pw@example.org/", "not a url"])
async def test_only_plain_http_urls(url: str) -> None:
    with pytest.raises(WebFetchError):
        await WebFetcher(WebFetchConfig()).fetch(url)


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("192.168.1.1", "private"),
    ("172.16.0.1", "private"), ("169.254.1.1", "link-local"), ("fe80::1", "link-local"), ("fd00:ec2::254", "metadata"),
    ("::ffff:127.0.0.1", "loopback"), ("100.64.0.1", "not a public"), ("0.0.0.0", "address"), ("224.0.0.1", "not a public"),
])
def test_refused_addresses(address: str, kind: str) -> None:
    assert kind in (refusal(ipaddress.ip_address(address)) or "")


def test_public_addresses_pass() -> None:
    assert refusal(ipaddress.ip_address("93.184.215.14")) is None
    assert refusal(ipaddress.ip_address("2606:4700::1111")) is None


async def test_tool_returns_errors_as_text(server: str) -> None:
    ctx = ToolContext("telegram", "1", "1", "assistant", "UTC", web=WebFetcher(WebFetchConfig()))
    result = await tools.run_call(ToolCall("web_fetch", {"url": f"{server}/page"}), ["web_fetch"], ctx)
    assert result.startswith("error: refused") and "allow_hosts" in result
