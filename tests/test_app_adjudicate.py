"""The adjudication page with streamlit.testing AppTest on a real SQLite database: a lead sees the
disputed pair with every judgment and its annotator's name and records the final label; an admin may
open it; a clinician may not (neither through the router nor run directly)."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select
from streamlit.testing.v1 import AppTest

from db.auth import create_annotator
from db.crud import add_judgment
from db.models import Adjudication, AuditEvent, Response
from db.spans import SpanMark, insert_spans
from tests.app_helpers import APP, signed_in_app
from tests.factories import HOSTILE_NAME, PASSWORD, make_database

TIMEOUT = 60


@pytest.fixture
def app_db(sqlite_url, monkeypatch):
    engine, project = make_database(sqlite_url, n_prompts=2, n_clinicians=2)
    with Session(engine, expire_on_commit=False) as session:
        lead = create_annotator("lead1", PASSWORD, session=session, role="lead", display_name="Dr Lead")
        hostile = create_annotator("hostile", PASSWORD, session=session, display_name=HOSTILE_NAME)
        c0 = project.comparisons[0]
        add_judgment(c0, project.clinicians[0], "a", session=session, strength=2, rationale="A validates.")
        marked, _ = add_judgment(c0, hostile, "b", session=session, strength=1, rationale="**B** <b>is</b> concrete.",
                                 flags_a=["dismissive"])
        insert_spans({c0.response_a_id: [SpanMark(0, 4, "dismissive")]}, session=session, judgment_id=marked.id)
        session.commit()
    monkeypatch.setenv("THERAPREF_DATABASE_URL", sqlite_url)
    yield engine, project, lead
    engine.dispose()


def _app(user) -> AppTest:
    at = signed_in_app(user, timeout=TIMEOUT)
    return at.run()


def test_lead_sees_names_and_adjudicates(app_db):
    engine, project, lead = app_db
    at = _app(lead)
    at.switch_page("pages/adjudicate.py").run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Adjudicate disputed pairs"]
    cid = project.comparisons[0].id
    markdown = " ".join(m.value for m in at.markdown)
    assert "clin0" in markdown and "hostile" in markdown  # names, for leads
    assert "\\<script\\>" not in markdown and "&lt;script&gt;" in markdown  # the hostile name escaped
    texts = [t.value for t in at.text]
    assert "A validates." in texts and "**B** <b>is</b> concrete." in texts  # rationales as plain text
    assert any("Flags on A: Dismissive or invalidating" in t for t in texts)
    with Session(engine) as session:
        words = session.get(Response, project.comparisons[0].response_a_id).text[:4]
    assert f"“{words}” (0–4): Dismissive or invalidating · hostile" in texts  # the marked words, for leads
    screen = f"c{cid}"
    at.radio(key=f"adj_strength-{screen}").set_value(3)
    at.text_area(key=f"adj_note-{screen}").input("B is concrete; A is fine too.")
    at.button_group(key=f"adj_flags_left-{screen}").set_value(["dismissive"])
    at.button(key=f"adj_choice-right-{screen}").click().run()
    assert not at.exception
    assert [s.value for s in at.success] == [f"Comparison {cid} adjudicated: B better.",
                                             "No disputed pairs are waiting for adjudication."]
    with Session(engine) as session:
        row = session.exec(select(Adjudication)).one()
        assert (row.comparison_id, row.annotator_id, row.preferred, row.strength, row.flags_a, row.note) == \
            (cid, lead.id, "b", 3, ["dismissive"], "B is concrete; A is fine too.")
        assert session.exec(select(AuditEvent.actor).where(AuditEvent.action == "adjudication.record")).one() == "lead1"
    assert not [b for b in at.button if (b.key or "").startswith("adj_choice-")]  # the queue is empty
    at.run()
    assert [s.value for s in at.success] == ["No disputed pairs are waiting for adjudication."]


def test_admin_may_open_it(app_db):
    _engine, project, _lead = app_db
    at = _app(project.admin)
    at.switch_page("pages/adjudicate.py").run()
    assert not at.exception and not at.error
    assert any(b.key.startswith("adj_choice-left-c") for b in at.button if b.key)


def test_clinician_cannot_open_it(app_db):
    _engine, project, _lead = app_db
    at = _app(project.clinicians[0])
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("pages/adjudicate.py")
    at.switch_page("pages/leads_only.py").run()
    assert [e.value for e in at.error][0].startswith("This page is for leads and admins only.")
    assert not [b for b in at.button if (b.key or "").startswith("adj_choice-")]
    direct = signed_in_app(project.clinicians[0], APP.parent / "pages" / "adjudicate.py", timeout=TIMEOUT)
    direct.run()
    assert [e.value for e in direct.error] == ["This page is for leads and admins only."]
    assert not [b for b in direct.button if (b.key or "").startswith("adj_choice-")]
    assert not [t for t in direct.text if "Flags on" in t.value]
