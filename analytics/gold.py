"""Gold comparisons: an admin marks the expected answer of a comparison; annotators' accuracy on
them is part of annotator quality. (Mixing gold items into queues is the app's assignment logic,
at the rate ``Settings.gold_rate``.)"""

from __future__ import annotations

from sqlmodel import Session, select

from analytics.errors import AnalyticsError
from db.audit import audit
from db.models import PREFERENCES, Comparison


def set_gold(comparison_id: int, answer: str | None, *, session: Session, actor: str) -> Comparison:
    """Set (or, with ``answer=None``, clear) the expected answer of a comparison, with an audit event.

    ``answer`` is one of a/b/tie/both_bad, in the comparison's own a/b terms (not screen sides).
    """
    if answer is not None and answer not in PREFERENCES:
        raise AnalyticsError(f"gold answer must be one of {', '.join(PREFERENCES)}, not {answer!r}")
    comparison = session.get(Comparison, comparison_id)
    if comparison is None:
        raise AnalyticsError(f"comparison {comparison_id} does not exist")
    previous = comparison.gold_answer
    comparison.gold_answer = answer
    session.add(comparison)
    audit(actor, "comparison.set_gold" if answer else "comparison.clear_gold", session=session,
          target=f"comparison:{comparison_id}", details={"previous": previous, "answer": answer})
    session.flush()
    return comparison


def gold_comparisons(*, session: Session) -> list[Comparison]:
    """Comparisons that carry an expected answer, oldest first."""
    return list(session.exec(select(Comparison).where(Comparison.gold_answer.is_not(None)).order_by(Comparison.id)))
