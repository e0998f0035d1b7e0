"""SPS(B) is measured on the real target and cached per machine and model under the state dir."""

from __future__ import annotations

import json

import pytest

from models.speculative.profile import SpsProfile, load_profile, machine_info, measure, profile_path, save_profile


def test_profile_cache_round_trip(tmp_path):
    info = machine_info(threads=2)
    prof = SpsProfile([1, 2, 4], [0.01, 0.02, 0.03], model="m", machine=info, measured_at=1.0)
    path = save_profile(tmp_path, prof)
    assert path == profile_path(tmp_path, "m", info)
    assert load_profile(tmp_path, "m", info) == prof
    other = dict(info, threads=16)
    assert load_profile(tmp_path, "m", other) is None


def test_broken_cache_file_is_a_clear_error(tmp_path):
    info = machine_info(threads=2)
    path = profile_path(tmp_path, "m", info)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"batch_sizes": [1, 2], "seconds": [0.1]}))
    with pytest.raises(ValueError, match="unreadable speculation profile"):
        load_profile(tmp_path, "m", info)


def test_measure_on_real_model_leaves_cache_empty(smollm2_path):
    from models.speculative.target import LlamaTarget

    target = LlamaTarget.load(smollm2_path, n_ctx=256, threads=1)
    prof = measure(target, "smollm2", machine_info(2), batch_sizes=(1, 4, 16), context=16, repeats=2)
    assert prof.batch_sizes == [1, 4, 16]
    assert all(s > 0 for s in prof.seconds)
    assert prof.seconds[2] > prof.seconds[0]  # 16 tokens never cost less than one
    assert target.n_past == 0
    # SmolLM2's Q4_1 kernels give the same logits batched or one by one, up to 16 rows
    assert prof.exact_batch == 16
