"""Shapes and attention masks of the block drafter, and what it may and may not see."""

from __future__ import annotations

import torch

from models.dspark.model import block_layout, block_mask, sample_anchors
from tests.dspark.conftest import tiny_model


def test_block_mask_sees_context_before_its_anchor_and_its_own_block_only() -> None:
    anchors = torch.tensor([[3, 7]])
    m = block_mask(anchors, ctx_len=10, block_size=3)[0, 0]  # (6, 16)
    assert m.shape == (6, 10 + 6)
    for q in range(6):
        anchor = 3 if q < 3 else 7
        assert m[q, :10].tolist() == [c < anchor for c in range(10)]
        own = range(0, 3) if q < 3 else range(3, 6)
        assert m[q, 10:].tolist() == [s in own for s in range(6)]


def test_block_layout_positions_follow_the_anchor() -> None:
    pos, is_anchor = block_layout(torch.tensor([[2, 5]]), 3)
    assert pos.tolist() == [[2, 3, 4, 5, 6, 7]]
    assert is_anchor.tolist() == [[True, False, False, True, False, False]]


def test_anchors_are_positions_whose_next_token_is_an_answer_token() -> None:
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0]])
    anchors, keep = sample_anchors(mask, 5, torch.Generator().manual_seed(0))
    assert sorted(anchors[keep].tolist()) == [2, 3, 4]
    assert keep.sum() == 3


def test_forward_blocks_shapes_labels_and_supervision() -> None:
    model = tiny_model(block=4)
    tokens = torch.randint(0, 40, (2, 12))
    feats = torch.randn(2, 12, 32)
    mask = torch.zeros(2, 12, dtype=torch.uint8)
    mask[:, 4:10] = 1  # answer tokens 4..9; 10 and 11 are not supervised
    anchors = torch.tensor([[3, 8], [5, 0]])
    keep = torch.tensor([[True, True], [True, False]])
    out = model.forward_blocks(tokens, feats, mask, anchors, keep)
    assert out.logits.shape == (2, 2, 4, 40)
    assert out.conf.shape == (2, 2, 4)
    assert out.labels[0, 0].tolist() == tokens[0, 4:8].tolist()
    assert out.valid[0, 0].tolist() == [True, True, True, True]
    assert out.valid[0, 1].tolist() == [True, False, False, False]  # label 10 is not an answer token
    assert out.valid[1, 1].tolist() == [False] * 4  # padding anchor
    assert out.target_pos[0, 0].tolist() == [3, 4, 5, 6]


def test_block_ignores_features_at_and_after_its_anchor() -> None:
    model = tiny_model()
    tokens = torch.randint(0, 40, (1, 10))
    feats = torch.randn(1, 10, 32)
    mask = torch.ones(1, 10, dtype=torch.uint8)
    anchors, keep = torch.tensor([[5]]), torch.tensor([[True]])
    base = model.forward_blocks(tokens, feats, mask, anchors, keep).logits
    later = feats.clone()
    later[0, 5:] = torch.randn(5, 32)
    assert torch.equal(model.forward_blocks(tokens, later, mask, anchors, keep).logits, base)
    earlier = feats.clone()
    earlier[0, 4] = torch.randn(32)
    assert not torch.allclose(model.forward_blocks(tokens, earlier, mask, anchors, keep).logits, base)


def test_blocks_in_one_batch_do_not_see_each_other() -> None:
    model = tiny_model()
    tokens = torch.randint(0, 40, (1, 12))
    feats = torch.randn(1, 12, 32)
    mask = torch.ones(1, 12, dtype=torch.uint8)
    keep = torch.tensor([[True, True]])
    both = model.forward_blocks(tokens, feats, mask, torch.tensor([[2, 6]]), keep).logits
    alone = model.forward_blocks(tokens, feats, mask, torch.tensor([[6]]), torch.tensor([[True]])).logits
    assert torch.allclose(both[0, 1], alone[0, 0], atol=1e-5)


def test_reduced_vocabulary_head_covers_only_the_draft_ids() -> None:
    ids = [0, 3, 5, 7, 11, 13]
    model = tiny_model(draft_ids=ids)
    assert model.head.shape == (6, 32)
    assert torch.equal(model.head, model.full_head[torch.tensor(ids)])
    assert model.to_draft[5] == 2 and model.to_draft[4] == 6  # 6 = "outside" row of W1
    assert model.markov_in.weight.shape == (7, 8)
