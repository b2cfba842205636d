"""Log in: "Sign in with SSO" (``st.login``, when ``[auth]`` is configured) and/or username +
password (argon2; unless ``[auth] local_accounts = false``). One generic error for every password
failure; lockout in db.auth; single sign-on refusals say why (db.sso)."""

from __future__ import annotations

import streamlit as st

from db.audit import audit
from db.auth import authenticate
from labeling_app import sso, state
from labeling_app.throttle import LoginThrottle

settings = state.settings()
auth = settings.auth
st.title("TheraPref labeling")
state.show_flash()

if auth is not None:
    refused = st.session_state.get(sso.REFUSED_KEY)
    if refused and sso.provider_claims() is not None:
        st.error(state.md_escape(refused))
        st.button("Sign out of the identity provider", key="sso_logout", on_click=sso.sign_out_of_provider,
                  icon=":material/logout:")
    else:
        st.write("Compare therapy-assistant replies. Sign in with your organisation's account.")
        st.button("Sign in with SSO", type="primary", key="sso_login", on_click=st.login,
                  icon=":material/key:")
if auth is None or auth.local_accounts:
    if auth is None:
        st.write("Compare therapy-assistant replies. Log in with the account your admin created for you.")
    else:
        st.caption("Or log in with a TheraPref password account:")
    with st.form("login", border=True):
        username = st.text_input("Username", key="login_username", autocomplete="username")
        password = st.text_input("Password", type="password", key="login_password",
                                 autocomplete="current-password")
        submitted = st.form_submit_button("Log in", type="primary", key="login_submit")
else:
    submitted = False

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
