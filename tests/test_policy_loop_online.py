"""The loop with the reward model in it: ``therapref loop round --method best-of-n`` (a best-of-n candidate of
the base, A/B-tested against it) and ``therapref loop run`` (iterated DPO: each round samples pairs from the
current policy, a reward model judges them, DPO trains from the current policy, register, A/B test), on a
tiny random Llama; resumable; clinicians instead of a reward model leave the round waiting; bad input is
one line and writes nothing."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import func, select
from sqlmodel import Session
from typer.testing import CliRunner

from db.engine import make_engine
from db.migrate import upgrade
from db.models import (
    AbTest,
    Annotator,
    BestOfNSample,
    CandidateModel,
    Comparison,
    ExportRun,
    Judgment,
    PolicyRun,
    Response,
)
from tests.factories import add_prompts
from tests.tiny_models import untrained_reward_model
from therapref.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()
TRAINING = """[finetune]
max_steps = 2
per_device_train_batch_size = 2
max_length = 64
learning_rate = 1e-3
save_strategy = "no"
logging_steps = 1
num_threads = 1
"""


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    return untrained_reward_model(tmp_path_factory.mktemp("rm") / "model")


def _project(tmp_path):
    url = f"sqlite:///{tmp_path / 'loop.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        train = add_prompts(session, 4, system=None, source="train")
        heldout = add_prompts(session, 2, texts=["I dread Sunday evenings.", "My sister stopped talking to me."],
                              system=None, source="heldout")
    return engine, url, [p.id for p in train], [p.id for p in heldout]


def _counts(engine) -> dict[str, int]:
    tables = (AbTest, CandidateModel, Comparison, Judgment, PolicyRun, Response)
    with Session(engine) as session:
        return {t.__name__: session.execute(select(func.count()).select_from(t)).scalar_one() for t in tables}


def test_loop_round_best_of_n_ab_tests_the_reward_models_pick_against_the_base(tmp_path, tiny_llama, reward_dir):
    engine, url, _, heldout = _project(tmp_path)
    args = ["loop", "round", "--output", str(tmp_path / "bo"), "--method", "best-of-n", "--best-of", "2",
            "--reward-model", str(reward_dir), "--base-model", str(tiny_llama), "--prompts", "source:heldout",
            "--max-tokens", "6", "--no-progress", "--db", url]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "[1/4] export: not needed (best-of-n samples at generation time)" in first.output
    assert "[2/4] finetune: not needed (best-of-n trains nothing)" in first.output
    record = json.loads((tmp_path / "bo" / "round.json").read_text())
    name, base = record["steps"]["register"]["figures"]["candidate"], record["steps"]["register"]["figures"]["base"]
    with Session(engine) as session:
        row = session.execute(select(CandidateModel).where(CandidateModel.name == name)).scalar_one()
        assert row.params["best_of"] == 2 and row.params["best_of_n"] == {"of": base}
        replies = session.execute(select(Response).where(Response.candidate_model_id == row.id)).scalars().all()
        assert sorted(r.prompt_id for r in replies) == heldout
        samples = session.execute(select(func.count()).select_from(BestOfNSample)).scalar_one()
        assert samples == 2 * len(heldout)
        test = session.execute(select(AbTest)).scalar_one()
        assert sorted(test.prompt_ids) == heldout
    counts = _counts(engine)
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "done earlier" in again.output and _counts(engine) == counts


def test_loop_run_iterates_dpo_on_the_policys_own_samples_judged_by_the_reward_model(tmp_path, tiny_llama, reward_dir):
    engine, url, train, heldout = _project(tmp_path)
    config = tmp_path / "train.toml"
    config.write_text(TRAINING)
    args = ["loop", "run", "--output", str(tmp_path / "loop"), "--rounds", "2", "--reward-model", str(reward_dir),
            "--train-prompts", "source:train", "--prompts", "source:heldout", "--base-model", str(tiny_llama),
            "--config", str(config), "--max-tokens", "6", "--name", "gaby", "--no-progress", "--db", url,
            "--min-agreement", "0.5"]  # an export filter, as `therapref export` takes it (one vote: agreement 1)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with Session(engine) as session:
        exports = session.execute(select(ExportRun).order_by(ExportRun.id)).scalars().all()
        assert [(e.filters["sources"], e.filters["min_agreement"]) for e in exports] == \
            [(f"judge:reward:{reward_dir.name}", 0.5)] * 2
        assert [len(e.filters["candidate_models"]) for e in exports] == [2, 2]  # each round's two samplers
        runs = session.execute(select(PolicyRun).order_by(PolicyRun.id)).scalars().all()
        assert [r.method for r in runs] == ["dpo", "dpo"]
        # Round 2 starts from round 1's policy (on-policy), and each trained only on its prompts.
        assert runs[0].base_model == str(tiny_llama)
        assert runs[1].base_model == str(tmp_path / "loop" / "round-1" / "policy")
        for run in runs:
            assert set(run.provenance["prompt_ids"]) <= set(train)
        # Each round's pairs are the round's own samples, judged by the reward model (a judge source).
        judges = session.execute(select(Annotator.username).join(Judgment, Judgment.annotator_id == Annotator.id)
                                 .distinct()).scalars().all()
        assert judges == [f"judge:reward:{reward_dir.name}"]
        for number in (1, 2):
            names = [f"gaby-r{number}-a", f"gaby-r{number}-b"]
            ids = session.execute(select(CandidateModel.id).where(CandidateModel.name.in_(names))).scalars().all()
            assert len(ids) == 2
            counted = session.execute(select(func.count()).select_from(Response)
                                      .where(Response.candidate_model_id.in_(ids))).scalar_one()
            assert counted == 2 * len(train)
        tests = session.execute(select(AbTest).order_by(AbTest.id)).scalars().all()
        assert len(tests) == 2 and all(sorted(t.prompt_ids) == heldout for t in tests)
    assert "2 rounds finished" in result.output.strip().splitlines()[-1]
    counts = _counts(engine)
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert again.output.count("done earlier") == 2 and _counts(engine) == counts


def test_loop_run_without_a_reward_model_waits_for_clinicians(tmp_path, tiny_llama):
    engine, url, train, _ = _project(tmp_path)
    result = runner.invoke(app, ["loop", "run", "--output", str(tmp_path / "loop"), "--rounds", "1",
                                 "--train-prompts", "source:train", "--prompts", "source:heldout",
                                 "--base-model", str(tiny_llama), "--max-tokens", "6", "--name", "gaby",
                                 "--no-progress", "--db", url])
    assert result.exit_code == 3, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Round 1 of") and "wait for clinicians" in line
    with Session(engine) as session:
        queued = session.execute(select(func.count()).select_from(Comparison)).scalar_one()
        assert queued == len(train)  # one pair per prompt: the two samples, in the clinicians' queue
        assert session.execute(select(func.count()).select_from(PolicyRun)).scalar_one() == 0


@pytest.mark.parametrize("extra, message", [
    (["--not-worse-on", "kindness"], "Error: --not-worse-on: unknown criterion 'kindness' (known: "),
    (["--sources", "judge:nobody"], "Error: --sources: no judge named 'judge:nobody' (known: none)"),
    (["--sources", "judges,clinician"], "Error: --sources 'judges,clinician': not clinicians, imported, both"),
])
def test_loop_run_takes_the_export_filters_and_refuses_bad_ones_before_sampling(tmp_path, extra, message):
    engine, url, _, _ = _project(tmp_path)
    before = _counts(engine)
    out = runner.invoke(app, ["loop", "run", "--output", str(tmp_path / "loop"), "--train-prompts", "source:train",
                              "--no-progress", "--db", url, *extra])
    assert out.exit_code == 1, out.output
    assert out.output.strip().startswith(message) and len(out.output.strip().splitlines()) == 1, out.output
    assert not (tmp_path / "loop").exists() and _counts(engine) == before


def test_loop_commands_offer_the_export_filters_of_export():
    shown = {}
    for command in (["export", "dpo"], ["loop", "round"], ["loop", "run"]):
        result = runner.invoke(app, [*command, "--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        shown[command[-1]] = set(re.findall(r"--[a-z][a-z-]+", result.output.split("Export filters")[1]))
    assert {"--sources", "--not-worse-on", "--min-votes", "--since", "--exclude-flagged"} <= shown["round"]
    assert shown["round"] == shown["dpo"]  # the same declaration
    assert shown["run"] == shown["dpo"] - {"--candidate"}  # loop run sets each round's candidates itself
    assert "judge:NAME" in runner.invoke(app, ["loop", "round", "--help"], terminal_width=200).output


@pytest.mark.parametrize("extra, message", [
    (["--method", "rs"], "--method rs needs --reward-model DIR"),
    (["--method", "best-of-n", "--reward-model", "NOTES"], "not a reward model folder"),
    (["--method", "best-of-n", "--reward-model", "RM", "--best-of", "0"], "--best-of must be at least 1, not 0"),
    (["--method", "dpo", "--reward-model", "RM"], "do not apply to --method dpo"),
])
def test_loop_round_refuses_bad_reward_settings_and_writes_nothing(tmp_path, reward_dir, extra, message):
    engine, url, _, _ = _project(tmp_path)
    (tmp_path / "notes").mkdir()
    paths = {"RM": str(reward_dir), "NOTES": str(tmp_path / "notes")}
    before = _counts(engine)
    out = runner.invoke(app, ["loop", "round", "--output", str(tmp_path / "r"), *(paths.get(a, a) for a in extra),
                              "--db", url])
    assert out.exit_code == 1, out.output
    assert message in out.output and len(out.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists() and _counts(engine) == before


def test_loop_run_refuses_training_prompts_that_are_all_in_ab_tests(tmp_path, tiny_llama, reward_dir):
    engine, url, train, _ = _project(tmp_path)
    with Session(engine) as session:
        base = CandidateModel(name="x", provider="llamacpp")
        other = CandidateModel(name="y", provider="llamacpp")
        session.add_all([base, other])
        session.flush()
        session.add(AbTest(new_candidate_id=base.id, base_candidate_id=other.id, prompt_ids=train))
        session.commit()
    before = _counts(engine)
    out = runner.invoke(app, ["loop", "run", "--output", str(tmp_path / "loop"), "--reward-model", str(reward_dir),
                              "--train-prompts", "source:train", "--base-model", str(tiny_llama), "--db", url])
    assert out.exit_code == 1, out.output
    assert "--prompts leave no training prompt" in out.output
    assert not (tmp_path / "loop").exists() and _counts(engine) == before
