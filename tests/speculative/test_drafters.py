"""Prompt lookup finds the longest, most recent match; trackers learn from verification."""

from __future__ import annotations

import pytest

from models.sampling import GREEDY
from models.speculative.drafters.base import AcceptanceTracker
from models.speculative.drafters.prompt_lookup import PromptLookupDrafter, match_prior


def test_longest_match_wins_over_more_recent_shorter_one():
    d = PromptLookupDrafter(max_ngram=4)
    #            0  1  2  3  4  5  6  7  8  9 10 11
    context = [1, 2, 3, 9, 9, 7, 3, 5, 5, 1, 2, 3]
    tokens, length = d.find(context, 3)
    assert length == 3 and tokens == [9, 9, 7]


def test_most_recent_among_equal_matches():
    d = PromptLookupDrafter(max_ngram=2)
    context = [4, 8, 1, 4, 8, 2, 0, 4, 8]
    tokens, length = d.find(context, 2)
    assert length == 2 and tokens == [2, 0]


def test_no_match_gives_empty_draft():
    d = PromptLookupDrafter()
    assert d.find([1, 2, 3, 4], 5) == ([], 0)
    assert d.find([7], 5) == ([], 0)
    draft = d.propose([1, 2, 3, 4], 5, GREEDY)
    assert len(draft) == 0


def test_extend_callback_trims_the_draft():
    d = PromptLookupDrafter()
    context = [1, 2, 3, 4, 5, 6, 1, 2]
    seen = []

    def extend(conf):
        seen.append(list(conf))
        return len(conf) <= 2

    draft = d.propose(context, 4, GREEDY, extend)
    assert draft.tokens == [3, 4]
    assert all(c == draft.confidence[0] for c in draft.confidence)
    assert len(seen[-1]) == 3


def test_match_prior_trusts_long_matches_more():
    assert match_prior(1) == pytest.approx(0.2)
    assert match_prior(1) < match_prior(3) < match_prior(8) < 1


def test_tracker_learns_per_bucket():
    t = AcceptanceTracker(lambda _b: 0.9, prior_weight=2)
    assert t.rate(3) == 0.9
    for _ in range(10):
        t.update(1, drafted=4, accepted=0)
    for _ in range(10):
        t.update(3, drafted=4, accepted=4)
    assert t.rate(1) < 0.2
    assert t.rate(3) > 0.95
