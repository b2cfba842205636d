"""Adjudications in the agreement statistics, counted apart: a lead's final label is not one more
judgment (it never enters alpha or kappa); the report says how many comparisons leads adjudicated,
how often they overturned the clinicians' majority, and how many disputed comparisons still wait."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from sqlmodel import Session

from db.rules import majority_label


@dataclass(frozen=True)
class AdjudicationCounts:
    adjudicated: int = 0
    #: Adjudications whose label differs from the clinicians' strict majority (where there was one).
    overturned: int = 0
    #: Adjudications of comparisons whose clinicians had no strict majority.
    no_majority: int = 0
    #: Disputed comparisons that no lead has adjudicated yet (``db.adjudication.adjudication_queue``).
    waiting: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def adjudication_counts(decided: Iterable[tuple[Iterable[str], str]], *, waiting: int = 0) -> AdjudicationCounts:
    """Counts from (clinicians' preferences, the lead's label) per adjudicated comparison.

    >>> adjudication_counts([(["a", "a", "b"], "b"), (["a", "b"], "a"), (["a", "a", "tie"], "a")], waiting=2)
    AdjudicationCounts(adjudicated=3, overturned=1, no_majority=1, waiting=2)
    """
    adjudicated = overturned = no_majority = 0
    for preferences, label in decided:
        adjudicated += 1
        majority = majority_label(preferences)
        if majority is None:
            no_majority += 1
        elif majority != label:
            overturned += 1
    return AdjudicationCounts(adjudicated, overturned, no_majority, waiting)


def load_adjudication_counts(*, session: Session) -> AdjudicationCounts:
    from db.adjudication import adjudication_queue, adjudications, dispute

    decided = []
    for comparison_id, row in adjudications(session=session).items():
        view = dispute(comparison_id, session=session)
        decided.append(([j.preferred for j in view.judgments] if view else [], row.preferred))
    return adjudication_counts(decided, waiting=len(adjudication_queue(session=session)))
