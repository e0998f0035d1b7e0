"""The decision with measured quality: figures written into a real store (SQLite through
SQLAlchemy, as `aibox models eval` leaves them), the shipped catalog and the real model
files present (deciding never runs a model)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aibox.router.candidates import CandidateSource
from aibox.router.decide import Router
from aibox.router.estimator import Estimator, LengthModel
from aibox.router.quality import KindScore, save_scores
from aibox.store import Store
from models.catalog import Catalog

FAST = "smollm2-135m-instruct"
LONG = "qwen2.5-coder-1.5b-instruct"
Q05 = "qwen2.5-coder-0.5b-instruct"  # a fast candidate too
FACT = "What is the capital of Australia? Answer in one word."


def measured(store: Store, model: str, **rates: int) -> None:
    """Stores `correct` out of 100 items per kind, as an eval run does."""
    save_scores(store, model, [KindScore(kind, 100, correct, 0.5) for kind, correct in rates.items()], "test-set")


@pytest.fixture
def store(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'box.db'}")
    yield store
    store.close()


def router_on(store: Store, models_dir, margin: float = 5.0) -> Router:
    return Router(CandidateSource(Catalog.load(), models_dir, store), Estimator(LengthModel.load(), store), FAST,
                  quality_margin=margin)


@pytest.fixture
def three_models(models_dir, qwen15_path, qwen05_path):
    return models_dir


def test_a_fast_model_too_far_below_the_best_loses(store, three_models):
    measured(store, FAST, fact=53)
    measured(store, Q05, fact=60)
    measured(store, LONG, fact=97)
    d = router_on(store, three_models).decide(FACT)
    assert d.task_kind == "fact" and d.model == LONG
    fast = next(c for c in d.candidates if c.model == FAST)
    assert fast.quality == 53 and fast.excluded.startswith("quality:")
    assert "within 5 points" in d.reason and "faster but below the quality margin: " + FAST in d.reason
    assert set(d.fallbacks) == {FAST, Q05}  # they still stand in if the chosen model fails


def test_the_fastest_within_the_margin_wins(store, three_models):
    measured(store, FAST, fact=94)
    measured(store, Q05, fact=90)
    measured(store, LONG, fact=97)
    d = router_on(store, three_models).decide(FACT)
    assert d.model == FAST and "94 points right" in d.reason
    assert router_on(store, three_models, margin=2).decide(FACT).model == LONG


def test_margin_is_per_kind(store, three_models):
    measured(store, FAST, fact=95, translation=40)
    measured(store, Q05, fact=50, translation=50)
    measured(store, LONG, fact=96, translation=90)
    router = router_on(store, three_models)
    assert router.decide(FACT).model == FAST
    d = router.decide("Translate 'thank you' into German. Give only the translation.")
    assert d.task_kind == "translation" and d.model == LONG


def test_unmeasured_kinds_fall_back_to_the_card(store, three_models):
    measured(store, LONG, fact=97, code=90)  # SmolLM2 never measured: its card allows short facts
    measured(store, Q05, fact=60, code=50)
    d = router_on(store, three_models).decide(FACT)
    assert d.model == FAST
    fast = next(c for c in d.candidates if c.model == FAST)
    assert fast.quality is None and not fast.excluded and "card allows it" in d.reason
    # the card still rules it out where it says so, measured or not
    measured(store, FAST, code=99)
    code = router_on(store, three_models).decide("Write a Python function that parses a CSV file into dicts, with unit tests")
    assert code.task_kind == "code" and code.model == LONG


def test_pins_overrides_and_fast_still_win(store, three_models):
    measured(store, FAST, fact=20)
    measured(store, Q05, fact=30)
    measured(store, LONG, fact=97)
    router = router_on(store, three_models)
    assert router.decide(FACT, pinned=FAST).model == FAST
    assert router.decide(FACT, override=FAST).reason.startswith("user override")
    fast = router.decide("/fast " + FACT)
    assert fast.model == FAST and "quality not weighed" in fast.reason


def test_route_json_shows_expected_seconds_and_quality(tmp_path, three_models):
    config = tmp_path / "aibox.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\nmodels_dir = "{three_models}"\n[router]\nquality_margin = 10\n')
    store = Store.open(f"sqlite:///{tmp_path / 'state' / 'aibox.db'}")
    try:
        measured(store, FAST, fact=88)
        measured(store, Q05, fact=80)
        measured(store, LONG, fact=97)
    finally:
        store.close()
    out = subprocess.run([sys.executable, "-m", "aibox", "--config", str(config), "route", "--json", FACT],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["model"] == FAST and data["task_kind"] == "fact" and "within 10 points" in data["reason"]
    by_model = {c["model"]: c for c in data["candidates"]}
    assert by_model[FAST]["quality"] == 88 and by_model[LONG]["quality"] == 97
    assert all(c["expected_s"] > 0 for c in data["candidates"])
    human = subprocess.run([sys.executable, "-m", "aibox", "--config", str(config), "route", FACT],
                           capture_output=True, text=True, timeout=120)
    assert human.returncode == 0 and "quality" in human.stdout and "88" in human.stdout
