"""The cheap training step: the loss from cached top-k target probabilities equals the exact
loss when the top-k holds the whole vocabulary and bounds it otherwise; real prepared data
stores the top-k, old-format data still trains on the exact path."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.numpy import save_file
from safetensors.torch import load_file

from models.dspark.model import sample_anchors
from models.dspark_toolkit.data import (DataError, PrepareSettings, collate, collate_top_k, is_validation, load_examples,
                                         load_prompts, prepare)
from models.dspark_toolkit.trainer import TrainSettings, block_loss, train
from tests.dspark.conftest import tiny_model

VOCAB = 40
VAL = 8


def _batch(model, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    B, L = 2, 14
    tokens = torch.randint(0, VOCAB, (B, L), generator=gen)
    feats = torch.randn(B, L, model.cfg.feature_dim, generator=gen)
    mask = torch.zeros(B, L, dtype=torch.uint8)
    mask[:, 4:] = 1
    anchors, keep = sample_anchors(mask, 6, gen)
    p_rows = torch.softmax(model.target_logits(feats), dim=-1)  # what prepare caches, per row
    return tokens, feats, mask, anchors, keep, p_rows


@pytest.mark.parametrize("draft_ids", [None, list(range(0, VOCAB, 2))])  # full and reduced draft vocabulary
def test_top_k_loss_is_exact_with_the_whole_vocabulary_and_an_upper_bound_below_it(draft_ids) -> None:
    model = tiny_model(vocab=VOCAB, draft_ids=draft_ids)
    tokens, feats, mask, anchors, keep, p_rows = _batch(model)
    s = TrainSettings(block_size=model.cfg.block_size)
    with torch.no_grad():
        exact = block_loss(model, tokens, feats, mask, anchors, keep, s)
        probs, ids = p_rows.topk(VOCAB, dim=-1)
        full = block_loss(model, tokens, feats, mask, anchors, keep, s, (ids, probs))
        assert torch.allclose(full["tv"], exact["tv"], atol=1e-5)
        assert torch.allclose(full["loss"], exact["loss"], atol=1e-5)
        assert torch.equal(full["ce"], exact["ce"])  # CE against the target's token never depends on p
        previous = float(full["tv"])
        for k in (16, 4, 1):
            probs, ids = p_rows.topk(k, dim=-1)
            bound = block_loss(model, tokens, feats, mask, anchors, keep, s, (ids, probs))
            assert float(bound["tv"]) >= float(exact["tv"]) - 1e-6
            assert float(bound["tv"]) >= previous - 1e-6  # fewer ids, looser bound
            assert torch.equal(bound["accept"], exact["accept"])  # the top-1 id is the target's greedy token
            previous = float(bound["tv"])
        assert previous > float(exact["tv"]) + 1e-3  # top-1 is a strictly looser bound here


def test_top_k_loss_trains_the_drafter_through_its_gradient() -> None:
    model = tiny_model(vocab=VOCAB).train()
    tokens, feats, mask, anchors, keep, p_rows = _batch(model, seed=1)
    probs, ids = p_rows.topk(8, dim=-1)
    r = block_loss(model, tokens, feats, mask, anchors, keep, TrainSettings(block_size=model.cfg.block_size), (ids, probs), bf16=True)
    r["loss"].backward()
    assert model.fc.weight.grad is not None and model.fc.weight.grad.abs().sum() > 0
    assert r["loss"].dtype == torch.float32


def test_top_k_must_be_positive() -> None:
    with pytest.raises(DataError, match="top_k"):
        PrepareSettings(top_k=0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, smollm2_path):
    out = tmp_path_factory.mktemp("topk") / "data"
    every = load_prompts()
    prompts = [p for p in every if not is_validation(p["id"], VAL)][:2] + [p for p in every if is_validation(p["id"], VAL)][:1]
    prepare(smollm2_path, out, prompts, PrepareSettings(max_tokens=20, top_k=8), threads=1)
    return out, prompts


def test_prepare_stores_the_top_k_of_every_answer_row_and_reloads_it(prepared) -> None:
    data, prompts = prepared
    assert json.loads((data / "meta.json").read_text())["format"] == 2
    examples = load_examples(data, VAL, "train") + load_examples(data, VAL, "val")
    assert sorted(e.id for e in examples) == sorted(p["id"] for p in prompts)
    for e in examples:
        n_answer = int(e.answer.sum())
        assert e.top_ids.shape == (n_answer, 8) and e.top_ids.dtype == torch.int32
        assert e.top_probs.shape == (n_answer, 8) and e.top_probs.dtype == torch.float16
        p = e.top_probs.float()
        assert (p[:, :-1] >= p[:, 1:]).all() and (p.sum(-1) <= 1.01).all() and (p.sum(-1) > 0.2).all()
        first = int(e.answer.argmax())
        # greedy answers: each answer token is the most likely id of the row before it
        assert torch.equal(e.top_ids[:, 0].long(), e.tokens[first:])
    tokens, _, _ = collate(examples, torch.device("cpu"))
    ids, probs = collate_top_k(examples, tokens.shape[1], torch.device("cpu"))
    e = examples[0]
    first = int(e.answer.argmax())
    assert torch.equal(ids[0, first - 1, 0], e.tokens[first])  # row t predicts token t + 1
    assert float(probs[0, : first - 1].abs().sum()) == 0.0


def test_a_short_train_runs_on_both_paths(prepared, smollm2_path, tmp_path) -> None:
    data, _ = prepared
    common = dict(steps=2, batch_size=2, anchors=4, n_layers=1, ffn=32, markov_rank=4, draft_vocab=1024,
                  validation_percent=VAL, checkpoint_every=2)
    cheap = train(data, smollm2_path, tmp_path / "cheap", TrainSettings(**common), torch.device("cpu"))
    exact = train(data, smollm2_path, tmp_path / "exact", TrainSettings(exact_loss=True, bf16=False, **common), torch.device("cpu"))
    assert cheap["loss_path"] == "top-8" and exact["loss_path"] == "exact" and not exact["bf16"]
    assert cheap["steps_done"] == exact["steps_done"] == 2


def test_old_format_data_trains_exactly_and_prepare_refuses_to_mix(prepared, smollm2_path, tmp_path) -> None:
    data, prompts = prepared
    old = tmp_path / "old"
    old.mkdir()
    meta = json.loads((data / "meta.json").read_text())
    meta["format"] = 1
    del meta["settings"]["top_k"]
    (old / "meta.json").write_text(json.dumps(meta))
    for f in data.glob("*.safetensors"):  # the format-1 layout: no top-k tensors
        t = {k: v.numpy() for k, v in load_file(str(f)).items() if not k.startswith("top_")}
        save_file(t, str(old / f.name))
    assert all(e.top_ids is None for e in load_examples(old, VAL, "train"))
    r = train(old, smollm2_path, tmp_path / "run", TrainSettings(steps=1, batch_size=2, anchors=4, n_layers=1, ffn=32,
              markov_rank=4, validation_percent=VAL), torch.device("cpu"))
    assert r["loss_path"] == "exact"
    with pytest.raises(DataError, match="format 1"):
        prepare(smollm2_path, old, prompts, PrepareSettings(max_tokens=20, top_k=8), threads=1)
