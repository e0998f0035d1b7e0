"""The toolkit end to end on the real SmolLM2 target, kept tiny: prepare through the CLI
(resumable), a short training run that lowers the loss, resuming it, calibrating it."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.dspark.checkpoint import load_checkpoint, read_config
from models.dspark_toolkit.calibrate import calibrate, ece, fit_temperatures
from models.dspark_toolkit.data import DataError, is_validation, load_examples, load_prompts
from models.dspark_toolkit.trainer import TrainSettings, build_model, evaluate_loss, train
from models.speculative.prompts import PROMPT_SETS

VAL = 8


def aibox(*args: str, config) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aibox", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("draft")
    (root / "aibox.toml").write_text(f'state_dir = "{root / "state"}"\nmodels_dir = "{models_dir}"\n')
    prompts = load_prompts()
    train_ids = [p for p in prompts if not is_validation(p["id"], VAL)][:5]
    val_ids = [p for p in prompts if is_validation(p["id"], VAL)][:2]
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in train_ids + val_ids))
    return root


@pytest.fixture(scope="module")
def data(workdir):
    args = ["draft", "prepare", "--model", "smollm2-135m-instruct", "--data", str(workdir / "data"),
            "--prompts", str(workdir / "prompts.jsonl"), "--max-tokens", "24", "--threads", "1", "--json"]
    r = aibox(*args, config=workdir / "aibox.toml")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["prepared_now"] == 7
    again = aibox(*args, config=workdir / "aibox.toml")
    assert again.returncode == 0 and json.loads(again.stdout)["prepared_now"] == 0  # resumed: nothing left
    return workdir / "data"


SETTINGS = dict(batch_size=2, anchors=8, n_layers=1, ffn=64, markov_rank=8, draft_vocab=2048, lr=3e-3,
                validation_percent=VAL, checkpoint_every=5)


def test_shipped_prompts_are_mixed_and_never_the_benchmark_prompts() -> None:
    prompts = load_prompts()
    assert {p["category"] for p in prompts} == {"chat", "code", "maths", "instructions", "edit"}
    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z]+", text.lower()))

    held_out = [words(t) for texts in PROMPT_SETS.values() for t in texts]
    for p in prompts:  # not even a near copy of a benchmark prompt (word overlap at most half)
        w = words(p["prompt"])
        assert all(len(w & h) / len(w | h) <= 0.5 for h in held_out), p
    assert not any("humaneval" in p["prompt"].lower() for p in prompts)


def test_prepared_files_hold_tokens_features_and_the_answer_mask(data) -> None:
    files = sorted(data.glob("*.safetensors"))
    assert len(files) == 7
    for f in files:
        t = load_file(str(f))
        n = len(t["tokens"])
        assert t["features"].shape == (n - 1, 576) and t["features"].dtype == torch.float16
        answer = t["answer"].tolist()
        first = answer.index(1)
        assert first > 0 and all(answer[first:]) and not any(answer[:first])
    r = aibox("draft", "prepare", "--model", "smollm2-135m-instruct", "--data", str(data), "--max-tokens", "99",
              "--limit", "1", config=data.parent / "aibox.toml")
    assert r.returncode == 65 and "other settings" in r.stderr  # never mixes data of different settings


def test_training_lowers_the_loss_resumes_and_calibrates(data, smollm2_path, tmp_path) -> None:
    examples = load_examples(data, VAL, "train")
    before = evaluate_loss(build_model(smollm2_path, TrainSettings(**SETTINGS), examples, torch.device("cpu")),
                           examples, TrainSettings(**SETTINGS), torch.device("cpu"))
    out = tmp_path / "run"
    first = train(data, smollm2_path, out, TrainSettings(steps=10, **SETTINGS), torch.device("cpu"))
    assert first["steps_done"] == 10
    resumed = train(data, smollm2_path, out, TrainSettings(steps=20, **SETTINGS), torch.device("cpu"))
    assert resumed["steps_done"] == 20
    log = (out / ".train" / "log.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in log] == list(range(1, 21))
    assert (out / ".train" / "loss.png").stat().st_size > 0
    model = load_checkpoint(out, smollm2_path)
    after = evaluate_loss(model, examples, TrainSettings(**SETTINGS), torch.device("cpu"))
    assert after["loss"] < before["loss"] * 0.9, (before, after)

    result = calibrate(out, smollm2_path, data, torch.device("cpu"), anchors=16, min_blocks=5)
    cfg, meta = read_config(out)
    assert cfg.calibration == result["temperatures"] and len(cfg.calibration) == 5
    assert set(result["after"]) == {"per_position", "cumulative"}
    assert "calibration" in meta


def test_temperature_scaling_fixes_overconfidence() -> None:
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 1.5, size=(4000, 3))
    hit = (rng.random((4000, 3)) < 1 / (1 + np.exp(-true_logit))).astype(float)
    overconfident = true_logit * 3.0
    temps = fit_temperatures(overconfident, hit)
    assert all(2.4 < t < 3.6 for t in temps), temps
    p_before = 1 / (1 + np.exp(-overconfident[:, 0]))
    p_after = 1 / (1 + np.exp(-overconfident[:, 0] / temps[0]))
    assert ece(p_after, hit[:, 0]) < 0.03 < ece(p_before, hit[:, 0])


def test_help_for_every_draft_command(tmp_path) -> None:
    for args in (["draft"], ["draft", "prepare"], ["draft", "train"], ["draft", "calibrate"], ["draft", "eval"]):
        r = aibox(*args, "--help", config=tmp_path / "none.toml")
        assert r.returncode == 0, (args, r.stderr)
        assert "Usage" in r.stdout


def test_unknown_model_and_missing_data_are_clear_errors(workdir) -> None:
    r = aibox("draft", "prepare", "--model", "gpt-17", config=workdir / "aibox.toml")
    assert r.returncode == 66 and "unknown model 'gpt-17'" in r.stderr
    r = aibox("draft", "train", "--model", "smollm2-135m-instruct", "--data", str(workdir / "nothing"),
              config=workdir / "aibox.toml")
    assert r.returncode == 65 and "no prepared data" in r.stderr


def test_prepare_and_train_over_intermediate_layers(workdir, data, smollm2_path, tmp_path) -> None:
    layered = workdir / "layered"
    r = aibox("draft", "prepare", "--model", "smollm2-135m-instruct", "--data", str(layered), "--feature-layers", "10,20",
              "--prompts", str(workdir / "prompts.jsonl"), "--max-tokens", "12", "--threads", "1", "--json",
              config=workdir / "aibox.toml")
    assert r.returncode == 0, r.stderr
    t = load_file(str(next(layered.glob("*.safetensors"))))
    assert t["features"].shape == (len(t["tokens"]) - 1, 3 * 576)
    out = tmp_path / "run"
    train(layered, smollm2_path, out, TrainSettings(steps=3, **SETTINGS), torch.device("cpu"))
    cfg, _ = read_config(out)
    assert cfg.feature_layers == [10, 20] and load_checkpoint(out, smollm2_path).fc.in_features == 3 * 576
    with pytest.raises(DataError, match="prepared with layers"):
        calibrate(out, smollm2_path, data, torch.device("cpu"), anchors=16, min_blocks=5)
    bad = aibox("draft", "prepare", "--model", "smollm2-135m-instruct", "--data", str(tmp_path / "x"),
                "--feature-layers", "7,mid", config=workdir / "aibox.toml")
    assert bad.returncode == 2 and "--feature-layers" in bad.stderr
