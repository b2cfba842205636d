"""Padding-free (packed) training batches: the same rewards, gradients and losses as TRL's padded
batches, on the real embedded MiniLM; only BERT-style bases are packed."""

from __future__ import annotations

import pytest
import torch

from reward.config import load_config
from reward.errors import RewardError
from reward.packing import PACKED_ATTENTION, PackedPreferenceCollator
from reward.resources import resolve_base_model
from reward.train import _load_model, packed_training, train_reward_model, use_packing
from tests.test_reward_train import make_pairs

# chosen rows then rejected rows, of different lengths (one of a single token)
CHOSEN = [[101, 2023, 2003, 1037, 3231, 102], [101, 1045, 2514, 2091, 2651, 1998, 2651, 102], [101]]
REJECTED = [[101, 2204, 102], [101, 2748, 2079, 2025, 3046, 2009, 2016, 2009, 2130, 102], [101, 1012, 102]]


@pytest.fixture(scope="module")
def model():
    config = load_config(output_dir="unused", seed=1)
    network, _ = _load_model(resolve_base_model("embedded"), config)
    network.train()
    set_dropout(network, 0.0)  # TRL's default (disable_dropout), for a deterministic comparison
    return network


def set_dropout(network, p: float) -> None:
    for module in network.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p


def padded_rewards(network) -> torch.Tensor:
    from trl.trainer.reward_trainer import DataCollatorForPreference

    rows = [{"chosen_ids": c, "rejected_ids": r} for c, r in zip(CHOSEN, REJECTED, strict=True)]
    batch = DataCollatorForPreference(pad_token_id=0)(rows)
    return network(**batch).logits.squeeze(-1)


def packed_rewards(network) -> torch.Tensor:
    rows = [{"chosen_ids": c, "rejected_ids": r} for c, r in zip(CHOSEN, REJECTED, strict=True)]
    batch = PackedPreferenceCollator()(rows)
    # no padding inside the batch: 31 real tokens, then one filler token up to a multiple of 16
    assert batch["input_ids"].shape == (1, 32)
    assert batch["packed_lengths"][-1] == 1
    assert int(batch["attention_mask"].sum()) == sum(map(len, CHOSEN + REJECTED))
    with packed_training(network, True):
        return network(**batch).logits.squeeze(-1)


def gradients(network, rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    network.zero_grad()
    weights = torch.linspace(-1.0, 1.0, rewards.numel())
    (rewards * weights).sum().backward()
    names = ("bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.5.attention.self.key.weight",
             "bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight", "classifier.weight")
    params = dict(network.named_parameters())
    return {name: params[name].grad.detach().clone() for name in names}


def test_packed_batch_gives_the_padded_rewards_and_gradients(model):
    expected = padded_rewards(model)
    expected_grads = gradients(model, expected)
    got = packed_rewards(model)
    got_grads = gradients(model, got)
    assert got.shape == (6,)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=1e-6, rtol=1e-3, msg=name)
    # the model is back to its own attention, and the pooling hooks are gone
    assert model.config._attn_implementation != PACKED_ATTENTION
    assert not model._forward_pre_hooks
    assert not model.bert.pooler._forward_pre_hooks
    torch.testing.assert_close(padded_rewards(model), expected)


def test_packed_batch_under_bf16_autocast_matches_to_bf16_precision(model):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = padded_rewards(model).float()
        got = packed_rewards(model).float()
    torch.testing.assert_close(got, expected, atol=3e-2, rtol=3e-2)


def test_packed_attention_with_dropout_trains(model):
    set_dropout(model, 0.5)
    try:
        first, second = packed_rewards(model), packed_rewards(model)
        gradients(model, first)
        assert not torch.equal(first, second)  # dropout is applied in the packed path too
        assert model.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    finally:
        set_dropout(model, 0.0)


def test_training_with_and_without_packing_gives_the_same_losses(tmp_path):
    pairs = make_pairs(24)
    losses = {}
    for packing, checkpointing in ((False, False), (True, False), (True, True)):
        config = load_config(output_dir=str(tmp_path / f"m{packing}{checkpointing}"), max_steps=3,
                             per_device_train_batch_size=8, max_length=64, eval_fraction=0.0, logging_steps=1,
                             save_strategy="no", bf16=False, learning_rate=1e-4, seed=5, packing=packing,
                             activation_checkpointing=checkpointing)
        result = train_reward_model(config, pairs)
        losses[packing, checkpointing] = result.train_loss
        assert result.meta["config"]["packing"] is packing
        assert result.meta["training"]["packed_batches"] is packing
    assert len(losses[True, False]) == 3
    assert losses[True, False] == pytest.approx(losses[False, False], rel=1e-4, abs=1e-5)
    # activation checkpointing re-runs the packed layers with the same keyword arguments
    assert losses[True, True] == pytest.approx(losses[True, False], rel=1e-5)


def test_only_bert_style_bases_without_lora_are_packed():
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    bert, _ = _load_model(resolve_base_model("embedded"), load_config(output_dir="unused"))
    assert use_packing(load_config(output_dir="unused"), bert)  # the default on a CPU
    assert not use_packing(load_config(output_dir="unused", packing=False), bert)
    with pytest.raises(RewardError, match="packing works for BERT-style bases without LoRA"):
        use_packing(load_config(output_dir="unused", packing=True, use_lora=True), bert)
    assert not use_packing(load_config(output_dir="unused", use_lora=True), bert)
    tiny_llama = AutoModelForSequenceClassification.from_config(LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_labels=1, pad_token_id=0))
    assert not use_packing(load_config(output_dir="unused"), tiny_llama)
    with pytest.raises(RewardError, match=r"\(llama\)"):
        use_packing(load_config(output_dir="unused", packing=True), tiny_llama)


def test_cli_no_packing_flag(tmp_path):
    import json

    from typer.testing import CliRunner

    from tests.factories import make_database
    from therapref.cli import app

    url = f"sqlite:///{tmp_path / 'tp.db'}"
    make_database(url, with_judgments=True)
    runs = {}
    for flag in ("--no-packing", "--packing"):
        out = tmp_path / flag.strip("-")
        result = CliRunner().invoke(app, ["train", "--db", url, "--output", str(out), "--max-steps", "1",
                                          "--max-length", "48", "--batch-size", "4", "--eval-fraction", "0.25", flag])
        assert result.exit_code == 0, result.output
        runs[flag] = json.loads((out / "therapref_reward.json").read_text())["training"]["packed_batches"]
    assert runs == {"--no-packing": False, "--packing": True}
