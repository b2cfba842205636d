"""Altair charts for the admin dashboard (the page only places them). Text from the database is
passed as data, which Vega draws as plain text, never as HTML."""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from analytics.summary import AnalyticsSummary


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def progress_chart(summary: AnalyticsSummary) -> alt.Chart | None:
    """Judgments per day stacked by annotator, with the cumulative total as a line."""
    if not summary.progress:
        return None
    frame = pd.DataFrame(summary.progress)
    frame["date"] = pd.to_datetime(frame["date"])
    bars = alt.Chart(frame).mark_bar().encode(
        x=alt.X("yearmonthdate(date):T", title="day (UTC)"), y=alt.Y("sum(judgments):Q", title="judgments"),
        color=alt.Color("annotator:N"), tooltip=["date:T", "annotator:N", "judgments:Q"])
    totals = frame.groupby("date", as_index=False)["cumulative"].max()
    line = alt.Chart(totals).mark_line(point=True, color="#d08c2e").encode(
        x="yearmonthdate(date):T", y=alt.Y("cumulative:Q", title="cumulative"))
    return alt.layer(bars, line).resolve_scale(y="independent").properties(height=260)


def agreement_chart(summary: AnalyticsSummary) -> alt.Chart | None:
    """Krippendorff's alpha of the preference and each safety flag, with 95% intervals."""
    a = summary.agreement
    rows = []
    pref = a.preference
    for name, est in (("preference (nominal)", pref.alpha), ("preference (ordinal)", pref.alpha_ordinal)):
        if est is not None and math.isfinite(est.value):
            rows.append({"measure": name, "alpha": est.value, "low": _finite(est.low), "high": _finite(est.high),
                         "n": est.n_items})
    for block in a.flags:
        if math.isfinite(block.alpha.value):
            rows.append({"measure": f"flag: {block.name}", "alpha": block.alpha.value, "low": _finite(block.alpha.low),
                         "high": _finite(block.alpha.high), "n": block.alpha.n_items})
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    base = alt.Chart(frame).encode(y=alt.Y("measure:N", sort=None, title=None))
    rules = base.mark_rule().encode(x=alt.X("low:Q", title="Krippendorff's alpha (95% CI)"), x2="high:Q")
    points = base.mark_point(filled=True, size=70).encode(x="alpha:Q", tooltip=["measure", "alpha", "low", "high", "n"])
    guide = alt.Chart(pd.DataFrame({"x": [0.667, 0.8]})).mark_rule(strokeDash=[4, 4], color="gray").encode(x="x:Q")
    return alt.layer(rules, points, guide).properties(height=40 + 28 * len(rows))


def annotators_chart(summary: AnalyticsSummary) -> alt.Chart | None:
    """Share of left-side choices per annotator (red when the binomial test flags it)."""
    rows = [{"annotator": q.annotator, "left share": _finite(q.position.left_share), "choices": q.position.choices,
             "p": _finite(q.position.p_value), "biased": "yes" if q.position.biased else "no"}
            for q in summary.quality if q.position.choices]
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    bars = alt.Chart(frame).mark_bar().encode(
        y=alt.Y("annotator:N", sort=None, title=None),
        x=alt.X("left share:Q", scale=alt.Scale(domain=[0, 1]), title="share of left-side choices"),
        color=alt.Color("biased:N", scale=alt.Scale(domain=["no", "yes"], range=["#3b6ea8", "#b05a7a"])),
        tooltip=["annotator", "left share", "choices", "p", "biased"])
    half = alt.Chart(pd.DataFrame({"x": [0.5]})).mark_rule(strokeDash=[4, 4], color="gray").encode(x="x:Q")
    return alt.layer(bars, half).properties(height=40 + 26 * len(rows))


def leaderboard_chart(summary: AnalyticsSummary) -> alt.Chart | None:
    """Ratings with 95% bootstrap intervals, plain and length-controlled."""
    lb = summary.leaderboard
    rows = []
    for variant, board in (("Bradley–Terry", lb.overall), ("length-controlled", lb.length_controlled)):
        for r in board.ratings:
            rows.append({"model": r.model, "variant": variant, "rating": r.rating, "low": r.ci_low, "high": r.ci_high,
                         "rank range": f"{r.rank_best}–{r.rank_worst}", "battles": r.battles})
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    order = [r.model for r in lb.overall.ratings]
    base = alt.Chart(frame).encode(y=alt.Y("model:N", sort=order, title=None), yOffset="variant:N",
                                   color=alt.Color("variant:N", title=None))
    rules = base.mark_rule(strokeWidth=2).encode(x=alt.X("low:Q", scale=alt.Scale(zero=False), title="rating"),
                                                 x2="high:Q")
    points = base.mark_point(filled=True, size=70).encode(
        x="rating:Q", tooltip=["model", "variant", "rating", "low", "high", "rank range", "battles"])
    return alt.layer(rules, points).properties(height=60 + 50 * len(order))


def win_matrix_chart(summary: AnalyticsSummary) -> alt.Chart | None:
    """Row model's share of points against the column model."""
    m = summary.leaderboard.matrix
    rows = [{"row": m.models[i], "column": m.models[j], "win rate": v, "battles": m.battles[i][j]}
            for i, row in enumerate(m.win_rate) for j, v in enumerate(row) if v is not None]
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    base = alt.Chart(frame).encode(x=alt.X("column:N", title=None), y=alt.Y("row:N", title=None))
    rects = base.mark_rect().encode(
        color=alt.Color("win rate:Q", scale=alt.Scale(scheme="redblue", domain=[0, 1])),
        tooltip=["row", "column", "win rate", "battles"])
    text = base.mark_text().encode(text=alt.Text("win rate:Q", format=".2f"))
    return alt.layer(rects, text).properties(height=60 + 40 * len(m.models))


def safety_chart(summary: AnalyticsSummary) -> alt.Chart | None:
    """Share of judged replies with each safety flag, per candidate model."""
    rows = [{"model": f.model, "flag": flag, "share flagged": f.rate(flag), "count": n, "judged": f.judged}
            for f in summary.flags for flag, n in f.counts.items()]
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("flag:N", title=None), xOffset="model:N", y=alt.Y("share flagged:Q"), color="model:N",
        tooltip=["model", "flag", "count", "judged", "share flagged"]).properties(height=260)


ALTAIR_CHARTS = {"progress": progress_chart, "agreement": agreement_chart, "annotators": annotators_chart,
                 "leaderboard": leaderboard_chart, "win_matrix": win_matrix_chart, "safety_flags": safety_chart}
