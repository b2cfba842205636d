"""Onboarding by calibration: a lead chooses gold comparisons (``Comparison.gold_answer``) for the
calibration set, each with a note; a new clinician judges the set before any other pair
(``db.assignment.next_comparison`` serves it first) and sees the expected answer and the note after
each; the admin sees each clinician's calibration accuracy and may require a threshold before real work
is served (an ``AppSetting``, audited).

Rules (one place): calibration applies to role ``clinician``; an item is *done* when the clinician
judged or skipped it; *correct* when the judgment's ``preferred`` equals the gold answer; accuracy is
correct / done; a clinician is *blocked* from real work while the set is unfinished (the queue serves
the set first anyway) or, once finished, while the accuracy is below the threshold. No threshold: the
set is served first, nothing is blocked. An admin's reset removes the clinician's calibration judgments
and skips so that they take the set again.

Every function takes ``session=`` and never commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, delete, exists, func, update
from sqlmodel import Session, select

from db.audit import audit
from db.crud import DataError
from db.models import Annotator, AppSetting, CalibrationItem, Comparison, Judgment, Skip, utcnow

THRESHOLD_KEY = "calibration"
CALIBRATED_ROLES = ("clinician",)


@dataclass(frozen=True)
class CalibrationStatus:
    total: int
    done: int
    correct: int
    threshold: float | None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.done if self.done else None

    @property
    def complete(self) -> bool:
        return self.done >= self.total

    @property
    def blocked(self) -> bool:
        """Real work is held back: the threshold is set and not (yet) reached on the finished set.

        >>> CalibrationStatus(4, 4, 2, 0.75).blocked, CalibrationStatus(4, 4, 3, 0.75).blocked
        (True, False)
        >>> CalibrationStatus(4, 2, 2, 0.75).blocked, CalibrationStatus(4, 4, 0, None).blocked
        (True, False)
        >>> CalibrationStatus(0, 0, 0, 0.9).blocked  # no calibration set: nothing to reach
        False
        """
        if self.threshold is None or self.total == 0:
            return False
        return not self.complete or (self.accuracy or 0.0) < self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "done": self.done, "correct": self.correct, "accuracy": self.accuracy,
                "threshold": self.threshold, "complete": self.complete, "blocked": self.blocked}


@dataclass(frozen=True)
class CalibrationFeedback:
    """What a clinician sees after judging a calibration item (comparison's own a/b terms)."""

    comparison_id: int
    expected: str
    given: str | None
    note: str

    @property
    def correct(self) -> bool:
        return self.given == self.expected


def _check_threshold(value: float | None) -> float | None:
    """
    >>> _check_threshold(0.8), _check_threshold(None)
    (0.8, None)
    >>> _check_threshold(1.5)
    Traceback (most recent call last):
    ...
    db.crud.DataError: calibration threshold must lie between 0 and 1, not 1.5
    """
    if value is None:
        return None
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise DataError(f"calibration threshold must lie between 0 and 1, not {value:g}")
    return value


def calibration_threshold(*, session: Session) -> float | None:
    """The accuracy a clinician must reach on the calibration set before real work; None: not required."""
    row = session.get(AppSetting, THRESHOLD_KEY)
    value = (row.value or {}).get("threshold") if row is not None else None
    return float(value) if value is not None else None


def set_calibration_threshold(value: float | None, *, session: Session, actor: str) -> float | None:
    """Set (or, with None, lift) the calibration threshold, with an audit event."""
    value = _check_threshold(value)
    previous = calibration_threshold(session=session)
    row = session.get(AppSetting, THRESHOLD_KEY) or AppSetting(key=THRESHOLD_KEY)
    row.value, row.updated_by, row.updated_at = {"threshold": value}, actor, utcnow()
    session.add(row)
    audit(actor, "calibration.threshold", session=session, target="setting:calibration",
          details={"previous": previous, "threshold": value})
    session.flush()
    return value


def add_calibration_item(comparison_id: int, *, session: Session, actor: Annotator | str,
                         note: str = "") -> CalibrationItem:
    """Put a gold comparison into the calibration set (or update its note), with an audit event. The
    comparison must carry an expected answer (``analytics.gold.set_gold``)."""
    comparison = session.get(Comparison, comparison_id)
    if comparison is None:
        raise DataError(f"comparison {comparison_id} does not exist")
    if comparison.gold_answer is None:
        raise DataError(f"comparison {comparison_id} has no expected answer: set its gold answer first")
    name = actor if isinstance(actor, str) else actor.username
    item = session.exec(select(CalibrationItem).where(CalibrationItem.comparison_id == comparison_id)
                           ).first()
    if item is None:
        position = session.exec(select(func.coalesce(func.max(CalibrationItem.position), 0))).one() + 1
        item = CalibrationItem(comparison_id=comparison_id, position=position,
                               added_by=None if isinstance(actor, str) else actor.id)
    item.note = (note or "").strip()
    session.add(item)
    audit(name, "calibration.add", session=session, target=f"comparison:{comparison_id}",
          details={"answer": comparison.gold_answer, "note": item.note})
    session.flush()
    return item


def remove_calibration_item(comparison_id: int, *, session: Session, actor: str) -> bool:
    """Take a comparison out of the calibration set (its gold answer stays); audited."""
    gone = session.execute(delete(CalibrationItem).where(CalibrationItem.comparison_id == comparison_id)).rowcount
    if gone:
        audit(actor, "calibration.remove", session=session, target=f"comparison:{comparison_id}")
    return bool(gone)


def calibration_items(*, session: Session) -> list[dict[str, Any]]:
    """The calibration set in serving order: comparison id, expected answer, note."""
    rows = session.exec(
        select(CalibrationItem.comparison_id, Comparison.gold_answer, CalibrationItem.note, CalibrationItem.position)
        .join(Comparison, Comparison.id == CalibrationItem.comparison_id)
        .order_by(CalibrationItem.position, CalibrationItem.id)).all()
    return [{"comparison_id": cid, "expected": gold, "note": note, "position": pos} for cid, gold, note, pos in rows]


def _judged(annotator_id: Any) -> Any:
    return exists().where(Judgment.comparison_id == CalibrationItem.comparison_id,
                          Judgment.annotator_id == annotator_id)


def _skipped(annotator_id: Any) -> Any:
    return exists().where(Skip.comparison_id == CalibrationItem.comparison_id, Skip.annotator_id == annotator_id)


def calibration_queue(annotator_id: Any, *, limit: int = 25) -> Any:
    """The calibration items a clinician has neither judged nor skipped, in serving order (a statement
    of comparison ids; empty for annotators outside ``CALIBRATED_ROLES``)."""
    role = select(Annotator.id).where(Annotator.id == annotator_id, Annotator.role.in_(CALIBRATED_ROLES))
    # The items drive the query (EXISTS, not a join): joined, SQLite walked all comparisons instead
    # (7 ms per fetch at 100k comparisons, with no calibration set at all; bench/app_queries.py).
    gold = select(Comparison.id).where(Comparison.id == CalibrationItem.comparison_id,
                                       Comparison.gold_answer.is_not(None))
    return (select(CalibrationItem.comparison_id)
            .where(exists(role), exists(gold), ~_judged(annotator_id), ~_skipped(annotator_id))
            .order_by(CalibrationItem.position, CalibrationItem.id).limit(limit))


CALIBRATION_QUEUE = calibration_queue(bindparam("annotator_id"))


def calibration_status(annotator_id: int, *, session: Session) -> CalibrationStatus:
    """How far one annotator is through the calibration set and how accurate (``CALIBRATED_ROLES`` only:
    for other roles the set is empty)."""
    threshold = calibration_threshold(session=session)
    role = session.exec(select(Annotator.role).where(Annotator.id == annotator_id)).first()
    if role not in CALIBRATED_ROLES:
        return CalibrationStatus(0, 0, 0, threshold)
    live = and_(Comparison.id == CalibrationItem.comparison_id, Comparison.gold_answer.is_not(None))
    total = session.exec(select(func.count(CalibrationItem.id)).join(Comparison, live)).one()
    judged = session.exec(
        select(Judgment.preferred, Comparison.gold_answer)
        .join(CalibrationItem, CalibrationItem.comparison_id == Judgment.comparison_id)
        .join(Comparison, live).where(Judgment.annotator_id == annotator_id)).all()
    skipped = session.exec(
        select(func.count(Skip.id)).join(CalibrationItem, CalibrationItem.comparison_id == Skip.comparison_id)
        .join(Comparison, live).where(Skip.annotator_id == annotator_id)).one()
    correct = sum(1 for given, expected in judged if given == expected)
    return CalibrationStatus(total, len(judged) + skipped, correct, threshold)


def calibration_feedback(comparison_id: int, annotator_id: int, *, session: Session) -> CalibrationFeedback | None:
    """The expected answer and the lead's note for a calibration item this annotator judged; None when
    the comparison is not in the calibration set."""
    row = session.exec(
        select(Comparison.gold_answer, CalibrationItem.note)
        .join(CalibrationItem, CalibrationItem.comparison_id == Comparison.id)
        .where(Comparison.id == comparison_id, Comparison.gold_answer.is_not(None))).first()
    if row is None:
        return None
    given = session.exec(select(Judgment.preferred).where(
        Judgment.comparison_id == comparison_id, Judgment.annotator_id == annotator_id)).first()
    return CalibrationFeedback(comparison_id, row[0], given, row[1] or "")


def calibration_position(comparison_id: int, *, session: Session) -> tuple[int, int] | None:
    """``(number, total)`` of a comparison in the calibration set (1-based, serving order), else None."""
    ids = [item["comparison_id"] for item in calibration_items(session=session) if item["expected"] is not None]
    return (ids.index(comparison_id) + 1, len(ids)) if comparison_id in ids else None


def calibration_overview(*, session: Session) -> list[dict[str, Any]]:
    """Per clinician (active or not): their calibration status, for the admin's view."""
    clinicians = session.exec(select(Annotator.id, Annotator.username, Annotator.display_name, Annotator.is_active)
                                 .where(Annotator.role.in_(CALIBRATED_ROLES)).order_by(Annotator.username)).all()
    rows = []
    for aid, username, display, active in clinicians:
        status = calibration_status(aid, session=session)
        rows.append({"username": username, "display_name": display, "active": bool(active), **status.as_dict()})
    return rows


def reset_calibration(annotator_id: int, *, session: Session, actor: str) -> int:
    """Remove one clinician's judgments and skips of the calibration set (the counts of those
    comparisons go down) so that they take it again; audited. Returns how many judgments went."""
    items = select(CalibrationItem.comparison_id)
    judged = session.exec(select(Judgment.id, Judgment.comparison_id).where(
        Judgment.annotator_id == annotator_id, Judgment.comparison_id.in_(items))).all()
    for judgment_id, comparison_id in judged:
        session.execute(delete(Judgment).where(Judgment.id == judgment_id))
        session.execute(update(Comparison).where(Comparison.id == comparison_id, Comparison.judgments_count > 0)
                        .values(judgments_count=Comparison.judgments_count - 1))
    skips = session.execute(delete(Skip).where(Skip.annotator_id == annotator_id,
                                               Skip.comparison_id.in_(items))).rowcount
    username = session.exec(select(Annotator.username).where(Annotator.id == annotator_id)).first()
    if username is None:
        raise DataError(f"annotator {annotator_id} does not exist")
    audit(actor, "calibration.reset", session=session, target=f"annotator:{username}",
          details={"judgments": len(judged), "skips": int(skips or 0)})
    return len(judged)


__all__ = ["CalibrationStatus", "CalibrationFeedback", "CALIBRATION_QUEUE", "calibration_queue",
           "calibration_threshold", "set_calibration_threshold", "add_calibration_item", "remove_calibration_item",
           "calibration_items", "calibration_status", "calibration_feedback", "calibration_position",
           "calibration_overview", "reset_calibration"]
