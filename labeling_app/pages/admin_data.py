"""Admin: what the database holds, by source and by candidate model."""

from __future__ import annotations

import streamlit as st

from db.status import counts_by_candidate, counts_by_source, table_counts
from labeling_app import state

state.require_admin()
st.title("Data")
with state.read_session() as session:
    by_source = counts_by_source(session=session)
    by_candidate = counts_by_candidate(session=session)
    tables = table_counts(session=session)
left, right = st.columns(2)
with left:
    st.subheader("Prompts by source")
    st.dataframe([{"source": k, "prompts": v} for k, v in sorted(by_source["prompts"].items())],
                 hide_index=True, width="stretch")
    st.subheader("Judgments by source")
    st.dataframe([{"source": k, "judgments": v} for k, v in sorted(by_source["judgments"].items())],
                 hide_index=True, width="stretch")
with right:
    st.subheader("Responses by candidate model")
    st.dataframe(by_candidate, hide_index=True, width="stretch")
    st.subheader("Rows per table")
    st.dataframe([{"table": k, "rows": v} for k, v in tables.items()], hide_index=True, width="stretch")
