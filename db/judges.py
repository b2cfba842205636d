"""Model judges' verdicts in the database: their source annotators (``judge:<name>``), verdicts
stored as judgments that do not count, failed attempts, and the reversible stand-in marker.
Queries are ``session.exec(select(...))``; the stand-in's counter moves are single Core UPDATEs.

A judge's verdict is written through ``db.crud.insert_judgment`` (the one judgment writer) with
``counts=False``: it never fills a clinician's place. Only :func:`set_stands_in` moves
``Comparison.judgments_count``, one step up or down, together with ``JudgeVerdict.stands_in``, so
that ``judgments_count`` = clinicians' (and imported) judgments + verdicts that stand in, always.
Every function takes ``session=`` and never commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, exists, func, update
from sqlmodel import Session, select

from db.crud import existing_judgment_id, get_or_create_source_annotator, insert_judgment
from db.models import Annotator, Comparison, JudgeFailure, JudgeVerdict, Judgment, Reservation, utcnow
from db.rules import JUDGE_PREFIX

MAX_ERROR = 2000
MAX_ANSWER = 4000


def judge_username(name: str) -> str:
    """The annotator name of a judge.

    >>> judge_username("gpt-4o-mini"), judge_username("judge:x")
    ('judge:gpt-4o-mini', 'judge:x')
    """
    return name if name.startswith(JUDGE_PREFIX) else JUDGE_PREFIX + name


def judge_annotator(name: str, *, session: Session) -> Annotator:
    """The non-login source annotator that stands for one judge (created on first use)."""
    return get_or_create_source_annotator(judge_username(name), session=session)


def find_judge(name: str, *, session: Session) -> Annotator | None:
    return session.exec(select(Annotator).where(Annotator.username == judge_username(name))).first()


def judged_comparison_ids(annotator_id: int, *, session: Session) -> set[int]:
    """Comparisons this judge has a stored verdict on (skipped by the next run)."""
    return set(session.exec(select(Judgment.comparison_id).where(Judgment.annotator_id == annotator_id)))


def failure_attempts(annotator_id: int, *, session: Session) -> dict[int, int]:
    """Comparison id → failed attempts so far, for this judge."""
    return dict(session.exec(select(JudgeFailure.comparison_id, JudgeFailure.attempts)
                             .where(JudgeFailure.annotator_id == annotator_id)).all())


def record_verdict(
    comparison_id: int, annotator_id: int, preferred: str, *, session: Session, confidence: float,
    safety_concern: bool | None, shown_left: str = "a", flags_a: Sequence[str] = (), flags_b: Sequence[str] = (),
    rationale: str = "", guideline_version: int | None = None, details: dict[str, Any] | None = None,
    ms_spent: int | None = None,
) -> JudgeVerdict | None:
    """Store one well-formed verdict as a judgment that does not count (plus its JudgeVerdict row)
    and clear the comparison's failure; ``None`` when this judge already judged it (no duplicate)."""
    if existing_judgment_id(comparison_id, annotator_id, session=session) is not None:
        return None
    judgment = insert_judgment(
        comparison_id, annotator_id, preferred, session=session, shown_left=shown_left, flags_a=flags_a,
        flags_b=flags_b, rationale=rationale, guideline_version=guideline_version, ms_spent=ms_spent, counts=False)
    verdict = JudgeVerdict(judgment_id=judgment.id, comparison_id=comparison_id, annotator_id=annotator_id,
                           confidence=float(confidence), safety_concern=safety_concern, details=dict(details or {}))
    session.add(verdict)
    session.execute(delete(JudgeFailure).where(JudgeFailure.comparison_id == comparison_id,
                                               JudgeFailure.annotator_id == annotator_id))
    session.flush()
    return verdict


def record_failure(comparison_id: int, annotator_id: int, error: str, *, session: Session,
                   answer: str = "") -> JudgeFailure:
    """Record (or update, counting the attempt) a malformed, refused or failed answer; never a judgment."""
    row = session.exec(select(JudgeFailure).where(JudgeFailure.comparison_id == comparison_id,
                                                  JudgeFailure.annotator_id == annotator_id)).first()
    if row is None:
        row = JudgeFailure(comparison_id=comparison_id, annotator_id=annotator_id, attempts=0)
    row.error, row.answer = error[:MAX_ERROR], (answer or "")[:MAX_ANSWER]
    row.attempts, row.updated_at = (row.attempts or 0) + 1, utcnow()
    session.add(row)
    session.flush()
    return row


@dataclass(frozen=True)
class VerdictRow:
    """One stored verdict as the gate sees it."""

    verdict_id: int
    comparison_id: int
    preferred: str
    confidence: float
    safety_concern: bool | None
    stands_in: bool
    flags_a: tuple[str, ...] = ()
    flags_b: tuple[str, ...] = ()


def judge_verdicts(annotator_id: int, *, session: Session) -> list[VerdictRow]:
    rows = session.exec(
        select(JudgeVerdict.id, JudgeVerdict.comparison_id, Judgment.preferred, JudgeVerdict.confidence,
               JudgeVerdict.safety_concern, JudgeVerdict.stands_in, Judgment.flags_a, Judgment.flags_b)
        .join(Judgment, Judgment.id == JudgeVerdict.judgment_id)
        .where(JudgeVerdict.annotator_id == annotator_id).order_by(JudgeVerdict.comparison_id)
    ).all()
    return [VerdictRow(v, c, p, float(conf), s, bool(st), tuple(fa or ()), tuple(fb or ()))
            for v, c, p, conf, s, st, fa, fb in rows]


def flagged_comparison_ids(comparison_ids: Iterable[int], *, session: Session) -> set[int]:
    """Those of ``comparison_ids`` where anyone (clinician, dataset or judge) flagged either reply."""
    wanted = sorted(set(comparison_ids))
    flagged: set[int] = set()
    for start in range(0, len(wanted), 500):  # bounded IN lists
        chunk = wanted[start:start + 500]
        for cid, flags_a, flags_b in session.exec(
                select(Judgment.comparison_id, Judgment.flags_a, Judgment.flags_b)
                .where(Judgment.comparison_id.in_(chunk))):
            if flags_a or flags_b:
                flagged.add(cid)
    return flagged


def _live_reservations(now: datetime) -> Any:
    return (select(func.count(Reservation.id))
            .where(Reservation.comparison_id == Comparison.id, Reservation.expires_at > now).scalar_subquery())


def set_stands_in(verdict_id: int, stands_in: bool, *, session: Session, now: datetime | None = None) -> bool:
    """Let one verdict count toward its comparison's ``judgments_count`` (``stands_in=True``) or stop
    it counting (``False``); True when something changed.

    Standing in takes a place only while the comparison still has one that no clinician holds
    (judgments plus live reservations below ``judgments_required``) and no other judge stands in
    there: a judge replaces at most one clinician per comparison and never pushes anyone out of a pair
    on their screen. Both directions are single UPDATEs, safe beside the app's concurrent writes.
    """
    now = now or utcnow()
    verdict = session.get(JudgeVerdict, verdict_id)
    if verdict is None or bool(verdict.stands_in) == stands_in:
        return False
    comparison = Comparison.__table__.c
    if stands_in:
        other = exists().where(JudgeVerdict.comparison_id == comparison.id, JudgeVerdict.stands_in.is_(True))
        changed = session.execute(
            update(Comparison.__table__)
            .where(comparison.id == bindparam("cid"), ~other,
                   comparison.judgments_count + _live_reservations(now) < comparison.judgments_required)
            .values(judgments_count=comparison.judgments_count + 1), {"cid": verdict.comparison_id}).rowcount
    else:
        changed = session.execute(
            update(Comparison.__table__).where(and_(comparison.id == bindparam("cid"), comparison.judgments_count > 0))
            .values(judgments_count=comparison.judgments_count - 1), {"cid": verdict.comparison_id}).rowcount
    if not changed:
        return False
    verdict.stands_in, verdict.gated_at = stands_in, now
    session.add(verdict)
    loaded = session.get(Comparison, verdict.comparison_id)
    if loaded is not None:
        session.refresh(loaded, ["judgments_count"])
    session.flush()
    return True


def judge_counts(annotator_id: int, *, session: Session) -> dict[str, int]:
    """Verdicts, verdicts standing in, and failures of one judge."""
    verdicts, standing = session.exec(
        select(func.count(JudgeVerdict.id),
               func.coalesce(func.sum(case((JudgeVerdict.stands_in.is_(True), 1), else_=0)), 0))
        .where(JudgeVerdict.annotator_id == annotator_id)).one()
    failures = session.exec(select(func.count(JudgeFailure.id))
                            .where(JudgeFailure.annotator_id == annotator_id)).one()
    return {"verdicts": int(verdicts), "stands_in": int(standing or 0), "failures": int(failures)}


__all__ = [
    "judge_username", "judge_annotator", "find_judge", "judged_comparison_ids", "failure_attempts",
    "record_verdict", "record_failure", "VerdictRow", "judge_verdicts", "flagged_comparison_ids", "set_stands_in",
    "judge_counts",
]
