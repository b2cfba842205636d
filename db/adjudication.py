"""Adjudication: the queue of disputed comparisons for leads, what a lead sees, and the final label.

A comparison is *disputed* when its clinicians disagree (``db.rules.in_disagreement``: opposite
preferences, or a safety flag on a reply by one clinician and not by another). Disputed comparisons
without an adjudication form the leads' queue, oldest first. A lead (or an admin) records the final
preference, strength and flags with a note; the row replaces the clinicians' votes in training
(``reward.pairs``, aggregation ``adjudicated``) and exports, and every adjudication is audited.
Functions take ``session=`` and never commit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from db.audit import audit
from db.errors import TheraPrefError
from db.models import PREFERENCES, SAFETY_FLAGS, Adjudication, Annotator, Comparison, Judgment, Prompt, Response
from db.rules import CLINICIAN_ROLES, in_disagreement, majority_label

#: Roles that may open the adjudication queue and record final labels.
ADJUDICATOR_ROLES = ("lead", "admin")
MAX_NOTE_CHARS = 4000


class AdjudicationError(TheraPrefError, ValueError):
    """A clear, user-facing problem with an adjudication (nothing is written)."""


@dataclass(frozen=True)
class JudgmentView:
    """One clinician's judgment as a lead sees it (names included: leads and admins only)."""

    annotator: str
    display_name: str
    role: str
    preferred: str
    strength: int | None
    flags_a: tuple[str, ...]
    flags_b: tuple[str, ...]
    rationale: str
    rewrite: str | None
    created_at: datetime


@dataclass(frozen=True)
class Dispute:
    """A disputed comparison: the conversation, both replies as the comparison's own A and B, and
    every clinician judgment on it."""

    comparison_id: int
    messages: list[dict[str, Any]]
    system_prompt: str | None
    text_a: str
    text_b: str
    judgments: tuple[JudgmentView, ...]

    @property
    def majority(self) -> str | None:
        """The clinicians' strict plurality (``db.rules.majority_label``), or None."""
        return majority_label(j.preferred for j in self.judgments)


def _clinician_judgments(comparison_ids: Sequence[int] | None, *, session: Session) -> Any:
    query = (select(Judgment, Annotator).join(Annotator, Annotator.id == Judgment.annotator_id)
             .where(Annotator.role.in_(CLINICIAN_ROLES)).order_by(Judgment.id))
    if comparison_ids is not None:
        query = query.where(Judgment.comparison_id.in_(list(comparison_ids)))
    return session.exec(query).all()


def adjudication_queue(*, session: Session, limit: int | None = None) -> list[int]:
    """Ids of the disputed comparisons that no one has adjudicated yet, oldest comparison first."""
    adjudicated = select(Adjudication.comparison_id)
    # Only comparisons with two clinician judgments or more can be in dispute (pre-filtered in SQL).
    candidates = session.exec(
        select(Judgment.comparison_id).join(Annotator, Annotator.id == Judgment.annotator_id)
        .where(Annotator.role.in_(CLINICIAN_ROLES), Judgment.comparison_id.notin_(adjudicated))
        .group_by(Judgment.comparison_id).having(func.count() >= 2)
    ).all()
    if not candidates:
        return []
    rows: dict[int, list[tuple[str, str, list[str], list[str]]]] = defaultdict(list)
    for judgment, annotator in _clinician_judgments(candidates, session=session):
        rows[judgment.comparison_id].append((annotator.role, judgment.preferred, judgment.flags_a or [],
                                             judgment.flags_b or []))
    disputed = [cid for cid, judgments in rows.items() if in_disagreement(judgments)]
    order = session.exec(select(Comparison.id).where(Comparison.id.in_(disputed))
                         .order_by(Comparison.created_at, Comparison.id)).all()
    return list(order[:limit] if limit is not None else order)


def is_disputed(comparison_id: int, *, session: Session) -> bool:
    judgments = _clinician_judgments([comparison_id], session=session)
    return in_disagreement((a.role, j.preferred, j.flags_a or [], j.flags_b or []) for j, a in judgments)


def dispute(comparison_id: int, *, session: Session) -> Dispute | None:
    """What the adjudication page shows for one comparison (None when it does not exist)."""
    comparison = session.get(Comparison, comparison_id)
    if comparison is None:
        return None
    prompt = session.get(Prompt, comparison.prompt_id)
    text_a = session.get(Response, comparison.response_a_id).text
    text_b = session.get(Response, comparison.response_b_id).text
    views = tuple(
        JudgmentView(annotator=a.username, display_name=a.display_name or a.username, role=a.role,
                     preferred=j.preferred, strength=j.strength, flags_a=tuple(j.flags_a or ()),
                     flags_b=tuple(j.flags_b or ()), rationale=j.rationale or "", rewrite=j.rewrite,
                     created_at=j.created_at)
        for j, a in _clinician_judgments([comparison_id], session=session))
    return Dispute(comparison_id=comparison_id, messages=list(prompt.messages or []),
                   system_prompt=prompt.system_prompt, text_a=text_a, text_b=text_b, judgments=views)


def _check(preferred: str, strength: int | None, flags_a: Sequence[str], flags_b: Sequence[str], note: str) -> None:
    if preferred not in PREFERENCES:
        raise AdjudicationError(f"preferred must be one of {', '.join(PREFERENCES)}, not {preferred!r}")
    if strength is not None and (isinstance(strength, bool) or strength not in (1, 2, 3)):
        raise AdjudicationError(f"strength must be 1, 2 or 3, not {strength!r}")
    if strength is not None and preferred not in ("a", "b"):
        raise AdjudicationError("a strength applies only when A or B is preferred")
    unknown = [f for f in (*flags_a, *flags_b) if f not in SAFETY_FLAGS]
    if unknown:
        raise AdjudicationError(f"unknown safety flag {unknown[0]!r} (known: {', '.join(SAFETY_FLAGS)})")
    if len(note) > MAX_NOTE_CHARS:
        raise AdjudicationError(f"the note is longer than {MAX_NOTE_CHARS} characters")


def record_adjudication(comparison_id: int, *, session: Session, lead_id: int, preferred: str,
                        strength: int | None = None, flags_a: Sequence[str] = (), flags_b: Sequence[str] = (),
                        note: str = "") -> Adjudication:
    """Record a lead's final label for a disputed comparison, and its audit event, in the caller's
    transaction. Raises ``AdjudicationError`` (nothing written) for a non-lead, an unknown, undisputed
    or already adjudicated comparison, or bad values."""
    note = (note or "").strip()
    _check(preferred, strength, list(flags_a), list(flags_b), note)
    lead = session.get(Annotator, lead_id)
    if lead is None or lead.role not in ADJUDICATOR_ROLES or not lead.is_active:
        raise AdjudicationError("only an active lead or admin may adjudicate")
    if session.get(Comparison, comparison_id) is None:
        raise AdjudicationError(f"no comparison {comparison_id}")
    if session.exec(select(Adjudication.id).where(Adjudication.comparison_id == comparison_id)).first():
        raise AdjudicationError(f"comparison {comparison_id} is already adjudicated")
    view = dispute(comparison_id, session=session)
    if not is_disputed(comparison_id, session=session):
        raise AdjudicationError(f"comparison {comparison_id} is not in dispute")
    row = Adjudication(comparison_id=comparison_id, annotator_id=lead.id, preferred=preferred, strength=strength,
                       flags_a=sorted(set(flags_a)), flags_b=sorted(set(flags_b)), note=note)
    session.add(row)
    try:
        session.flush()
    except IntegrityError:  # another lead adjudicated it a moment earlier: theirs stands (the caller rolls back)
        raise AdjudicationError(f"comparison {comparison_id} is already adjudicated") from None
    majority = view.majority if view else None
    audit(lead.username, "adjudication.record", session=session, target=f"comparison:{comparison_id}",
          details={"preferred": preferred, "strength": strength, "flags_a": row.flags_a, "flags_b": row.flags_b,
                   "majority": majority, "overturned": majority is not None and majority != preferred,
                   "judgments": len(view.judgments) if view else 0})
    return row


def adjudications(*, session: Session, comparison_ids: Sequence[int] | None = None) -> dict[int, Adjudication]:
    """Adjudications by comparison id (all, or those of ``comparison_ids``)."""
    query = select(Adjudication)
    if comparison_ids is not None:
        query = query.where(Adjudication.comparison_id.in_(list(comparison_ids)))
    return {row.comparison_id: row for row in session.exec(query).all()}


__all__ = ["ADJUDICATOR_ROLES", "AdjudicationError", "Dispute", "JudgmentView", "adjudication_queue", "adjudications",
           "dispute", "is_disputed", "record_adjudication"]
