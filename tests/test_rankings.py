"""Rankings of K replies on a real SQLite file and a real PostgreSQL server: migration 0007 with data,
the expansion into pairwise judgments (known answer), the ranking queue (overlap, expiring
reservations, skip, idempotent submit), ``therapref pairs --k`` and the Plackett–Luce fit."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import inspect, text
from sqlmodel import Session, select
from typer.testing import CliRunner

from analytics.plackett_luce import plackett_luce_strengths, simulate_rankings
from db.assignment import next_comparison
from db.auth import create_annotator
from db.crud import DataError, add_response, get_or_create_candidate, get_or_create_prompt
from db.engine import make_engine, session_scope
from db.migrate import current_revision, head_revision, upgrade
from db.models import Comparison, Judgment, Ranking, RankingTask, Response, utcnow
from db.rankings import (
    RankingNotReserved,
    RankingTaskFull,
    add_ranking_task,
    next_ranking,
    remaining_rankings_for,
    skip_ranking,
    submit_ranking,
)
from tests.factories import PASSWORD, PATIENT_MESSAGES, build_project, user
from therapref.cli import app

pytestmark = pytest.mark.postgres

SOURCES = ("warm", "terse", "third", "fourth")


def _three_replies(session: Session, *, n_prompts: int = 1, n_clinicians: int = 3, sources=SOURCES[:3]):
    """build_project (warm, terse) plus replies of further sources; returns (project, replies per prompt
    in id order)."""
    project = build_project(session, n_prompts=n_prompts, n_clinicians=n_clinicians)
    extra = [get_or_create_candidate(name, session=session, provider="local")[0] for name in sources[2:]]
    replies = []
    for prompt in project.prompts:
        rows = [project.responses[(prompt.id, "warm")], project.responses[(prompt.id, "terse")]]
        for candidate in extra:
            rows.append(add_response(prompt, candidate, f"A reply from {candidate.name} to prompt {prompt.id}.",
                                     session=session)[0])
        replies.append(sorted(rows, key=lambda r: r.id))
    session.commit()
    return project, replies


def _screen(assignment, response_id: int) -> int:
    return assignment.response_ids.index(response_id) + 1


def _rank_tables(engine) -> set[str]:
    return {t for t in inspect(engine).get_table_names() if t.startswith("ranking")}


def test_migration_0007_up_and_down_with_data(any_db_url):
    """Up: the ranking tables and judgment.ranking_id; down to 0006: they go, the expanded judgments
    stay as ordinary judgments; up again: an empty ranking queue, the old judgments untouched."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    from db.migrate import alembic_config

    engine = make_engine(any_db_url)
    upgrade(engine)
    with engine.connect() as connection:  # the models and the migrations agree on every ranking table
        diffs = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert [d for d in diffs if "rank" in repr(d).lower()] == []
    with Session(engine, expire_on_commit=False) as session:
        project, [replies] = _three_replies(session)
        task, _ = add_ranking_task(replies, session=session)
        session.commit()
        clinician = project.clinicians[0].id
        assignment = next_ranking(clinician, session=session)
        r1, r2, r3 = (r.id for r in replies)
        submit_ranking(assignment.token, [[_screen(assignment, r3)], [_screen(assignment, r1)],
                                          [_screen(assignment, r2)]], session=session, annotator_id=clinician)
        session.commit()
    with engine.connect() as connection:
        before = [tuple(r) for r in connection.execute(text(
            "SELECT comparison_id, annotator_id, preferred, strength, rationale FROM judgment ORDER BY id"))]
    assert len(before) == 3 and all(r[4] == f"ranking #{assignment.task_id}" for r in before)

    command.downgrade(alembic_config(engine), "0006")
    assert current_revision(engine) == "0006"
    assert _rank_tables(engine) == set()
    assert "ranking_id" not in {c["name"] for c in inspect(engine).get_columns("judgment")}
    with engine.connect() as connection:
        after = [tuple(r) for r in connection.execute(text(
            "SELECT comparison_id, annotator_id, preferred, strength, rationale FROM judgment ORDER BY id"))]
    assert after == before

    assert upgrade(engine) == head_revision()
    assert _rank_tables(engine) == {"rankingtask", "ranking", "rankingreservation", "rankingskip"}
    with Session(engine) as session:
        assert session.exec(select(RankingTask)).all() == []
        assert session.exec(select(Judgment.ranking_id)).all() == [None, None, None]
        # The new schema works after the round trip: a task and its ranking again.
        task, created = add_ranking_task([session.get(Response, r) for r in (r1, r2, r3)], session=session)
        session.commit()
        assert created and task.response_ids == [r1, r2, r3]


def test_ranking_expands_into_canonical_pairs(any_engine):
    """3 replies, tiers [[r2], [r1, r3]] → r2 > r1, r2 > r3, r1 = r3, on the canonical comparisons,
    in the ranking's transaction, flags carried, marked as derived; created comparisons need one
    judgment (they stay out of other clinicians' pair queues), an existing one keeps its overlap."""
    with Session(any_engine, expire_on_commit=False) as session:
        project, [replies] = _three_replies(session, n_clinicians=2)
        r1, r2, r3 = replies
        # build_project paired warm×terse; make that pair need two judgments (it is in the pair queue).
        existing = session.exec(select(Comparison)).one()
        existing.judgments_required = 2
        session.add(existing)
        task, created = add_ranking_task([r3, r1, r2], session=session)
        session.commit()
        assert created and task.response_ids == [r1.id, r2.id, r3.id]
        assert add_ranking_task([r2, r3, r1], session=session)[1] is False
        ranker, other = (c.id for c in project.clinicians)
        assignment = next_ranking(ranker, session=session)
        assert sorted(assignment.response_ids) == [r1.id, r2.id, r3.id]
        assert [assignment.texts[assignment.response_ids.index(r.id)] for r in replies] == [r.text for r in replies]
        s1, s2, s3 = (_screen(assignment, r.id) for r in replies)
        ranking, created = submit_ranking(
            assignment.token, [[s2], [s3, s1]], session=session, annotator_id=ranker,
            flags={s3: ["dismissive"], s1: ["toxic", "boundary"]}, rationale="2 is warmest", ms_spent=9000)
        session.commit()
        assert created and ranking.order == [[r2.id], [r1.id, r3.id]]
        assert ranking.shown_order == assignment.response_ids
        assert ranking.flags == {str(r1.id): ["boundary", "toxic"], str(r3.id): ["dismissive"]}

        rows = session.exec(select(Judgment, Comparison).join(Comparison, Comparison.id == Judgment.comparison_id)
                            .order_by(Comparison.response_a_id, Comparison.response_b_id)).all()
        got = [(c.response_a_id, c.response_b_id, j.preferred, j.strength, j.flags_a, j.flags_b) for j, c in rows]
        assert got == [(r1.id, r2.id, "b", 1, ["boundary", "toxic"], []),
                       (r1.id, r3.id, "tie", None, ["boundary", "toxic"], ["dismissive"]),
                       (r2.id, r3.id, "a", 1, [], ["dismissive"])]
        position = {rid: i for i, rid in enumerate(assignment.response_ids)}
        for judgment, comparison in rows:
            assert judgment.annotator_id == ranker and judgment.ranking_id == ranking.id
            assert judgment.rationale == f"ranking #{ranking.id}: 2 is warmest"
            left_is_a = position[comparison.response_a_id] < position[comparison.response_b_id]
            assert judgment.shown_left == ("a" if left_is_a else "b")
        counts = {(c.response_a_id, c.response_b_id): (c.judgments_count, c.judgments_required) for _, c in rows}
        assert counts[(existing.response_a_id, existing.response_b_id)] == (1, 2)
        assert sorted(counts.values()) == [(1, 1), (1, 1), (1, 2)]
        # The other clinician's pair queue holds the pre-existing pair only, not the derived ones.
        pair = next_comparison(other, session=session)
        assert pair.comparison_id == existing.id
        session.rollback()


def test_queue_overlap_reservations_skip_and_idempotent_submit(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        project, replies = _three_replies(session, n_prompts=2, n_clinicians=3)
        for i, rows in enumerate(replies):
            add_ranking_task(rows, session=session, judgments_required=2 if i == 0 else 1)
        session.commit()
        a, b, c = (x.id for x in project.clinicians)
        now = utcnow()
        first_a = next_ranking(a, session=session, now=now)
        again = next_ranking(a, session=session, now=now + timedelta(minutes=1))  # a reload: same task, order
        assert (again.token, again.response_ids, again.task_id) == (first_a.token, first_a.response_ids,
                                                                    first_a.task_id)
        first_b = next_ranking(b, session=session, now=now)
        assert first_b.task_id == first_a.task_id  # overlap 2: both may hold the first task
        first_c = next_ranking(c, session=session, now=now)
        assert first_c.task_id != first_a.task_id  # reserved to capacity: c gets the other task
        session.commit()

        # Idempotent submit: a double click writes one ranking and one set of judgments.
        order = [[1], [2], [3]]
        ranking, created = submit_ranking(first_a.token, order, session=session, annotator_id=a, now=now)
        again_ranking, again_created = submit_ranking(first_a.token, order, session=session, annotator_id=a, now=now)
        session.commit()
        assert created and not again_created and again_ranking.id == ranking.id
        assert len(session.exec(select(Ranking)).all()) == 1
        assert len(session.exec(select(Judgment).where(Judgment.annotator_id == a)).all()) == 3
        with pytest.raises(RankingNotReserved):  # someone else's token
            submit_ranking(first_a.token, order, session=session, annotator_id=b, now=now)
        with pytest.raises(DataError, match="missing 3"):
            submit_ranking(first_b.token, [[1, 2]], session=session, annotator_id=b, now=now)
        session.rollback()

        # b's reservation expires; c skips the other task and takes b's place on the first one.
        late = now + timedelta(minutes=30)
        skip_ranking(first_c.token, session=session, annotator_id=c, reason="Outside my expertise", now=late)
        session.commit()
        taken = next_ranking(c, session=session, now=late)
        assert taken.task_id == first_a.task_id
        submit_ranking(taken.token, [[3], [1, 2]], session=session, annotator_id=c, now=late)
        session.commit()
        # The first task is complete: b's expired token is refused, and nothing is left for c.
        with pytest.raises(RankingTaskFull):
            submit_ranking(first_b.token, order, session=session, annotator_id=b, now=late)
        session.rollback()
        assert next_ranking(c, session=session, now=late) is None
        assert remaining_rankings_for(c, session=session) == 0
        assert remaining_rankings_for(b, session=session) == 1  # the second task, which c skipped
        task = session.get(RankingTask, first_a.task_id)
        session.refresh(task)
        assert (task.judgments_count, task.judgments_required) == (2, 2)


def test_rankings_refuse_bad_tasks(engine):
    with Session(engine, expire_on_commit=False) as session:
        project, [replies] = _three_replies(session)
        with pytest.raises(DataError, match="3 to 9 replies"):
            add_ranking_task(replies[:2], session=session)
        other, _ = get_or_create_prompt(user("Another message"), session=session)
        stray, _ = add_response(other, project.candidates[0], "Elsewhere.", session=session)
        with pytest.raises(DataError, match="same prompt"):
            add_ranking_task([*replies[:2], stray], session=session)


def _four_sources(url: str) -> None:
    """Three prompts with replies from four sources, one prompt with two sources only."""
    engine = make_engine(url)
    upgrade(engine)
    with session_scope(engine) as session:
        candidates = [get_or_create_candidate(n, session=session, provider="local")[0] for n in SOURCES]
        create_annotator("clin0", PASSWORD, session=session)
        for i, message in enumerate(PATIENT_MESSAGES[:4]):
            prompt, _ = get_or_create_prompt(user(message), session=session)
            for candidate in candidates if i < 3 else candidates[:2]:
                add_response(prompt, candidate, f"{candidate.name} answers {i}.", session=session)
    engine.dispose()


def test_pairs_k_cli_creates_ranking_tasks(sqlite_url):
    _four_sources(sqlite_url)
    runner = CliRunner()
    result = runner.invoke(app, ["pairs", "--db", sqlite_url, "--k", "3", "--overlap", "2",
                                 "--overlap-fraction", "1.0"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == ("Created 3 ranking tasks of 3 replies over 3 prompts (0 already existed); "
                                     "3 need 2 rankings each; 1 prompts have replies from fewer than 3 sources.")
    again = runner.invoke(app, ["pairs", "--db", sqlite_url, "--k", "3"])
    assert again.stdout.startswith("Created 0 ranking tasks of 3 replies over 3 prompts (3 already existed)")
    four = runner.invoke(app, ["pairs", "--db", sqlite_url, "--k", "4", "--budget", "2"])
    assert four.stdout.startswith("Created 3 ranking tasks of 4 replies over 3 prompts"), four.output
    engine = make_engine(sqlite_url)
    with Session(engine) as session:
        tasks = session.exec(select(RankingTask).order_by(RankingTask.id)).all()
        sources = {r.id: r.candidate_model_id for r in session.exec(select(Response))}
        assert session.exec(select(Comparison)).all() == []  # rankings, not pairs
    assert [len(t.response_ids) for t in tasks] == [3, 3, 3, 4, 4, 4]
    assert [t.judgments_required for t in tasks] == [2, 2, 2, 1, 1, 1]
    for task in tasks:
        assert task.response_ids == sorted(task.response_ids)
        assert len({sources[r] for r in task.response_ids}) == len(task.response_ids)  # distinct candidates
    bad = runner.invoke(app, ["pairs", "--db", sqlite_url, "--k", "2"])
    assert bad.exit_code == 1 and "--k must be between 3 and 9" in bad.stderr
    with Session(engine) as session:
        assert len(session.exec(select(RankingTask)).all()) == 6  # nothing written by the failed run
    plain = runner.invoke(app, ["pairs", "--db", sqlite_url])  # without --k: pairs, as before
    assert plain.stdout.startswith("Created 19 comparisons over 4 prompts"), plain.output
    engine.dispose()


def test_plackett_luce_recovers_simulated_strengths():
    """Known strengths → simulated rankings (with ties) → fitted strengths in the same order."""
    rng = np.random.default_rng(7)
    truth = {f"m{i}": s for i, s in enumerate([1.5, 0.9, 0.4, 0.0, -0.6, -1.2])}
    rankings = simulate_rankings(truth, n=600, k=4, rng=rng, tie_rate=0.15)
    assert any(len(tier) > 1 for ranking in rankings for tier in ranking)
    fitted = plackett_luce_strengths(rankings, prior=0.1)
    names = sorted(truth)
    corr = np.corrcoef([truth[n] for n in names], [fitted[n] for n in names])[0, 1]
    assert corr > 0.95
    assert sorted(names, key=fitted.get, reverse=True) == sorted(names, key=truth.get, reverse=True)
    assert math.isclose(sum(fitted.values()), 0.0, abs_tol=1e-9)
    # Random rankings give no ordering: strengths near zero.
    flat = plackett_luce_strengths(simulate_rankings({n: 0.0 for n in names}, n=600, k=3,
                                                     rng=np.random.default_rng(1)), prior=0.1)
    assert max(abs(v) for v in flat.values()) < 0.25


def test_random_screen_orders_differ_between_clinicians(engine):
    with Session(engine, expire_on_commit=False) as session:
        project, replies = _three_replies(session, n_prompts=1, n_clinicians=1, sources=SOURCES)
        add_ranking_task(replies[0], session=session, judgments_required=12)
        session.commit()
        clinicians = [create_annotator(f"extra{i}", PASSWORD, session=session) for i in range(12)]
        session.commit()
        orders = set()
        for clinician in clinicians:
            orders.add(tuple(next_ranking(clinician.id, session=session).response_ids))
        session.rollback()
    assert len(orders) > 3  # 12 clinicians, 24 possible orders: positions are randomised per clinician


def test_a_ranking_is_one_piece_of_work_for_undo_progress_and_logout(engine):
    """Undo on the compare page never takes back part of a ranking; progress counts a ranking once,
    not as its three pairs; logging out (``release``) hands a reserved ranking task back at once."""
    from db.assignment import progress, release, undo_last
    from db.models import RankingReservation

    with Session(engine, expire_on_commit=False) as session:
        project, [replies] = _three_replies(session, n_clinicians=2)
        add_ranking_task(replies, session=session, judgments_required=2)
        session.commit()
        ranker, other = (c.id for c in project.clinicians)
        assignment = next_ranking(ranker, session=session)
        submit_ranking(assignment.token, [[1], [2], [3]], session=session, annotator_id=ranker)
        session.commit()
        assert len(session.exec(select(Judgment).where(Judgment.annotator_id == ranker)).all()) == 3
        assert undo_last(ranker, session=session) is False
        assert progress(ranker, session=session)["total"] == 1
        assert next_ranking(other, session=session) is not None
        session.commit()
        assert session.exec(select(RankingReservation)).all()
        assert release(other, session=session) == 1
        assert session.exec(select(RankingReservation)).all() == []


def test_report_fits_rankings_as_whole_orders(engine, tmp_path):
    """Two clinicians rank third > warm > terse: the report's Plackett–Luce board says so, in the
    Markdown and in report.json."""
    from analytics.config import AnalyticsConfig
    from analytics.report import generate_report

    with Session(engine, expire_on_commit=False) as session:
        project, replies = _three_replies(session, n_prompts=2, n_clinicians=2)
        for prompt_replies in replies:
            add_ranking_task(prompt_replies, session=session, judgments_required=2)
        session.commit()
        name_of = {r.id: r.candidate_model_id for rs in replies for r in rs}
        order = {name: rank for rank, name in enumerate(("third", "warm", "terse"))}
        from db.models import CandidateModel
        names = {c.id: c.name for c in session.exec(select(CandidateModel)).all()}
        for clinician in project.clinicians:
            while (assignment := next_ranking(clinician.id, session=session)) is not None:
                ranked = sorted(assignment.response_ids, key=lambda rid: order[names[name_of[rid]]])
                submit_ranking(assignment.token, [[_screen(assignment, rid)] for rid in ranked],
                               session=session, annotator_id=clinician.id)
                session.commit()
        _, files = generate_report(tmp_path / "report", session=session, config=AnalyticsConfig(n_bootstrap=50))
    import json

    board = json.loads(files.json.read_text())["rankings"]
    assert board["n_rankings"] == 4
    assert [row["model"] for row in board["rows"]] == ["third", "warm", "terse"]
    assert [row["first"] for row in board["rows"]] == [4, 0, 0]
    assert "Rankings (Plackett–Luce)" in files.markdown.read_text()
