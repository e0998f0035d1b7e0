"""The scheduler turns speculation down on a steep (small CPU) profile and lengthens it on a flat (GPU) one."""

from __future__ import annotations

import pytest

from models.speculative.profile import SpsProfile
from models.speculative.scheduler import Scheduler

# Shapes as measured: Qwen 1.5B on the 2-core CPU (hardware.md) and a GPU where B <= 16 costs ~1 step.
CPU = SpsProfile([1, 2, 4, 8, 16], [0.0248, 0.049, 0.090, 0.133, 0.20])
GPU = SpsProfile([1, 2, 4, 8, 16], [0.0100, 0.0101, 0.0102, 0.0105, 0.0115])


def test_profile_interpolates_and_extrapolates():
    assert CPU.step_seconds(1) == pytest.approx(0.0248)
    assert CPU.step_seconds(6) == pytest.approx((0.090 + 0.133) / 2)
    assert CPU.step_seconds(24) == pytest.approx(0.20 + 8 * (0.20 - 0.133) / 8)
    assert CPU.ceiling(4.0, 8) == pytest.approx(4 * 0.0248 / 0.133)
    with pytest.raises(ValueError, match="start at 1"):
        SpsProfile([2, 4], [0.1, 0.2])


@pytest.mark.parametrize("c", [0.5, 0.7, 0.8])
def test_cpu_profile_turns_speculation_off_for_ordinary_drafts(c):
    assert Scheduler(CPU).choose_length([c] * 16) == 0


def test_cpu_profile_speculates_long_only_on_near_certain_drafts():
    n = Scheduler(CPU).choose_length([0.99] * 16)
    assert n >= 8  # short drafts never pay here: 2 tokens cost 2 steps


def test_gpu_profile_lengthens_drafts_with_confidence():
    s = Scheduler(GPU)
    lengths = [s.choose_length([c] * 16) for c in (0.3, 0.6, 0.8, 0.95)]
    assert lengths[0] >= 1
    assert lengths == sorted(lengths) and lengths[-1] > lengths[0]
    assert lengths[-1] == 16


def test_length_stops_where_confidence_collapses():
    s = Scheduler(GPU)
    assert s.choose_length([0.95, 0.95, 0.95, 0.01, 0.9, 0.9]) == 3


def test_draft_cost_turns_speculation_off():
    """A draft model costing as much per token as the target never pays, however good."""
    assert Scheduler(GPU).choose_length([0.99] * 8, seconds_per_token=0.010) == 0
    assert Scheduler(GPU).choose_length([0.9] * 8, seconds_per_token=0.001) > 0


def test_assess_says_why():
    cpu = Scheduler(CPU).assess()
    gpu = Scheduler(GPU).assess()
    assert cpu.pays and gpu.pays
    assert cpu.break_even_confidence > 0.85 > gpu.break_even_confidence
    assert gpu.ceiling > cpu.ceiling
    never = Scheduler(CPU).assess(seconds_per_token=0.02)
    assert not never.pays and "never pays" in never.reason


def test_plan_shares_batch_by_survival():
    s = Scheduler(GPU, max_draft=8)
    confident, doubtful = [0.95] * 8, [0.2] * 8
    a, b = s.plan([confident, doubtful])
    assert a > b
    assert s.plan([[0.95] * 8]) == [s.choose_length([0.95] * 8)]


def test_plan_on_cpu_profile_keeps_batch_small():
    assert Scheduler(CPU).plan([[0.6] * 8, [0.6] * 8]) == [0, 0]


def test_drafts_stop_within_the_exact_batch():
    """Where batches above 3 tokens change the logits, no draft grows past 2 tokens."""
    capped = SpsProfile(GPU.batch_sizes, GPU.seconds, exact_batch=3)
    s = Scheduler(capped)
    assert s.choose_length([0.99] * 16) == 2
    # up to 4 tokens every token costs a full step, as measured for Qwen 1.5B here
    steep = Scheduler(SpsProfile([1, 2, 4, 8, 16], [0.025, 0.05, 0.1, 0.133, 0.2], exact_batch=3)).assess()
    assert not steep.pays and "not bit-identical" in steep.reason
