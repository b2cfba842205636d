"""The rating rubric in force (versioned); admins edit it here, each save is a new version."""

from __future__ import annotations

import streamlit as st

from db.assignment import ensure_guidelines, guideline_history
from db.crud import add_guideline_version, audit
from db.models import SAFETY_FLAGS, Annotator
from labeling_app import state

user = state.require_user()
st.title("Rating guidelines")
state.show_flash()
with state.write_session() as session:
    current = ensure_guidelines(session=session)
    version, text, created_at = current.version, current.text, current.created_at
st.caption(f"Version {version}, in force since {created_at:%Y-%m-%d %H:%M} UTC. "
           "Every judgment records the version it was made under.")
# The rubric is written by admins of this project (trusted); Markdown only, never raw HTML.
st.markdown(text)
with st.expander("Safety flags at a glance"):
    for name, label in SAFETY_FLAGS.items():
        st.text(f"{label}  ({name})")

if user.is_admin:
    st.divider()
    st.subheader("Edit the guidelines")
    with st.form("guidelines_edit"):
        new_text = st.text_area("Guidelines (Markdown)", value=text, height=400, key="guidelines_text")
        saved = st.form_submit_button("Save as new version", type="primary", key="guidelines_save")
    if saved:
        if new_text.strip() == text.strip():
            st.info("No change: the version in force stays the same.")
        else:
            with state.write_session() as session:
                author = session.get(Annotator, user.id)
                new = add_guideline_version(new_text, session=session, author=author)
                audit(user.username, "guidelines.update", session=session, target=f"version:{new.version}",
                      details={"version": new.version})
                new_version = new.version
            state.flash("success", f"Saved version {new_version}; it is in force from now on.")
            st.rerun()
    with state.read_session() as session:
        history = [{"version": g.version, "created_at": g.created_at, "characters": len(g.text)}
                   for g in guideline_history(session=session)]
    st.caption("History")
    st.dataframe(history, hide_index=True)
