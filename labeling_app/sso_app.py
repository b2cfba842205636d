"""The labeling app with single sign-on: ``streamlit run labeling_app/sso_app.py`` (``therapref app``
starts it when ``therapref.toml`` has an ``[auth]`` table).

Streamlit serves ``labeling_app/app.py`` through ``st.App``, whose ``secrets=`` carries the OIDC
provider's configuration in memory: the client secret comes from the environment and is never
written to a secrets file, the database or a log.
"""

from __future__ import annotations

import os

import streamlit as st

from labeling_app.launch import APP_SCRIPT
from labeling_app.sso import streamlit_secrets
from therapref.settings import Settings

app = st.App(APP_SCRIPT, secrets=streamlit_secrets(Settings.load(), os.environ))
