"""Malformed requests against a real `aibox run` (the shipped list of aibox/bench/bad_input.py):
never a 5xx, always an OpenAI-style JSON error with the right code, `param` spelled as the
request spells it, refusals logged at info without their text, slow clients cut off, and
an error nobody foresaw answered with a JSON 500 that closes the connection."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from aibox.api.errors import ERROR_HANDLERS
from aibox.api.server import BODY_TIMEOUT_S, HEADER_TIMEOUT_S, bind_tcp, make_server
from aibox.bench.bad_input import CASES, run_cases
from aibox.process import DaemonProcess


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, models_dir):
    config = {"models_dir": str(models_dir), "runtime": {"max_tokens": 16}}
    with DaemonProcess(tmp_path_factory.mktemp("bad-input"), config) as proc:
        yield proc


def _log_records(daemon: DaemonProcess) -> list[dict]:
    return [json.loads(line) for line in daemon.log_path.read_text().splitlines() if line.startswith("{")]


def test_the_shipped_list_gets_no_5xx_and_a_json_error_each(daemon):
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)
    results = run_cases(daemon.api)
    assert [r for r in results if r["status"] >= 500] == []
    assert [r["request"] for r in results if not r["json_error"]] == []
    assert [r for r in results if not r["as_expected"]] == []


def test_the_daemon_still_answers_after_the_list(daemon):
    with httpx.Client(base_url=daemon.api, timeout=60) as c:
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": [{"type": "image_url"}]}]},
         "messages[1].content[0]"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "hi"}], "stop": [1]}, "stop[0]"),
        ({"messages": [{"role": "user", "content": "hi"}], "stop": 7}, "stop"),
        ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools"),
        ({"messages": [{"role": "user", "content": "hi"}], "logprobs": True}, "logprobs"),
        ({"messages": [{"role": "user", "content": "hi \ud800"}]}, "messages[0].content"),
    ],
)
def test_param_names_the_request_field(daemon, body, param):
    with httpx.Client(base_url=daemon.api, timeout=60) as c:
        r = c.post("/v1/chat/completions", content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


def test_a_lone_surrogate_in_model_is_reported_and_logged(daemon):
    with httpx.Client(base_url=daemon.api, timeout=60) as c:
        r = c.post("/v1/chat/completions", content=b'{"model": "x\\ud800", "messages": [{"role": "user", "content": "hi"}]}',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "invalid_encoding" and error["param"] == "model"
    assert "U+D800" in error["message"]
    text = daemon.log_tail(1_000_000)
    assert "Traceback" not in text and "Logging error" not in text


def test_refusals_are_logged_at_info_without_their_text(daemon):
    secret_text = "purple-elephant-4242"
    with httpx.Client(base_url=daemon.api, timeout=60) as c:
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": secret_text}], "tools": [{"x": 1}]})
        assert r.status_code == 400
        assert c.get("/v2/nothing").status_code == 404
    time.sleep(0.5)
    refused = [rec for rec in _log_records(daemon) if rec["msg"] == "request refused"]
    assert {"level": "info", "method": "POST", "path": "/v1/chat/completions", "status": 400, "code": "unsupported_parameter"}.items() \
        <= refused[-2].items()
    assert {"method": "GET", "path": "/v2/nothing", "status": 404, "code": "not_found"}.items() <= refused[-1].items()
    assert secret_text not in daemon.log_tail(1_000_000)


def test_server_start_lines_once_per_server_and_no_terminal_colours(daemon):
    records = _log_records(daemon)
    started = [rec["msg"] for rec in records if rec.get("server") and "listening" in rec["msg"]]
    assert len(started) == 2
    assert started[0].startswith("HTTP API listening on http://127.0.0.1:")
    assert started[1].startswith("admin socket listening on ") and started[1].endswith("admin.sock")
    assert not any(rec["msg"].startswith(("Started server process", "Uvicorn running")) for rec in records)
    text = daemon.log_tail(1_000_000)
    assert "color_message" not in text and "\\u001b[" not in text and "\x1b[" not in text


def _closed_by_server(sock: socket.socket, limit_s: float, trickle: bytes = b"") -> tuple[bool, bytes]:
    """Sends `trickle` a byte a second until the server answers or closes (or `limit_s` passes)."""
    sock.settimeout(1.0)
    got = b""
    deadline = time.monotonic() + limit_s
    i = 0
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
            if not data:
                return True, got
            got += data
        except TimeoutError:
            pass
        except ConnectionResetError:
            return True, got
        if i < len(trickle):
            try:
                sock.sendall(trickle[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                return True, got
            i += 1
    return False, got


def _connect(api: str) -> socket.socket:
    host, port = api.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)))


def test_slow_headers_are_cut_off(daemon):
    with _connect(daemon.api) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        closed, _ = _closed_by_server(sock, HEADER_TIMEOUT_S + 20, trickle=b"X-Slow: " + b"a" * 60)
    assert closed, "a client trickling its headers kept the connection"


def test_an_idle_new_connection_is_cut_off(daemon):
    with _connect(daemon.api) as sock:
        closed, _ = _closed_by_server(sock, HEADER_TIMEOUT_S + 20)
    assert closed


def test_a_slow_body_gets_408_and_the_connection_closes(daemon):
    body = b'{"messages": [{"role": "user", "content": "' + b"x" * 100 + b'"}]}'
    with _connect(daemon.api) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        closed, got = _closed_by_server(sock, BODY_TIMEOUT_S + 20, trickle=body)
    assert closed
    head, _, payload = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert b"connection: close" in head.lower()
    assert json.loads(payload)["error"]["code"] == "request_timeout"


def test_a_kept_alive_connection_still_serves_in_time(daemon):
    """The header deadline applies per request: a client that is quick is never cut off."""
    with httpx.Client(base_url=daemon.api, timeout=60) as c:
        for _ in range(3):
            assert c.get("/healthz").status_code == 200
            time.sleep(1)


async def test_an_unforeseen_error_is_a_json_500_that_closes_the_connection(caplog):
    async def broken(_request):
        raise KeyError("a bug")

    async def fine(_request):
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/broken", broken), Route("/fine", fine)], exception_handlers=ERROR_HANDLERS)
    sock = bind_tcp("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = make_server(app, "test server", graceful_s=1)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        with caplog.at_level(logging.INFO):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
                r = await c.get("/broken")
                assert (await c.get("/fine")).text == "ok"
        assert r.status_code == 500
        assert r.headers["connection"] == "close"
        assert r.json()["error"] == {"message": "internal error; the box logged it", "type": "server_error",
                                     "param": None, "code": "internal_error"}
        errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].name == "aibox.api" and errors[0].exc_info is not None
    finally:
        server.should_exit = True
        await task

