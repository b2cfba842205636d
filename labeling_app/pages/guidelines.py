"""The rating rubric in force (versioned) and its criteria; admins edit both here, each save is a new
version (``db.criteria.publish_guidelines``)."""

from __future__ import annotations

import math

import streamlit as st

from db.assignment import ensure_guidelines, guideline_history
from db.criteria import CriterionSpec, criteria_of, publish_guidelines
from db.crud import DataError
from db.models import SAFETY_FLAGS, Annotator
from labeling_app import state

CRITERIA_COLUMNS = ("name", "description", "required")


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def _specs(rows: object) -> list[CriterionSpec]:
    """The edited table as criteria (rows with no name and no description are left out)."""
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows or [])
    specs = []
    for row in records:
        name, description = row.get("name"), row.get("description")
        if _blank(name) and _blank(description):
            continue
        specs.append(CriterionSpec("" if _blank(name) else str(name).strip(),
                                   "" if _blank(description) else str(description),
                                   bool(row.get("required")) if not _blank(row.get("required")) else False))
    return specs


user = state.require_user()
st.title("Rating guidelines")
state.show_flash()
with state.write_session() as session:
    current = ensure_guidelines(session=session)
    version, text, created_at = current.version, current.text, current.created_at
    criteria = [{"name": c.name, "description": c.description, "required": c.required}
                for c in criteria_of(current.id, session=session)]
st.caption(f"Version {version}, in force since {created_at:%Y-%m-%d %H:%M} UTC. "
           "Every judgment records the version it was made under.")
# The rubric is written by admins of this project (trusted); Markdown only, never raw HTML.
st.markdown(text)
st.subheader("Criteria")
if criteria:
    st.caption("Judge each criterion A better / B better / tie on the compare page; required ones must be answered.")
    # A dataframe draws every cell as plain text (admins' words, but never HTML).
    st.dataframe(criteria, hide_index=True, width="stretch")
else:
    st.caption("This version has no per-criterion judgments: only the overall preference.")
with st.expander("Safety flags at a glance"):
    for name, label in SAFETY_FLAGS.items():
        st.text(f"{label}  ({name})")

if user.is_admin:
    st.divider()
    st.subheader("Edit the guidelines")
    with st.form("guidelines_edit"):
        new_text = st.text_area("Guidelines (Markdown)", value=text, height=400, key="guidelines_text")
        st.caption("Criteria: a short lower-case name (letters, digits, _), a one-line description, and whether "
                   "clinicians must answer it. Add or delete rows; the order is the order on the compare page.")
        edited = st.data_editor(
            [dict(c) for c in criteria] or [dict.fromkeys(CRITERIA_COLUMNS)], key="guidelines_criteria",
            num_rows="dynamic", hide_index=True, width="stretch",
            column_config={"name": st.column_config.TextColumn("name", max_chars=40),
                           "description": st.column_config.TextColumn("description", max_chars=500),
                           "required": st.column_config.CheckboxColumn("required", default=False)})
        saved = st.form_submit_button("Save as new version", type="primary", key="guidelines_save")
    if saved:
        specs = _specs(edited)
        if new_text.strip() == text.strip() and [s.as_dict() for s in specs] == [
                CriterionSpec(**c).as_dict() for c in criteria]:
            st.info("No change: the version in force stays the same.")
        else:
            try:
                with state.write_session() as session:
                    author = session.get(Annotator, user.id)
                    new_version = publish_guidelines(new_text, criteria=specs, session=session, author=author,
                                                     actor=user.username).version
            except DataError as exc:
                st.error(state.md_escape(f"Not saved: {exc}."))
            else:
                state.flash("success", f"Saved version {new_version}; it is in force from now on.")
                st.rerun()
    with state.read_session() as session:
        history = [{"version": g.version, "created_at": g.created_at, "characters": len(g.text)}
                   for g in guideline_history(session=session)]
    st.caption("History")
    st.dataframe(history, hide_index=True)
