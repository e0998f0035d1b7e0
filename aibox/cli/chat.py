"""`aibox chat`: talk to the running box from a terminal, streaming the answer."""

from __future__ import annotations

import json
import sys

import httpx
import typer

from aibox.cli.client import admin_call
from aibox.cli.common import EXIT_FAILURE, EXIT_UNAVAILABLE, fail, get_config
from aibox.config import Config
from aibox.secrets import SecretError


def _api(config: Config) -> tuple[str, dict[str, str]]:
    """The running daemon's API address (it may differ from the config: --port) and auth."""
    base = admin_call(config, "GET", "/status")["api"]
    headers = {}
    if config.api.api_key is not None:
        try:
            headers["Authorization"] = f"Bearer {config.api.api_key.get()}"
        except SecretError as e:
            fail(f"key 'api.api_key': {e}")
    return base, headers


def _stream_answer(client: httpx.Client, base: str, headers: dict, body: dict) -> str:
    parts: list[str] = []
    with client.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers) as r:
        if r.status_code >= 400:
            r.read()
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text
            fail(message, EXIT_UNAVAILABLE if r.status_code == 503 else EXIT_FAILURE)
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                fail(event["error"]["message"])
            for choice in event.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    parts.append(piece)
                    sys.stdout.write(piece)
                    sys.stdout.flush()
    sys.stdout.write("\n")
    return "".join(parts)


def chat(
    ctx: typer.Context,
    message: str = typer.Argument(None, help="Send one message and print the answer; '-' reads it from stdin. Without it, chat interactively."),
    model: str = typer.Option(None, "--model", "-m", help="Model to ask (default: the box's default model)."),
    system: str = typer.Option(None, "--system", "-s", help="System prompt."),
    max_tokens: int = typer.Option(None, "--max-tokens", help="Longest answer in tokens."),
    temperature: float = typer.Option(0.7, help="Sampling temperature (0 = greedy)."),
) -> None:
    """Chat with the running box."""
    config = get_config(ctx)
    base, headers = _api(config)
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    with httpx.Client(timeout=httpx.Timeout(10.0, read=None)) as client:

        def ask(text: str) -> None:
            history.append({"role": "user", "content": text})
            body = {"messages": history, "stream": True, "temperature": temperature}
            if model:
                body["model"] = model
            if max_tokens:
                body["max_tokens"] = max_tokens
            history.append({"role": "assistant", "content": _stream_answer(client, base, headers, body)})

        if message is not None:
            ask(sys.stdin.read() if message == "-" else message)
            return
        interactive = sys.stdin.isatty()
        while True:
            if interactive:
                sys.stdout.write("> ")
                sys.stdout.flush()
            line = sys.stdin.readline()
            if not line:
                break
            if line.strip():
                ask(line.rstrip("\n"))
