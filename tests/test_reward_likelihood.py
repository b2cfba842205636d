"""The likelihood feature of head-only training (``therapref train --head-only --likelihood``,
``reward/likelihood.py``) and the progress of long reads, on a tiny random Llama (SmolLM2's tokenizer).

The feature is the causal LM's mean log-probability of the reply's tokens, computed here directly with
``LlamaForCausalLM``; the saved model reloads, scores exactly as its head and weight were fitted (so
``evaluate``, ``score``, judges and best-of-n, which all score through ``RewardModel.score_batch``, see
the same feature), and an untied model's LM head travels with the folder."""

from __future__ import annotations

import json

import pytest
import torch

from reward import RewardModel
from reward.config import load_config
from reward.errors import RewardError
from reward.likelihood import LM_HEAD_FILE
from reward.probe import reply_features
from reward.train import train_reward_model
from tests.test_reward_train import make_pairs


@pytest.fixture(scope="module", params=["tied", "untied"])
def base(request, tiny_llama, tmp_path_factory):
    """The tiny Llama (conftest; its LM head tied to the embedding), and a copy with its own LM head."""
    if request.param == "tied":
        return tiny_llama
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_llama)
    model.config.tie_word_embeddings = False
    torch.manual_seed(1)
    model.lm_head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    folder = tmp_path_factory.mktemp("tiny-llama-untied")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    out = tmp_path_factory.mktemp("likelihood") / "model"
    config = load_config(output_dir=str(out), base_model=str(base), head_only=True, likelihood=True, max_length=64,
                         eval_fraction=0.2, seed=3, save_strategy="no")
    return train_reward_model(config, make_pairs(), provenance={"origin": "test"}), out


def direct_mean_logprob(base, ids: list[int], start: int) -> float:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(base).eval()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    return float(sum(logprobs[t - 1, ids[t]] for t in range(start, len(ids))) / (len(ids) - start))


def test_the_feature_is_the_mean_log_prob_of_the_reply(trained, base):
    _, out = trained
    model = RewardModel.load(out)
    items = [(p.prompt, p.chosen) for p in make_pairs()[:4]]
    features, _ = reply_features(model.model, model.encoder, items, pad_token_id=model.tokenizer.pad_token_id or 0,
                                 lm_head=model.lm_head, batch_size=3)
    ids, _, starts = model.encoder.encode_spans(items)
    assert all(0 < s < len(row) for s, row in zip(starts, ids, strict=True))
    for row in range(len(items)):
        assert float(features[row, -1]) == pytest.approx(direct_mean_logprob(base, ids[row], starts[row]), abs=1e-4)


def test_reload_scores_as_fitted(trained, base):
    result, out = trained
    meta = json.loads((out / "therapref_reward.json").read_text())
    assert meta["config"]["likelihood"] is True and meta["likelihood_weight"] != 0.0
    assert "Likelihood feature" in (out / "README.md").read_text()
    tied = "untied" not in base.name
    assert (out / LM_HEAD_FILE).is_file() is (not tied)
    model = RewardModel.load(out)
    assert model.likelihood_weight == pytest.approx(meta["likelihood_weight"])
    pairs = make_pairs()[:10]
    chosen, rejected = model.score_pairs(pairs)
    items = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    features, _ = reply_features(model.model, model.encoder, items, pad_token_id=model.tokenizer.pad_token_id or 0,
                                 lm_head=model.lm_head)
    weights = torch.cat([model.model.score.weight.detach().double()[0], torch.tensor([model.likelihood_weight],
                                                                                     dtype=torch.float64)])
    expected = (features[:10] - features[10:]) @ weights
    assert [c - r for c, r in zip(chosen, rejected, strict=True)] == pytest.approx(expected.tolist(), abs=1e-4)
    assert result.report["accuracy"] >= 0.75
    # the same model without its likelihood term scores differently: the feature is really used
    model.lm_head = None
    assert model.score_pairs(pairs)[0] != pytest.approx(chosen, abs=1e-4)


def test_likelihood_needs_head_only_and_a_decoder(tmp_path):
    with pytest.raises(RewardError, match="head_only"):
        load_config(output_dir=str(tmp_path / "m"), likelihood=True)
    config = load_config(output_dir=str(tmp_path / "m"), base_model="embedded", head_only=True, likelihood=True,
                         max_length=48, save_strategy="no")
    with pytest.raises(RewardError, match="decoder"):
        train_reward_model(config, make_pairs())


def test_cli_shows_progress_while_reading_and_evaluating(tiny_llama, tmp_path):
    """`train --head-only` and `evaluate` report replies read, per second and time left as they go."""
    from typer.testing import CliRunner

    from tests.factories import make_database
    from therapref.cli import app

    url = f"sqlite:///{tmp_path / 'tp.db'}"
    make_database(url, with_judgments=True)
    out = tmp_path / "rm"
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--db", url, "--output", str(out), "--base-model", str(tiny_llama),
                                 "--head-only", "--likelihood", "--max-length", "48", "--eval-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    assert "Reading replies" in result.stderr and "reply/s" in result.stderr
    assert json.loads((out / "therapref_reward.json").read_text())["likelihood_weight"] is not None
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": p.prompt[-1][1]}],
                                              "chosen": [{"role": "assistant", "content": p.chosen}],
                                              "rejected": [{"role": "assistant", "content": p.rejected}]}) + "\n"
                                  for p in make_pairs()[:6]))
    result = runner.invoke(app, ["evaluate", str(out), "--data", str(pairs_file)])
    assert result.exit_code == 0, result.output
    assert "Scoring replies" in result.stderr and "12/12" in result.stderr and "reply/s" in result.stderr
    assert "6 pairs" in result.stdout
