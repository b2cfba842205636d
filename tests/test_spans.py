"""Unsafe spans on a real SQLite file and a real PostgreSQL server: migration 0013 up and down with
data, spans written with their judgment or ranking (checked first: a span outside the text writes
nothing), undo removes them, ``spans_for_comparison`` for leads, per-kind counts."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, inspect, text
from sqlmodel import Session, select

from db.assignment import AssignmentError, next_comparison, submit_judgment, undo_last
from db.crud import DataError, add_response, get_or_create_candidate
from db.engine import make_engine
from db.migrate import alembic_config, current_revision, head_revision, upgrade
from db.models import Judgment, Ranking, UnsafeSpan
from db.rankings import add_ranking_task, next_ranking, submit_ranking
from db.spans import SpanMark, span_counts, spans_for_comparison, spans_of
from tests.factories import build_project

pytestmark = pytest.mark.postgres


def _word(text_: str, word: str) -> tuple[int, int]:
    start = text_.index(word)
    return start, start + len(word)


def test_spans_are_stored_with_the_judgment_and_flag_the_reply(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=2, n_clinicians=2)
        clinician = project.clinicians[0]
        assignment = next_comparison(clinician.id, session=session)
        # The warm reply ("That sounds really hard…") on whichever side it was shown.
        side = "left" if "hard" in assignment.left_text else "right"
        warm_text = assignment.left_text if side == "left" else assignment.right_text
        warm_id = assignment.left_response_id if side == "left" else assignment.right_response_id
        warm_ab = assignment.shown_left if side == "left" else ("b" if assignment.shown_left == "a" else "a")
        start, end = _word(warm_text, "hard")
        judgment, created = submit_judgment(
            assignment.token, session=session, annotator_id=clinician.id, preferred="right", strength=2,
            **{f"flags_{side}": ["toxic"]}, spans={side: [(start, end, "dismissive"), (start, end, "dismissive"),
                                                          {"start": 0, "end": 4, "flag": "toxic"}]})
        session.commit()
        assert created
        assert getattr(judgment, f"flags_{warm_ab}") == ["dismissive", "toxic"]  # the span's kind flags its reply
        stored = spans_of(judgment_id=judgment.id, session=session)
        assert [(s.start, s.end, s.flag, s.response_id, s.username) for s in stored] == [
            (0, 4, "toxic", warm_id, "clin0"), (start, end, "dismissive", warm_id, "clin0")]
        assert stored[1].quote == "hard"
        for_lead = spans_for_comparison(assignment.comparison_id, session=session)
        assert [(s.side, s.quote) for s in for_lead] == [(warm_ab, "That"), (warm_ab, "hard")]
        counts = {c.flag: c for c in span_counts(session=session)}
        assert (counts["dismissive"].spans, counts["dismissive"].replies, counts["dismissive"].characters) == (1, 1, 4)
        assert counts["toxic"].spans == 1 and counts["boundary"].spans == 0
        # A retried submit writes nothing more.
        again, created = submit_judgment(assignment.token, session=session, annotator_id=clinician.id,
                                         preferred="right", strength=2, spans={"left": [(0, 1, "toxic")]})
        session.commit()
        assert not created and session.exec(select(func.count(UnsafeSpan.id))).one() == 2
        # Undo removes the judgment and its spans (ON DELETE CASCADE).
        assert undo_last(clinician.id, session=session)
        session.commit()
        assert session.exec(select(func.count(UnsafeSpan.id))).one() == 0


@pytest.mark.parametrize("spans, message", [
    ({"left": [(0, 10_000, "toxic")]}, "lies outside reply left"),
    ({"right": [(3, 3, "toxic")]}, "span 3–3 lies outside reply right"),
    ({"left": [(-1, 2, "toxic")]}, "lies outside reply left"),
    ({"left": [(0, 2, "rude")]}, "unknown flag kind 'rude'"),
    ({"middle": [(0, 2, "toxic")]}, "spans are given per reply (left, right)"),
])
def test_a_bad_span_is_one_clear_line_and_nothing_is_written(any_engine, spans, message):
    with Session(any_engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=1, n_clinicians=1)
        clinician = project.clinicians[0]
        assignment = next_comparison(clinician.id, session=session)
        session.commit()
        with pytest.raises(AssignmentError) as caught:
            submit_judgment(assignment.token, session=session, annotator_id=clinician.id, preferred="left",
                            strength=1, spans=spans)
        session.rollback()
        assert message in str(caught.value) and "\n" not in str(caught.value)
        assert session.exec(select(func.count(Judgment.id))).one() == 0
        assert session.exec(select(func.count(UnsafeSpan.id))).one() == 0
        # The reservation is still there: the clinician can correct the span and submit.
        judgment, created = submit_judgment(assignment.token, session=session, annotator_id=clinician.id,
                                            preferred="left", strength=1, spans={"left": [(0, 2, "toxic")]})
        session.commit()
        assert created and len(spans_of(judgment_id=judgment.id, session=session)) == 1


def _ranking_project(session: Session):
    project = build_project(session, n_prompts=1, n_clinicians=1)
    prompt = project.prompts[0]
    third, _ = get_or_create_candidate("third", session=session, provider="local")
    extra, _ = add_response(prompt, third, "Just get over it, everyone feels sad sometimes.", session=session)
    replies = [project.responses[(prompt.id, "warm")], project.responses[(prompt.id, "terse")], extra]
    add_ranking_task(replies, session=session)
    session.commit()
    return project, extra


def test_ranking_spans_are_stored_with_the_ranking_and_shown_on_its_pairs(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        project, extra = _ranking_project(session)
        clinician = project.clinicians[0]
        assignment = next_ranking(clinician.id, session=session)
        session.commit()
        number = assignment.response_ids.index(extra.id) + 1
        start, end = _word(extra.text, "get over it")
        with pytest.raises(DataError, match=f"span 0–999 lies outside reply {number}"):
            submit_ranking(assignment.token, [[1], [2], [3]], session=session, annotator_id=clinician.id,
                           spans={number: [(0, 999, "dismissive")]})
        session.rollback()
        assert session.exec(select(func.count(Ranking.id))).one() == 0
        ranking, created = submit_ranking(assignment.token, [[1], [2], [3]], session=session,
                                          annotator_id=clinician.id, spans={number: [(start, end, "dismissive")]})
        session.commit()
        assert created and ranking.flags[str(extra.id)] == ["dismissive"]
        [stored] = spans_of(ranking_id=ranking.id, session=session)
        assert (stored.quote, stored.response_id, stored.username) == ("get over it", extra.id, "clin0")
        # Each pair the ranking expanded into that holds the reply shows the span to leads.
        pairs = session.exec(select(Judgment.comparison_id).where(Judgment.ranking_id == ranking.id)).all()
        shown = {cid: [s.quote for s in spans_for_comparison(cid, session=session)] for cid in pairs}
        assert sorted(len(v) for v in shown.values()) == [0, 1, 1]
        assert {q for v in shown.values() for q in v} == {"get over it"}
        assert {c.flag: c.spans for c in span_counts(session=session)}["dismissive"] == 1


def test_migration_0013_up_and_down_with_data(any_db_url):
    """Up: the span, calibration and setting tables match the models; down to 0012: they go, the
    judgments and rankings stay; up again: empty tables that work."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    engine = make_engine(any_db_url)
    upgrade(engine)
    with engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert [d for d in diffs if any(t in repr(d).lower() for t in ("unsafespan", "calibration", "appsetting"))] == []
    with Session(engine, expire_on_commit=False) as session:
        project, extra = _ranking_project(session)
        clinician = project.clinicians[0]
        assignment = next_ranking(clinician.id, session=session)
        number = assignment.response_ids.index(extra.id) + 1
        submit_ranking(assignment.token, [[1], [2], [3]], session=session, annotator_id=clinician.id,
                       spans={number: [(0, 4, "dismissive")]})
        session.commit()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM unsafespan")).scalar() == 1
        before = [tuple(r) for r in connection.execute(text(
            "SELECT comparison_id, annotator_id, preferred, flags_a, flags_b FROM judgment ORDER BY id"))]
    command.downgrade(alembic_config(engine), "0012")
    assert current_revision(engine) == "0012"
    assert not {"unsafespan", "calibrationitem", "appsetting"} & set(inspect(engine).get_table_names())
    with engine.connect() as connection:
        after = [tuple(r) for r in connection.execute(text(
            "SELECT comparison_id, annotator_id, preferred, flags_a, flags_b FROM judgment ORDER BY id"))]
        assert connection.execute(text("SELECT count(*) FROM ranking")).scalar() == 1
    assert after == before and len(after) == 3
    assert upgrade(engine) == head_revision()
    with Session(engine, expire_on_commit=False) as session:
        assert session.exec(select(func.count(UnsafeSpan.id))).one() == 0
        judgment = session.exec(select(Judgment)).first()
        session.add(UnsafeSpan(judgment_id=judgment.id, response_id=extra.id, start_char=0, end_char=3,
                               flag=SpanMark(0, 3, "toxic").flag))
        session.commit()
        assert session.exec(select(func.count(UnsafeSpan.id))).one() == 1


def test_the_report_counts_spans_per_flag_kind(engine, tmp_path):
    from analytics.config import AnalyticsConfig
    from analytics.report import generate_report

    with Session(engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=1, n_clinicians=1)
        clinician = project.clinicians[0]
        assignment = next_comparison(clinician.id, session=session)
        submit_judgment(assignment.token, session=session, annotator_id=clinician.id, preferred="tie",
                        spans={"left": [(0, 2, "toxic"), (2, 4, "toxic")], "right": [(0, 3, "misses_risk")]})
        session.commit()
        _summary, files = generate_report(tmp_path / "report", session=session,
                                          config=AnalyticsConfig(n_bootstrap=20))
    markdown = files.markdown.read_text(encoding="utf-8")
    assert "Unsafe spans marked, per flag kind" in markdown
    cells = [[c.strip().replace("\\_", "_") for c in line.split("|")[1:-1]]
             for line in markdown.splitlines() if line.startswith("| ")]
    rows = {row[0]: row[1:] for row in cells if row[0] in ("toxic", "misses_risk", "boundary") and len(row) == 6}
    assert rows["toxic"] == ["Toxic language", "2", "1", "1", "4"]
    assert rows["misses_risk"][1:] == ["1", "1", "1", "3"] and rows["boundary"][1] == "0"
    figures = json.loads(files.json.read_text(encoding="utf-8"))
    assert {c["flag"]: c["spans"] for c in figures["unsafe_spans"]}["toxic"] == 2
