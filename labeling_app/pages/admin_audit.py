"""Admin: the audit log (who, what, when, target), filtered, and as a CSV download (db.audit).

Everything is shown as data (``st.dataframe``), never as HTML or Markdown: actors and targets can be
names that someone typed or that an identity provider sent."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import streamlit as st

from db.audit import AuditFilter, audit_choices, audit_csv, audit_events
from labeling_app import state

state.require_admin()
st.title("Audit log")
with state.read_session() as session:
    actors, actions = audit_choices(session=session)

today = datetime.now(UTC).date()
who_col, what_col, when_col, target_col = st.columns(4)
who = who_col.multiselect("Who", actors, key="audit_who", placeholder="anyone")
what = what_col.multiselect("Action", actions, key="audit_action", placeholder="any action")
days = when_col.date_input("Date range (UTC)", value=(today - timedelta(days=30), today), key="audit_dates")
target = target_col.text_input("Target contains", key="audit_target")
since, until = (tuple(days) + (None, None))[:2] if isinstance(days, (tuple, list)) else (days, days)

with state.read_session() as session:
    rows = audit_events(AuditFilter(actors=who, actions=what, since=since, until=until or since, target=target),
                        session=session)
st.text(f"{len(rows)} events" + (" (the newest 10000)" if len(rows) >= AuditFilter.limit else ""))
st.dataframe(
    [{**row, "details": json.dumps(row["details"], sort_keys=True, default=str) if row["details"] else ""}
     for row in rows],
    hide_index=True, width="stretch",
    column_config={"created_at": st.column_config.DatetimeColumn("When (UTC)", format="YYYY-MM-DD HH:mm:ss"),
                   "actor": "Who", "action": "Action", "target": "Target", "details": "Details"})
st.download_button("Download CSV", data=audit_csv(rows), file_name=f"therapref-audit-{today}.csv",
                   mime="text/csv", key="audit_csv", icon=":material/download:")
