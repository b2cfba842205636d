"""Training a real reward model (embedded all-MiniLM-L6-v2) for a few steps; evaluation; scoring;
the CLI on a real SQLite database. Tiny data, few steps: behaviour, not quality."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file
from sqlmodel import Session, select
from typer.testing import CliRunner

from db.crud import add_judgment
from db.engine import make_engine
from db.migrate import upgrade
from db.models import Judgment, ResponseScore, RewardModelRun
from db.status import table_counts
from reward import RewardModel, best_of_n
from reward.config import load_config
from reward.errors import RewardError
from reward.pairs import PreferencePair
from reward.resources import resolve_base_model
from reward.train import train_reward_model
from tests.factories import build_project
from therapref.cli import app

TOPICS = ["sleep", "work", "my mother", "exams", "my partner", "money", "friends", "moving", "grief", "panic"]
LONG_HISTORY = " ".join(["I keep thinking about everything that went wrong this year."] * 40)
EPOCH_ENDS: list[tuple[float, bool]] = []  # seen by the `trained` fixture's callback


def make_pairs(n: int = 36) -> list[PreferencePair]:
    pairs = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        prompt = (("system", "You are a warm therapy assistant."), ("user", f"I am struggling with {topic} ({i})."))
        chosen = f"That sounds really hard. What about {topic} weighs on you most, and what has helped before?"
        pairs.append(PreferencePair(prompt, chosen, "Whatever.", prompt_key=f"q{i}", source="clinicians"))
    # one pair far longer than max_length: truncated (context from the left), never dropped
    long_prompt = (("user", LONG_HISTORY), ("assistant", "I hear you."), ("user", "And now sleep too."))
    pairs.append(PreferencePair(long_prompt, "That sounds exhausting. How many hours do you sleep?", "No.",
                                prompt_key="q-long"))
    return pairs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "model"
    config = load_config(output_dir=str(out), num_train_epochs=2, per_device_train_batch_size=8, max_length=64,
                         learning_rate=2e-4, logging_steps=1, eval_fraction=0.2, seed=7, save_strategy="no")
    pairs = make_pairs()
    from transformers import TrainerCallback

    class EpochEnds(TrainerCallback):
        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            EPOCH_ENDS.append((float(state.epoch), model is not None))

    result = train_reward_model(config, pairs, provenance={"database_fingerprint": "abc123", "origin": "test"},
                                callbacks=[EpochEnds()])
    return result, pairs, out


def test_training_changes_weights_lowers_loss_and_keeps_long_pairs(trained):
    result, pairs, out = trained
    assert result.n_train + result.n_eval == len(pairs)  # nothing dropped
    assert result.n_truncated >= 1
    assert result.meta["data"]["n_truncated"] == result.n_truncated
    assert result.train_loss[-1] < result.train_loss[0]
    assert EPOCH_ENDS == [(1.0, True), (2.0, True)]  # callbacks reach the trainer, with the model
    base = load_file(str(resolve_base_model("embedded") + "/model.safetensors"))
    trained_weights = load_file(str(out / "model.safetensors"))
    key = next(k for k in trained_weights if k.endswith("encoder.layer.0.attention.self.query.weight"))
    base_key = next(k for k in base if k.endswith("encoder.layer.0.attention.self.query.weight"))
    assert not torch.allclose(trained_weights[key], base[base_key])


def test_artifacts_and_provenance(trained):
    result, _, out = trained
    for name in ("config.json", "tokenizer.json", "train_config.json", "therapref_reward.json", "README.md",
                 "eval_report.json", "eval_report.md", "reliability.png"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "therapref_reward.json").read_text())
    assert meta["data"]["database_fingerprint"] == "abc123"
    assert set(meta["train_prompt_keys"]).isdisjoint(meta["eval_prompt_keys"])
    card = (out / "README.md").read_text()
    assert "abc123" in card
    assert "seed 7" in card
    assert "Held-out evaluation" in card
    report = json.loads((out / "eval_report.json").read_text())
    assert report["n_pairs"] == result.n_eval
    assert "ece" in report
    assert "length_baseline" in report
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_reloads_and_scores(trained):
    _, pairs, out = trained
    model = RewardModel.load(out)
    good = "That sounds really hard. What about sleep weighs on you most, and what has helped before?"
    messages = [{"role": "user", "content": "I am struggling with sleep."}]
    assert model.score(messages, good) > model.score(messages, "Whatever.")
    batch = model.score_batch([(messages, good), (messages, "Whatever."), (pairs[-1].prompt, "No.")])
    assert len(batch) == 3
    assert batch[0] == pytest.approx(model.score(messages, good), abs=1e-4)
    best = best_of_n(model, messages, ["Whatever.", good])
    assert best.index == 1
    assert best.reply == good
    assert len(best.scores) == 2


def test_evaluate_on_a_preference_file(trained, tmp_path):
    from reward.evaluate import evaluate_model

    _, _, out = trained
    path = tmp_path / "heldout.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"I can't cope with {t}."}],
             "chosen": [{"role": "assistant", "content": f"That sounds really hard. What about {t} is hardest?"}],
             "rejected": [{"role": "assistant", "content": "Whatever."}]} for t in TOPICS]
    rows.append({"prompt": "I failed again.", "chosen": "Ok.", "rejected": "That is awful, you always fail at things."})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = evaluate_model(out, data=str(path), output=tmp_path / "report")
    assert report["n_pairs"] == 11
    assert report["length_baseline"] == pytest.approx(10 / 11)
    assert report["n_shorter_wins"] == 1
    assert 0.0 <= report["shorter_wins_accuracy"] <= 1.0
    assert report["accuracy"] >= 0.8
    assert report["accuracy_ci"][0] < report["accuracy"] < report["accuracy_ci"][1] + 1e-9
    assert 0.0 <= report["ece"] <= 1.0
    assert sum(b["count"] for b in report["reliability"]) == 11
    assert (tmp_path / "report" / "reliability.png").is_file()
    assert "length baseline" in (tmp_path / "report" / "eval_report.md").read_text()


def test_checkpoint_and_resume(tmp_path):
    out = tmp_path / "model"
    pairs = make_pairs(16)
    common = dict(output_dir=str(out), per_device_train_batch_size=4, max_length=48, eval_fraction=0.0,
                  save_strategy="steps", save_steps=2, logging_steps=1)
    first = train_reward_model(load_config(max_steps=2, **common), pairs)
    assert (out / "checkpoint-2").is_dir()
    assert first.meta["training"]["global_step"] == 2
    second = train_reward_model(load_config(max_steps=4, resume_from_checkpoint=True, **common), pairs)
    assert second.meta["training"]["global_step"] == 4
    assert (out / "checkpoint-4").is_dir()
    # steps 1-2 come back from the checkpoint's state; only steps 3-4 ran again
    assert len(second.train_loss) == 4
    assert second.train_loss[:2] == pytest.approx(first.train_loss)
    with pytest.raises(RewardError, match="not empty"):
        train_reward_model(load_config(max_steps=2, **common), pairs)


def test_reward_head_is_seeded(tmp_path):
    from reward.train import _load_model

    config = load_config(output_dir=str(tmp_path / "m"), seed=3)
    heads = []
    for _ in range(2):
        torch.rand(7)  # whatever the global RNG did before, the same seed draws the same new head
        model, _ = _load_model(resolve_base_model("embedded"), config)
        heads.append(model.classifier.weight.detach().clone())
    assert torch.equal(heads[0], heads[1])


def test_missing_base_model_fails_before_any_work(tmp_path):
    config = load_config(output_dir=str(tmp_path / "out"), base_model=str(tmp_path / "nope"))
    started = time.perf_counter()
    with pytest.raises(RewardError, match="no such folder"):
        train_reward_model(config, make_pairs(4))
    assert time.perf_counter() - started < 2
    assert not (tmp_path / "out").exists()


def _db(tmp_path):
    url = f"sqlite:///{tmp_path / 'tp.db'}"
    engine = make_engine(url)
    upgrade(engine)
    return url, engine


def test_cli_train_evaluate_score(tmp_path):
    url, engine = _db(tmp_path)
    with Session(engine) as session:
        build_project(session, n_prompts=6, n_clinicians=2, with_judgments=True)
    out = tmp_path / "rm"
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--db", url, "--output", str(out), "--max-steps", "3",
                                 "--max-length", "64", "--batch-size", "4", "--eval-fraction", "0.34"])
    assert result.exit_code == 0, result.output
    assert "Held-out accuracy" in result.output
    assert "none dropped" in result.output
    with Session(engine) as session:
        run = session.exec(select(RewardModelRun)).one()
        assert run.n_train == 8
        assert run.n_eval == 4
        assert run.data_fingerprint
        assert run.metrics["eval"]["n_pairs"] == 4
        assert run.config["sources"] == "clinicians"
    result = runner.invoke(app, ["evaluate", str(out), "--data", "db", "--db", url, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("n_pairs", "accuracy", "accuracy_ci", "length_baseline", "shorter_wins_accuracy", "ece"):
        assert key in report
    assert report["n_pairs"] == 4
    assert report["length_baseline"] == 1.0
    # Four pairs cannot show a gain over a rule that is always right here: the words say so.
    assert report["verdict"].startswith(("Worse than the length rule", "No clear gain over the length rule"))
    result = runner.invoke(app, ["evaluate", str(out), "--data", "db", "--db", url])
    assert result.exit_code == 0, result.output
    assert 'against 1.000 for "the longer reply wins"' in result.output
    result = runner.invoke(app, ["score", str(out), "--db", url])
    assert result.exit_code == 0, result.output
    assert "Scored 12 responses" in result.output
    assert "best-of-n chosen for 6 prompts" in result.output
    with Session(engine) as session:
        assert len(session.exec(select(ResponseScore)).all()) == 12
    again = runner.invoke(app, ["score", str(out), "--db", url])
    assert "Scored 0 responses" in again.output
    assert "12 already scored" in again.output
    from reward.store import best_responses

    with Session(engine) as session:
        best = best_responses(session=session)
        assert len(best) == 6


def test_cli_bad_input_is_one_clear_line(tmp_path):
    url, engine = _db(tmp_path)
    with Session(engine) as session:
        project = build_project(session, n_prompts=3, n_clinicians=1)
        for comparison in project.comparisons:
            add_judgment(comparison, project.clinicians[0], "tie", session=session)
        session.commit()
        before = table_counts(session=session)
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--db", url, "--output", str(tmp_path / "rm")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "Error: no preference pairs to train on (votes 3, ties 3, comparisons 3): "
        "ties and 'both bad' votes are not pairs"]
    assert not (tmp_path / "rm").exists()
    result = runner.invoke(app, ["train", "--db", url, "--output", str(tmp_path / "rm"),
                                 "--base-model", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no such folder" in result.stderr
    result = runner.invoke(app, ["evaluate", str(tmp_path / "rm"), "--data", str(tmp_path / "none.jsonl")])
    assert result.exit_code == 1
    assert "no such file" in result.stderr
    with Session(engine) as session:
        assert table_counts(session=session) == before
        assert len(session.exec(select(Judgment)).all()) == 3
