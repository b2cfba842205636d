"""Training configuration (TOML + overrides), encoding and freezing: fast, no training."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from reward.config import TheraRewardConfig, load_config
from reward.encoding import Encoder, encode_pairs
from reward.errors import RewardError
from reward.pairs import PreferencePair
from reward.resources import resolve_base_model
from reward.train import freeze_lower_layers


def test_toml_then_flags(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text('[train]\nbase_model = "embedded"\naggregation = "majority"\nnum_train_epochs = 5\n'
                    'margin_mapping = "linear"\nseed = 11\n')
    config = load_config(path, output_dir=str(tmp_path / "out"), num_train_epochs=2, seed=None)
    assert isinstance(config, TheraRewardConfig)
    got = (config.aggregation, config.num_train_epochs, config.seed, config.margin_mapping)
    assert got == ("majority", 2, 11, "linear")
    assert config.train_sampling_strategy == "group_by_length"
    assert config.activation_checkpointing is False
    assert TheraRewardConfig.__dataclass_fields__["sources"].metadata["help"]
    recorded = config.therapref_dict()
    assert recorded["aggregation"] == "majority"
    assert recorded["max_length"] == 512


def test_bad_settings_are_one_line(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text("[train]\nepochs = 3\n")
    with pytest.raises(RewardError, match="unknown setting"):
        load_config(path, output_dir=str(tmp_path))
    path.write_text("[train\n")
    with pytest.raises(RewardError, match="invalid TOML"):
        load_config(path, output_dir=str(tmp_path))
    with pytest.raises(RewardError, match="aggregation"):
        load_config(output_dir=str(tmp_path), aggregation="mean")
    with pytest.raises(RewardError, match="output folder"):
        load_config()
    with pytest.raises(RewardError, match="no config.json"):
        resolve_base_model(str(tmp_path))


def test_encoder_keeps_the_reply_and_cuts_old_context():
    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("embedded"))
    encoder = Encoder(tokenizer, max_length=32, min_context_tokens=4)
    assert encoder.layout == "pair"
    history = (("user", "first " * 50 + "LATEST worry"),)
    pair = PreferencePair(history, "a kind specific reply", "no", prompt_key="p", margin=0.5)
    columns, truncated = encode_pairs(encoder, [pair], with_margin=True)
    assert truncated == 1
    assert columns["margin"] == [0.5]
    tokens = tokenizer.convert_ids_to_tokens(columns["chosen_ids"][0])
    assert len(tokens) == 32
    assert tokens[0] == "[CLS]"
    assert tokens[-1] == "[SEP]"
    assert tokens[-5:] == ["a", "kind", "specific", "reply", "[SEP]"]  # the reply is whole
    assert tokens[-8:-5] == ["latest", "worry", "[SEP]"]
    assert tokens[1] == "first"  # oldest context cut
    assert columns["length"][0] == len(columns["chosen_ids"][0]) + len(columns["rejected_ids"][0])


def test_freeze_lower_layers():
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(resolve_base_model("embedded"), num_labels=1)
    assert freeze_lower_layers(model, 4) > 0
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any(".layer.5." in n for n in trainable)
    assert not any(".layer.3." in n for n in trainable)
    assert not any("embeddings" in n for n in trainable)
    assert any("classifier" in n for n in trainable)
