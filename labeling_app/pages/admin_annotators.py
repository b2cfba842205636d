"""Admin: annotator accounts (add, deactivate/reactivate, reset password); every action audited."""

from __future__ import annotations

import streamlit as st

from db.accounts import account_rows, add_account, reset_account_password, set_account_active
from db.errors import TheraPrefError
from db.rules import LOGIN_ROLES
from labeling_app import state

admin = state.require_admin()
st.title("Annotators")
state.show_flash()
with state.read_session() as session:
    rows = account_rows(session=session)
st.dataframe(rows, hide_index=True, width="stretch")
usernames = [r["username"] for r in rows]


def _run(action, success: str) -> None:
    try:
        with state.write_session() as session:
            action(session)
    except TheraPrefError as exc:
        st.error(state.md_escape(str(exc)))  # messages quote the typed username
        return
    state.flash("success", success)
    st.rerun()


add, status, password = st.tabs(["Add", "Deactivate / reactivate", "Reset password"])
with add, st.form("add_annotator", clear_on_submit=True):
    username = st.text_input("Username", key="new_username")
    display_name = st.text_input("Display name", key="new_display_name")
    credential = st.text_input("Credential (e.g. LCSW, PsyD)", key="new_credential")
    role = st.selectbox("Role", list(LOGIN_ROLES), key="new_role",
                        help="A lead judges like a clinician and also adjudicates disputed pairs.")
    new_password = st.text_input("Initial password (min. 8 characters)", type="password", key="new_password")
    if st.form_submit_button("Add annotator", type="primary", key="add_submit"):
        _run(lambda s: add_account(username, new_password, session=s, actor=admin.username, role=role,
                                   display_name=display_name, credential=credential),
             f"Added {role} {state.md_escape(username.strip())}.")
with status, st.form("set_active"):
    who = st.selectbox("Annotator", usernames, key="active_username")
    active = st.radio("Account", ["Active", "Inactive"], horizontal=True, key="active_choice")
    if st.form_submit_button("Apply", key="active_submit") and who:
        _run(lambda s: set_account_active(who, active == "Active", session=s, actor=admin.username),
             f"{state.md_escape(who)} is now {active.lower()}.")
with password, st.form("reset_password", clear_on_submit=True):
    who_pw = st.selectbox("Annotator", usernames, key="reset_username")
    reset_to = st.text_input("New password (min. 8 characters)", type="password", key="reset_password_value")
    if st.form_submit_button("Reset password", key="reset_submit") and who_pw:
        _run(lambda s: reset_account_password(who_pw, reset_to, session=s, actor=admin.username),
             f"Password reset for {state.md_escape(who_pw)}; any lockout is lifted.")
