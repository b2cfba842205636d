"""The labeling queue on SQLite and on a real PostgreSQL server: assignment, reservations,
idempotent submit, skip, undo, progress, and many annotators at once."""

from __future__ import annotations

import dataclasses
import random
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlmodel import Session

from db.assignment import (
    AssignmentError,
    ComparisonFull,
    ReservationNotFound,
    ensure_guidelines,
    next_comparison,
    overall_progress,
    progress,
    skip,
    submit_judgment,
    undo_last,
)
from db.engine import session_scope
from db.models import Annotator, AuditEvent, Comparison, Judgment, Reservation, Skip, utcnow
from tests.factories import build_project


def _project(engine, **kwargs):
    with Session(engine, expire_on_commit=False) as session:
        return build_project(session, **kwargs)


def _next(engine, annotator_id, **kwargs):
    with session_scope(engine) as session:
        return next_comparison(annotator_id, session=session, **kwargs)


def _submit(engine, token, annotator_id, preferred="left", strength=2, **kwargs):
    with session_scope(engine) as session:
        return submit_judgment(token, session=session, annotator_id=annotator_id, preferred=preferred,
                               strength=strength, **kwargs)


def test_queue_is_blind_fill_first_reserved_and_never_repeats(any_engine):
    project = _project(any_engine, n_prompts=4, n_clinicians=3, judgments_required=2)
    first, second, third = (c.id for c in project.clinicians)
    with session_scope(any_engine) as session:  # comparison 2 already has one of its two judgments
        session.execute(update(Comparison).where(Comparison.id == project.comparisons[1].id)
                        .values(judgments_count=1))
    a = _next(any_engine, first, rng=random.Random(0))
    assert a.comparison_id == project.comparisons[0].id  # fewest judgments first, then lowest id
    names = {f.name for f in dataclasses.fields(a)}
    assert not any("model" in n or "candidate" in n or "vote" in n for n in names)  # blind
    assert "warm-model" not in repr(a)
    assert "terse" not in repr(a)
    assert _next(any_engine, first).token == a.token  # refresh-safe: same pair, same token
    b = _next(any_engine, second)
    assert b.comparison_id == a.comparison_id  # two places: both may work on it at once
    c = _next(any_engine, third)
    assert c.comparison_id not in (a.comparison_id, project.comparisons[1].id)  # full or nearly full
    judgment, created = _submit(any_engine, a.token, first)
    assert created
    assert judgment.comparison_id == a.comparison_id
    seen = {a.comparison_id}
    while (nxt := _next(any_engine, first)) is not None:
        assert nxt.comparison_id not in seen
        seen.add(nxt.comparison_id)
        _submit(any_engine, nxt.token, first, preferred="tie")
    assert len(seen) == 4  # every comparison once, never twice


def test_screen_order_maps_to_a_b_and_every_field_is_stored(any_engine):
    project = _project(any_engine, n_prompts=1, n_clinicians=1)
    annotator = project.clinicians[0].id
    a = None
    for seed in range(50):  # find an assignment that shows b on the left
        with session_scope(any_engine) as session:
            session.execute(Reservation.__table__.delete())
        a = _next(any_engine, annotator, rng=random.Random(seed))
        if a.shown_left == "b":
            break
    assert a.shown_left == "b"
    assert a.token.startswith("b-")
    judgment, _ = _submit(any_engine, a.token, annotator, preferred="left", strength=3,
                          flags_left=["toxic"], flags_right=["misses_risk", "dismissive"],
                          rationale="  warmer  ", rewrite="A better reply.", ms_spent=4321)
    assert (judgment.preferred, judgment.strength, judgment.shown_left) == ("b", 3, "b")
    assert judgment.flags_b == ["toxic"]
    assert judgment.flags_a == ["dismissive", "misses_risk"]
    assert (judgment.rationale, judgment.rewrite, judgment.ms_spent) == ("warmer", "A better reply.", 4321)
    assert judgment.guideline_version == 1
    assert judgment.idempotency_key == a.token
    assert a.left_response_id == project.comparisons[0].response_b_id


def test_submit_is_idempotent_and_validates(any_engine):
    project = _project(any_engine, n_prompts=2, n_clinicians=2)
    me, other = (c.id for c in project.clinicians)
    a = _next(any_engine, me)
    with pytest.raises(AssignmentError, match="how much better"):
        _submit(any_engine, a.token, me, strength=None)
    with pytest.raises(AssignmentError, match="unknown safety flag"):
        _submit(any_engine, a.token, me, flags_left=["nope"])
    first, created = _submit(any_engine, a.token, me)
    again, created_again = _submit(any_engine, a.token, me, preferred="right")  # double click / retry
    assert created
    assert not created_again
    assert again.id == first.id
    assert again.preferred == first.preferred
    with pytest.raises(ReservationNotFound):
        _submit(any_engine, a.token, other)  # somebody else's token
    with pytest.raises(ReservationNotFound):
        _submit(any_engine, "a-forged", me)
    with session_scope(any_engine) as session:
        assert session.execute(select(func.count(Judgment.id))).scalar_one() == 1
        assert session.get(Comparison, a.comparison_id).judgments_count == 1
        assert session.execute(select(func.count(Reservation.id))).scalar_one() == 0


def test_expired_reservation_loses_to_the_other_clinician(any_engine):
    project = _project(any_engine, n_prompts=1, n_clinicians=2)
    slow, fast = (c.id for c in project.clinicians)
    a = _next(any_engine, slow)
    assert _next(any_engine, fast) is None  # the only place is reserved
    with session_scope(any_engine) as session:  # the slow clinician's reservation runs out
        session.execute(update(Reservation).values(expires_at=utcnow() - timedelta(seconds=1)))
    b = _next(any_engine, fast)
    assert b.comparison_id == a.comparison_id
    _submit(any_engine, b.token, fast)
    with pytest.raises(ComparisonFull, match="another clinician"):
        _submit(any_engine, a.token, slow)
    assert _next(any_engine, slow) is None
    with session_scope(any_engine) as session:
        assert session.execute(select(func.count(Judgment.id))).scalar_one() == 1


def test_expired_reservation_still_counts_while_there_is_room(any_engine):
    project = _project(any_engine, n_prompts=1, n_clinicians=1)
    me = project.clinicians[0].id
    a = _next(any_engine, me)
    with session_scope(any_engine) as session:
        session.execute(update(Reservation).values(expires_at=utcnow() - timedelta(seconds=1)))
    judgment, created = _submit(any_engine, a.token, me, preferred="both_bad", strength=3)
    assert created
    assert judgment.strength is None  # strength only for A/B


def test_skip_and_undo(any_engine):
    project = _project(any_engine, n_prompts=3, n_clinicians=1)
    me = project.clinicians[0].id
    a = _next(any_engine, me)
    with session_scope(any_engine) as session:
        skip(a.token, session=session, annotator_id=me, reason="Outside my expertise")
    with session_scope(any_engine) as session:  # a retried skip changes nothing
        skip(a.token, session=session, annotator_id=me, reason="Outside my expertise")
    b = _next(any_engine, me)
    assert b.comparison_id != a.comparison_id
    _submit(any_engine, b.token, me, preferred="right", strength=1)
    with session_scope(any_engine) as session:
        assert undo_last(me, session=session, window_seconds=60)
    with session_scope(any_engine) as session:
        assert session.execute(select(func.count(Judgment.id))).scalar_one() == 0
        assert session.get(Comparison, b.comparison_id).judgments_count == 0
        event = session.execute(select(AuditEvent).where(AuditEvent.action == "judgment.undo")).scalars().one()
        assert event.actor == "clin0"
        assert event.details["comparison_id"] == b.comparison_id
        assert session.execute(select(Skip.reason)).scalars().all() == ["Outside my expertise"]
        assert not undo_last(me, session=session)  # nothing left to undo
    again = _next(any_engine, me)
    assert again.comparison_id == b.comparison_id
    assert again.shown_left == b.shown_left  # the pair is back
    _submit(any_engine, again.token, me)
    with session_scope(any_engine) as session:
        later = utcnow() + timedelta(seconds=120)
        assert not undo_last(me, session=session, window_seconds=60, now=later)  # window passed
        mine = progress(me, session=session)
        assert mine["total"] == 1
        assert mine["done_today"] == 1
        assert mine["skipped"] == 1
        assert mine["remaining"] == 1
        assert mine["median_seconds"] is not None
        report = overall_progress(session=session)
    row = next(r for r in report["annotators"] if r["username"] == "clin0")
    assert row["total"] == 1
    assert row["skipped"] == 1
    assert report["overall"]["comparisons"] == 3
    assert report["overall"]["complete"] == 1
    assert report["overall"]["judgments_needed"] == 2


def test_gold_items_are_drawn_even_when_full(any_engine):
    project = _project(any_engine, n_prompts=2, n_clinicians=2, judgments_required=1)
    me, other = (c.id for c in project.clinicians)
    gold = project.comparisons[1]
    with session_scope(any_engine) as session:
        session.execute(update(Comparison).where(Comparison.id == gold.id).values(gold_answer="a",
                                                                                  judgments_count=1))
    a = _next(any_engine, me, gold_rate=1.0, rng=random.Random(1))
    assert a.comparison_id == gold.id
    judgment, created = _submit(any_engine, a.token, me)
    assert created
    assert _next(any_engine, other, gold_rate=0.0).comparison_id == project.comparisons[0].id


def test_default_guidelines_are_version_one(any_engine):
    with session_scope(any_engine) as session:
        version = ensure_guidelines(session=session)
        assert version.version == 1
        assert "Misses risk or crisis cues" in version.text
        assert ensure_guidelines(session=session).id == version.id


def test_many_annotators_at_once_never_overfill(any_engine):
    """8 threads × 2 places per comparison: every comparison ends with exactly 2 judgments."""
    project = _project(any_engine, n_prompts=6, n_clinicians=0, judgments_required=2)
    with session_scope(any_engine) as session:
        people = [Annotator(username=f"c{i}") for i in range(8)]  # no login needed: skip argon2
        session.add_all(people)
        session.flush()
        ids = [a.id for a in people]
    errors: list[BaseException] = []

    def work(annotator_id: int) -> None:
        rng = random.Random(annotator_id)
        try:
            while (a := _next(any_engine, annotator_id, rng=rng)) is not None:
                try:
                    _submit(any_engine, a.token, annotator_id, preferred=rng.choice(["left", "right"]))
                    _submit(any_engine, a.token, annotator_id)  # double submit
                except ComparisonFull:
                    pass
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:3]
    with session_scope(any_engine) as session:
        per = dict(session.execute(select(Judgment.comparison_id, func.count(Judgment.id))
                                   .group_by(Judgment.comparison_id)).all())
        counters = dict(session.execute(select(Comparison.id, Comparison.judgments_count)).all())
    assert per == {c.id: 2 for c in project.comparisons}
    assert counters == per


def test_queue_walks_every_pair_in_order_once(any_engine):
    """The queue (on PostgreSQL a read of the annotator's judged set through the index
    ix_judgment_annotator_comparison) offers each open pair once, in queue order."""
    project = _project(any_engine, n_prompts=3, n_clinicians=1)
    me = project.clinicians[0].id
    seen = []
    while (a := _next(any_engine, me)) is not None:
        assert a.comparison_id not in seen
        seen.append(a.comparison_id)
        _submit(any_engine, a.token, me, preferred="tie")
    assert seen == [c.id for c in project.comparisons]
