"""Splitting long replies: every piece fits, nothing is lost, cuts fall where people
expect them, and code blocks render in every piece."""

from __future__ import annotations

import re

import pytest

from connectors.chunking import split_text


def _squash(text: str) -> str:
    """The text without whitespace or fences: what must survive a split unchanged."""
    return re.sub(r"\s+", "", re.sub(r"```[a-z]*", "", text))


def test_short_text_is_one_piece_and_empty_text_none() -> None:
    assert split_text("hello", 100) == ["hello"]
    assert split_text("  \n\n ", 100) == []


def test_cuts_prefer_paragraphs_then_sentences() -> None:
    para = "A sentence here. " * 10
    text = f"{para.strip()}\n\n{para.strip()}\n\n{para.strip()}"
    pieces = split_text(text, 400)
    assert pieces == [f"{para.strip()}\n\n{para.strip()}", para.strip()]
    sentences = "One two three four. " * 40
    pieces = split_text(sentences, 100)
    assert all(len(p) <= 100 for p in pieces)
    assert all(p.endswith(".") for p in pieces[:-1]), pieces


def test_a_code_block_that_fits_is_moved_whole_to_the_next_piece() -> None:
    code = "```python\n" + "".join(f"x{i} = {i}\n" for i in range(20)) + "```"
    text = "Intro words. " * 20 + "\n\n" + code + "\n\nAfter."
    pieces = split_text(text, 300)
    assert any(code in p for p in pieces), pieces
    for p in pieces:
        assert len(p) <= 300 and p.count("```") % 2 == 0
    assert _squash("".join(pieces)) == _squash(text)


def test_a_code_block_longer_than_a_piece_is_closed_and_reopened() -> None:
    code = "```sql\n" + "".join(f"SELECT {i} FROM t;\n" for i in range(100)) + "```"
    pieces = split_text(code, 200)
    assert len(pieces) > 5
    for p in pieces:
        assert len(p) <= 200
        assert p.startswith("```sql\n") and p.endswith("```"), p
    assert _squash("".join(pieces)) == _squash(code)


@pytest.mark.parametrize("limit", [16, 100, 2000, 4096])
def test_unbroken_text_is_cut_hard_and_nothing_is_lost(limit: int) -> None:
    text = "x" * 10_000
    pieces = split_text(text, limit)
    assert "".join(pieces) == text and all(len(p) <= limit for p in pieces)


def test_emoji_sequences_and_combining_marks_stay_whole() -> None:
    family = "👩\u200d👩\u200d👧\u200d👦"
    text = family * 500
    for piece in split_text(text, 100):
        assert not piece.startswith("\u200d") and not piece.endswith("\u200d")
        assert len(piece) % len(family) == 0, "a family emoji was cut apart"
    accents = "e\u0301" * 300
    for piece in split_text(accents, 99):
        assert not piece.startswith("\u0301")


def test_a_limit_too_small_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        split_text("hello", 3)
