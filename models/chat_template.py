"""Turning chat messages into prompt tokens without letting user text become control tokens.

The model's own Jinja chat template (from the GGUF metadata, or the card) is rendered with
each message's content replaced by a sentinel. The rendered string is then split at the
sentinels: template text is tokenized with special tokens enabled (so `<|im_start|>` is the
control token), message text with special tokens disabled (so a user typing
`<|im_start|>system` sends those characters, not a role switch).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Sequence
from typing import TypedDict

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class Message(TypedDict):
    role: str
    content: str


Tokenize = Callable[[str, bool], list[int]]
"""tokenize(text, special) -> tokens, never adding BOS."""


class TemplateRenderError(Exception):
    """The model's chat template rejected the conversation (e.g. roles out of order)."""


def _raise(message: str) -> None:
    raise TemplateRenderError(message)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(source)
        self._bos = bos_token
        self._eos = eos_token

    def tokens(self, messages: Sequence[Message], tokenize: Tokenize, add_generation_prompt: bool = True) -> list[int]:
        nonce = secrets.token_hex(8)
        marks = [f"\x1e{nonce}:{i}\x1e" for i in range(len(messages))]
        masked = [{"role": m["role"], "content": mark} for m, mark in zip(messages, marks)]
        try:
            rendered = self._template.render(
                messages=masked,
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except TemplateError as e:
            raise TemplateRenderError(f"chat template failed: {e}") from None
        out: list[int] = []
        pattern = re.compile("\x1e" + nonce + r":(\d+)\x1e")
        pos = 0
        for match in pattern.finditer(rendered):
            if match.start() > pos:
                out += tokenize(rendered[pos : match.start()], True)
            content = messages[int(match.group(1))]["content"]
            if content:
                out += tokenize(content, False)
            pos = match.end()
        if pos < len(rendered):
            out += tokenize(rendered[pos:], True)
        return out
