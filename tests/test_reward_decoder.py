"""The decoder reward path: a tiny random Llama (built here, with SmolLM2's real tokenizer and chat
template) trained as a reward model. Conversational format, nothing dropped, reload and score."""

from __future__ import annotations

import json

import pytest

from reward import RewardModel
from reward.config import load_config
from reward.encoding import Encoder
from reward.train import train_reward_model
from tests.test_reward_train import make_pairs


@pytest.fixture(scope="module", params=["full", "lora"])
def trained(request, tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"rm-{request.param}") / "model"
    config = load_config(output_dir=str(out), base_model=str(tiny_llama), num_train_epochs=2,
                         per_device_train_batch_size=8, max_length=64, learning_rate=2e-3, logging_steps=1,
                         eval_fraction=0.2, seed=3, save_strategy="no", use_lora=request.param == "lora",
                         lora_target_modules="q_proj,v_proj")
    pairs = make_pairs()
    result = train_reward_model(config, pairs, provenance={"origin": "test"})
    return result, pairs, out


def test_the_decoder_sees_the_conversational_format(tiny_llama):
    from transformers import AutoTokenizer

    encoder = Encoder(AutoTokenizer.from_pretrained(tiny_llama), max_length=256)
    assert encoder.layout == "chat"
    messages = [("system", "Be kind."), ("user", "I cannot sleep.")]
    ids, truncated = encoder.encode([(messages, "How long has this been going on?")])
    text = encoder.tokenizer.decode(ids[0])
    assert truncated == [False]
    assert "<|im_start|>user\nI cannot sleep.<|im_end|>" in text
    assert "<|im_start|>assistant\nHow long has this been going on?" in text


def test_nothing_is_dropped_and_the_loss_falls(trained):
    result, pairs, _ = trained
    assert result.n_train + result.n_eval + result.n_calibration == len(pairs)
    assert result.n_truncated >= 1  # the long conversation is cut from the left, not dropped
    assert result.train_loss[-1] < result.train_loss[0]


def test_reloads_and_scores_as_trained(trained):
    result, pairs, out = trained
    meta = json.loads((out / "therapref_reward.json").read_text())
    assert meta["encoder"]["layout"] == "chat"
    model = RewardModel.load(out)
    chosen, rejected = model.score_pairs(pairs[:8])
    assert sum(c > r for c, r in zip(chosen, rejected, strict=True)) >= 6
    again = RewardModel.load(out).score_pairs(pairs[:8])
    assert again[0] == pytest.approx(chosen, abs=1e-4)
