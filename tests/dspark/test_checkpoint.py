"""A drafter saved to disk comes back identical (up to the fp16 it is stored in), on its own target only."""

from __future__ import annotations

import json

import pytest
import torch

from models.dspark.checkpoint import CheckpointError, load_checkpoint, read_config, save_checkpoint
from models.dspark.model import DSpark, DSparkConfig
from models.dspark.target_weights import load_embedding_and_head, read_shape


@pytest.fixture(scope="module")
def smol_head(smollm2_path):
    return read_shape(smollm2_path), load_embedding_and_head(smollm2_path)


def test_round_trip_keeps_weights_vocabulary_and_config(tmp_path, smollm2_path, smol_head) -> None:
    shape, (embed, head) = smol_head
    cfg = DSparkConfig.for_target(shape, n_layers=1, ffn=64, markov_rank=8, draft_vocab_size=1000)
    torch.manual_seed(0)
    ids = torch.randperm(shape.n_vocab)[:1000].sort().values
    model = DSpark(cfg, embed, head, ids)
    torch.nn.init.normal_(model.markov_out.weight)
    model.cfg.calibration = [1.5, 1.2, 1.0, 0.9, 0.8]
    save_checkpoint(model, tmp_path, {"note": "test"})
    loaded = load_checkpoint(tmp_path, smollm2_path)
    assert loaded.cfg == model.cfg
    assert torch.equal(loaded.draft_ids, ids)
    for name, t in model.trainable_state().items():
        if name != "draft_ids":
            assert torch.equal(loaded.trainable_state()[name], t.half().float()), name
    tokens = torch.randint(0, shape.n_vocab, (1, 20))
    feats = torch.randn(1, 20, shape.d_model)
    mask = torch.ones(1, 20, dtype=torch.uint8)
    anchors, keep = torch.tensor([[10]]), torch.tensor([[True]])
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
        a = model.forward_blocks(tokens, feats, mask, anchors, keep)
        b = loaded.forward_blocks(tokens, feats, mask, anchors, keep)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert read_config(tmp_path)[1]["note"] == "test"
    assert (tmp_path / "model.safetensors").stat().st_size < 64 * 2**20


def test_loading_on_another_target_is_a_clear_error(tmp_path, smollm2_path, qwen05_path, smol_head) -> None:
    shape, (embed, head) = smol_head
    save_checkpoint(DSpark(DSparkConfig.for_target(shape, n_layers=1, ffn=32, markov_rank=0), embed, head), tmp_path)
    with pytest.raises(CheckpointError, match="trained for vocab 49152"):
        load_checkpoint(tmp_path, qwen05_path)


def test_damaged_config_is_a_clear_error(tmp_path, smollm2_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"config": {"n_vocab": 5, "bogus": 1}}))
    with pytest.raises(CheckpointError, match="not a DSpark config"):
        load_checkpoint(tmp_path, smollm2_path)
    with pytest.raises(CheckpointError, match="no drafter checkpoint"):
        load_checkpoint(tmp_path / "missing", smollm2_path)
