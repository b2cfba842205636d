"""Log in (username + password, argon2). One generic error for every failure; lockout in db.auth."""

from __future__ import annotations

import streamlit as st

from db.audit import audit
from db.auth import authenticate
from labeling_app import state
from labeling_app.throttle import LoginThrottle

st.title("TheraPref labeling")
st.write("Compare therapy-assistant replies. Log in with the account your admin created for you.")
state.show_flash()

with st.form("login", border=True):
    username = st.text_input("Username", key="login_username", autocomplete="username")
    password = st.text_input("Password", type="password", key="login_password", autocomplete="current-password")
    submitted = st.form_submit_button("Log in", type="primary", key="login_submit")

throttle: LoginThrottle = st.session_state.setdefault("login_throttle", LoginThrottle())

if submitted and throttle.wait_seconds() > 0:
    # Refused before any password check: the answer does not depend on the credentials.
    st.error(f"Too many failed attempts from this browser: try again in {throttle.wait_seconds():.0f} seconds.")
elif submitted:
    with state.write_session() as session:
        annotator = authenticate(username or "", password or "", session=session)
        if annotator is not None:
            audit(annotator.username, "auth.login", session=session, target=annotator.username)
            user = state.User(annotator.id, annotator.username, annotator.display_name, annotator.role)
        else:
            audit((username or "").strip()[:200] or "?", "auth.login_failed", session=session,
                  target=(username or "").strip()[:200])
            user = None
    if user is None:
        throttle.failed()
        st.error(state.LOGIN_ERROR)
    else:
        throttle.succeeded()
        state.sign_in(user)
        st.rerun()
