"""Judgments as plain, immutable records: one join, lengths computed in SQL, texts never loaded.

Every analysis below works on lists of :class:`JudgmentRecord`, so it can be tested on simulated
data without a database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func
from sqlalchemy.orm import aliased
from sqlmodel import Session, select

from db.models import Annotator, CandidateModel, Comparison, Judgment, Prompt, Response
from db.rules import CLINICIANS, Sources


@dataclass(frozen=True)
class JudgmentRecord:
    """One judgment with what the analyses need about its comparison.

    ``preferred`` is the comparison's own a/b (never a screen side); ``shown_left`` is the side
    that was on the left of the screen.
    """

    comparison_id: int
    annotator: str
    preferred: str
    strength: int | None = None
    shown_left: str = "a"
    flags_a: tuple[str, ...] = ()
    flags_b: tuple[str, ...] = ()
    ms_spent: int | None = None
    created_at: datetime | None = None
    role: str = "clinician"
    model_a: str = ""
    model_b: str = ""
    len_a: int = 0
    len_b: int = 0
    topic: str | None = None
    gold_answer: str | None = None
    judgment_id: int = 0
    prompt_id: int = 0
    response_a_id: int = 0
    response_b_id: int = 0

    @property
    def chose_left(self) -> bool | None:
        """True/False for an a/b choice (was the chosen reply the left one?), None for tie/both_bad.

        >>> JudgmentRecord(1, "x", "b", shown_left="b").chose_left
        True
        >>> JudgmentRecord(1, "x", "a", shown_left="b").chose_left
        False
        >>> JudgmentRecord(1, "x", "tie").chose_left is None
        True
        """
        if self.preferred not in ("a", "b"):
            return None
        return self.preferred == self.shown_left

    @property
    def signed_strength(self) -> int:
        """The ordinal scale −3…+3: a = +strength, b = −strength, tie/both_bad = 0.

        A missing strength counts as 1 (the weakest preference).

        >>> JudgmentRecord(1, "x", "a", strength=3).signed_strength
        3
        >>> JudgmentRecord(1, "x", "b").signed_strength
        -1
        >>> JudgmentRecord(1, "x", "both_bad", strength=2).signed_strength
        0
        """
        if self.preferred == "a":
            return self.strength or 1
        if self.preferred == "b":
            return -(self.strength or 1)
        return 0


def load_judgments(
    *, session: Session, sources: Sources = CLINICIANS, comparison_ids: Iterable[int] | None = None,
) -> list[JudgmentRecord]:
    """All judgments by annotators of ``sources`` (``db.rules.Sources``: model judges' only when asked
    for), oldest first."""
    resp_a, resp_b = aliased(Response), aliased(Response)
    cand_a, cand_b = aliased(CandidateModel), aliased(CandidateModel)
    query = (
        select(Judgment, Annotator.username, Annotator.role, Comparison.gold_answer, Comparison.prompt_id,
               Comparison.response_a_id, Comparison.response_b_id, Prompt.topic, cand_a.name, cand_b.name,
               func.length(resp_a.text), func.length(resp_b.text))
        .join(Annotator, Annotator.id == Judgment.annotator_id)
        .join(Comparison, Comparison.id == Judgment.comparison_id)
        .join(Prompt, Prompt.id == Comparison.prompt_id)
        .join(resp_a, resp_a.id == Comparison.response_a_id)
        .join(resp_b, resp_b.id == Comparison.response_b_id)
        .join(cand_a, cand_a.id == resp_a.candidate_model_id)
        .join(cand_b, cand_b.id == resp_b.candidate_model_id)
        .where(sources.condition())
        .order_by(Judgment.created_at, Judgment.id)
    )
    if comparison_ids is not None:
        query = query.where(Judgment.comparison_id.in_(list(comparison_ids)))
    records = []
    for (j, username, role, gold, prompt_id, ra, rb, topic, name_a, name_b, len_a, len_b) in session.exec(query):
        records.append(JudgmentRecord(
            comparison_id=j.comparison_id, annotator=username, preferred=j.preferred, strength=j.strength,
            shown_left=j.shown_left, flags_a=tuple(j.flags_a or ()), flags_b=tuple(j.flags_b or ()),
            ms_spent=j.ms_spent, created_at=j.created_at, role=role, model_a=name_a, model_b=name_b,
            len_a=int(len_a or 0), len_b=int(len_b or 0), topic=topic, gold_answer=gold,
            judgment_id=j.id, prompt_id=prompt_id, response_a_id=ra, response_b_id=rb,
        ))
    return records


def by_comparison(records: Iterable[JudgmentRecord]) -> dict[int, list[JudgmentRecord]]:
    """Group records by comparison (insertion order kept).

    >>> groups = by_comparison([JudgmentRecord(2, "x", "a"), JudgmentRecord(1, "y", "b"),
    ...                         JudgmentRecord(2, "y", "tie")])
    >>> {k: [r.annotator for r in v] for k, v in groups.items()}
    {2: ['x', 'y'], 1: ['y']}
    """
    groups: dict[int, list[JudgmentRecord]] = {}
    for record in records:
        groups.setdefault(record.comparison_id, []).append(record)
    return groups
