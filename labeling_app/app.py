"""TheraPref labeling app (router): ``streamlit run labeling_app/app.py -- --db URL``.

This file is an edge, like the CLI: it reads the settings once per session and decides which
pages exist for whom. Signed out: only the login page, whatever the address. Clinicians: compare,
progress, guidelines (admin addresses show "admins only", the adjudication address "leads only").
Leads: also the adjudication queue and the calibration set. Admins: also the admin pages, the
analytics dashboard among them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

from labeling_app import sso, state

PAGES = Path(__file__).resolve().parent / "pages"
# The login page (signed out) and the compare page (signed in) share one address, so that a
# successful login reruns straight into the compare page.
HOME = "home"
CLINICIAN_PAGES = [
    ("compare", "Compare", ":material/compare_arrows:"),
    ("rank", "Rank replies", ":material/format_list_numbered:"),  # rankings of K replies (db.rankings)
    ("progress", "My progress", ":material/trending_up:"),
    ("guidelines", "Guidelines", ":material/menu_book:"),
]
#: Leads and admins: disputed comparisons and their final labels (db.adjudication); the calibration set
#: new clinicians judge first (db.calibration; admins also set its threshold there).
LEAD_PAGES = [("adjudicate", "Adjudicate", ":material/gavel:"),
              ("admin_calibration", "Calibration", ":material/school:")]
ADMIN_PAGES = [
    ("admin_progress", "Live progress", ":material/monitoring:"),
    ("admin_annotators", "Annotators", ":material/group:"),
    ("admin_data", "Data", ":material/database:"),
    ("admin_dashboard", "Analytics", ":material/insights:"),  # agreement, quality, leaderboard
    ("admin_audit", "Audit log", ":material/history:"),  # who did what, when (db.audit)
]


def _page(file: str, title: str, icon: str, url_path: str, **kwargs) -> st.Page:
    return st.Page(str(PAGES / f"{file}.py"), title=title, icon=icon, url_path=url_path, **kwargs)


def _aliases(file: str, title: str, names: list[str]) -> list[st.Page]:
    """Hidden pages that show ``file`` at the addresses of pages this user may not open."""
    return [_page(file, title, ":material/lock:", name, visibility="hidden") for name in names]


def pages_for(user: state.User | None) -> tuple[dict[str, list[st.Page]] | list[st.Page], str]:
    """The navigation for a signed-out user, a clinician, a lead or an admin, and where to show it."""
    admin_names = [name for name, _title, _icon in ADMIN_PAGES]
    lead_names = [name for name, _title, _icon in LEAD_PAGES]
    other_names = [name for name, _title, _icon in CLINICIAN_PAGES if name != "compare"]
    if user is None:
        login = _page("login", "Log in", ":material/login:", HOME, default=True)
        return [login, *_aliases("login", "Log in", other_names + lead_names + admin_names)], "hidden"
    labeling = [_page(name, title, icon, HOME if name == "compare" else name, default=name == "compare")
                for name, title, icon in CLINICIAN_PAGES]
    lead = [_page(name, title, icon, name) for name, title, icon in LEAD_PAGES]
    if user.is_admin:
        admin = [_page(name, title, icon, name) for name, title, icon in ADMIN_PAGES]
        return {"Labeling": labeling, "Lead": lead, "Admin": admin}, "sidebar"
    forbidden_admin = _aliases("forbidden", "Admins only", admin_names)
    if user.may_adjudicate:
        return {"Labeling": labeling + forbidden_admin, "Lead": lead}, "sidebar"
    return {"Labeling": labeling + forbidden_admin + _aliases("leads_only", "Leads only", lead_names)}, "sidebar"


def main() -> None:
    st.set_page_config(page_title="TheraPref labeling", page_icon="🩺", layout="wide")
    settings = state.load_settings(sys.argv[1:])
    state.touch_session(settings.session_timeout_minutes)
    sso.sign_in_from_provider(settings)  # single sign-on: the provider's verified identity, if any
    pages, position = pages_for(state.current_user())
    # Each page draws the account box (signed-in user, log out) through state.require_user().
    st.navigation(pages, position=position).run()


main()
