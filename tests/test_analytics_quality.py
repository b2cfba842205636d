"""Annotator quality on simulated annotators and on a real database: position bias, majority
agreement, speed, tie rates, gold answers (set_gold with its audit event)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sqlmodel import Session, select

from analytics.config import AnalyticsConfig
from analytics.errors import AnalyticsError
from analytics.gold import gold_comparisons, set_gold
from analytics.progress import completion, safety_flag_counts
from analytics.quality import annotator_quality, position_bias
from analytics.records import JudgmentRecord, load_judgments
from analytics.reward_eval import length_scorer, majority_items
from analytics.summary import build_summary
from db.crud import add_judgment, get_or_create_source_annotator
from db.models import AuditEvent, Comparison
from db.rules import Sources
from tests.factories import build_project


def simulated_annotator(name: str, left_rate: float, n: int, seed: int) -> list[JudgmentRecord]:
    """An annotator who picks whatever is on the left with probability ``left_rate``; sides are shuffled."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        shown_left = str(rng.choice(["a", "b"]))
        other = "b" if shown_left == "a" else "a"
        records.append(JudgmentRecord(i, name, shown_left if rng.random() < left_rate else other,
                                      shown_left=shown_left, judgment_id=i + 1))
    return records


def test_position_bias_detected_on_a_left_clicker_not_on_a_random_annotator():
    biased = position_bias(simulated_annotator("lefty", 0.8, 150, seed=1))
    assert biased.biased
    assert biased.p_value < 1e-6
    assert 0.72 < biased.left_share < 0.88
    flagged = [position_bias(simulated_annotator("fair", 0.5, 150, seed=s)).biased for s in range(20)]
    assert sum(flagged) <= 2  # about 5% false alarms at alpha 0.05
    assert not position_bias(simulated_annotator("fair", 0.5, 150, seed=1)).biased


def test_chose_left_uses_preferred_and_shown_left():
    records = [JudgmentRecord(1, "x", "b", shown_left="b"), JudgmentRecord(2, "x", "a", shown_left="b"),
               JudgmentRecord(3, "x", "tie", shown_left="a")]
    bias = position_bias(records)
    assert (bias.left, bias.choices) == (1, 2)


def test_quality_table_on_a_panel_with_a_contrarian():
    records, jid = [], 0
    for c in range(1, 31):
        truth = "a" if c % 3 else "b"
        for name in ("ana", "ben", "cleo", "dan"):
            jid += 1
            preferred = truth if name != "dan" else ("b" if truth == "a" else "a")
            if name == "cleo" and c % 5 == 0:
                preferred = "tie"
            if name == "ben" and c % 10 == 0:
                preferred = "both_bad"
            ms = 1500 if name == "dan" else 8000 + 100 * c
            records.append(JudgmentRecord(c, name, preferred, shown_left="a" if c % 2 else "b", ms_spent=ms,
                                          judgment_id=jid, gold_answer=truth if c <= 10 else None))
    rows = {q.annotator: q for q in annotator_quality(records, fast_seconds=3)}
    # On comparisons 5, 10, …, 30 the other three all disagree with each other: no majority, skipped.
    assert rows["ana"].majority_agreement.value == 1.0
    assert rows["ana"].majority_agreement.n_items == 24
    assert rows["dan"].majority_agreement.value == 0.0
    assert rows["dan"].fast == 30
    assert rows["dan"].median_seconds == 1.5
    assert rows["ana"].fast == 0
    assert rows["ana"].median_seconds == pytest.approx(9.55)
    assert rows["cleo"].tie_rate == pytest.approx(6 / 30)
    assert rows["ben"].both_bad_rate == pytest.approx(3 / 30)
    assert rows["ana"].gold_accuracy.value == 1.0
    assert rows["ana"].gold_accuracy.n_items == 10
    assert rows["dan"].gold_accuracy.value == 0.0
    assert rows["cleo"].gold_accuracy.value == pytest.approx(8 / 10)
    assert not rows["ana"].position.biased
    assert rows["ana"].majority_agreement.low < 1.0  # Wilson interval


def test_set_gold_writes_audit_event_and_validates(session: Session):
    project = build_project(session, n_prompts=2, n_clinicians=2, with_judgments=True)
    comparison = project.comparisons[0]
    set_gold(comparison.id, "a", session=session, actor="admin")
    session.commit()
    assert session.get(Comparison, comparison.id).gold_answer == "a"
    event = session.exec(select(AuditEvent).where(AuditEvent.action == "comparison.set_gold")).one()
    assert event.actor == "admin"
    assert event.target == f"comparison:{comparison.id}"
    assert event.details == {"previous": None, "answer": "a"}
    assert [c.id for c in gold_comparisons(session=session)] == [comparison.id]
    with pytest.raises(AnalyticsError, match="must be one of"):
        set_gold(comparison.id, "left", session=session, actor="admin")
    with pytest.raises(AnalyticsError, match="does not exist"):
        set_gold(99999, "a", session=session, actor="admin")
    session.rollback()
    assert session.get(Comparison, comparison.id).gold_answer == "a"
    set_gold(comparison.id, None, session=session, actor="admin")
    session.commit()
    assert gold_comparisons(session=session) == []
    records = load_judgments(session=session)
    warm_is_a = project.responses[(comparison.prompt_id, "warm")].id == comparison.response_a_id
    set_gold(comparison.id, "a" if warm_is_a else "b", session=session, actor="admin")
    rows = annotator_quality(load_judgments(session=session))
    assert all(q.gold_accuracy.value == 1.0 and q.gold_accuracy.n_items == 1 for q in rows)
    assert len(records) == 4


def test_load_judgments_and_completion_on_sqlite_and_postgres(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=3, n_clinicians=2, judgments_required=3, with_judgments=True)
        source = get_or_create_source_annotator("counselchat-upvotes", session=session)
        add_judgment(project.comparisons[0], source, "b", session=session, flags_b=["toxic"])
        add_judgment(project.comparisons[1], project.admin, "tie", session=session, shown_left="b",
                     flags_a=["dismissive"])
        session.commit()
        clinicians = load_judgments(session=session)
        everyone = load_judgments(session=session, sources=Sources.parse("both"))
        done = completion(session=session)
        summary = build_summary(session=session, config=AnalyticsConfig(n_bootstrap=20), scorer=length_scorer)
        imported = majority_items(session=session, sources=Sources.parse("imported"))
    assert len(clinicians) == 7
    assert len(everyone) == 8
    assert {r.role for r in clinicians} == {"clinician", "admin"}
    warm = next(r for r in clinicians if r.annotator == "clin0")
    assert {warm.model_a, warm.model_b} == {"warm", "terse"}
    assert warm.len_a != warm.len_b
    assert warm.ms_spent == 4000
    assert warm.created_at is not None
    tie = next(r for r in clinicians if r.preferred == "tie")
    assert tie.flags_a == ("dismissive",)
    assert tie.shown_left == "b"
    assert tie.chose_left is None
    assert (done.comparisons, done.complete, done.started, done.untouched) == (3, 2, 1, 0)
    assert (done.judgments_needed, done.judgments_done) == (9, 8)
    flags = {f.model: f for f in safety_flag_counts(clinicians)}
    assert flags["warm"].judged == 7
    assert sum(flags["warm"].counts.values()) + sum(flags["terse"].counts.values()) == 1
    assert math.isclose(done.share_complete, 2 / 3)
    assert summary.n_judgments == 7
    assert summary.agreement.n_comparisons == 3
    assert [r.model for r in summary.leaderboard.overall.ratings] == ["warm", "terse"]
    assert summary.reward.n_items == 3
    assert summary.reward.agreement.value == 1.0  # warm is longer and preferred
    assert [(i.comparison_id, i.votes) for i in imported] == [(project.comparisons[0].id, 1)]


def test_imported_sources_are_not_tested_for_position_bias():
    records = [JudgmentRecord(i, "import:hh", "a", shown_left="a", role="source", judgment_id=i + 1) for i in range(40)]
    row = annotator_quality(records)[0]
    assert row.position.choices == 0
    assert not row.position.biased
    clinician = [JudgmentRecord(**{**r.__dict__, "role": "clinician"}) for r in records]
    assert annotator_quality(clinician)[0].position.biased
