"""Rows (lists of dicts with plain values) for the dashboard's tables."""

from __future__ import annotations

import math

from analytics.leaderboard import Leaderboard
from analytics.stats import Estimate
from analytics.summary import AnalyticsSummary


def _v(x: float | None, digits: int = 3) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def _ci(e: Estimate | None) -> str:
    if e is None or not (math.isfinite(e.low) and math.isfinite(e.high)):
        return ""
    return f"{e.low:.2f} – {e.high:.2f}"


def agreement_rows(summary: AnalyticsSummary) -> list[dict]:
    """
    >>> from analytics.agreement import AgreementReport, AgreementBlock
    >>> from types import SimpleNamespace
    >>> block = AgreementBlock("preference", "", Estimate(0.5, 0.4, 0.6, 9), Estimate(0.8, 0.7, 0.9, 9))
    >>> agreement_rows(SimpleNamespace(agreement=AgreementReport(9, 3, block, [])))[0]
    {'measure': "Krippendorff's alpha (nominal)", 'value': 0.5, '95% CI': '0.40 – 0.60', 'comparisons': 9}
    """
    p = summary.agreement.preference
    rows = []
    for name, e in (("Krippendorff's alpha (nominal)", p.alpha), ("Krippendorff's alpha (ordinal −3…+3)",
                                                                   p.alpha_ordinal), ("Percent agreement", p.percent)):
        if e is not None:
            rows.append({"measure": name, "value": _v(e.value), "95% CI": _ci(e), "comparisons": e.n_items})
    rows.append({"measure": "Mean pairwise Cohen's kappa", "value": _v(p.mean_kappa), "95% CI": "",
                 "comparisons": p.alpha.n_items})
    return rows


def kappa_rows(summary: AnalyticsSummary) -> list[dict]:
    return [{"annotator 1": k.annotator_1, "annotator 2": k.annotator_2, "kappa": _v(k.kappa.value),
             "95% CI": _ci(k.kappa), "shared comparisons": k.kappa.n_items}
            for k in summary.agreement.preference.kappas]


def flag_agreement_rows(summary: AnalyticsSummary) -> list[dict]:
    return [{"flag": f.name, "prevalence": _v(f.prevalence), "alpha": _v(f.alpha.value), "alpha 95% CI": _ci(f.alpha),
             "percent agreement": _v(f.percent.value), "mean kappa": _v(f.mean_kappa), "responses": f.alpha.n_items}
            for f in summary.agreement.flags]


def annotator_rows(summary: AnalyticsSummary) -> list[dict]:
    return [{"annotator": q.annotator, "role": q.role, "judgments": q.n_judgments,
             "agrees with majority": _v(q.majority_agreement.value), "majority items": q.majority_agreement.n_items,
             "left share": _v(q.position.left_share), "position p": _v(q.position.p_value, 4),
             "position bias": q.position.biased, "tie rate": _v(q.tie_rate), "both bad rate": _v(q.both_bad_rate),
             "median s": _v(q.median_seconds, 1), "very fast": q.fast, "gold accuracy": _v(q.gold_accuracy.value),
             "gold items": q.gold_accuracy.n_items} for q in summary.quality]


def leaderboard_rows(board: Leaderboard) -> list[dict]:
    return [{"rank": r.rank, "rank range": f"{r.rank_best}–{r.rank_worst}", "model": r.model,
             "rating": round(r.rating), "95% CI": f"{r.ci_low:.0f} – {r.ci_high:.0f}", "battles": r.battles,
             "wins": r.wins, "ties": r.ties, "losses": r.losses, "win rate": _v(r.win_rate)} for r in board.ratings]


def safety_rows(summary: AnalyticsSummary) -> list[dict]:
    return [{"model": f.model, "replies judged": f.judged, **f.counts} for f in summary.flags]
