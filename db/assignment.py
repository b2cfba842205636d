"""The labeling queue of pairs: which pair an annotator sees next, submit, skip, undo, progress.

Every function takes ``session=`` and never commits: the caller owns one short transaction per call
(``session_scope``). Reservations, locks, capacity checks, skips and release are the shared work
queue's (``db.queue.PAIRS``; ranking tasks use the same queue, ``db.queue.RANKINGS``), which keeps
them safe for many annotators at once on SQLite and PostgreSQL.

Screen order: an assignment's token starts with the side shown on the left (``a-…`` or ``b-…``), so
the reservation needs no extra column and a retried submit maps left/right the same way.

Queue order: highest ``Comparison.priority`` first (an A/B test puts its comparisons at the front),
then fewest judgments, then lowest id; the index ``ix_comparison_queue`` has exactly these keys.
Priority only orders the queue: overlap, reservations, gold mixing and skips apply as before.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, select
from sqlalchemy.orm import aliased
from sqlmodel import Session

from db.audit import audit
from db.calibration import CALIBRATION_QUEUE, calibration_status, calibration_threshold
from db.criteria import DEFAULT_CRITERIA, add_criteria, check_verdicts, criteria_in_force, insert_verdicts
from db.crud import DataError, existing_judgment_id, insert_judgment
from db.guidelines import add_guideline_version, current_guideline
from db.models import (
    SAFETY_FLAGS,
    Annotator,
    Comparison,
    GuidelineVersion,
    Judgment,
    Prompt,
    Ranking,
    Reservation,
    Response,
    Skip,
    utcnow,
)
from db.queue import (
    CANDIDATES_PER_TRY,
    PAIRS,
    AssignmentError,
    ComparisonFull,
    ReservationNotFound,
    aware,
    is_sqlite,
    lock_annotator,
    release,
)
from db.spans import SpanMark, check_spans, flags_with_spans, insert_spans, response_texts

SCREEN_CHOICES = ("left", "right", "tie", "both_bad")
SKIP_REASONS = (
    "Outside my expertise",
    "Text is broken or unreadable",
    "Replies are near-identical",
    "Content I should not judge (conflict of interest, distress)",
    "Other",
)
DEFAULT_GUIDELINES_PATH = Path(__file__).resolve().parent / "guidelines_default.md"
_MEDIAN_WINDOW = 200


@dataclass
class Assignment:
    """One comparison as shown to one annotator (blind: no model names, no other votes)."""

    comparison_id: int
    token: str = field(metadata={"help": "idempotency key of this rendering; pass it to submit/skip"})
    shown_left: str = field(metadata={"help": "'a' or 'b': which of the comparison's responses is on the left"})
    messages: list[dict[str, str]] = field(default_factory=list, metadata={"help": "conversation so far"})
    system_prompt: str | None = None
    left_text: str = ""
    right_text: str = ""
    left_response_id: int = 0
    right_response_id: int = 0
    expires_at: datetime | None = None
    reserved_at: datetime | None = None


def screen_to_ab(choice: str, shown_left: str) -> str:
    """Map a screen choice to the comparison's own a/b.

    >>> screen_to_ab("left", "b"), screen_to_ab("right", "b"), screen_to_ab("tie", "b")
    ('b', 'a', 'tie')
    >>> screen_to_ab("left", "a")
    'a'
    """
    if choice not in SCREEN_CHOICES:
        raise AssignmentError(f"choice must be one of {', '.join(SCREEN_CHOICES)}, not {choice!r}")
    if choice == "left":
        return shown_left
    if choice == "right":
        return "b" if shown_left == "a" else "a"
    return choice


def shown_left_of(token: str) -> str:
    """The side shown on the left, read from an assignment token.

    >>> shown_left_of("b-0f3c")
    'b'
    """
    side = token[:1]
    if side not in ("a", "b") or token[1:2] != "-":
        raise ReservationNotFound("this pair is no longer reserved for you")
    return side


def _check_flags(flags: Any) -> list[str]:
    clean = sorted(set(flags or ()))
    unknown = [f for f in clean if f not in SAFETY_FLAGS]
    if unknown:
        raise AssignmentError(f"unknown safety flag(s): {', '.join(unknown)}")
    return clean


def _queue_query(annotator_id: Any, now: Any, *, gold: bool = False, limit: int = CANDIDATES_PER_TRY,
                 judged_set: bool = False):
    if gold:
        # Gold items check quality: drawn whether or not the comparison still needs judgments.
        return (select(Comparison.id).where(*PAIRS.untouched(annotator_id), Comparison.gold_answer.is_not(None))
                .order_by(func.random()).limit(limit))
    # Highest priority first (A/B tests, active selection), then fewest judgments, lowest id:
    # exactly the key order of ix_comparison_queue, so the scan stops after ``limit`` rows.
    # ``judged_set``: one pass over the annotator's own judgments (index-only with an (annotator_id,
    # comparison_id) index): cost no longer grows with how many pairs they judged at the front.
    return PAIRS.open_query(annotator_id, now, done_set=judged_set, limit=limit)


# Built once with bound parameters (annotator_id, now); the hot path only binds values.
# Keep them prebuilt: bench/load.py (many clinicians clicking at once) and bench/app_queries.py
# measure next_comparison/submit_judgment through them against the p95 < 20 ms target.
_QUEUE = _queue_query(bindparam("annotator_id"), bindparam("now"))
_QUEUE_JUDGED_SET = _queue_query(bindparam("annotator_id"), bindparam("now"), judged_set=True)
_GOLD_QUEUE = _queue_query(bindparam("annotator_id"), bindparam("now"), gold=True)
_RA, _RB = aliased(Response), aliased(Response)
_SHOWN = (
    select(Comparison.response_a_id, Comparison.response_b_id, Prompt.messages, Prompt.system_prompt,
           _RA.text, _RB.text)
    .join(Prompt, Prompt.id == Comparison.prompt_id)
    .join(_RA, _RA.id == Comparison.response_a_id)
    .join(_RB, _RB.id == Comparison.response_b_id)
    .where(Comparison.id == bindparam("comparison_id"))
)
# The judgment row itself is written by db.crud.insert_judgment, the one judgment writer (its
# prebuilt Core statements are on this same hot path, measured by bench/load.py through submit_judgment);
# reservations, locks and capacity checks are db.queue's (PAIRS), prebuilt there.


def _assignment(comparison_id: int, token: str, expires_at: datetime, reserved_at: datetime,
                *, session: Session) -> Assignment:
    a_id, b_id, messages, system_prompt, a_text, b_text = session.connection().execute(
        _SHOWN, {"comparison_id": comparison_id}).one()
    shown_left = shown_left_of(token)
    left, right = ((a_id, a_text), (b_id, b_text)) if shown_left == "a" else ((b_id, b_text), (a_id, a_text))
    return Assignment(
        comparison_id=comparison_id, token=token, shown_left=shown_left, messages=list(messages or []),
        system_prompt=system_prompt, left_text=left[1], right_text=right[1], left_response_id=left[0],
        right_response_id=right[0], expires_at=aware(expires_at), reserved_at=aware(reserved_at),
    )


def next_comparison(
    annotator_id: int,
    *,
    session: Session,
    reservation_minutes: float = 10,
    gold_rate: float = 0.0,
    rng: random.Random | None = None,
    now: datetime | None = None,
) -> Assignment | None:
    """Reserve and return the next pair for this annotator, or ``None`` when nothing is left.

    A live reservation the annotator already holds is returned again (a page refresh shows the same
    pair with the same token). Otherwise the annotator's stale reservations are dropped and the open
    comparison with the highest ``priority`` (then fewest judgments, then lowest id) that they have
    neither judged nor skipped,
    and that others have not filled or reserved to capacity, is reserved for ``reservation_minutes``.
    With probability ``gold_rate`` a gold comparison (known answer) is drawn instead, when one is left.
    """
    rng = rng or random.Random()
    now = now or utcnow()
    lock_annotator(annotator_id, session=session)
    held = PAIRS.held(annotator_id, now, session=session)
    if held is not None:
        return _assignment(*held, session=session)
    # Onboarding (db.calibration): a clinician's open calibration items come before anything else (gold:
    # no capacity check), and real work waits while the threshold is set and not reached.
    taken = PAIRS.take_next(CALIBRATION_QUEUE, annotator_id, now, session=session, prefix=lambda: rng.choice("ab"),
                            minutes=reservation_minutes, capacity=False)
    if taken is not None:
        comparison_id, token, expires_at = taken
        return _assignment(comparison_id, token, expires_at, now, session=session)
    if calibration_threshold(session=session) is not None and calibration_status(
            annotator_id, session=session).blocked:
        return None
    # PostgreSQL: one hashed read of the judged set (index ix_judgment_annotator_comparison).
    # SQLite's row-by-row probes are cheap enough either way (bench/app_queries.py).
    queue = _QUEUE if is_sqlite(session) else _QUEUE_JUDGED_SET
    kinds = [True, False] if gold_rate > 0 and rng.random() < gold_rate else [False]
    for gold in kinds:
        # Gold pairs are drawn whether or not they are full: no capacity check for them.
        taken = PAIRS.take_next(_GOLD_QUEUE if gold else queue, annotator_id, now, session=session,
                                prefix=lambda: rng.choice("ab"), minutes=reservation_minutes, capacity=not gold)
        if taken is not None:
            comparison_id, token, expires_at = taken
            return _assignment(comparison_id, token, expires_at, now, session=session)
    return None


def submit_judgment(
    token: str,
    *,
    session: Session,
    annotator_id: int,
    preferred: str,
    strength: int | None = None,
    flags_left: Any = (),
    flags_right: Any = (),
    rationale: str = "",
    rewrite: str | None = None,
    ms_spent: int | None = None,
    now: datetime | None = None,
    criteria: Mapping[str, str | None] | None = None,
    spans: Mapping[str, Iterable[Any]] | None = None,
) -> tuple[Judgment, bool]:
    """Store the judgment for the assignment ``token`` (screen terms: ``left``/``right``/``tie``/
    ``both_bad``; flags per screen side) and return ``(judgment, created)``.

    ``criteria`` are per-criterion verdicts in screen terms (``left``/``right``/``tie``; blank ones
    None), stored in the comparison's own a/b in the same transaction as the judgment. A criterion
    the guideline version in force marks required must be answered, or nothing is written.

    ``spans``: unsafe spans per screen side (``{"left": [(start, end, flag), …]}``, offsets into the
    reply's stored text; ``db.spans``), checked before anything is written and stored with the
    judgment; a span's kind also flags its reply.

    Idempotent by token: a double click or retry returns the stored judgment with ``created=False``.
    Raises ``ComparisonFull`` when others completed the comparison first (a live reservation is
    honoured; an expired one only while there is still room) and ``ReservationNotFound`` for an
    unknown token. Strength is kept for A/B choices only (1 slightly, 2 clearly, 3 much better).
    """
    now = now or utcnow()
    shown_left = shown_left_of(token)
    preferred_ab = screen_to_ab(preferred, shown_left)
    flags_left, flags_right = _check_flags(flags_left), _check_flags(flags_right)
    verdicts = {name: screen_to_ab(value, shown_left) if value in ("left", "right") else value
                for name, value in (criteria or {}).items()}
    if preferred_ab in ("a", "b"):
        if strength not in (1, 2, 3):
            raise AssignmentError("choose how much better: slightly, clearly or much")
    else:
        strength = None
    # Core statements only (this is the hot path of every click; the ORM unit of work costs more
    # than the SQL).
    reservation, previous = PAIRS.claim(token, session=session, annotator_id=annotator_id)
    if reservation is None:
        # Already submitted (the reservation is consumed in the same transaction): a retry.
        return previous, False
    reservation_id, comparison_id, _owner, expires_at, reserved_at = reservation
    # On PostgreSQL the row lock makes a concurrent retry of the same token wait here; the check
    # below then finds the judgment its twin stored and returns it.
    count, required, gold_answer = PAIRS.lock(comparison_id, session=session)
    # Same token already stored (a concurrent twin), or this annotator judged the pair another way.
    previous_id = existing_judgment_id(comparison_id, annotator_id, session=session, idempotency_key=token)
    if previous_id is not None:
        return session.get(Judgment, previous_id), False
    if gold_answer is None:  # gold pairs are judged whether or not they are full
        PAIRS.check_room(comparison_id, count, required, expires_at, annotator_id, now, session=session)
    # One prebuilt statement: the version in force and its criteria (checked before any write).
    guideline_version, in_force = criteria_in_force(session=session)
    try:
        verdicts = check_verdicts(verdicts, in_force)
    except DataError as exc:
        raise AssignmentError(str(exc)) from None
    if ms_spent is None and reserved_at is not None:
        ms_spent = int((now - aware(reserved_at)).total_seconds() * 1000)
    flags_a, flags_b = (flags_left, flags_right) if shown_left == "a" else (flags_right, flags_left)
    marks: dict[int, list[SpanMark]] = {}
    if spans:  # off the hot path unless spans were marked
        marks, a_id, b_id = _checked_spans(spans, comparison_id, shown_left, session=session)
        flags_a = flags_with_spans(flags_a, marks.get(a_id, ()))
        flags_b = flags_with_spans(flags_b, marks.get(b_id, ()))
    judgment = insert_judgment(
        comparison_id, annotator_id, preferred_ab, session=session, strength=strength, shown_left=shown_left,
        flags_a=flags_a, flags_b=flags_b, rationale=rationale, rewrite=rewrite, ms_spent=ms_spent,
        guideline_version=guideline_version, idempotency_key=token, created_at=now)
    insert_verdicts(judgment.id, verdicts, session=session)
    insert_spans(marks, judgment_id=judgment.id, session=session)
    PAIRS.consume(reservation_id, session=session)
    # Not attached to the session: what was stored, as the caller reads it.
    return judgment, True


def _checked_spans(spans: Mapping[str, Iterable[Any]], comparison_id: int, shown_left: str, *,
                   session: Session) -> tuple[dict[int, list[SpanMark]], int, int]:
    """Spans per screen side, checked against the replies' stored texts, per response id (with the
    comparison's response a and b ids)."""
    a_id, b_id = session.execute(select(Comparison.response_a_id, Comparison.response_b_id)
                                 .where(Comparison.id == comparison_id)).one()
    texts = response_texts((a_id, b_id), session=session)
    left, right = (a_id, b_id) if shown_left == "a" else (b_id, a_id)
    try:
        marks = check_spans(spans, {"left": (left, texts[left]), "right": (right, texts[right])})
    except DataError as exc:
        raise AssignmentError(str(exc)) from None
    return marks, a_id, b_id


def skip(token: str, *, session: Session, annotator_id: int, reason: str, now: datetime | None = None) -> Skip:
    """Hand the pair back with a reason; it is never offered to this annotator again."""
    return PAIRS.skip(token, session=session, annotator_id=annotator_id, reason=reason, now=now)


def undo_last(annotator_id: int, *, session: Session, window_seconds: float = 60,
              reservation_minutes: float = 10, now: datetime | None = None) -> bool:
    """Delete the annotator's latest judgment if it is younger than ``window_seconds``.

    The comparison's counter goes down, an audit event records the undo, and the pair is reserved
    for the annotator again (same screen order) so that it is the next one they see.
    """
    now = now or utcnow()
    latest = session.execute(
        # A ranking's pairs (``ranking_id``) are part of that ranking, not a pair judged on this page.
        select(Judgment).where(Judgment.annotator_id == annotator_id, Judgment.ranking_id.is_(None),
                               Judgment.created_at >= now - timedelta(seconds=window_seconds))
        .order_by(Judgment.created_at.desc(), Judgment.id.desc())
    ).scalars().first()
    if latest is None:
        return False
    comparison = PAIRS.lock_row(latest.comparison_id, session=session)
    # Under the lock, make sure a concurrent undo did not remove it already.
    if session.execute(select(Judgment.id).where(Judgment.id == latest.id)).first() is None:
        return False
    annotator = session.get(Annotator, annotator_id)
    details = {"comparison_id": comparison.id, "judgment_id": latest.id, "preferred": latest.preferred}
    session.execute(delete(Judgment).where(Judgment.id == latest.id))
    comparison.judgments_count = max(0, (comparison.judgments_count or 0) - 1)
    session.add(comparison)
    PAIRS.reserve_again(comparison.id, annotator_id, latest.shown_left, now, reservation_minutes, session=session)
    audit(annotator.username if annotator else str(annotator_id), "judgment.undo", session=session,
          target=f"comparison:{comparison.id}", details=details)
    return True


def _start_of_day(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _median_seconds(values: list[int | None]) -> float | None:
    """Median of milliseconds, in seconds.

    >>> _median_seconds([1000, 3000, None, 2000])
    2.0
    >>> _median_seconds([]) is None
    True
    """
    clean = [v for v in values if v is not None]
    return round(statistics.median(clean) / 1000, 1) if clean else None


def remaining_for(annotator_id: int, *, session: Session) -> int:
    """Open comparisons this annotator could still be given (not judged, not skipped, not full)."""
    return PAIRS.remaining(annotator_id, session=session)


def progress(annotator_id: int, *, session: Session, now: datetime | None = None) -> dict[str, Any]:
    """Done today (UTC) and in total, skipped, remaining in the queue, median seconds per judgment."""
    now = now or utcnow()
    # A ranking counts once, not as the K(K-1)/2 pairs it was expanded into (``ranking_id``).
    mine = and_(Judgment.annotator_id == annotator_id, Judgment.ranking_id.is_(None))
    ranked = Ranking.annotator_id == annotator_id
    day = _start_of_day(now)
    total = session.execute(select(func.count(Judgment.id)).where(mine)).scalar_one() \
        + session.execute(select(func.count(Ranking.id)).where(ranked)).scalar_one()
    today = session.execute(select(func.count(Judgment.id)).where(mine, Judgment.created_at >= day)).scalar_one() \
        + session.execute(select(func.count(Ranking.id)).where(ranked, Ranking.created_at >= day)).scalar_one()
    recent = session.execute(
        select(Judgment.ms_spent).where(mine).order_by(Judgment.id.desc()).limit(_MEDIAN_WINDOW)
    ).scalars().all()
    skipped = session.execute(select(func.count(Skip.id)).where(Skip.annotator_id == annotator_id)).scalar_one()
    return {"done_today": today, "total": total, "skipped": skipped,
            "remaining": remaining_for(annotator_id, session=session),
            "median_seconds": _median_seconds(list(recent))}


def overall_progress(*, session: Session, now: datetime | None = None) -> dict[str, Any]:
    """Per login annotator (clinicians and admins) and overall: the admin's live progress view."""
    now = now or utcnow()
    day = _start_of_day(now)
    rows = session.execute(
        select(Annotator.id, Annotator.username, Annotator.display_name, Annotator.role, Annotator.is_active,
               func.count(Judgment.id), func.sum(case((Judgment.created_at >= day, 1), else_=0)),
               func.max(Judgment.created_at))
        .join(Judgment, Judgment.annotator_id == Annotator.id, isouter=True)
        .where(Annotator.role != "source")
        .group_by(Annotator.id, Annotator.username, Annotator.display_name, Annotator.role, Annotator.is_active)
        .order_by(Annotator.username)
    ).all()
    ranked = (
        select(Judgment.annotator_id, Judgment.ms_spent,
               func.row_number().over(partition_by=Judgment.annotator_id,
                                      order_by=Judgment.id.desc()).label("rank"))
        .join(Annotator, Annotator.id == Judgment.annotator_id).where(Annotator.role != "source")
        .subquery()
    )
    times: dict[int, list[int | None]] = {}
    for annotator_id, ms in session.execute(
        select(ranked.c.annotator_id, ranked.c.ms_spent).where(ranked.c.rank <= _MEDIAN_WINDOW)
    ).all():
        times.setdefault(annotator_id, []).append(ms)
    skips = dict(session.execute(select(Skip.annotator_id, func.count(Skip.id)).group_by(Skip.annotator_id)).all())
    live = dict(session.execute(
        select(Reservation.annotator_id, func.count(Reservation.id))
        .where(Reservation.expires_at > now).group_by(Reservation.annotator_id)
    ).all())
    annotators = [
        {"username": username, "display_name": display, "role": role, "active": bool(active),
         "total": total or 0, "done_today": int(today or 0), "skipped": skips.get(aid, 0),
         "median_seconds": _median_seconds(times.get(aid, [])), "last_judgment_at": last,
         "working_now": bool(live.get(aid))}
        for aid, username, display, role, active, total, today, last in rows
    ]
    c = Comparison
    comparisons, complete, needed, required = session.execute(
        select(func.count(c.id),
               func.coalesce(func.sum(case((c.judgments_count >= c.judgments_required, 1), else_=0)), 0),
               func.coalesce(func.sum(case((c.judgments_count < c.judgments_required,
                                            c.judgments_required - c.judgments_count), else_=0)), 0),
               func.coalesce(func.sum(c.judgments_required), 0))
    ).one()
    clinician_judgments = sum(a["total"] for a in annotators)
    overall = {
        "comparisons": comparisons, "complete": int(complete), "judgments_needed": int(needed),
        "judgments": clinician_judgments, "done_today": sum(a["done_today"] for a in annotators),
        "percent_complete": round(100 * (1 - int(needed) / required), 1) if required else 0.0,
        "annotators_working_now": sum(a["working_now"] for a in annotators),
    }
    return {"annotators": annotators, "overall": overall}


def default_guidelines_text() -> str:
    return DEFAULT_GUIDELINES_PATH.read_text(encoding="utf-8")


def ensure_guidelines(*, session: Session) -> GuidelineVersion:
    """The guideline version in force, creating version 1 from the default rubric (with the default
    clinical criteria, ``db.criteria.DEFAULT_CRITERIA``) when none exists."""
    existing = current_guideline(session=session)
    if existing is not None:
        return existing
    version = add_guideline_version(default_guidelines_text(), session=session)
    add_criteria(version, DEFAULT_CRITERIA, session=session)
    return version


def guideline_history(*, session: Session) -> list[GuidelineVersion]:
    return list(session.execute(select(GuidelineVersion).order_by(GuidelineVersion.version.desc())).scalars())


__all__ = [
    "Assignment", "AssignmentError", "ComparisonFull", "ReservationNotFound", "SCREEN_CHOICES", "SKIP_REASONS",
    "next_comparison", "submit_judgment", "skip", "undo_last", "release", "progress", "overall_progress",
    "remaining_for", "screen_to_ab", "shown_left_of", "ensure_guidelines", "default_guidelines_text",
    "guideline_history",
]
