"""Reward-model scores per comparison (``ComparisonScore``) and the queue's priorities
(``Comparison.priority``, A/B-test comparisons at the front). Functions take ``session=`` and never
commit."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import bindparam, update
from sqlalchemy.orm import aliased
from sqlmodel import Session, select

from db.models import AbTest, Comparison, ComparisonScore, Response, utcnow


def save_comparison_scores(scores: Mapping[int, tuple[float, float, int]], *, run_id: int,
                           session: Session) -> dict[str, int]:
    """Store ``{comparison_id: (p_a, uncertainty, n_members)}`` from reward-model run ``run_id`` as
    ComparisonScore rows: new rows inserted, a comparison the run already scored updated in place."""
    if not scores:
        return {"written": 0, "updated": 0}
    existing = {row.comparison_id: row for row in session.exec(select(ComparisonScore).where(
        ComparisonScore.reward_model_run_id == run_id, ComparisonScore.comparison_id.in_(list(scores))))}
    written = updated = 0
    for comparison_id, (p_a, uncertainty, n_members) in scores.items():
        row = existing.get(comparison_id)
        if row is None:
            row = ComparisonScore(comparison_id=comparison_id, reward_model_run_id=run_id)
            written += 1
        else:
            row.created_at = utcnow()
            updated += 1
        row.p_a, row.uncertainty, row.n_members = float(p_a), float(uncertainty), int(n_members)
        session.add(row)
    session.flush()
    return {"written": written, "updated": updated}


def comparison_scores(run_id: int, *, session: Session) -> dict[int, tuple[float, float, int]]:
    """The stored ``{comparison_id: (p_a, uncertainty, n_members)}`` of one reward-model run."""
    rows = session.exec(select(ComparisonScore.comparison_id, ComparisonScore.p_a, ComparisonScore.uncertainty,
                               ComparisonScore.n_members)
                        .where(ComparisonScore.reward_model_run_id == run_id)).all()
    return {cid: (p, u, n) for cid, p, u, n in rows}


_SET_PRIORITY = (update(Comparison.__table__).where(Comparison.__table__.c.id == bindparam("cid"))
                 .values(priority=bindparam("new_priority")))


def abtest_comparison_ids(*, session: Session) -> set[int]:
    """Comparisons that belong to an A/B test: on one of its prompts, between a reply of its new
    candidate and one of its base. Strategies that reorder the queue leave these at the front."""
    ids: set[int] = set()
    resp_a, resp_b = aliased(Response), aliased(Response)
    for test in session.exec(select(AbTest)).all():
        if not test.prompt_ids:
            continue
        pair = {test.new_candidate_id, test.base_candidate_id}
        rows = session.exec(
            select(Comparison.id, resp_a.candidate_model_id, resp_b.candidate_model_id)
            .join(resp_a, resp_a.id == Comparison.response_a_id).join(resp_b, resp_b.id == Comparison.response_b_id)
            .where(Comparison.prompt_id.in_(list(test.prompt_ids)))).all()
        ids.update(cid for cid, a, b in rows if {a, b} == pair)
    return ids


def set_priorities(priorities: Mapping[int, float], *, session: Session) -> int:
    """Set ``Comparison.priority`` for the given comparison ids in one executemany (the queue serves
    the highest first); returns how many were set. Comparisons already loaded in ``session`` keep
    their old value until refreshed."""
    if not priorities:
        return 0
    session.flush()
    session.execute(_SET_PRIORITY, [{"cid": int(cid), "new_priority": float(value)}
                                    for cid, value in priorities.items()])
    return len(priorities)
