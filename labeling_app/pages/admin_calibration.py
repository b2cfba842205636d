"""Onboarding by calibration. Leads (and admins) choose the calibration set: gold comparisons with
the lead's note. Admins also see each clinician's calibration accuracy, with a reset to take the set
again, and set the accuracy required before real work (persisted and audited). Rules: ``db.calibration``."""

from __future__ import annotations

import streamlit as st
from sqlmodel import select

from analytics.errors import AnalyticsError
from analytics.gold import set_gold
from db.calibration import (
    add_calibration_item,
    calibration_items,
    calibration_overview,
    calibration_threshold,
    remove_calibration_item,
    reset_calibration,
    set_calibration_threshold,
)
from db.crud import DataError
from db.models import PREFERENCES, Annotator
from labeling_app import state

ANSWERS = {"a": "Response a is better", "b": "Response b is better", "tie": "Tie", "both_bad": "Both bad"}


def _save_threshold(actor: str) -> None:
    required = st.session_state.get("calibration_required")
    percent = st.session_state.get("calibration_percent") or 0
    with state.write_session() as session:
        value = set_calibration_threshold(percent / 100 if required else None, session=session, actor=actor)
    state.flash("success", f"Real work now needs {value:.0%} on the calibration set." if value is not None
                else "No threshold: the calibration set is served first, real work follows whatever the score.")


def _add_item(actor: state.User) -> None:
    comparison_id = int(st.session_state.get("calibration_comparison") or 0)
    try:
        with state.write_session() as session:
            set_gold(comparison_id, st.session_state.get("calibration_answer"), session=session, actor=actor.username)
            add_calibration_item(comparison_id, session=session, actor=actor.username,
                                 note=st.session_state.get("calibration_note") or "")
    except (AnalyticsError, DataError) as exc:
        state.flash("warning", str(exc).capitalize() + ".")
        return
    state.flash("success", f"Comparison {comparison_id} is in the calibration set.")


def _remove_item(actor: str, comparison_id: int) -> None:
    with state.write_session() as session:
        remove_calibration_item(comparison_id, session=session, actor=actor)
    state.flash("info", f"Comparison {comparison_id} left the calibration set (its gold answer stays).")


def _reset(actor: str) -> None:
    username = st.session_state.get("calibration_reset_user")
    with state.write_session() as session:
        annotator = session.exec(select(Annotator).where(Annotator.username == username)).first()
        if annotator is None:
            return
        removed = reset_calibration(annotator.id, session=session, actor=actor)
    state.flash("info", f"{username} takes the calibration set again ({removed} judgments removed).")


def _admin_sections(admin: state.User, threshold: float | None, overview: list[dict]) -> None:
    """The threshold and each clinician's calibration accuracy: for admins only."""
    st.subheader("Threshold before real work")
    with st.form("calibration_threshold_form", border=True):
        st.checkbox("Require a calibration accuracy before real work is served", value=threshold is not None,
                    key="calibration_required")
        st.number_input("Least accuracy on the calibration set (%)", min_value=0, max_value=100, step=5,
                        value=int(round((threshold if threshold is not None else 0.8) * 100)),
                        key="calibration_percent")
        st.form_submit_button("Save threshold", on_click=_save_threshold, args=(admin.username,), type="primary")

    st.subheader("Clinicians")
    if overview:
        st.dataframe([{"clinician": row["username"], "done": f"{row['done']} of {row['total']}",
                       "correct": row["correct"],
                       "accuracy": f"{row['accuracy']:.0%}" if row["accuracy"] is not None else "–",
                       "status": "waiting for calibration" if row["blocked"] else
                       ("calibrated" if row["complete"] and row["total"] else "not calibrated yet" if row["total"]
                        else "no calibration set")}
                      for row in overview], hide_index=True, width="stretch", key="calibration_clinicians")
        with st.form("calibration_reset_form", border=False):
            left, right = st.columns([3, 1], vertical_alignment="bottom")
            with left:
                st.selectbox("Clinician", [row["username"] for row in overview], key="calibration_reset_user")
            with right:
                st.form_submit_button("Take the set again", on_click=_reset, args=(admin.username,), width="stretch")
    else:
        st.write("No clinicians yet.")


lead = state.require_adjudicator()
st.title("Calibration")
state.show_flash()
with state.read_session() as session:
    threshold = calibration_threshold(session=session)
    items = calibration_items(session=session)
    overview = calibration_overview(session=session) if lead.is_admin else []
if lead.is_admin:
    _admin_sections(lead, threshold, overview)

st.subheader("Calibration set")
st.caption("Gold comparisons that new clinicians judge first, in this order; after each they see the expected "
           "answer (in their own screen terms) and your note.")
if items:
    st.dataframe([{"order": i["position"], "comparison": i["comparison_id"],
                   "expected": ANSWERS.get(i["expected"], i["expected"]), "note": i["note"]} for i in items],
                 hide_index=True, width="stretch", key="calibration_set")
    with st.form("calibration_remove_form", border=False):
        left, right = st.columns([3, 1], vertical_alignment="bottom")
        with left:
            chosen = st.selectbox("Comparison", [i["comparison_id"] for i in items], key="calibration_remove")
        with right:
            st.form_submit_button("Remove from the set", on_click=lambda: _remove_item(
                lead.username, st.session_state.get("calibration_remove")), width="stretch")
with st.form("calibration_add_form", border=True):
    st.number_input("Comparison id", min_value=1, step=1, key="calibration_comparison")
    st.selectbox("Expected answer (the comparison's own a/b)", list(PREFERENCES), format_func=ANSWERS.get,
                 key="calibration_answer")
    st.text_area("Your note (shown to the clinician after they judge it)", key="calibration_note", height=80)
    st.form_submit_button("Add to the calibration set", on_click=_add_item, args=(lead,))
