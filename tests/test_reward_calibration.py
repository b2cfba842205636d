"""Calibration fitted on held-back training prompts: ``temperature`` (the network's scale alone) and
``length_feature`` (scale and length weight). Head-only training on the embedded encoder keeps it fast."""

from __future__ import annotations

import json

import pytest

from reward import RewardModel
from reward.config import load_config
from reward.train import train_reward_model
from tests.test_reward_train import make_pairs


def train(tmp_path, **overrides):
    out = tmp_path / "model"
    config = load_config(output_dir=str(out), head_only=True, max_length=64, eval_fraction=0.2, seed=3,
                         save_strategy="no", **overrides)
    return train_reward_model(config, make_pairs()), out


@pytest.mark.parametrize("setting", ["temperature", "length_feature"])
def test_a_calibration_split_is_held_back_and_fitted(tmp_path, setting):
    result, out = train(tmp_path, **{setting: True})
    assert result.n_calibration > 0 and result.n_train + result.n_eval + result.n_calibration == len(make_pairs())
    meta = json.loads((out / "therapref_reward.json").read_text())
    assert meta["config"][setting] is True
    model = RewardModel.load(out)
    assert model.network_scale == meta["network_scale"] and model.network_scale != 1.0
    if setting == "temperature":
        assert model.length_weight == 0.0  # a temperature only: the ranking is the network's
    else:
        assert model.length_weight != 0.0
    raw = model.network_scores([(p.prompt, p.chosen) for p in make_pairs()[:4]])
    scored = model.score_batch([(p.prompt, p.chosen) for p in make_pairs()[:4]])
    if setting == "temperature":
        assert scored == pytest.approx([model.network_scale * r for r in raw])


def test_without_calibration_every_training_prompt_trains(tmp_path):
    result, out = train(tmp_path)
    assert result.n_calibration == 0
    assert RewardModel.load(out).network_scale == 1.0


def test_fine_tuning_on_many_prompts_fits_a_temperature_by_default(tmp_path):
    """``temperature = None``: on when fine-tuning on 100+ training prompts, and the choice is recorded."""
    from reward.pairs import PreferencePair
    from tests.tiny_models import tiny_reward_base

    base = tiny_reward_base(tmp_path / "tiny-bert")
    pairs = [PreferencePair((("user", f"Question {i}: I feel low."),), f"That sounds hard ({i}). Tell me more?",
                            "Ok.", prompt_key=f"q{i}") for i in range(140)]
    out = tmp_path / "model"
    config = load_config(output_dir=str(out), base_model=str(base), max_steps=1, max_length=32, eval_fraction=0.2,
                         save_strategy="no")
    assert config.temperature is None
    result = train_reward_model(config, pairs)
    assert 20 <= result.n_calibration <= 24 and result.n_train + result.n_calibration + result.n_eval == 140
    meta = json.loads((out / "therapref_reward.json").read_text())
    assert meta["config"]["temperature"] is True and meta["length_weight"] == 0.0
