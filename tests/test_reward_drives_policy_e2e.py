"""End to end on the embedded SmolLM2: clinicians' judgments → `therapref train` (a small reward model) →
a best-of-n candidate of the base and a few GRPO steps against the reward model → both registered →
`therapref abtest` against the base on prompts neither trained on → a clinician judges the A/B pairs in
the app (streamlit.testing) → the head-to-head appears in `abtest --results`."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlmodel import Session
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from candidates.embedded import smollm2_hf_path
from db.models import AbTest, BestOfNSample, CandidateModel, Judgment, PolicyRun, Response
from labeling_app.state import USER_KEY, User
from tests.app_helpers import APP, judge_left_in_app
from tests.factories import add_prompts, make_database
from therapref.cli import app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
runner = CliRunner()
HELDOUT = ["I dread Sunday evenings.", "My sister stopped talking to me after the wedding."]


def _ok(args: list[str]):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result


def _judge_in_app(engine, clinician, comparison_ids: set[int]) -> None:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state[USER_KEY] = User(clinician.id, clinician.username, clinician.display_name, clinician.role)
    at.run()
    judge_left_in_app(at, len(comparison_ids))
    with Session(engine) as session:
        judged = set(session.execute(select(Judgment.comparison_id).where(
            Judgment.comparison_id.in_(comparison_ids), Judgment.annotator_id == clinician.id)).scalars().all())
    assert judged == comparison_ids  # the A/B pairs came first (priority) and were judged in the app


def test_reward_model_best_of_n_and_grpo_against_the_base_judged_in_the_app(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    engine, project = make_database(url, n_prompts=4, n_clinicians=1, with_judgments=True)
    with Session(engine, expire_on_commit=False) as session:
        heldout = [p.id for p in add_prompts(session, 2, texts=HELDOUT, system=None, source="heldout")]
    monkeypatch.chdir(tmp_path)  # no candidates.toml here: candidates as registered in the database
    rm = tmp_path / "rm"
    _ok(["train", "--output", str(rm), "--epochs", "1", "--max-length", "64", "--db", url])

    # The base as a candidate (its GGUF), then the best-of-2 of it by the reward model.
    _ok(["candidates", "add", "smollm2-base", "--model", str(smollm2_hf_path()), "--system-prompt", "", "--db", url])
    _ok(["candidates", "add", "base-best-of-2", "--best-of", "2", "--of", "smollm2-base", "--reward-model", str(rm),
         "--db", url])
    # A few GRPO steps against the reward model on the training prompts, registered.
    trained = _ok(["finetune", "local", "--method", "grpo", "--reward-model", str(rm), "--prompts", "source:test",
                   "--output", str(tmp_path / "grpo"), "--max-steps", "2", "--num-generations", "2",
                   "--max-completion-length", "8", "--batch-size", "2", "--lora", "--num-threads", "1",
                   "--system-prompt", "", "--register", "smollm2-grpo", "--db", url])
    assert "smollm2-grpo" in trained.output
    with Session(engine) as session:
        run = session.execute(select(PolicyRun)).scalars().one()
        assert run.method == "grpo" and not set(run.provenance["prompt_ids"]) & set(heldout)
        assert session.execute(select(CandidateModel).where(CandidateModel.name == "smollm2-grpo")).scalar_one()

    for new in ("base-best-of-2", "smollm2-grpo"):
        _ok(["abtest", new, "--against", "smollm2-base", "--prompts", "source:heldout", "--max-tokens", "8",
             "--no-progress", "--db", url])
    with Session(engine) as session:
        tests = session.execute(select(AbTest).order_by(AbTest.id)).scalars().all()
        assert [sorted(t.prompt_ids) for t in tests] == [heldout, heldout]
        ab_ids = {c for t in tests for c in t.details["comparison_ids"]}
        bo = session.execute(select(CandidateModel.id).where(CandidateModel.name == "base-best-of-2")).scalar_one()
        replies = session.execute(select(Response.id).where(Response.candidate_model_id == bo)).scalars().all()
        assert len(replies) == len(heldout)
        assert session.execute(select(func.count()).select_from(BestOfNSample)
                               .where(BestOfNSample.response_id.in_(replies))).scalar_one() == 2 * len(heldout)

    monkeypatch.setenv("THERAPREF_DATABASE_URL", url)
    _judge_in_app(engine, project.clinicians[0], ab_ids)
    for new in ("base-best-of-2", "smollm2-grpo"):
        shown = _ok(["abtest", new, "--against", "smollm2-base", "--results", "--bootstrap", "20", "--db", url])
        assert f"{new} (new) vs smollm2-base (base)" in shown.output
        assert "win rate" in shown.output and f"(n={len(heldout)})" in shown.output
