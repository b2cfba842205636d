"""Per-criterion analytics: agreement (Krippendorff's alpha, Cohen's and Fleiss' kappa with intervals),
a Bradley–Terry leaderboard per criterion, and how often the overall winner is the worse reply on a
criterion (safety first of all).

Verdicts are the comparison's own a/b/tie (``CriterionVerdict``); everything below is pure over
:class:`analytics.records.JudgmentRecord` lists and ``{judgment id: {criterion: verdict}}`` maps, and
reuses the agreement, leaderboard and proportion functions of the overall preference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sqlmodel import Session

from analytics.agreement import AgreementBlock, agreement_block, percent_agreement, value_counts
from analytics.config import AnalyticsConfig
from analytics.leaderboard import Battle, Leaderboard, fit_leaderboard
from analytics.quality import proportion
from analytics.records import JudgmentRecord, load_judgments
from analytics.stats import Estimate, bootstrap_estimate
from db.criteria import current_criteria, verdicts_by_judgment
from db.models import CRITERION_VERDICTS

Verdicts = Mapping[int, Mapping[str, str]]
SCORES = {"a": 1.0, "b": 0.0, "tie": 0.5}
SAFETY = "safety"


def fleiss_from_counts(counts: np.ndarray) -> float:
    """Fleiss' kappa of ``units × values`` counts, for any number of judgments per unit (units with
    fewer than two count for nothing): (P̄ − P_e) / (1 − P_e), P̄ the mean per-unit agreement
    (``percent_agreement``), P_e the sum of squared value shares; nan when undefined.

    Three units judged twice, (a, a), (a, b), (b, b): P̄ = 2/3, P_e = 1/2, kappa = 1/3.

    >>> round(fleiss_from_counts(np.array([[2, 0], [1, 1], [0, 2]])), 4)
    0.3333
    """
    counts = np.asarray(counts, dtype=float)
    counts = counts[counts.sum(axis=1) >= 2]
    if counts.size == 0:
        return math.nan
    p_bar = float(np.mean(percent_agreement(counts)))
    shares = counts.sum(axis=0) / counts.sum()
    p_e = float(shares @ shares)
    return math.nan if p_e >= 1.0 else (p_bar - p_e) / (1.0 - p_e)


@dataclass
class CriterionAgreement:
    """Agreement on one criterion: alpha, percent agreement, pairwise Cohen's kappa (the overall
    preference's ``AgreementBlock``) and Fleiss' kappa."""

    block: AgreementBlock
    fleiss: Estimate

    def as_dict(self) -> dict:
        return {**self.block.as_dict(), "fleiss_kappa": self.fleiss.as_dict()}


def criterion_ratings(records: Sequence[JudgmentRecord], verdicts: Verdicts,
                      criterion: str) -> dict[int, dict[str, str]]:
    """``{comparison: {annotator: verdict}}`` for one criterion (judgments without a verdict left out).

    >>> recs = [JudgmentRecord(1, "x", "a", judgment_id=10), JudgmentRecord(1, "y", "b", judgment_id=11)]
    >>> criterion_ratings(recs, {10: {"safety": "a"}, 11: {"empathy": "b"}}, "safety")
    {1: {'x': 'a'}}
    """
    out: dict[int, dict[str, str]] = {}
    for r in records:
        verdict = verdicts.get(r.judgment_id, {}).get(criterion)
        if verdict is not None:
            out.setdefault(r.comparison_id, {})[r.annotator] = verdict
    return out


def criterion_agreement(records: Sequence[JudgmentRecord], verdicts: Verdicts, criterion: str, *,
                        min_shared_items: int = 10, n_bootstrap: int = 500, confidence: float = 0.95,
                        seed: int = 0) -> CriterionAgreement:
    """Agreement on one criterion over comparisons with two or more verdicts on it (nominal a/b/tie)."""
    ratings = criterion_ratings(records, verdicts, criterion)
    block = agreement_block(ratings, CRITERION_VERDICTS, name=criterion, label=criterion,
                            min_shared_items=min_shared_items, n_bootstrap=n_bootstrap, confidence=confidence,
                            seed=seed)
    units = [u for u, r in ratings.items() if len(r) >= 2]
    counts = value_counts([list(ratings[u].values()) for u in units], CRITERION_VERDICTS)
    fleiss = bootstrap_estimate(
        lambda w: fleiss_from_counts(np.repeat(counts, w.astype(int), axis=0)), len(units), n_items=len(units),
        n_bootstrap=n_bootstrap, confidence=confidence, rng=np.random.default_rng(seed + 7919))
    return CriterionAgreement(block, fleiss)


def criterion_battles(records: Sequence[JudgmentRecord], verdicts: Verdicts, criterion: str) -> list[Battle]:
    """One battle per verdict on ``criterion`` between two different candidate models (a tie is half).

    >>> recs = [JudgmentRecord(1, "x", "a", model_a="m1", model_b="m2", judgment_id=10),
    ...         JudgmentRecord(2, "x", "a", model_a="m1", model_b="m2", judgment_id=11)]
    >>> [b.score for b in criterion_battles(recs, {10: {"safety": "b"}, 11: {"safety": "tie"}}, "safety")]
    [0.0, 0.5]
    """
    out = []
    for r in records:
        verdict = verdicts.get(r.judgment_id, {}).get(criterion)
        if verdict in SCORES and r.model_a != r.model_b:
            out.append(Battle(r.model_a, r.model_b, SCORES[verdict], r.len_a, r.len_b, r.topic, r.comparison_id))
    return out


def winner_worse_on(records: Sequence[JudgmentRecord], verdicts: Verdicts, criterion: str = SAFETY,
                    confidence: float = 0.95) -> Estimate:
    """Share of judgments whose overall preferred reply (a or b) is the worse one on ``criterion``
    (the same judgment's verdict names the other reply), among judgments with an a/b preference and
    a verdict on it; Wilson interval.

    >>> recs = [JudgmentRecord(1, "x", "a", judgment_id=1), JudgmentRecord(2, "x", "b", judgment_id=2),
    ...         JudgmentRecord(3, "x", "a", judgment_id=3), JudgmentRecord(4, "x", "tie", judgment_id=4)]
    >>> v = {1: {"safety": "b"}, 2: {"safety": "b"}, 3: {"safety": "tie"}, 4: {"safety": "a"}}
    >>> e = winner_worse_on(recs, v)
    >>> e.value, e.n_items
    (0.3333333333333333, 3)
    """
    worse = total = 0
    for r in records:
        verdict = verdicts.get(r.judgment_id, {}).get(criterion)
        if r.preferred not in ("a", "b") or verdict is None:
            continue
        total += 1
        worse += verdict == ("b" if r.preferred == "a" else "a")
    return proportion(worse, total, confidence)


@dataclass
class CriteriaReport:
    criteria: list[str] = field(default_factory=list)
    n_judgments: int = 0
    agreement: dict[str, CriterionAgreement] = field(default_factory=dict)
    leaderboards: dict[str, Leaderboard] = field(default_factory=dict)
    winner_worse: dict[str, Estimate] = field(default_factory=dict)
    verdict_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"criteria": self.criteria, "n_judgments_with_verdicts": self.n_judgments,
                "agreement": {c: a.as_dict() for c, a in self.agreement.items()},
                "leaderboards": {c: b.as_dict() for c, b in self.leaderboards.items()},
                "overall_winner_worse_on": {c: e.as_dict() for c, e in self.winner_worse.items()},
                "verdict_counts": self.verdict_counts}


def criteria_report(records: Sequence[JudgmentRecord], verdicts: Verdicts, *, config: AnalyticsConfig | None = None,
                    order: Sequence[str] = ()) -> CriteriaReport:
    """Every per-criterion analysis for the criteria that have verdicts (``order`` first, e.g. the
    guideline in force's order; then the others by name)."""
    c = config or AnalyticsConfig()
    judged = {r.judgment_id for r in records}
    seen = {name for jid, vs in verdicts.items() if jid in judged for name in vs}
    names = [n for n in order if n in seen] + sorted(seen - set(order))
    report = CriteriaReport(criteria=names, n_judgments=sum(1 for jid in judged if verdicts.get(jid)))
    for offset, name in enumerate(names):
        report.agreement[name] = criterion_agreement(records, verdicts, name, min_shared_items=c.min_shared_items,
                                                     n_bootstrap=c.n_bootstrap, confidence=c.confidence,
                                                     seed=c.seed + offset)
        report.leaderboards[name] = fit_leaderboard(
            criterion_battles(records, verdicts, name), n_bootstrap=c.n_bootstrap, confidence=c.confidence,
            seed=c.seed, scale=c.bt_scale, anchor_rating=c.bt_anchor_rating, anchor_model=c.bt_anchor_model,
            ridge=c.bt_ridge)
        report.winner_worse[name] = winner_worse_on(records, verdicts, name, c.confidence)
        counts = dict.fromkeys(CRITERION_VERDICTS, 0)
        for r in records:
            verdict = verdicts.get(r.judgment_id, {}).get(name)
            if verdict in counts:
                counts[verdict] += 1
        report.verdict_counts[name] = counts
    return report


def build_criteria_report(*, session: Session, config: AnalyticsConfig | None = None) -> CriteriaReport:
    """Load the judgments of ``config.judges`` and their verdicts, and compute the report."""
    config = config or AnalyticsConfig()
    records = load_judgments(session=session, sources=config.sources)
    verdicts = verdicts_by_judgment(session=session)
    order = [c.name for c in current_criteria(session=session)]
    return criteria_report(records, verdicts, config=config, order=order)


__all__ = ["CriteriaReport", "CriterionAgreement", "build_criteria_report", "criteria_report",
           "criterion_agreement", "criterion_battles", "criterion_ratings", "fleiss_from_counts",
           "winner_worse_on"]
