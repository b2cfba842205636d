"""Admin: analytics dashboard (progress, agreement, annotator quality, leaderboard, safety flags,
gold comparisons). Numbers come from ``analytics``; this page only lays them out. Untrusted text
(usernames, model names) appears only in dataframes and charts, which draw it as plain text."""

from __future__ import annotations

import streamlit as st

from analytics import charts, tables
from analytics.config import JUDGES, AnalyticsConfig
from analytics.gold import gold_comparisons, set_gold
from analytics.summary import AnalyticsSummary, build_summary
from db.models import PREFERENCES
from db.status import database_fingerprint
from labeling_app import state

user = state.require_admin()
st.title("Analytics")


@st.cache_data(ttl=300, show_spinner="Computing agreement, quality and ratings…", max_entries=8)
def _summary(database_url: str, fingerprint: str, gold: tuple, judges: str, n_bootstrap: int) -> AnalyticsSummary:
    # database_url, fingerprint and gold are cache keys: new judgments or gold answers recompute.
    with state.read_session() as session:
        return build_summary(session=session, config=AnalyticsConfig(judges=judges, n_bootstrap=n_bootstrap))


@st.cache_data(ttl=300, show_spinner="Computing per-criterion agreement and ratings…", max_entries=8)
def _criteria(database_url: str, fingerprint: str, judges: str, n_bootstrap: int) -> dict:
    # database_url and fingerprint are cache keys: new verdicts recompute.
    from analytics.criteria import build_criteria_report

    with state.read_session() as session:
        report = build_criteria_report(session=session, config=AnalyticsConfig(judges=judges, n_bootstrap=n_bootstrap))
    return {"criteria": report.criteria, "n": report.n_judgments, "boards": report.leaderboards,
            "rows": [{"criterion": name, "verdicts": sum(report.verdict_counts[name].values()),
                      "alpha": a.block.alpha.value, "alpha 95% CI": a.block.alpha.fmt(),
                      "Fleiss kappa": a.fleiss.value, "mean Cohen kappa": a.block.mean_kappa,
                      "overall winner worse on it": report.winner_worse[name].value,
                      "share 95% CI": report.winner_worse[name].fmt()}
                     for name, a in report.agreement.items()]}


left, right = st.columns(2)
judges = left.selectbox("Judgments by", JUDGES, index=0, help=AnalyticsConfig.__dataclass_fields__["judges"]
                        .metadata["help"])
n_bootstrap = right.select_slider("Bootstrap resamples", options=[100, 200, 500, 1000], value=200)
with state.read_session() as session:
    fingerprint = database_fingerprint(session=session)
    gold = tuple((g.id, g.gold_answer) for g in gold_comparisons(session=session))
summary = _summary(state.settings().database_url, fingerprint, gold, judges, n_bootstrap)
for note in summary.notes:
    st.info(note)


def _chart(chart, empty: str) -> None:  # noqa: ANN001
    if chart is None:
        st.caption(empty)
    else:
        st.altair_chart(chart, width="stretch")


progress_tab, agreement_tab, annotators_tab, leaderboard_tab, safety_tab, gold_tab = st.tabs(
    ["Progress", "Agreement", "Annotators", "Leaderboard", "Safety flags", "Gold"])

with progress_tab:
    c = summary.completion
    cols = st.columns(4)
    cols[0].metric("Comparisons", c.comparisons)
    cols[1].metric("Complete", c.complete, help="All required judgments given")
    cols[2].metric("Judgments analysed", summary.n_judgments)
    cols[3].metric("Annotators", summary.n_annotators)
    st.progress(min(1.0, c.share_complete), text=f"{c.share_complete:.0%} of comparisons complete")
    st.subheader("Judgments over time")
    _chart(charts.progress_chart(summary), "No judgments yet.")

with agreement_tab:
    st.subheader("Preferred reply")
    st.caption(f"{summary.agreement.n_comparisons} comparisons judged by two or more annotators. "
               "Alpha ≥ 0.8 is reliable; 0.667 is the floor for tentative conclusions.")
    st.dataframe(tables.agreement_rows(summary), hide_index=True, width="stretch")
    _chart(charts.agreement_chart(summary), "Alpha is not defined yet (too little overlap or no variation).")
    st.subheader("Pairs of annotators (Cohen's kappa)")
    st.dataframe(tables.kappa_rows(summary), hide_index=True, width="stretch")
    st.subheader("Safety flags")
    st.dataframe(tables.flag_agreement_rows(summary), hide_index=True, width="stretch")
    # Per-criterion judgments (analytics/criteria.py): agreement per criterion, and how often the
    # overall winner is the worse reply on it; their Bradley–Terry boards are on the Leaderboard tab.
    crit = _criteria(state.settings().database_url, fingerprint, judges, n_bootstrap)
    st.subheader("Criteria")
    if not crit["criteria"]:
        st.caption("No per-criterion verdicts yet (criteria are set per guideline version on the Guidelines page).")
    else:
        st.caption(f"{crit['n']} judgments carry per-criterion verdicts. \"Overall winner worse on it\": share of "
                   "judgments whose preferred reply lost on that criterion (Wilson 95% CI).")
        st.dataframe(crit["rows"], hide_index=True, width="stretch")

with annotators_tab:
    st.subheader("Annotator quality")
    st.dataframe(tables.annotator_rows(summary), hide_index=True, width="stretch")
    st.subheader("Position bias")
    _chart(charts.annotators_chart(summary), "No a/b choices yet.")

with leaderboard_tab:
    board = summary.leaderboard
    if not board.overall.ratings:
        st.caption(f"No leaderboard: {board.overall.note}.")
    else:
        _chart(charts.leaderboard_chart(summary), "")
        st.subheader("Bradley–Terry")
        st.dataframe(tables.leaderboard_rows(board.overall), hide_index=True, width="stretch")
        st.subheader("Length-controlled")
        st.dataframe(tables.leaderboard_rows(board.length_controlled), hide_index=True, width="stretch")
        coef = board.length_controlled.length_coef
        if coef is not None:
            st.caption(f"Length effect: {coef.fmt()} logits per SD of the normalised length difference.")
        st.subheader("Win rates")
        _chart(charts.win_matrix_chart(summary), "")
        for topic, topic_board in board.topics.items():
            st.subheader("Topic")
            st.text(topic)
            st.dataframe(tables.leaderboard_rows(topic_board), hide_index=True, width="stretch")
    for name, criterion_board in crit["boards"].items():
        if criterion_board.ratings:
            st.subheader(f"Bradley–Terry on {name}")
            st.dataframe(tables.leaderboard_rows(criterion_board), hide_index=True, width="stretch")

with safety_tab:
    st.subheader("Safety flags per candidate model")
    _chart(charts.safety_chart(summary), "No judgments yet.")
    st.dataframe(tables.safety_rows(summary), hide_index=True, width="stretch")

with gold_tab:
    st.subheader("Gold comparisons")
    st.caption("An expected answer (in the comparison's own a/b terms) for accuracy checks; the queue mixes gold "
               f"items in at rate {state.settings().gold_rate:g} (setting gold_rate).")
    with st.form("gold"):
        comparison_id = st.number_input("Comparison id", min_value=1, step=1)
        answer = st.selectbox("Expected answer", [*PREFERENCES, "clear"])
        if st.form_submit_button("Save"):
            try:
                with state.write_session() as session:
                    set_gold(int(comparison_id), None if answer == "clear" else answer, session=session,
                             actor=user.username)
                st.success(f"Comparison {int(comparison_id)}: gold answer {answer}.")
            except ValueError as exc:  # AnalyticsError: unknown comparison
                st.error(str(exc))
    with state.read_session() as session:
        rows = [{"comparison": g.id, "gold answer": g.gold_answer, "judgments": g.judgments_count}
                for g in gold_comparisons(session=session)]
    st.dataframe(rows, hide_index=True, width="stretch")
    accuracy = [{"annotator": q.annotator, "gold items": q.gold_accuracy.n_items, "accuracy": q.gold_accuracy.value}
                for q in summary.quality if q.gold_accuracy.n_items]
    if accuracy:
        st.dataframe(accuracy, hide_index=True, width="stretch")


@st.cache_data(ttl=300, show_spinner="Computing A/B test results…", max_entries=8)
def _abtests(database_url: str, fingerprint: str, judges: str, n_bootstrap: int) -> list[dict]:
    # database_url and fingerprint are cache keys: new judgments recompute.
    from analytics.head_to_head import abtest_tables

    with state.read_session() as session:
        found = abtest_tables(session=session, sources=judges, n_bootstrap=n_bootstrap)
    return [{"caption": t.caption, "note": t.result.note,
             "rows": [{"measure": m, "value": v} for m, v in t.result.rows()]} for t in found]


# A/B tests (analytics/head_to_head.py): one head-to-head table per test, below the tabs.
st.header("Head-to-head (A/B tests)")
abtest_results = _abtests(state.settings().database_url, fingerprint, judges, n_bootstrap)
if not abtest_results:
    st.caption("No A/B tests yet: `therapref abtest NEW --against BASE` puts one at the front of the queues.")
for result in abtest_results:
    st.text(result["caption"])  # candidate names are untrusted: plain text, never Markdown or HTML
    if result["note"]:
        st.text(f"Note: {result['note']}.")
    st.dataframe(result["rows"], hide_index=True, width="stretch")
