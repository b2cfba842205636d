"""Head-only training (``reward/probe.py``): the reward head fitted on the frozen base's features.

On a tiny random Llama (SmolLM2's tokenizer, the ``tiny_llama`` fixture) and the embedded BERT
encoder: the saved model scores exactly as the head was fitted, only the head changed, reload works,
and the settings that cannot go with it fail before any work."""

from __future__ import annotations

import json

import pytest
import torch

from reward import RewardModel
from reward.config import load_config
from reward.errors import RewardError
from reward.probe import fit_head, head_features, pair_feature_diffs
from reward.train import train_reward_model
from tests.test_reward_train import make_pairs


def train_head_only(base: str, out, **overrides):
    config = load_config(output_dir=str(out), base_model=base, head_only=True, max_length=64, eval_fraction=0.2,
                         seed=3, save_strategy="no", **overrides)
    return train_reward_model(config, make_pairs(), provenance={"origin": "test"})


@pytest.fixture(scope="module", params=["llama", "bert"])
def fitted(request, tiny_llama, tmp_path_factory):
    base = str(tiny_llama) if request.param == "llama" else "embedded"
    out = tmp_path_factory.mktemp(f"head-{request.param}") / "model"
    return base, train_head_only(base, out), out


def test_the_saved_model_scores_as_the_head_was_fitted(fitted):
    from transformers import AutoModelForSequenceClassification

    base, result, out = fitted
    model = RewardModel.load(out)
    pairs = make_pairs()[:10]
    chosen, rejected = model.score_pairs(pairs)
    diffs = pair_feature_diffs(model.model, model.encoder, pairs, pad_token_id=model.tokenizer.pad_token_id or 0)
    head = model.model.score if hasattr(model.model, "score") else model.model.classifier
    expected = diffs @ head.weight.detach().double().reshape(-1)
    assert [c - r for c, r in zip(chosen, rejected, strict=True)] == pytest.approx(expected.tolist(), abs=1e-4)
    # the fit learnt the training signal, and nothing but the head moved
    assert sum(c > r for c, r in zip(chosen, rejected, strict=True)) >= 9
    assert result.report["accuracy"] >= 0.75
    if base != "embedded":
        original = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
        for name, param in model.model.named_parameters():
            if "score" not in name:
                assert torch.equal(param, dict(original.named_parameters())[name]), name


def test_the_run_is_recorded_as_head_only(fitted):
    _, result, out = fitted
    meta = json.loads((out / "therapref_reward.json").read_text())
    assert meta["config"]["head_only"] is True and meta["training"]["head_only"] is True
    assert meta["training"]["global_step"] == 0
    assert result.n_train + result.n_eval == len(make_pairs())
    assert result.n_truncated >= 1  # the long conversation is cut from the left, not dropped
    assert len(result.train_loss) == 1 and 0 < result.train_loss[0] < 0.6931  # below chance's log 2


def test_the_decoder_head_reads_the_last_real_token(tiny_llama):
    """The features are the head's input where the model pools: a padded batch gives each sequence the
    same row as scoring it alone."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    ids = [[5, 6, 7, 8, 9], [5, 6], [11, 12, 13]]
    together = head_features(model, ids, pad_token_id=tokenizer.pad_token_id, batch_size=3)
    alone = torch.cat([head_features(model, [row], pad_token_id=tokenizer.pad_token_id) for row in ids])
    assert torch.allclose(together, alone, atol=1e-5)


def test_fit_head_separates_and_penalty_shrinks():
    torch.manual_seed(0)
    signal = torch.randn(200, 4, dtype=torch.float64)
    diffs = signal * torch.sign(signal[:, :1])  # feature 0 always favours the chosen reply
    loose, tight = fit_head(diffs, l2=0.01), fit_head(diffs, l2=10.0)
    assert ((diffs @ loose) > 0).double().mean() > 0.95
    assert tight.norm() < loose.norm()


@pytest.mark.parametrize("extra, message", [({"use_lora": True}, "use_lora"), ({"ensemble": 3}, "identical"),
                                            ({"head_l2": -1.0}, "head_l2")])
def test_settings_that_cannot_go_with_it_fail_first(tmp_path, extra, message):
    with pytest.raises(RewardError, match=message):
        load_config(output_dir=str(tmp_path / "m"), head_only=True, **extra)


def test_cli_trains_head_only(tmp_path):
    from typer.testing import CliRunner

    from tests.factories import make_database
    from therapref.cli import app

    url = f"sqlite:///{tmp_path / 'tp.db'}"
    make_database(url, with_judgments=True)
    out = tmp_path / "rm"
    result = CliRunner().invoke(app, ["train", "--db", url, "--output", str(out), "--head-only", "--max-length", "48",
                                      "--eval-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "therapref_reward.json").read_text())["config"]["head_only"] is True
    assert "Held-out accuracy" in result.output
