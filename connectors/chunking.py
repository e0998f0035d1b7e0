"""Splitting a reply that is longer than a platform allows into messages people can read.

A cut goes at the latest paragraph break that leaves a reasonably full message, else at
a line break, a sentence end, a space, and only as a last resort in the middle of a
word. Cuts inside a ``` code block are avoided when the block fits in a message of its
own; a block longer than a whole message is cut at a line break, closed with a fence
at the end of one message and reopened (same language tag) at the start of the next,
so every message renders as code on its own.

`unit = "utf-16"` counts the limit in UTF-16 code units, as Telegram does (most emoji
count two): each cut then gets as many characters as fit that many units.

The split is greedy and looks only at the first `limit` characters of what is left, so
while a reply is still streaming, every piece but the last is already final: the reply
streamer relies on that to send finished pieces early.
"""

from __future__ import annotations

import re
import unicodedata

_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})([^\n]*)$", re.MULTILINE)
# Boundaries in order of preference; each pattern's match end is the cut position.
_BOUNDARIES = (
    re.compile(r"\n[ \t]*\n+"),
    re.compile(r"\n"),
    re.compile(r"[.!?…。！？][\"'”’)\]]*[ \t]+"),
    re.compile(r"[ \t]+"),
)
_CLOSE = "\n```"
_JOINERS = {"\u200d", "\u200c", "\u2060", "\ufe0e", "\ufe0f"}


def split_text(text: str, limit: int, unit: str = "char") -> list[str]:
    """Cuts `text` into pieces of at most `limit` characters each (see the module doc).

    Whitespace at a cut is dropped; nothing else is lost or reordered. An empty or
    all-whitespace text gives no pieces.
    """
    if limit < 16:
        raise ValueError(f"limit must be at least 16 characters, not {limit}")
    pieces: list[str] = []
    rest = text.strip("\n")
    while rest.strip():
        room = limit if unit == "char" else _fitting(rest, limit)
        if len(rest) <= room:
            pieces.append(rest.rstrip())
            break
        cut, reopen = _cut(rest, room)
        head = rest[:cut].rstrip()
        if reopen is not None:
            head += _CLOSE
        if head.strip():
            pieces.append(head)
        rest = rest[cut:].lstrip("\n")
        if reopen is not None:
            rest = reopen + "\n" + rest
    return pieces


def _fitting(text: str, units: int) -> int:
    """How many characters from the start of `text` fit in `units` UTF-16 code units."""
    used = 0
    for count, ch in enumerate(text[:units]):
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > units:
            return count
    return min(len(text), units)


def _cut(text: str, limit: int) -> tuple[int, str | None]:
    """Where to cut the first piece, and the fence line to reopen when the cut is inside
    a code block (None when it is not)."""
    fences = _fence_spans(text[: limit + 1])
    window = text[:limit]
    half = limit // 2
    fallback: int | None = None
    for pattern in _BOUNDARIES:
        outside = [m.end() for m in pattern.finditer(window) if not _inside(m.end(), fences)]
        outside = [pos for pos in outside if 0 < pos < len(text)]
        if not outside:
            continue
        if outside[-1] >= half:
            return outside[-1], None
        if fallback is None:
            fallback = outside[-1]
    if fallback is not None:
        return fallback, None
    block = next((f for f in fences if f[0] < limit <= f[1]), None)
    if block is not None:
        opener = block[2] if len(block[2]) <= limit // 4 else "```"
        room = limit - len(_CLOSE)
        opener_end = text.find("\n", block[0])
        line_end = text.rfind("\n", opener_end + 1, room)
        if line_end > opener_end:
            return line_end + 1, opener
        return _hard_cut(text, room), opener
    return _hard_cut(text, limit), None


def _fence_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, opening line) of each code block; an unclosed block runs to the end."""
    spans: list[tuple[int, int, str]] = []
    open_at: int | None = None
    opener = ""
    marker = ""
    for m in _FENCE_LINE.finditer(text):
        if open_at is None:
            open_at, opener, marker = m.start(), m.group(0).strip(), m.group(1)
        elif m.group(1).startswith(marker[0]) and len(m.group(1)) >= len(marker) and not m.group(2).strip():
            spans.append((open_at, m.end(), opener))
            open_at = None
    if open_at is not None:
        spans.append((open_at, len(text), opener))
    return spans


def _inside(pos: int, fences: list[tuple[int, int, str]]) -> bool:
    return any(start < pos < end for start, end, _ in fences)


def _hard_cut(text: str, limit: int) -> int:
    """Cuts at `limit` but not between a character and what joins or modifies it (a
    zero-width joiner, a variation selector, a combining mark), so emoji sequences and
    accented letters stay whole where that is possible."""
    cut = limit
    while cut > limit // 2 and (_clings(text[cut]) or text[cut - 1] in _JOINERS):
        cut -= 1
    return cut if cut > limit // 2 else limit


def _clings(ch: str) -> bool:
    return ch in _JOINERS or unicodedata.combining(ch) != 0 or "\U0001f3fb" <= ch <= "\U0001f3ff"
