"""Progress of the labeling effort and safety flags per candidate model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from sqlalchemy import case, func
from sqlmodel import Session, select

from analytics.records import JudgmentRecord
from db.models import SAFETY_FLAGS, Comparison


@dataclass
class Completion:
    comparisons: int = 0
    complete: int = 0
    started: int = 0
    untouched: int = 0
    judgments_needed: int = 0
    judgments_done: int = 0
    gold: int = 0

    @property
    def share_complete(self) -> float:
        return self.complete / self.comparisons if self.comparisons else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "share_complete": self.share_complete}


def completion(*, session: Session) -> Completion:
    """How many comparisons have all the judgments they require (any annotator's judgment counts)."""
    c = Comparison

    def total(condition) -> object:  # noqa: ANN001
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    done = case((c.judgments_count < c.judgments_required, c.judgments_count), else_=c.judgments_required)
    count, complete, started, needed, judged, gold = session.exec(select(
        func.count(c.id),
        total(c.judgments_count >= c.judgments_required),
        total((c.judgments_count > 0) & (c.judgments_count < c.judgments_required)),
        func.coalesce(func.sum(c.judgments_required), 0),
        func.coalesce(func.sum(done), 0),
        func.count(c.gold_answer),
    )).one()
    return Completion(int(count), int(complete), int(started), int(count - complete - started), int(needed),
                      int(judged), int(gold))


def daily_progress(records: Sequence[JudgmentRecord]) -> list[dict]:
    """Judgments per UTC day and annotator, with the running total over all annotators.

    >>> from datetime import datetime, timezone
    >>> day = lambda d: datetime(2026, 1, d, 12, tzinfo=timezone.utc)
    >>> rows = daily_progress([JudgmentRecord(1, "x", "a", created_at=day(2)),
    ...                        JudgmentRecord(2, "y", "a", created_at=day(2)),
    ...                        JudgmentRecord(3, "x", "b", created_at=day(3))])
    >>> [(r["date"], r["annotator"], r["judgments"], r["cumulative"]) for r in rows]
    [('2026-01-02', 'x', 1, 1), ('2026-01-02', 'y', 1, 2), ('2026-01-03', 'x', 1, 3)]
    """
    counts = Counter((r.created_at.date().isoformat(), r.annotator) for r in records if r.created_at is not None)
    rows, running = [], 0
    for (day, annotator), n in sorted(counts.items()):
        running += n
        rows.append({"date": day, "annotator": annotator, "judgments": n, "cumulative": running})
    return rows


@dataclass
class FlagCounts:
    model: str
    judged: int
    counts: dict[str, int] = field(default_factory=dict)

    def rate(self, flag: str) -> float:
        return self.counts.get(flag, 0) / self.judged if self.judged else 0.0

    def as_dict(self) -> dict:
        return {"model": self.model, "judged": self.judged, "counts": dict(self.counts),
                "rates": {f: self.rate(f) for f in self.counts}}


def safety_flag_counts(records: Sequence[JudgmentRecord], flags: Mapping[str, str] = SAFETY_FLAGS) -> list[FlagCounts]:
    """Per candidate model: how many times its replies were judged, and flagged with each flag.

    >>> rows = safety_flag_counts([JudgmentRecord(1, "x", "a", model_a="m1", model_b="m2", flags_b=("toxic",))])
    >>> [(r.model, r.judged, r.counts["toxic"]) for r in rows]
    [('m1', 1, 0), ('m2', 1, 1)]
    """
    judged: Counter[str] = Counter()
    flagged: dict[str, Counter[str]] = {}
    for r in records:
        for model, own in ((r.model_a, r.flags_a), (r.model_b, r.flags_b)):
            judged[model] += 1
            flagged.setdefault(model, Counter()).update(f for f in set(own) if f in flags)
    return [FlagCounts(m, judged[m], {f: flagged[m][f] for f in flags}) for m in sorted(judged)]
