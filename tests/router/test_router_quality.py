"""The evaluation set and its automatic scorer: hand-written right and wrong answers for
every kind of check, the shipped set's shape, and `aibox models eval` run for real on
SmolLM2 through the real runtime (a few items per kind), stored in a real store."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

from sqlalchemy import select

from aibox.router import quality
from aibox.router.quality import Item, score
from aibox.store import Store
from aibox.store.schema import ModelQuality


def item(kind: str, rule: dict) -> Item:
    return Item(id=f"{kind}-x", kind=kind, lang="en", prompt="", score=rule, max_tokens=32, split="train")


def test_short_facts_and_translations_match_whole_words_in_any_case_or_accent():
    gold = item("fact", {"accept": ["au"]})
    assert score(gold, "The chemical symbol for gold is Au.").passed
    assert not score(gold, "It is because of its colour.").passed  # "au" inside "because" is no answer
    capital = item("fact", {"accept": ["brasília"]})
    assert score(capital, "**Brasilia**").passed
    assert not score(capital, "Rio de Janeiro").passed
    cjk = item("fact", {"accept": ["北京"]})
    assert score(cjk, "中国的首都是北京市。").passed
    french = item("translation", {"accept": ["bonjour"]})
    assert score(french, "Bonjour !").passed
    assert not score(french, "Je m'aime la vie").passed
    assert not score(french, "   ").passed


def test_arithmetic_reads_the_final_number_with_separators():
    leap = item("arithmetic", {"number": 366})
    assert score(leap, "A leap year has 366 days.").passed
    assert not score(leap, "A leap year has 365 days.").passed
    assert score(item("arithmetic", {"number": 56}), "7 * 8 = 56").passed
    assert score(item("arithmetic", {"number": 1234}), "The total is 1,234.").passed
    assert score(item("arithmetic", {"number": 0.5}), "Ein Ei kostet 0,5 Euro").passed
    assert not score(item("arithmetic", {"number": 81}), "nine times nine").passed


def test_instruction_checks_catch_the_broken_constraint():
    cases = [
        ({"equals": "ready"}, "Ready.", "Ready, let's go!"),
        ({"uppercase": True}, "THE SEA IS DEEP.", "The sea is deep."),
        ({"lowercase": True}, "i like coffee.", "I like coffee."),
        ({"lines": 3}, "apple\nbanana\npear", "apple, banana, pear"),
        ({"bullets": 2}, "- read daily\n- read widely", "- read daily"),
        ({"max_words": 5}, "cats are soft", "cats are soft and warm and lazy"),
        ({"min_words": 3}, "cats are soft", "cats"),
        ({"starts_with": "today"}, "Today it rains.", "It rains today."),
        ({"ends_with": "tomorrow"}, "See you tomorrow!", "Tomorrow I leave."),
        ({"contains": ["piano", "evening"]}, "A piano played all evening.", "A piano played."),
        ({"not_contains": ["apple"]}, "Banana", "Apple"),
        ({"not_contains_chars": "eE"}, "I am hungry; a warm soup is good.", "Eat bread."),
        ({"json_keys": ["name", "age"]}, '```json\n{"name": "Ann", "age": 30}\n```', '{"name": "Ann"}'),
        ({"json_array": 3}, "[1, 2, 3]", "1, 2, 3"),
        ({"regex": r"^\s*1\s+2\s+3\s*$"}, "1 2 3", "1, 2, 3"),
        ({"max_sentences": 1}, "Sleep in a dark room.", "Sleep early. Avoid screens."),
        ({"max_chars": 5}, "春天来了", "春天来了，花开了，鸟叫了"),
    ]
    for rule, right, wrong in cases:
        it = item("instruction", {"checks": [rule]})
        assert score(it, right).passed, (rule, right)
        verdict = score(it, wrong)
        assert not verdict.passed and verdict.detail, (rule, wrong)


def test_summaries_need_every_key_point_within_the_length():
    it = item("summary", {"key_points": [["bridge"], ["repair", "closed"], ["bus", "shuttle"]], "max_words": 15})
    assert score(it, "The old bridge closes for repairs from March; a free shuttle runs meanwhile.").passed
    missing = score(it, "The old bridge closes for repairs from March.")
    assert not missing.passed and "bus" in missing.detail
    long = score(it, "The bridge " + "is closed for repair and a bus runs " * 5)
    assert not long.passed and "over 15 words" in long.detail


def test_code_answers_are_run_against_the_tests():
    it = item("code", {"tests": "assert add(2, 3) == 5\nassert add(-1, 1) == 0"})
    assert score(it, "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.").passed
    wrong = score(it, "```python\ndef add(a, b):\n    return a - b\n```")
    assert not wrong.passed and "AssertionError" in wrong.detail
    assert not score(it, "```python\nwhile True:\n    pass\n```").passed  # the CPU limit ends it
    assert not score(it, "You can add numbers with the + operator.").passed


def test_the_shipped_set_covers_every_kind_in_several_languages():
    items = quality.load_items()
    assert len(items) >= 300
    kinds = Counter(it.kind for it in items)
    assert set(kinds) == set(quality.KINDS) and min(kinds.values()) >= 30
    assert len({it.lang for it in items}) >= 6
    assert {it.split for it in items} == {"train", "test"}
    for it in items:  # every item's check refuses a non-answer, so none passes by default
        assert not score(it, "I don't know.").passed, it.id


def test_every_code_item_fails_without_a_solution():
    for it in quality.load_items():
        if it.kind == "code":
            assert not score(it, "```python\npass\n```").passed, it.id


def test_stratified_limit_spreads_over_each_kind():
    items = quality.load_items()
    picked = quality.stratified(items, 3)
    assert Counter(it.kind for it in picked) == {k: 3 for k in quality.KINDS}
    assert all(it.split == "train" for it in picked)
    facts = [it for it in picked if it.kind == "fact"]
    assert len({it.lang for it in facts}) > 1  # not just the first three English facts


def test_models_eval_runs_the_real_model_and_stores_rates(tmp_path, smollm2_path):
    config = tmp_path / "aibox.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\nmodels_dir = "{smollm2_path.parent}"\n')
    cmd = [sys.executable, "-m", "aibox", "--config", str(config), "models", "eval", "smollm2-135m-instruct",
           "--limit", "2", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert [k["kind"] for k in data["kinds"]] == list(quality.KINDS)
    assert all(k["items"] == 2 and 0 <= k["correct"] <= 2 for k in data["kinds"])
    store = Store.open(f"sqlite:///{tmp_path / 'state' / 'aibox.db'}")
    try:
        with store.session() as s:
            rows = {r.kind: r for r in s.scalars(select(ModelQuality).where(ModelQuality.model == "smollm2-135m-instruct"))}
        assert set(rows) == set(quality.KINDS)
        assert all(rows[k["kind"]].correct == k["correct"] for k in data["kinds"])
    finally:
        store.close()
    log = tmp_path / "state" / "eval" / "smollm2-135m-instruct.jsonl"
    lines = log.read_text().splitlines()
    assert len(lines) == 12
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and json.loads(again.stdout)["kinds"] == data["kinds"]
    assert log.read_text().splitlines() == lines  # resumed from the log: nothing answered twice

    unknown = subprocess.run(cmd[:7] + ["no-such-model"], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 66 and "unknown model" in unknown.stderr
