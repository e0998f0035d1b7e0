"""Finding tool calls in what a model writes, wherever and however it writes them, so
that no answer path can post a call to the user as text.

Under the tool grammar a call is a bare JSON object at the start of the answer, but
models also write calls the way they were trained to: in a ```json fence, inside
Qwen's `<tool_call>…</tool_call>` tags, with "name" and "parameters" for "tool" and
"arguments", or after a sentence of prose. `CallSplitter` sits between the model and
the chat: it passes prose through as it streams and holds back only what might be the
start of a call until it can tell, so a call is caught (and run by the runner, or
dropped) before any of it is shown.

`obvious_call` is the other half: a message that is plainly arithmetic or plainly
asks for the time gets its tool run before the model answers, because small models
invent times and products instead of calling for them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

TAG_OPEN, TAG_CLOSE = "<tool_call>", "</tool_call>"
FENCE = "```"
CALL_KEYS = ('{"tool":', '{"name":', '{"function":')
FENCE_LANGUAGES = ("", "json", "tool_call", "tool", "tool_code")
MAX_FENCE_LINE = 40


@dataclass(frozen=True)
class FoundCall:
    tool: str
    arguments: Any  # whatever the model wrote; the tool validates it


def unwrap(text: str) -> str:
    """The JSON inside a call's wrapping (tags, a fence), or the text as it is."""
    body = text.strip()
    if body.startswith(TAG_OPEN):
        body = body[len(TAG_OPEN):]
        body = body[: body.find(TAG_CLOSE)] if TAG_CLOSE in body else body
    elif body.startswith(FENCE):
        newline = body.find("\n")
        body = body[newline + 1:] if newline != -1 else body[3:]
        body = body[: body.rfind(FENCE)] if body.rstrip().endswith(FENCE) else body
    return body.strip()


def read_call(data: object) -> FoundCall | None:
    """The call in a decoded JSON value, in any of the shapes models use."""
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("tool"), str):
        return FoundCall(data["tool"], data.get("arguments", data.get("parameters", {})))
    for key in ("name", "function"):
        if isinstance(data.get(key), str) and ("arguments" in data or "parameters" in data):
            return FoundCall(data[key], data.get("arguments", data.get("parameters")))
        if isinstance(data.get(key), dict):  # OpenAI style: {"function": {"name": ..., "arguments": ...}}
            return read_call(data[key])
    return None


def _compact(text: str) -> str:
    return re.sub(r"\s+", "", text)


class CallSplitter:
    """Fed the pieces of one answer; returns what may be shown now. Once a call is
    found, `call` holds its text and nothing more is shown: what a model writes after
    a call (an invented result) is not an answer."""

    def __init__(self) -> None:
        self._held = ""
        self._started = False  # whitespace before the first word is never shown
        self._in_code = False  # inside a fenced block of code (```python): code, not calls
        self.call: str | None = None

    def feed(self, piece: str) -> str:
        if self.call is not None:
            return ""
        if not self._started:
            piece = piece.lstrip()
            self._started = bool(piece)
        self._held += piece
        return self._drain(final=False)

    def finish(self) -> str:
        """The rest, at the end of the answer (a call cut off by the token limit is still a call)."""
        if self.call is not None:
            return ""
        return self._drain(final=True)

    def _drain(self, final: bool) -> str:
        shown: list[str] = []
        while self._held:
            if self._in_code:
                close = self._held.find(FENCE)
                if close == -1:  # hold back a "`" or "``" that may start the closing fence
                    keep = len(self._held) if final else len(self._held.rstrip("`"))
                    shown.append(self._held[:keep])
                    self._held = self._held[keep:]
                    break
                shown.append(self._held[: close + 3])
                self._held = self._held[close + 3:]
                self._in_code = False
                continue
            start = self._next_opener()
            if start is None:
                shown.append(self._held)
                self._held = ""
                break
            shown.append(self._held[:start])
            self._held = self._held[start:]
            verdict, length = self._judge(final)
            if verdict == "wait":
                break
            if verdict == "call":
                self.call = self._held[:length]
                self._held = ""
                break
            shown.append(self._held[:length])
            self._held = self._held[length:]
        return "".join(shown)

    def _next_opener(self) -> int | None:
        held = self._held
        found = [i for i in (held.find(TAG_OPEN[0]), held.find(FENCE[0]), held.find("{")) if i != -1]
        return min(found) if found else None

    def _judge(self, final: bool) -> tuple[str, int]:
        held = self._held
        if held[0] == "<":
            return self._judge_tag(held, final)
        if held[0] == "`":
            return self._judge_fence(held, final)
        return self._judge_object(held, final, 0)

    def _judge_tag(self, held: str, final: bool) -> tuple[str, int]:
        if held.startswith(TAG_OPEN):
            end = held.find(TAG_CLOSE)
            if end != -1:
                return "call", end + len(TAG_CLOSE)
            return ("call", len(held)) if final else ("wait", 0)
        if TAG_OPEN.startswith(held) and not final:
            return "wait", 0
        return "text", 1

    def _judge_fence(self, held: str, final: bool) -> tuple[str, int]:
        if not held.startswith(FENCE):
            return ("wait", 0) if FENCE.startswith(held) and not final else ("text", 1)
        newline = held.find("\n", 3)
        if newline == -1:
            if final or len(held) > MAX_FENCE_LINE:
                return "text", 3
            return "wait", 0
        if held[3:newline].strip().lower() not in FENCE_LANGUAGES:
            self._in_code = True
            return "text", newline + 1
        body = held[newline + 1:]
        lead = len(body) - len(body.lstrip())
        if not body.strip():
            return ("text", len(held)) if final else ("wait", 0)
        verdict, _ = self._judge_object(body, final, lead)
        if verdict == "wait":
            return "wait", 0
        if verdict == "text":
            return "text", newline + 1
        close = held.find(FENCE, newline + 1)
        if close != -1:
            return "call", close + 3
        return ("call", len(held)) if final else ("wait", 0)

    def _judge_object(self, held: str, final: bool, start: int) -> tuple[str, int]:
        """`held[start]` is "{": a call if it decodes to a call's shape."""
        text = held[start:]
        if not text.startswith("{"):
            return "text", 1
        compact = _compact(text[:64])
        if not any(compact.startswith(key) for key in CALL_KEYS):
            if not final and any(key.startswith(compact) for key in CALL_KEYS):
                return "wait", 0
            return "text", 1
        try:
            data, end = json.JSONDecoder(strict=False).raw_decode(text)
        except json.JSONDecodeError:
            # unfinished: wait for the rest; at the end it is a broken call, never prose
            return ("call", len(held)) if final else ("wait", 0)
        if read_call(data) is not None:
            return "call", start + end
        return "text", start + end


# -- calls the runner makes itself -----------------------------------------------------

ARITHMETIC = re.compile(r"^[\d\s.+\-*/×÷^%()x]+$")
ASK_PREFIX = re.compile(r"^\s*(?:what\s+is|what's|whats|how\s+much\s+is|calculate|compute|work\s+out|solve)\s+", re.I)
ASK_SUFFIX = re.compile(r"\s*(?:\?|=|\.|!|please|use\s+the\s+calculator\.?|with\s+the\s+calculator\.?|\s)+$", re.I)
TIME_QUESTION = re.compile(
    r"\b(?:what(?:'s|\s+is)?\s+the\s+(?:time|date)|what\s+time\s+is\s+it|what\s+day\s+is\s+(?:it|today)|"
    r"what(?:'s|\s+is)\s+today'?s\s+date|time\s+is\s+it|the\s+time\s+now|current\s+(?:time|date))\b", re.I)


def obvious_call(text: str, granted: list[str]) -> FoundCall | None:
    """The tool call a message plainly asks for, if its tool is granted: arithmetic
    ("17 * 23", "What is 12345 * 6789? Use the calculator.") or the time."""
    if "calculator" in granted:
        expression = ASK_SUFFIX.sub("", ASK_PREFIX.sub("", text.strip()))
        if (ARITHMETIC.match(expression) and re.search(r"\d\s*[+\-*/×÷^%x]\s*[\d(]", expression)
                and re.search(r"[+\-*/×÷^%x]", expression)):
            return FoundCall("calculator", {"expression": re.sub(r"(?<=\d)\s*x\s*(?=\d)", " * ", expression)})
    if "time" in granted and TIME_QUESTION.search(text):
        return FoundCall("time", {})
    return None
