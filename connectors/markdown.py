"""The model's Markdown, rendered in each platform's own format.

Models answer in Markdown; shown raw, a chat reads "```json" and "**bold**". Each
platform has its own dialect (Telegram's HTML, Discord's Markdown, Slack's mrkdwn,
WhatsApp's formatting), so the answer is parsed once into a small tree (code blocks,
headings, inline code, bold, italic, strikethrough, links) and written out per platform:
`to_telegram_html`, `to_discord`, `to_slack`, `to_whatsapp`.

Answers are rendered while they stream, so half-written Markdown must come out right:
an unclosed code fence is a code block up to the end, an unclosed `**` is literal text
until its closing half arrives. Whatever is not formatting stays as it was written
(escaped where the format needs it), so the rendered text shows no more characters than
the Markdown had: a piece that fits a platform's limit as Markdown fits rendered too.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["to_discord", "to_slack", "to_telegram_html", "to_whatsapp"]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*([\w+#.-]*)[^\n]*$", re.MULTILINE)
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_INLINE = re.compile(
    r"(?P<code>(?P<ticks>`+)(?P<code_body>[^\n]+?)(?P=ticks))"
    r"|\*\*(?P<bold>(?=\S)[^\n]+?(?<=\S))\*\*"
    r"|(?<![\w_])__(?P<bold2>(?=\S)[^\n]+?(?<=\S))__(?![\w_])"
    r"|~~(?P<strike>(?=\S)[^\n]+?(?<=\S))~~"
    r"|(?<![\w*])\*(?P<italic>(?=[^\s*])[^*\n]+?(?<=[^\s*]))\*(?![\w*])"
    r"|(?<![\w_])_(?P<italic2>(?=[^\s_])[^_\n]+?(?<=[^\s_]))_(?![\w_])"
    r"|\[(?P<label>[^\]\n]+)\]\((?P<url>(?:https?://|mailto:)[^\s)]+)\)"
)


@dataclass
class _Span:
    """Inline text: `kind` is text, code, bold, italic, strike or link."""

    kind: str
    text: str = ""
    children: list[_Span] = field(default_factory=list)
    url: str = ""


@dataclass
class _Block:
    """A line of prose (its inline spans), a heading, or a code block."""

    kind: str  # line, heading, code
    spans: list[_Span] = field(default_factory=list)
    code: str = ""
    language: str = ""
    level: int = 0


def _inline(text: str) -> list[_Span]:
    spans: list[_Span] = []
    at = 0
    for m in _INLINE.finditer(text):
        if m.start() > at:
            spans.append(_Span("text", text[at : m.start()]))
        if m.group("code") is not None:
            spans.append(_Span("code", m.group("code_body").strip(" ") or m.group("code_body")))
        elif m.group("label") is not None:
            spans.append(_Span("link", children=_inline(m.group("label")), url=m.group("url")))
        else:
            kind = next(k for k in ("bold", "bold2", "strike", "italic", "italic2") if m.group(k) is not None)
            spans.append(_Span(kind.rstrip("2"), children=_inline(m.group(kind))))
        at = m.end()
    if at < len(text):
        spans.append(_Span("text", text[at:]))
    return spans


def _blocks(markdown: str) -> list[_Block]:
    blocks: list[_Block] = []
    lines = markdown.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence is not None:
            marker = fence.group(1)
            body: list[str] = []
            i += 1
            while i < len(lines):
                closing = lines[i].strip()
                if closing.startswith(marker[0] * len(marker)) and not closing.strip(marker[0]):
                    break
                body.append(lines[i])
                i += 1
            blocks.append(_Block("code", code="\n".join(body), language=fence.group(2)))
            i += 1
            continue
        heading = _HEADING.match(line)
        if heading is not None:
            blocks.append(_Block("heading", _inline(heading.group(2)), level=len(heading.group(1))))
        else:
            blocks.append(_Block("line", _inline(line)))
        i += 1
    return blocks


Inline = Callable[[_Span, Callable[[list[_Span]], str]], str]


def _render(markdown: str, span: Inline, code_block: Callable[[_Block], str], heading: Callable[[str, int], str],
            escape: Callable[[str], str]) -> str:
    def spans(items: list[_Span]) -> str:
        return "".join(escape(s.text) if s.kind == "text" else span(s, spans) for s in items)

    out = []
    for block in _blocks(markdown):
        if block.kind == "code":
            out.append(code_block(block))
        elif block.kind == "heading":
            out.append(heading(spans(block.spans), block.level))
        else:
            out.append(spans(block.spans))
    return "\n".join(out)


def _escape_html(text: str) -> str:
    return html.escape(text, quote=False)


def _telegram_span(s: _Span, inner: Callable[[list[_Span]], str]) -> str:
    if s.kind == "code":
        return f"<code>{_escape_html(s.text)}</code>"
    if s.kind == "link":
        return f'<a href="{html.escape(s.url, quote=True)}">{inner(s.children)}</a>'
    tag = {"bold": "b", "italic": "i", "strike": "s"}[s.kind]
    return f"<{tag}>{inner(s.children)}</{tag}>"


def _telegram_code(b: _Block) -> str:
    if b.language:
        return f'<pre><code class="language-{html.escape(b.language, quote=True)}">{_escape_html(b.code)}</code></pre>'
    return f"<pre>{_escape_html(b.code)}</pre>"


def to_telegram_html(markdown: str) -> str:
    """For `parse_mode=HTML`: only Telegram's tags, and `<`, `>`, `&` escaped everywhere else."""
    return _render(markdown, _telegram_span, _telegram_code, lambda text, _: f"<b>{text}</b>", _escape_html)


def to_discord(markdown: str) -> str:
    """Discord reads Markdown itself, headings up to `###` included; deeper headings,
    which it shows raw, become bold lines. Everything else is passed as written."""
    lines = []
    fence = ""
    for line in markdown.split("\n"):
        opening = _FENCE.match(line)
        if opening is not None and (not fence or (line.strip().startswith(fence) and not line.strip().strip(fence[0]))):
            fence = "" if fence else opening.group(1)
        heading = None if fence else _HEADING.match(line)
        lines.append(f"**{heading.group(2)}**" if heading is not None and len(heading.group(1)) > 3 else line)
    return "\n".join(lines)


def _escape_slack(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mark(bold: str, italic: str, strike: str) -> Inline:
    def span(s: _Span, inner: Callable[[list[_Span]], str]) -> str:
        if s.kind == "code":
            return f"`{s.text}`"
        mark = {"bold": bold, "italic": italic, "strike": strike}.get(s.kind)
        if mark is not None:
            return f"{mark}{inner(s.children)}{mark}"
        return ""

    return span


def _fenced(b: _Block) -> str:
    return f"```\n{b.code}\n```"


def to_slack(markdown: str) -> str:
    """Slack's mrkdwn: *bold*, _italic_, ~strike~, <url|label>; `&`, `<`, `>` escaped."""
    marks = _mark("*", "_", "~")

    def span(s: _Span, inner: Callable[[list[_Span]], str]) -> str:
        if s.kind == "code":
            return f"`{_escape_slack(s.text)}`"
        if s.kind == "link":
            return f"<{s.url}|{inner(s.children)}>"
        return marks(s, inner)

    def code(b: _Block) -> str:
        return f"```\n{_escape_slack(b.code)}\n```"

    return _render(markdown, span, code, lambda text, _: f"*{text}*", _escape_slack)


def to_whatsapp(markdown: str) -> str:
    """WhatsApp's formatting: *bold*, _italic_, ~strike~, `code`, ``` blocks; links as
    "label (url)", since WhatsApp shows URLs itself."""
    marks = _mark("*", "_", "~")

    def span(s: _Span, inner: Callable[[list[_Span]], str]) -> str:
        if s.kind == "link":
            return f"{inner(s.children)} ({s.url})"
        return marks(s, inner)

    return _render(markdown, span, _fenced, lambda text, _: f"*{text}*", lambda t: t)
