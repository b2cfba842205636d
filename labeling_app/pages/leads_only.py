"""Shown to a clinician at the address of the adjudication page."""

from __future__ import annotations

import streamlit as st

from labeling_app import state

state.require_user()
st.title("Leads only")
st.error("This page is for leads and admins only. Ask your project admin if you need access.")
