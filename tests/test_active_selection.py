"""Active selection (issue 17): reward-model ensembles and their uncertainty, ``score --comparisons``,
``prioritize`` (random / uncertainty / disagreement, on SQLite and PostgreSQL) and ``pairs --strategy
--budget``. Models are a tiny random BERT (``tests.tiny_models.tiny_reward_base``) trained for a
couple of steps: behaviour, not quality."""

from __future__ import annotations

import copy
import json
import math

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from candidates.priority import prioritize, vote_entropy
from db.crud import add_judgment, add_response, get_or_create_candidate
from db.engine import make_engine
from db.migrate import upgrade
from db.models import AuditEvent, Comparison, ComparisonScore, Response, RewardModelRun
from db.scores import comparison_scores, save_comparison_scores
from db.status import table_counts
from reward.scoring import (
    ENSEMBLE_FILE,
    RewardEnsemble,
    RewardModel,
    load_reward_model,
    pair_probability,
    pair_scores,
)
from tests.factories import build_project
from tests.tiny_models import tiny_reward_base
from therapref.cli import app

runner = CliRunner()
MESSAGES = [{"role": "user", "content": "I can't sleep and I feel on edge."}]
WARM = "That sounds exhausting. What keeps you up at night, and what has helped even a little?"
TERSE = "Okay."


def _database(tmp_path, name: str = "t.db"):
    url = f"sqlite:///{tmp_path / name}"
    engine = make_engine(url)
    upgrade(engine)
    return url, engine


def _add_third_candidate(session: Session, project) -> None:
    """A third source per prompt, so that each prompt has two new cross-source pairs to choose from."""
    plain, _ = get_or_create_candidate("plain", session=session, provider="local", model_id="plain-model")
    for i, prompt in enumerate(project.prompts):
        add_response(prompt, plain, f"I hear you. Tell me more ({i}).", session=session)
    session.commit()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An ensemble of two members trained by ``therapref train --ensemble 2`` on a real SQLite database
    whose comparisons stay open (two votes of three required)."""
    tmp = tmp_path_factory.mktemp("active")
    base = tiny_reward_base(tmp / "tiny-bert")
    url, engine = _database(tmp)
    with Session(engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=6, n_clinicians=2, judgments_required=3, with_judgments=True)
    out = tmp / "ensemble"
    result = runner.invoke(app, ["train", "--db", url, "--output", str(out), "--base-model", str(base),
                                 "--ensemble", "2", "--max-steps", "2", "--max-length", "64", "--batch-size", "4",
                                 "--eval-fraction", "0.34", "--learning-rate", "1e-3"])
    assert result.exit_code == 0, result.output
    return {"url": url, "engine": engine, "project": project, "out": out, "base": base, "output": result.output,
            "tmp": tmp}


@pytest.mark.slow
def test_train_ensemble_writes_members_and_one_run(trained):
    out, engine = trained["out"], trained["engine"]
    assert "Ensemble of 2 members written to" in trained["output"]
    manifest = json.loads((out / ENSEMBLE_FILE).read_text())
    assert manifest["members"] == ["member-0", "member-1"]
    assert [m["seed"] for m in manifest["member_runs"]] == [42, 43]
    for member in manifest["members"]:
        assert (out / member / "config.json").is_file()
    # one held-out split for all members: both were evaluated on the same prompts
    keys = [json.loads((out / m / "therapref_reward.json").read_text())["eval_prompt_keys"]
            for m in manifest["members"]]
    assert keys[0] == keys[1] == manifest["eval_prompt_keys"] and keys[0]
    with Session(engine) as session:
        run = session.exec(select(RewardModelRun)).one()
        assert run.path == str(out.resolve())
        assert run.config["ensemble"] == 2
        assert run.metrics["eval"]["n_pairs"] == run.n_eval > 0
    # `therapref evaluate` takes the ensemble folder as it takes a model folder (held-out prompts only)
    result = runner.invoke(app, ["evaluate", str(out), "--data", "db", "--db", trained["url"], "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_pairs"] == run.n_eval


@pytest.mark.slow
def test_ensemble_loads_like_a_model_and_members_differ(trained):
    out = trained["out"]
    ensemble = load_reward_model(out)
    assert isinstance(ensemble, RewardEnsemble)
    assert ensemble.n_members == 2
    assert isinstance(RewardModel.load(out), RewardEnsemble)  # the existing entry point takes an ensemble too
    items = [(MESSAGES, WARM), (MESSAGES, TERSE)]
    per_member = ensemble.member_scores(items)
    assert len(per_member) == 2
    assert per_member[0] != per_member[1]  # different seeds, different heads
    alone = [RewardModel.load(out / f"member-{i}").score_batch(items) for i in range(2)]
    assert per_member == [pytest.approx(a, abs=1e-5) for a in alone]
    assert ensemble.score_batch(items) == pytest.approx([(a + b) / 2 for a, b in zip(*alone, strict=True)], abs=1e-5)

    [score] = pair_scores(ensemble, [(MESSAGES, WARM, TERSE)])
    probs = [1 / (1 + math.exp(-(m[0] - m[1]))) for m in alone]
    assert 0.0 < score.p_a < 1.0
    assert score.n_members == 2
    assert score.p_a == pytest.approx(sum(probs) / 2, abs=1e-5)
    assert score.uncertainty == pytest.approx(abs(probs[0] - probs[1]) / 2, abs=1e-5)  # population std of two


@pytest.mark.slow
def test_uncertainty_is_higher_where_members_disagree(trained):
    member = RewardModel.load(trained["out"] / "member-0")
    # Two hybrid scorers on the same network, one rewarding long replies and one short ones: they
    # disagree on a pair of a long and a short reply and agree on two replies of the same length.
    longer, shorter = copy.copy(member), copy.copy(member)
    longer.length_weight, shorter.length_weight = 2.0, -2.0
    agree = RewardEnsemble(members=[longer, copy.copy(longer)])
    disagree = RewardEnsemble(members=[longer, shorter])
    pair = [(MESSAGES, WARM, TERSE)]
    [calm] = pair_scores(agree, pair)
    [torn] = pair_scores(disagree, pair)
    assert calm.uncertainty == pytest.approx(0.0, abs=1e-6)
    assert calm.p_a > 0.95  # both prefer the longer reply A, confidently
    assert torn.uncertainty > 0.45  # one member near 1, the other near 0
    assert torn.p_a == pytest.approx(0.5, abs=0.01)
    [same_length] = pair_scores(disagree, [(MESSAGES, WARM, WARM.upper())])
    assert same_length.uncertainty < torn.uncertainty / 10  # no length gap: nothing to disagree about
    # a single model: closeness to a coin flip
    [single] = pair_scores(member, pair)
    assert single.n_members == 1
    assert single.uncertainty == pytest.approx(1 - abs(2 * single.p_a - 1))
    assert pair_probability([0.0]).uncertainty == 1.0 > pair_probability([4.0]).uncertainty


@pytest.mark.slow
def test_score_comparisons_cli_and_prioritize_uncertainty(trained):
    url, engine, out = trained["url"], trained["engine"], trained["out"]
    with Session(engine) as session:
        closed = session.exec(select(Comparison)).first()
        closed.judgments_required = 2  # two votes already: no longer open, never scored or reprioritised
        session.add(closed)
        session.commit()
        closed_id = closed.id
    result = runner.invoke(app, ["score", str(out), "--comparisons", "--db", url])
    assert result.exit_code == 0, result.output
    assert "Scored 5 of 5 open comparisons (0 already scored)" in result.output
    assert "(2 members)" in result.output
    with Session(engine) as session:
        run = session.exec(select(RewardModelRun)).one()
        rows = session.exec(select(ComparisonScore)).all()
        assert len(rows) == 5 and closed_id not in {r.comparison_id for r in rows}
        assert all(r.reward_model_run_id == run.id and r.n_members == 2 for r in rows)
        assert all(0.0 < r.p_a < 1.0 and 0.0 <= r.uncertainty <= 0.5 for r in rows)
        stored = {r.comparison_id: r.uncertainty for r in rows}
    again = runner.invoke(app, ["score", str(out), "--comparisons", "--db", url])
    assert "Scored 0 of 5 open comparisons (5 already scored)" in again.output

    result = runner.invoke(app, ["prioritize", "--strategy", "uncertainty", "--reward-model", str(out), "--db", url])
    assert result.exit_code == 0, result.output
    assert "Set uncertainty priorities on 5 open comparisons" in result.output
    with Session(engine) as session:
        priorities = {c.id: c.priority for c in session.exec(select(Comparison))}
        assert session.exec(select(AuditEvent).where(AuditEvent.action == "queue.prioritize")).one()
    assert {cid: priorities[cid] for cid in stored} == pytest.approx(stored)
    assert priorities[closed_id] == 0.0
    first = max(stored, key=stored.get)
    assert f"first served: #{first}" in result.output


@pytest.mark.slow
def test_prioritize_uncertainty_scores_missing_comparisons_on_the_fly(trained, tmp_path):
    url, engine = _database(tmp_path)
    with Session(engine) as session:
        build_project(session, n_prompts=4, n_clinicians=1)
    single = trained["out"] / "member-0"
    result = runner.invoke(app, ["prioritize", "--strategy", "uncertainty", "--reward-model", str(single),
                                 "--db", url])
    assert result.exit_code == 0, result.output
    assert "4 scored now" in result.output
    with Session(engine) as session:
        run = session.exec(select(RewardModelRun)).one()  # a folder trained elsewhere gets a run row
        scores = comparison_scores(run.id, session=session)
        assert len(scores) == 4 and all(n == 1 for _, _, n in scores.values())
        for comparison in session.exec(select(Comparison)):
            p, u, _ = scores[comparison.id]
            assert comparison.priority == pytest.approx(u) == pytest.approx(1 - abs(2 * p - 1))


@pytest.mark.postgres
def test_prioritize_random_and_disagreement(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=5, n_clinicians=3, judgments_required=5)
        c = project.comparisons
        votes = {0: ["a", "b"], 1: ["a", "a", "a"], 2: ["a"], 3: ["a", "b", "tie"]}  # comparison 4: none
        for index, prefs in votes.items():
            for clinician, preferred in zip(project.clinicians, prefs, strict=False):
                add_judgment(c[index], clinician, preferred, session=session)
        c[1].judgments_required = 3  # three votes: closed
        session.add(c[1])
        session.commit()
        ids = [x.id for x in c]

        summary = prioritize("disagreement", session=session)
        session.commit()
        assert summary.open == 4 and summary.set == 4 and summary.nonzero == 2
        got = {x.id: x.priority for x in session.exec(select(Comparison).execution_options(populate_existing=True))}
        assert got[ids[0]] == pytest.approx(1.0)
        assert got[ids[3]] == pytest.approx(math.log2(3))
        assert got[ids[2]] == got[ids[4]] == 0.0
        assert got[ids[1]] == 0.0  # closed: untouched
        assert summary.top[:2] == [ids[3], ids[0]]

        first = prioritize("random", session=session, seed=7)
        session.commit()
        draw = {x.id: x.priority for x in session.exec(select(Comparison).execution_options(populate_existing=True))}
        assert first.set == 4 and draw[ids[1]] == 0.0
        open_draws = [draw[i] for i in ids if i != ids[1]]
        assert all(0.0 <= v < 1.0 for v in open_draws) and len(set(open_draws)) == 4
        prioritize("random", session=session, seed=7)
        session.commit()
        again = {x.id: x.priority for x in session.exec(select(Comparison).execution_options(populate_existing=True))}
        assert again == draw  # seeded
        prioritize("random", session=session, seed=8)
        session.commit()
        other = {x.id: x.priority for x in session.exec(select(Comparison).execution_options(populate_existing=True))}
        assert other != draw

        # uncertainty from stored scores alone (no model is loaded when every open comparison has one)
        run = RewardModelRun(path="/nowhere/model")
        session.add(run)
        session.flush()
        stored = {ids[0]: (0.5, 0.9, 3), ids[2]: (0.9, 0.1, 3), ids[3]: (0.6, 0.4, 3), ids[4]: (0.2, 0.3, 3)}
        assert save_comparison_scores(stored, run_id=run.id, session=session) == {"written": 4, "updated": 0}
        assert save_comparison_scores({ids[4]: (0.3, 0.35, 3)}, run_id=run.id, session=session)["updated"] == 1
        summary = prioritize("uncertainty", session=session, run_id=run.id, model_dir="/nowhere/model")
        session.commit()
        got = {x.id: x.priority for x in session.exec(select(Comparison).execution_options(populate_existing=True))}
        assert summary.scored == 0
        assert [got[i] for i in (ids[0], ids[2], ids[3], ids[4])] == pytest.approx([0.9, 0.1, 0.4, 0.35])


def test_vote_entropy():
    assert vote_entropy([3, 0, 0]) == 0.0
    assert vote_entropy([1, 1]) == 1.0
    assert vote_entropy([]) == 0.0


def test_bad_input_is_one_line_and_changes_nothing(tmp_path):
    url, engine = _database(tmp_path)
    with Session(engine) as session:
        build_project(session, n_prompts=2, n_clinicians=1)
        before = table_counts(session=session)
    cases = [
        (["prioritize", "--strategy", "loudest", "--db", url], "--strategy must be one of"),
        (["prioritize", "--strategy", "uncertainty", "--db", url], "needs --reward-model DIR"),
        (["prioritize", "--strategy", "uncertainty", "--reward-model", str(tmp_path), "--db", url],
         "not a reward model folder"),
        (["pairs", "--strategy", "random", "--db", url], "--strategy needs --budget N"),
        (["pairs", "--strategy", "loudest", "--budget", "2", "--db", url], "unknown pairing strategy"),
        (["pairs", "--strategy", "uncertainty", "--budget", "2", "--db", url], "needs --reward-model DIR"),
    ]
    for argv, message in cases:
        result = runner.invoke(app, argv)
        assert result.exit_code == 1, (argv, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (argv, result.stderr)
    with Session(engine) as session:
        assert table_counts(session=session) == before


def _new_pairs(engine, before: set[int]) -> set[tuple[int, int]]:
    with Session(engine) as session:
        return {(c.response_a_id, c.response_b_id) for c in session.exec(select(Comparison)) if c.id not in before}


def test_pairs_random_budget_creates_exactly_n(tmp_path):
    made = []
    for name in ("one.db", "two.db"):
        url, engine = _database(tmp_path, name)
        with Session(engine, expire_on_commit=False) as session:
            project = build_project(session, n_prompts=4, n_clinicians=1)
            _add_third_candidate(session, project)
            before = {x.id for x in session.exec(select(Comparison))}
        result = runner.invoke(app, ["pairs", "--strategy", "random", "--budget", "3", "--seed", "5", "--db", url])
        assert result.exit_code == 0, result.output
        assert "Created 3 comparisons" in result.output
        made.append(_new_pairs(engine, before))
    assert len(made[0]) == 3 and made[0] == made[1]  # seeded: the same three
    result = runner.invoke(app, ["pairs", "--strategy", "random", "--budget", "50", "--db", url])
    assert "Created 5 comparisons" in result.output  # 8 options, 3 taken: only 5 left


@pytest.mark.slow
def test_pairs_uncertainty_budget_takes_the_least_certain(trained, tmp_path):
    from candidates.priority import response_pair_texts

    url, engine = _database(tmp_path)
    with Session(engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=4, n_clinicians=1)
        _add_third_candidate(session, project)
        before = {x.id for x in session.exec(select(Comparison))}
        have = {(x.response_a_id, x.response_b_id) for x in session.exec(select(Comparison))}
        responses = {}
        for prompt in project.prompts:
            responses[prompt.id] = [r.id for r in session.exec(select(Response).where(Response.prompt_id == prompt.id))]
        options = sorted({(min(a, b), max(a, b)) for ids in responses.values() for a in ids for b in ids
                          if a != b} - have)
        texts = response_pair_texts(options, session=session)
    out = trained["out"]
    expected_scores = pair_scores(load_reward_model(out), texts)
    ranked = sorted(range(len(options)), key=lambda i: (-expected_scores[i].uncertainty, options[i]))
    expected = {options[i] for i in ranked[:3]}
    result = runner.invoke(app, ["pairs", "--strategy", "uncertainty", "--budget", "3", "--reward-model", str(out),
                                 "--db", url])
    assert result.exit_code == 0, result.output
    assert "Created 3 comparisons" in result.output
    made = _new_pairs(engine, before)
    assert made == expected
    # the least certain three really are above the rest
    worst_kept = min(expected_scores[options.index(p)].uncertainty for p in made)
    best_left = max(expected_scores[i].uncertainty for i, p in enumerate(options) if p not in made)
    assert worst_kept >= best_left
    assert all(a < b for a, b in made)  # canonical order, as db.crud.add_comparison stores pairs
