"""Feature extraction, the estimator's overrides and history, and the decision rule's
pins, overrides and quality limits, on the shipped catalog with the real model files
present (no generation: deciding never runs a model)."""

from __future__ import annotations

import pytest

from aibox.router.candidates import CandidateSource
from aibox.router.decide import Router
from aibox.router.estimator import Estimator, LengthModel, length_class
from aibox.router.features import extract, split_attachment
from aibox.store import Store
from aibox.store.schema import Generation
from models.catalog import Catalog

FAST = "smollm2-135m-instruct"
LONG = "qwen2.5-coder-1.5b-instruct"


def test_explicit_hints_in_several_languages():
    assert extract("/fast what's 2+2").hint == "fast"
    assert extract("/long tell me about Rome").hint == "long"
    assert extract("hello /long").hint is None
    assert extract("Answer in one word: your mood?").brief
    assert extract("Antworte nur mit Ja oder Nein").brief
    assert extract("用一句话总结").brief
    assert extract("Explain in detail how TCP works").detail
    assert extract("Erkläre ausführlich, wie ein Motor funktioniert").detail
    assert extract("请详细解释区块链").detail
    assert not extract("What is the capital of France?").detail


def test_requested_lengths():
    assert extract("Write a 500-word story about a robot").requested_tokens == 700
    assert extract("Write about 100 words on bottles").requested_tokens == 140
    assert extract("Escribe un cuento de 300 palabras").requested_tokens == 420
    assert extract("写一篇500字左右的文章").requested_tokens == 500
    assert extract("Summarise in two sentences").requested_tokens == 50
    assert extract("What is a closure?").requested_tokens is None
    # a count the text refers to is not a length asked for
    assert extract("Write a program that prints the 10 most frequent words").requested_tokens is None
    assert extract("Muestra las 10 palabras más frecuentes").requested_tokens is None


def test_attached_text_is_split_from_the_instruction():
    text = "Summarise this:\n\nThe council met on Tuesday. " * 1
    instruction, pasted = split_attachment(text)
    assert instruction == "Summarise this:"
    assert pasted == "The council met on Tuesday."
    f = extract(text, attachment_chars=1000)
    assert f.attached_chars == len(pasted) + 1000
    assert f.summarise
    assert split_attachment("one line only") == ("one line only", "")


def test_task_kinds():
    assert extract("Write a Python function that reverses a list").code_write
    assert extract("Écris une fonction JavaScript qui trie un tableau").code_write
    assert extract("Translate to German: good morning").translate
    assert extract("Traduce al inglés: hola").translate
    assert extract("Write a haiku about autumn").write
    assert extract("hi").greeting
    assert extract("Why is the sky blue?").question
    assert extract("¿Qué es la fotosíntesis?").definition and extract("What are black holes?").definition
    assert not extract("What is the capital of France?").definition and extract("Was ist die Hauptstadt von Kanada?").factual
    assert extract("What is 17 times 23?").maths and not extract("Write 3-4 sentences").maths
    assert extract("I'm so nervous about my exam tomorrow").feeling
    assert extract("Propose un titre pour mon blog").short_form and extract("Write a tweet about our launch").short_form


def test_cjk_text_counts_by_characters_not_spaces():
    """A Chinese request has no spaces: its size must come from its characters, or every
    one of them looks like a one-word message."""
    zh = extract("请详细解释什么是区块链以及它的工作原理。")
    assert zh.words > 10 and zh.chars > 40
    assert extract("hi").words == 1


def test_length_classes_use_the_issue_thresholds():
    assert [length_class(n) for n in (0, 59, 60, 200, 201)] == ["short", "short", "medium", "medium", "long"]


def test_hints_override_the_text_model():
    est = Estimator(LengthModel.load())
    assert est.estimate(extract("/fast explain the French revolution in detail")).length_class == "short"
    long = est.estimate(extract("/long hi"))
    assert long.length_class == "long" and long.source == "hint /long"
    asked = est.estimate(extract("Write a 500-word story"))
    assert asked.source == "requested length" and asked.length_class == "long"


def test_history_of_real_lengths_moves_the_estimate(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'box.db'}")
    try:
        est = Estimator(LengthModel.load(), store)
        text = "Tell me about my garden."
        before = est.estimate(extract(text, agent="gardener"), sender="alice")
        assert before.history_n == 0
        with store.session() as s:
            s.add_all([Generation(model=LONG, sender="alice", agent="gardener", completion_tokens=600) for _ in range(20)])
            s.add_all([Generation(model=FAST, sender="bob", agent="gardener", completion_tokens=3) for _ in range(20)])
        alice = est.estimate(extract(text, agent="gardener"), sender="alice")
        bob = est.estimate(extract(text, agent="gardener"), sender="bob")
        assert alice.history_n == 20 and alice.source == "model+history"
        assert alice.tokens > before.tokens > bob.tokens
    finally:
        store.close()


@pytest.fixture
def router(models_dir, qwen15_path):
    source = CandidateSource(Catalog.load(), models_dir)
    return Router(source, Estimator(LengthModel.load()), FAST)


def test_quality_limits_keep_code_and_long_answers_off_the_tiny_model(router):
    d = router.decide("/long write a complete Flask REST API for a todo list with tests")
    assert d.model == LONG
    fast = next(c for c in d.candidates if c.model == FAST)
    assert "unsuitable" in fast.excluded
    assert FAST in d.fallbacks and LONG not in d.fallbacks
    assert "lowest expected time" in d.reason


def test_short_chat_goes_to_the_fastest_model(router):
    d = router.decide("/fast hi")
    assert d.model == FAST and d.length_class == "short"
    assert all(c.expected_s > 0 for c in d.candidates)
    assert min(d.candidates, key=lambda c: c.expected_s).model == FAST


def test_user_override_beats_agent_pin_beats_routing(router):
    assert router.decide("/fast hi", pinned=LONG).model == LONG
    d = router.decide("/long write a long essay", pinned=LONG, override=FAST)
    assert d.model == FAST and d.reason.startswith("user override")
    d = router.decide("/fast hi", pinned="no-such-model")
    assert d.model == FAST and "agent pin no-such-model is not available" in d.reason


def test_decision_is_logged_with_reason_and_features(router, caplog):
    with caplog.at_level("INFO", logger="aibox.router"):
        router.decide("/fast hi", agent="assistant", sender="alice")
    record = next(r for r in caplog.records if r.getMessage() == "route")
    assert record.model == FAST and record.reason and record.features["hint"] == "fast"
