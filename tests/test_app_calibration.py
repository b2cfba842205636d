"""The calibration page with streamlit.testing AppTest on a real SQLite database: a lead chooses the
calibration set (a gold comparison and a note; audited) but neither sees clinicians' accuracy nor sets
the threshold; an admin sees both; a clinician cannot open the page."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select
from streamlit.testing.v1 import AppTest

from db.auth import create_annotator
from db.calibration import calibration_items
from db.models import AuditEvent
from tests.app_helpers import APP, signed_in_app
from tests.factories import PASSWORD, make_database

TIMEOUT = 60


@pytest.fixture
def app_db(sqlite_url, monkeypatch):
    engine, project = make_database(sqlite_url, n_prompts=2, n_clinicians=1)
    with Session(engine, expire_on_commit=False) as session:
        lead = create_annotator("lead1", PASSWORD, session=session, role="lead", display_name="Dr Lead")
        session.commit()
    monkeypatch.setenv("THERAPREF_DATABASE_URL", sqlite_url)
    yield engine, project, lead
    engine.dispose()


def _page(user) -> AppTest:
    at = signed_in_app(user, timeout=TIMEOUT)
    at.run()
    return at.switch_page("pages/admin_calibration.py").run()


def test_a_lead_chooses_the_calibration_set(app_db):
    engine, project, lead = app_db
    at = _page(lead)
    assert not at.exception and not at.error
    subheaders = [h.value for h in at.subheader]
    assert "Calibration set" in subheaders
    assert "Threshold before real work" not in subheaders and "Clinicians" not in subheaders  # admins only
    cid = project.comparisons[0].id
    at.number_input(key="calibration_comparison").set_value(cid)
    at.selectbox(key="calibration_answer").set_value("b")
    at.text_area(key="calibration_note").input("B names the feeling first.")
    next(b for b in at.button if b.label == "Add to the calibration set").click().run()
    assert not at.exception
    with Session(engine) as session:
        items = calibration_items(session=session)
        expected = [(cid, "b", "B names the feeling first.")]
        assert [(i["comparison_id"], i["expected"], i["note"]) for i in items] == expected
        assert "lead1" in session.exec(select(AuditEvent.actor)).all()


def test_an_admin_also_sets_the_threshold(app_db):
    _engine, project, _lead = app_db
    at = _page(project.admin)
    assert not at.exception
    subheaders = [h.value for h in at.subheader]
    assert {"Threshold before real work", "Clinicians", "Calibration set"} <= set(subheaders)


def test_a_clinician_cannot_open_it(app_db):
    _engine, project, _lead = app_db
    clin = project.clinicians[0]
    at = signed_in_app(clin, timeout=TIMEOUT)
    at.run()
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("pages/admin_calibration.py")
    direct = signed_in_app(clin, APP.parent / "pages" / "admin_calibration.py", timeout=TIMEOUT)
    direct.run()
    assert [e.value for e in direct.error] == ["This page is for leads and admins only."]
    assert not [h for h in direct.subheader if h.value == "Calibration set"]
