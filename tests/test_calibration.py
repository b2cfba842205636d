"""Onboarding by calibration on a real SQLite file and a real PostgreSQL server: the calibration set is
served first, feedback after each item, accuracy per clinician, the admin's threshold (persisted,
audited) holds real work back until reached, and a reset lets a clinician take the set again."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from analytics.gold import set_gold
from db.assignment import next_comparison, skip, submit_judgment
from db.calibration import (
    add_calibration_item,
    calibration_feedback,
    calibration_items,
    calibration_overview,
    calibration_status,
    calibration_threshold,
    remove_calibration_item,
    reset_calibration,
    set_calibration_threshold,
)
from db.crud import DataError
from db.models import AuditEvent, Comparison
from tests.factories import build_project

pytestmark = pytest.mark.postgres


def _screen_choice(assignment, answer: str) -> str:
    """The screen choice that means ``answer`` (the comparison's own a/b)."""
    if answer in ("tie", "both_bad"):
        return answer
    return "left" if assignment.shown_left == answer else "right"


def _calibrated_project(session: Session):
    project = build_project(session, n_prompts=5, n_clinicians=2)
    lead = project.admin
    first, second = project.comparisons[3], project.comparisons[4]
    set_gold(first.id, "a", session=session, actor="admin")
    set_gold(second.id, "b", session=session, actor="admin")
    add_calibration_item(first.id, session=session, actor=lead, note="A names the feeling; B dismisses it.")
    add_calibration_item(second.id, session=session, actor=lead, note="Prefer the reply that asks about safety.")
    session.commit()
    return project, [first.id, second.id]


def test_the_calibration_set_comes_first_with_feedback_after_each(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        project, items = _calibrated_project(session)
        assert [i["comparison_id"] for i in calibration_items(session=session)] == items
        newcomer = project.clinicians[0]
        served = []
        for answer in ("a", "a"):  # right on the first item, wrong on the second (expected b)
            assignment = next_comparison(newcomer.id, session=session)
            served.append(assignment.comparison_id)
            submit_judgment(assignment.token, session=session, annotator_id=newcomer.id,
                            preferred=_screen_choice(assignment, answer), strength=2)
            session.commit()
            feedback = calibration_feedback(assignment.comparison_id, newcomer.id, session=session)
            assert feedback is not None and feedback.given == answer
        assert served == items  # in the lead's order, before any other pair
        first = calibration_feedback(items[0], newcomer.id, session=session)
        second = calibration_feedback(items[1], newcomer.id, session=session)
        assert (first.expected, first.correct, first.note) == ("a", True, "A names the feeling; B dismisses it.")
        assert (second.expected, second.correct) == ("b", False)
        status = calibration_status(newcomer.id, session=session)
        assert (status.total, status.done, status.correct, status.accuracy) == (2, 2, 1, 0.5)
        # No threshold: real work follows.
        real = next_comparison(newcomer.id, session=session)
        assert real is not None and real.comparison_id not in items
        assert calibration_feedback(real.comparison_id, newcomer.id, session=session) is None
        # Admins are not calibrated: their queue is the ordinary one.
        admin_first = next_comparison(project.admin.id, session=session)
        assert admin_first.comparison_id not in items
        session.commit()


def test_the_threshold_holds_real_work_back_until_reached(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        project, items = _calibrated_project(session)
        with pytest.raises(DataError, match="between 0 and 1, not 2"):
            set_calibration_threshold(2, session=session, actor="admin")
        set_calibration_threshold(0.75, session=session, actor="admin")
        session.commit()
        assert calibration_threshold(session=session) == 0.75
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "calibration.threshold")).one()
        assert event.details == {"previous": None, "threshold": 0.75}
        newcomer, steady = project.clinicians
        # One right, one skipped (a skip counts as done, not correct): 0.5 < 0.75, held back.
        assignment = next_comparison(newcomer.id, session=session)
        submit_judgment(assignment.token, session=session, annotator_id=newcomer.id,
                        preferred=_screen_choice(assignment, "a"), strength=1)
        session.commit()
        assignment = next_comparison(newcomer.id, session=session)
        assert assignment.comparison_id == items[1]
        skip(assignment.token, session=session, annotator_id=newcomer.id, reason="Other")
        session.commit()
        status = calibration_status(newcomer.id, session=session)
        assert status.complete and status.accuracy == 0.5 and status.blocked
        assert next_comparison(newcomer.id, session=session) is None
        overview = {row["username"]: row for row in calibration_overview(session=session)}
        assert overview["clin0"]["accuracy"] == 0.5 and overview["clin0"]["blocked"]
        assert overview["clin1"]["done"] == 0 and overview["clin1"]["blocked"]  # not started: set first
        assert next_comparison(steady.id, session=session).comparison_id == items[0]
        session.rollback()
        # The admin resets the newcomer: the set again, answered right this time, then real work.
        assert reset_calibration(newcomer.id, session=session, actor="admin") == 1
        session.commit()
        assert session.get(Comparison, items[0]).judgments_count == 0
        for expected in ("a", "b"):
            assignment = next_comparison(newcomer.id, session=session)
            submit_judgment(assignment.token, session=session, annotator_id=newcomer.id,
                            preferred=_screen_choice(assignment, expected), strength=3)
            session.commit()
        status = calibration_status(newcomer.id, session=session)
        assert status.accuracy == 1.0 and not status.blocked
        assert next_comparison(newcomer.id, session=session).comparison_id not in items
        # Lifting the threshold unblocks everyone; removing an item keeps its gold answer.
        set_calibration_threshold(None, session=session, actor="admin")
        assert remove_calibration_item(items[1], session=session, actor="admin")
        session.commit()
        assert session.get(Comparison, items[1]).gold_answer == "b"
        assert [i["comparison_id"] for i in calibration_items(session=session)] == [items[0]]


def test_only_gold_comparisons_join_the_set(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=1, n_clinicians=1)
        with pytest.raises(DataError, match="has no expected answer"):
            add_calibration_item(project.comparisons[0].id, session=session, actor="admin")
        with pytest.raises(DataError, match="comparison 999 does not exist"):
            add_calibration_item(999, session=session, actor="admin")
