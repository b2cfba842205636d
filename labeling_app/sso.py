"""Single sign-on in the app: Streamlit's ``st.login`` (Authlib) configured from ``[auth]``.

Streamlit reads its provider from ``st.secrets["auth"]``. TheraPref never writes that to a file:
``labeling_app/sso_app.py`` hands it to ``st.App(secrets=…)`` in memory, with the client secret
read from the environment variable that ``[auth] client_secret_env`` names. After the provider's
callback (where Authlib verifies the ID token: signature, issuer, audience, nonce, expiry),
``st.user`` holds the token's claims and ``sign_in_from_provider`` turns them into a TheraPref
user through ``db.sso``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import streamlit as st

from db.sso import RoleMapping, SsoRefused, sso_sign_in
from labeling_app import state
from therapref.settings import Settings

#: The claims of the last sign-in this browser session tried, so that a refusal is audited once.
TRIED_KEY = "_therapref_sso_tried"
REFUSED_KEY = "_therapref_sso_refused"
#: Streamlit's name for the provider configured directly under ``[auth]``.
PROVIDER = "default"


def streamlit_secrets(settings: Settings, environ: Mapping[str, str]) -> dict[str, Any]:
    """Streamlit's ``[auth]`` secrets for ``settings.auth`` (in memory only).

    >>> from therapref.settings import AuthSettings
    >>> s = Settings(app_port=8600, auth=AuthSettings("https://idp.example", "tp", client_secret_env="S"))
    >>> auth = streamlit_secrets(s, {"S": "hush"})["auth"]
    >>> auth["redirect_uri"], auth["client_secret"], auth["server_metadata_url"]
    ('http://127.0.0.1:8600/oauth2callback', 'hush', 'https://idp.example/.well-known/openid-configuration')
    """
    from labeling_app.launch import app_url

    auth = settings.auth
    if auth is None:
        return {}
    cookie_secret = environ.get(auth.cookie_secret_env, "") if auth.cookie_secret_env else ""
    return {"auth": {
        "redirect_uri": auth.redirect_uri or app_url(settings.app_host, settings.app_port) + "/oauth2callback",
        # Signs the identity cookie. A new random key per start unless one is configured: restarting
        # the app then signs everyone out, which is the safe default.
        "cookie_secret": cookie_secret or secrets.token_urlsafe(32),
        "client_id": auth.client_id,
        "client_secret": auth.client_secret(environ),
        "server_metadata_url": auth.metadata_url,
    }}


def role_mapping(settings: Settings) -> RoleMapping:
    auth = settings.auth
    assert auth is not None
    return RoleMapping(auth.role_claim, auth.roles)


def provider_claims() -> dict[str, Any] | None:
    """The verified ID-token claims Streamlit holds for this browser, or None when signed out there."""
    info = {k: v for k, v in st.user.to_dict().items() if k != "tokens"}
    return info if info.get("is_logged_in") else None


def sign_in_from_provider(settings: Settings) -> None:
    """Sign the browser session in from the provider's identity, once per identity and session."""
    if settings.auth is None or state.current_user() is not None:
        return
    claims = provider_claims()
    if claims is None:
        return
    tried = (claims.get("iss"), claims.get("sub"), claims.get("iat"))
    if st.session_state.get(TRIED_KEY) == tried:
        return
    st.session_state[TRIED_KEY] = tried
    user = None
    with state.write_session() as session:
        try:
            annotator = sso_sign_in(claims, issuer=settings.auth.issuer, mapping=role_mapping(settings),
                                    session=session, username_claim=settings.auth.username_claim)
            user = state.User(annotator.id, annotator.username, annotator.display_name, annotator.role,
                              via_sso=True)
        except SsoRefused as refused:  # caught inside the transaction: its audit event is kept
            st.session_state[REFUSED_KEY] = str(refused)
    if user is not None:
        st.session_state.pop(REFUSED_KEY, None)
        state.sign_in(user)


def sign_out_of_provider() -> None:
    """Forget the provider's identity in this browser too (Streamlit's cookie; the provider's logout)."""
    st.logout()
