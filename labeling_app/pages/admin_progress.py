"""Admin: live progress per annotator and overall (refreshes itself)."""

from __future__ import annotations

import streamlit as st

from db.assignment import overall_progress
from labeling_app import state

state.require_admin()
st.title("Live progress")


@st.fragment(run_every=15)
def live() -> None:
    with state.read_session() as session:
        report = overall_progress(session=session)
    overall = report["overall"]
    cols = st.columns(5)
    cols[0].metric("Comparisons", overall["comparisons"])
    cols[1].metric("Complete", overall["complete"])
    cols[2].metric("Judgments still needed", overall["judgments_needed"])
    cols[3].metric("Judgments today", overall["done_today"])
    cols[4].metric("Working now", overall["annotators_working_now"])
    st.progress(min(1.0, overall["percent_complete"] / 100), text=f"{overall['percent_complete']}% complete")
    st.dataframe(report["annotators"], hide_index=True, width="stretch", column_config={
        "median_seconds": st.column_config.NumberColumn("median s / judgment", format="%.1f"),
    })
    st.caption("Refreshes every 15 seconds.")


live()
