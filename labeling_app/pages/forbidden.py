"""Shown to a clinician at the address of an admin page."""

from __future__ import annotations

import streamlit as st

from labeling_app import state

state.require_user()
st.title("Admins only")
st.error("This page is for admins only. Ask your project admin if you need access.")
