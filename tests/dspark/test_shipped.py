"""The drafters shipped in `models/`: every card that names one gets it complete, small enough
to keep in git, calibrated, loaded on its own target, drafting tokens the target accepts, and
never changing what the target says."""

from __future__ import annotations

import json

import pytest

from models.catalog import Catalog
from models.dspark.drafter import dspark_for_card
from models.dspark.registry import CONFIG, WEIGHTS, dspark_checkpoint
from models.speculative.engine import SpecEngine
from models.speculative.metrics import SpecStats
from models.speculative.prompts import CODE, COPY_HEAVY, chat_prompt
from models.speculative.target import LlamaTarget
from tests.conftest import _pulled
from tests.dspark.test_lossless import plain_greedy

SHIPPED = [card.name for card in Catalog.load() if "dspark" in card.drafters]


def test_the_default_model_ships_a_drafter() -> None:
    assert "smollm2-135m-instruct" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_drafter_drafts_for_its_target_and_changes_nothing(name: str) -> None:
    card = Catalog.load().get(name)
    checkpoint = dspark_checkpoint(card)
    assert checkpoint is not None, f"{name}: its card names a drafter that is not on disk"
    assert (checkpoint / WEIGHTS).stat().st_size < 64 * 2**20
    config = json.loads((checkpoint / CONFIG).read_text())["config"]
    assert len(config["calibration"]) == config["block_size"]  # calibrated: one temperature per drafted position
    path = _pulled(name)
    drafter = dspark_for_card(card, path, device="cpu")
    assert drafter is not None
    target = LlamaTarget.load(path, n_ctx=2048, threads=2, hidden=True, layers=drafter.hidden_layers)
    stats = SpecStats()
    for text in (CODE[0], CODE[3], COPY_HEAVY[0]):
        prompt = chat_prompt(target, text)
        want = plain_greedy(target, prompt, 24)
        target.rollback(0)
        # two drafts, three rows a verify: llama.cpp's CPU kernels switch at four rows for k-quants
        # (Qwen's Q4_K_M), and wider batches can differ from one-by-one decoding by half a logit
        assert list(SpecEngine(target, drafter, fixed_length=2).generate(prompt, 24, stats=stats)) == want
    assert stats.accepted >= 3, f"{name}: a trained drafter gets some of its drafts accepted ({stats.accepted} of {stats.drafted})"
