"""Real consumers: the DPO export trains one ``trl.DPOTrainer`` step on the embedded SmolLM2 and one
``trl.RewardTrainer`` step, as written (no edits to the file); SFT best-of-n uses a real reward model."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session

from exports.filters import ExportFilters
from exports.run import ExportOptions, run_export
from tests.factories import build_scenario
from tests.tiny_models import untrained_reward_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from candidates.embedded import smollm2_hf_path

    return str(smollm2_hf_path())


@pytest.fixture
def dpo_file(engine, tmp_path):
    with Session(engine, expire_on_commit=False) as session:
        build_scenario(session)
    out = tmp_path / "dpo.jsonl"
    run_export("dpo", out, engine=engine, filters=ExportFilters(sources="both"))
    return out


def _load(auto_class, path, **kwargs):
    """Load the materialised SmolLM2 exactly as a user would: a plain folder load."""
    return auto_class.from_pretrained(path, dtype="float32", **kwargs)


def _common_args(tmp_path, name):
    # One step, one pair, short sequences: this checks the file's format, not the model's quality.
    return dict(output_dir=str(tmp_path / name), max_steps=1, per_device_train_batch_size=1, learning_rate=1e-5,
                report_to=[], save_strategy="no", logging_steps=1, bf16=False, use_cpu=True,
                dataset_num_proc=None, max_length=48, disable_tqdm=True, gradient_checkpointing=False)


def test_dpo_export_trains_dpo_trainer_and_reward_trainer(dpo_file, tmp_path, smollm2):
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    dataset = load_dataset("json", data_files=str(dpo_file), split="train")
    assert dataset.num_rows == 3
    assert set(dataset.column_names) == {"prompt", "chosen", "rejected", "margin"}
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(smollm2)

    policy = _load(AutoModelForCausalLM, smollm2)
    before = policy.model.layers[0].mlp.up_proj.weight.detach().clone()
    trainer = DPOTrainer(model=policy, args=DPOConfig(**_common_args(tmp_path, "dpo")), train_dataset=dataset,
                         processing_class=tokenizer)
    out = trainer.train()
    assert out.global_step == 1
    assert out.training_loss == pytest.approx(0.6931, abs=0.05)
    assert not torch.equal(before, policy.model.layers[0].mlp.up_proj.weight.detach())

    scorer = _load(AutoModelForSequenceClassification, smollm2, num_labels=1)
    scorer.config.pad_token_id = tokenizer.pad_token_id
    head = scorer.score.weight.detach().clone()
    args = _common_args(tmp_path, "rm")
    args.pop("dataset_num_proc")
    trainer = RewardTrainer(model=scorer, args=RewardConfig(**args), train_dataset=dataset,
                            processing_class=tokenizer)
    assert trainer.train().global_step == 1
    assert not torch.equal(head, scorer.score.weight.detach())


def test_sft_best_of_n_with_reward_model(engine, tmp_path):
    """``--select reward``: the reward model (a real MiniLM sequence classifier, loaded through
    ``reward.RewardModel``) picks each prompt's reply among the non-flagged ones."""
    from reward.scoring import RewardModel

    folder = untrained_reward_model(tmp_path / "rm")
    with Session(engine, expire_on_commit=False) as session:
        sc = build_scenario(session)
    out = tmp_path / "bon.jsonl"
    result = run_export("sft", out, engine=engine,
                        options=ExportOptions(selection="reward", reward_model=str(folder), rewrites="skip"))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert result.rows == 5
    rm = RewardModel.load(folder)
    for key, row in zip(["P1", "P2", "P3", "P4", "P5"], rows, strict=True):
        options = [sc.texts[f"{c}{key[1]}"] for c in ("W", "T")]
        if key == "P1":  # K1 is flagged: never a candidate target
            assert row["messages"][-1]["content"] != sc.texts["K1"]
        scores = rm.score_batch([(row["messages"][:-1], text) for text in options])
        assert row["messages"][-1]["content"] == options[scores.index(max(scores))]


def test_kto_and_sft_rows_are_trl_conversational(engine, tmp_path, smollm2):
    """TRL's own helpers accept the KTO (unpaired) and SFT rows and render them with the chat template."""
    from transformers import AutoTokenizer
    from trl.data_utils import apply_chat_template, is_conversational

    with Session(engine, expire_on_commit=False) as session:
        sc = build_scenario(session)
    run_export("kto", tmp_path / "kto.jsonl", engine=engine)
    run_export("sft", tmp_path / "sft.jsonl", engine=engine)
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    kto = [json.loads(line) for line in (tmp_path / "kto.jsonl").read_text().splitlines()]
    assert all(is_conversational(row) for row in kto)
    rendered = apply_chat_template(kto[0], tokenizer)
    assert rendered["label"] is True
    assert sc.texts["W1"] in rendered["completion"]
    assert sc.prompts["P1"][0]["content"] in rendered["prompt"]
    sft = json.loads((tmp_path / "sft.jsonl").read_text().splitlines()[0])
    assert is_conversational(sft)
    assert sc.texts["W1"] in apply_chat_template(sft, tokenizer)["text"]
