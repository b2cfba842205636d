"""My progress: done today / total, remaining in the queue, median seconds per judgment."""

from __future__ import annotations

import streamlit as st

from db.assignment import progress
from labeling_app import state

user = state.require_user()
st.title("My progress")
with state.read_session() as session:
    mine = progress(user.id, session=session)
done, total, remaining = st.columns(3)
done.metric("Done today", mine["done_today"], help="Judgments since midnight UTC")
total.metric("Done in total", mine["total"])
remaining.metric("Remaining in the queue", mine["remaining"])
speed, skipped = st.columns(3)[:2]
speed.metric("Median seconds per judgment",
             "—" if mine["median_seconds"] is None else f"{mine['median_seconds']:.1f}",
             help="Over your most recent judgments")
skipped.metric("Skipped", mine["skipped"])
if mine["remaining"] == 0:
    st.success("Your queue is empty: all done for now.")
