"""`aibox bench bad-input`: a fixed list of malformed requests against a real daemon.

Every one must get a 4xx with an OpenAI-style JSON error whose code says what is wrong;
a 5xx, a plain-text answer or a wrong code is a defect. The list covers broken JSON
(nesting 100,000 deep, integers over Python's 4,300-digit limit, NaN, lone surrogates in
any field), every field of a chat request with a wrong type or range, the OpenAI
parameters the box refuses by name, content it cannot read (images, audio), prompts no
model can fit, and routes and methods that do not exist. tests/core/test_api_bad_input.py
runs the same list.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from aibox.process import DaemonProcess

CHAT = "/v1/chat/completions"


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes | None
    status: int
    code: str
    method: str = "POST"
    path: str = CHAT


def _chat(**fields: Any) -> dict:
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4} | fields


def _json(name: str, data: Any, status: int, code: str) -> Case:
    return Case(name, json.dumps(data).encode(), status, code)


def _raw(name: str, text: str | bytes, status: int, code: str) -> Case:
    return Case(name, text.encode() if isinstance(text, str) else text, status, code)


def _user(content: Any) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4}


DEEP = 100_000
BIG_INT = "9" * 5000
HI = '[{"role": "user", "content": "hi"}]'

CASES: list[Case] = [
    # not JSON, or JSON nothing can read
    _raw("not JSON", "{not json", 400, "invalid_json"),
    _raw("empty body", "", 400, "invalid_json"),
    _raw("truncated JSON", '{"messages": [{"role": "user", "content": "hi"', 400, "invalid_json"),
    _raw("not UTF-8", b"\xff\xfe{}", 400, "invalid_json"),
    _raw("array nested 100,000 deep", "[" * DEEP + "]" * DEEP, 400, "invalid_json"),
    _raw("object nested 100,000 deep", '{"a":' * DEEP + "1" + "}" * DEEP, 400, "invalid_json"),
    _raw("stream_options nested 40 deep", '{"messages": ' + HI + ', "stream_options": ' + '{"a":' * 40 + "1" + "}" * 40 + "}",
         400, "invalid_json"),
    _raw("max_tokens with 5,000 digits", '{"messages": ' + HI + ', "max_tokens": ' + BIG_INT + "}", 400, "invalid_json"),
    _raw("seed with 5,000 digits", '{"messages": ' + HI + ', "seed": -' + BIG_INT + "}", 400, "invalid_json"),
    _raw("temperature NaN", '{"messages": ' + HI + ', "temperature": NaN}', 400, "invalid_json"),
    _raw("temperature Infinity", '{"messages": ' + HI + ', "temperature": Infinity}', 400, "invalid_json"),
    _raw("top_p -Infinity", '{"messages": ' + HI + ', "top_p": -Infinity}', 400, "invalid_json"),
    _raw("temperature 1e400 (overflows to inf)", '{"messages": ' + HI + ', "temperature": 1e400}', 400, "invalid_value"),
    _raw("lone surrogate in content", '{"messages": [{"role": "user", "content": "hi \\ud800"}]}', 400, "invalid_encoding"),
    _raw("lone surrogate in model", '{"model": "\\ud800", "messages": ' + HI + "}", 400, "invalid_encoding"),
    _raw("lone low surrogate in a system message",
         '{"messages": [{"role": "system", "content": "\\udfff"}, {"role": "user", "content": "hi"}]}', 400, "invalid_encoding"),
    _raw("surrogate as raw UTF-8 bytes", b'{"messages": [{"role": "user", "content": "\xed\xa0\x80"}]}', 400, "invalid_encoding"),
    _raw("lone surrogate in a key", '{"\\ud83d": 1, "messages": ' + HI + "}", 400, "invalid_encoding"),
    _raw("lone surrogate in stop", '{"messages": ' + HI + ', "stop": ["\\udc00"]}', 400, "invalid_encoding"),
    _raw("lone surrogate in a text part", '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}',
         400, "invalid_encoding"),
    # the body's shape
    _raw("body is an array", "[1, 2]", 400, "invalid_request"),
    _raw("body is a string", '"hello"', 400, "invalid_request"),
    _raw("body is null", "null", 400, "invalid_request"),
    _raw("body is a number", "42", 400, "invalid_request"),
    _json("no messages", {"model": "smollm2-135m-instruct"}, 400, "invalid_value"),
    _json("messages empty", {"messages": []}, 400, "invalid_value"),
    _json("messages a string", {"messages": "hello"}, 400, "invalid_value"),
    _json("message a string", {"messages": ["hi"]}, 400, "invalid_value"),
    _json("message without role", {"messages": [{"content": "hi"}]}, 400, "invalid_value"),
    _json("unknown role", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "invalid_value"),
    _json("role a number", {"messages": [{"role": 1, "content": "hi"}]}, 400, "invalid_value"),
    _json("content a number", _user(5), 400, "invalid_value"),
    _json("user content missing", {"messages": [{"role": "user"}]}, 400, "invalid_value"),
    _json("user content null", _user(None), 400, "invalid_value"),
    _json("tool message without content", {"messages": [{"role": "tool", "tool_call_id": "x"}]}, 400, "invalid_value"),
    _json("image part", _user([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]), 400,
          "unsupported_content"),
    _json("audio part", _user([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]), 400,
          "unsupported_content"),
    _json("image in an assistant turn", {"messages": [{"role": "assistant", "content": [{"type": "image_url"}]},
                                                      {"role": "user", "content": "hi"}]}, 400, "unsupported_content"),
    _json("unknown part type", _user([{"type": "hologram", "text": "hi"}]), 400, "invalid_value"),
    _json("text part without text", _user([{"type": "text"}]), 400, "invalid_value"),
    _json("text part a number", _user([{"type": "text", "text": 3}]), 400, "invalid_value"),
    _json("part a string", _user(["hi"]), 400, "invalid_value"),
    # fields of the wrong type or range
    _json("temperature a string", _chat(temperature="hot"), 400, "invalid_value"),
    _json("temperature 3", _chat(temperature=3), 400, "invalid_value"),
    _json("temperature -1", _chat(temperature=-1), 400, "invalid_value"),
    _json("top_p 0", _chat(top_p=0), 400, "invalid_value"),
    _json("top_p 1.5", _chat(top_p=1.5), 400, "invalid_value"),
    _json("top_k -1", _chat(top_k=-1), 400, "invalid_value"),
    _json("min_p 1", _chat(min_p=1), 400, "invalid_value"),
    _json("max_tokens -5", _chat(max_tokens=-5), 400, "invalid_value"),
    _json("max_tokens 0", _chat(max_tokens=0), 400, "invalid_value"),
    _json("max_tokens a string", _chat(max_tokens="10"), 400, "invalid_value"),
    _json("max_tokens 1.5", _chat(max_tokens=1.5), 400, "invalid_value"),
    _json("max_tokens true", _chat(max_tokens=True), 400, "invalid_value"),
    _json("max_completion_tokens 0", _chat(max_completion_tokens=0), 400, "invalid_value"),
    _json("stream a string", _chat(stream="yes"), 400, "invalid_value"),
    _json("n 3", _chat(n=3), 400, "invalid_value"),
    _json("five stop sequences", _chat(stop=["a", "b", "c", "d", "e"]), 400, "invalid_value"),
    _json("stop numbers", _chat(stop=[1, 2]), 400, "invalid_value"),
    _json("stop a number", _chat(stop=7), 400, "invalid_value"),
    _json("seed 2**64", _chat(seed=2**64), 400, "invalid_value"),
    _json("seed a string", _chat(seed="x"), 400, "invalid_value"),
    _json("model a number", _chat(model=5), 400, "invalid_value"),
    _json("user a number", _chat(user=5), 400, "invalid_value"),
    _json("stream_options a string", _chat(stream_options="yes"), 400, "invalid_value"),
    _json("presence_penalty 5", _chat(presence_penalty=5), 400, "invalid_value"),
    _json("frequency_penalty a string", _chat(frequency_penalty="x"), 400, "invalid_value"),
    _json("repeat_penalty 0", _chat(repeat_penalty=0), 400, "invalid_value"),
    _json("logit_bias key not a token id", _chat(logit_bias={"abc": 1}), 400, "invalid_value"),
    _json("logit_bias value 500", _chat(logit_bias={"42": 500}), 400, "invalid_value"),
    _json("logit_bias token beyond the vocabulary", _chat(logit_bias={"999999999": 5}), 400, "invalid_value"),
    # what the box refuses by name
    _json("tools", _chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]), 400,
          "unsupported_parameter"),
    _json("tool_choice required", _chat(tool_choice="required"), 400, "unsupported_parameter"),
    _json("functions", _chat(functions=[{"name": "f"}]), 400, "unsupported_parameter"),
    _json("response_format json_object", _chat(response_format={"type": "json_object"}), 400, "unsupported_parameter"),
    _json("response_format json_schema", _chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), 400,
          "unsupported_parameter"),
    _json("logprobs", _chat(logprobs=True), 400, "unsupported_parameter"),
    _json("top_logprobs", _chat(top_logprobs=5), 400, "unsupported_parameter"),
    _json("audio output", _chat(audio={"voice": "alloy", "format": "wav"}), 400, "unsupported_parameter"),
    _json("modalities audio", _chat(modalities=["text", "audio"]), 400, "unsupported_parameter"),
    # models and prompts that cannot be served
    _json("unknown model", _chat(model="no-such-model"), 404, "model_not_found"),
    _json("model name with NUL", _chat(model="smol\u0000lm"), 404, "model_not_found"),
    _json("prompt longer than every context", _user("1 " * 20_000), 400, "context_length_exceeded"),
    _json("prompt longer than every context, auto", _user("1 " * 20_000) | {"model": "auto"}, 400, "context_length_exceeded"),
    _raw("body over the size limit", '{"messages": [{"role": "user", "content": "' + "x" * (5 << 20) + '"}]}', 413,
         "body_too_large"),
    # routes and methods
    Case("unknown route", None, 404, "not_found", "GET", "/v2/nothing"),
    Case("GET on chat completions", None, 405, "method_not_allowed", "GET", CHAT),
    Case("unknown model by id", None, 404, "model_not_found", "GET", "/v1/models/no-such-model"),
    Case("DELETE a model", None, 405, "method_not_allowed", "DELETE", "/v1/models/smollm2-135m-instruct"),
]


def send(client: httpx.Client, case: Case) -> dict:
    """One case's outcome: status, error code, and whether the body was an OpenAI-style error."""
    headers = {"content-type": "application/json"} if case.body is not None else {}
    r = client.request(case.method, case.path, content=case.body, headers=headers)
    try:
        error = r.json().get("error")
    except ValueError:
        error = None
    json_error = isinstance(error, dict) and isinstance(error.get("message"), str) and "type" in error
    code = error.get("code") if json_error else None
    return {
        "request": case.name,
        "status": r.status_code,
        "code": code,
        "json_error": json_error,
        "as_expected": r.status_code == case.status and code == case.code,
        "expected": f"{case.status} {case.code}",
    }


def run_cases(api: str, progress: Callable[[int], None] = lambda _done: None) -> list[dict]:
    results = []
    with httpx.Client(base_url=api, timeout=120) as client:
        for i, case in enumerate(CASES):
            results.append(send(client, case))
            progress(i + 1)
    return results


def bench_bad_input(models_dir: Path, progress: Callable[[int], None] = lambda _done: None) -> dict:
    """Starts a daemon on the default model in a scratch state dir and sends every case."""
    with tempfile.TemporaryDirectory(prefix="aibox-bad-input-") as tmp:
        with DaemonProcess(Path(tmp), {"models_dir": str(models_dir), "runtime": {"max_tokens": 16}}) as daemon:
            assert daemon.api is not None
            results = run_cases(daemon.api, progress)
    return {
        "requests": len(results),
        "server_errors": sum(r["status"] >= 500 for r in results),
        "not_json": sum(not r["json_error"] for r in results),
        "unexpected": sum(not r["as_expected"] for r in results),
        "results": results,
    }
