"""The audit log reader (``db/audit.py``) on SQLite and PostgreSQL, and the admins' *Audit log* page
(AppTest): filters by who, action, date range and target; the CSV; no password, token or secret."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, select
from streamlit.testing.v1 import AppTest

from db.accounts import add_account, reset_account_password
from db.audit import AuditFilter, audit, audit_choices, audit_csv, audit_events
from db.models import AuditEvent
from labeling_app.state import USER_KEY, User
from tests.app_helpers import APP
from tests.factories import make_database

OLD = datetime(2026, 1, 15, 12, tzinfo=UTC)


def _seed(session: Session) -> None:
    add_account("dana", "first-password-1", session=session, actor="boss")
    reset_account_password("dana", "second-password-2", session=session, actor="boss")
    audit("cli", "export.write", session=session, target="/data/=HYPERLINK(1).jsonl",
          details={"rows": 3, "api_key": "sk-live-123", "nested": {"access_token": "tok-456"}})
    session.add(AuditEvent(actor="old", action="annotator.add", target="ancient", created_at=OLD))
    session.flush()


def test_filters_by_who_what_when_and_target(any_engine):
    with Session(any_engine) as session:
        _seed(session)
        session.commit()
        everything = audit_events(session=session)
        assert [r["action"] for r in everything][:3] == ["export.write", "annotator.reset_password", "annotator.add"]
        assert audit_choices(session=session) == (["boss", "cli", "old"],
                                                  ["annotator.add", "annotator.reset_password", "export.write"])
        assert {r["action"] for r in audit_events(AuditFilter(actors=["boss"]), session=session)} == {
            "annotator.add", "annotator.reset_password"}
        assert [r["actor"] for r in audit_events(AuditFilter(actions=["annotator.add"]), session=session)] == [
            "boss", "old"]
        day = OLD.date()
        assert [r["target"] for r in audit_events(AuditFilter(since=day, until=day), session=session)] == ["ancient"]
        assert [r["target"] for r in audit_events(AuditFilter(since=day + timedelta(days=1)), session=session)] == [
            "/data/=HYPERLINK(1).jsonl", "dana", "dana"]
        assert len(audit_events(AuditFilter(target="DAN"), session=session)) == 2  # case-insensitive contains
        assert audit_events(AuditFilter(target="%"), session=session) == []  # LIKE wildcards are literal
        export = audit_events(AuditFilter(actions=["export.write"]), session=session)[0]
        assert export["details"] == {"rows": 3, "nested": {}}  # keys naming a key or token never shown


def test_csv_holds_no_password_token_or_secret_and_no_formula(any_engine):
    with Session(any_engine) as session:
        _seed(session)
        session.commit()
        text = audit_csv(audit_events(session=session))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 4 and list(rows[0]) == ["created_at", "actor", "action", "target", "details"]
    for secret in ("first-password-1", "second-password-2", "sk-live-123", "tok-456"):
        assert secret not in text
    assert rows[0]["target"] == "/data/=HYPERLINK(1).jsonl"
    assert rows[-1]["created_at"] == "2026-01-15T12:00:00+00:00"


@pytest.fixture
def app_db(sqlite_url, monkeypatch):
    engine, project = make_database(sqlite_url, n_prompts=1, n_clinicians=1)
    with Session(engine) as session:
        _seed(session)
        audit('<img src=x onerror="alert(1)">', "auth.login_failed", session=session, target="<b>x</b>")
        session.commit()
    monkeypatch.setenv("THERAPREF_DATABASE_URL", sqlite_url)
    yield engine, project
    engine.dispose()


def _as(annotator) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state[USER_KEY] = User(annotator.id, annotator.username, annotator.display_name, annotator.role)
    at.switch_page("pages/admin_audit.py")
    return at.run()


def test_audit_page_filters_and_downloads(app_db):
    engine, project = app_db
    at = _as(project.admin)
    assert not at.exception
    assert [t.value for t in at.title] == ["Audit log"]
    with Session(engine) as session:
        total = len(session.exec(select(AuditEvent).where(AuditEvent.created_at >= datetime.now(UTC) -
                                                          timedelta(days=31))).all())
    assert f"{total} events" in [t.value for t in at.text]
    frame = at.dataframe[0].value
    assert '<img src=x onerror="alert(1)">' in set(frame["actor"])  # shown as data in the grid, not markup
    at.multiselect(key="audit_who").set_value(["boss"]).run()
    assert "2 events" in [t.value for t in at.text]
    at.text_input(key="audit_target").input("nobody-such").run()
    assert "0 events" in [t.value for t in at.text]
    at.text_input(key="audit_target").input("").run()
    at.multiselect(key="audit_who").set_value([]).run()
    at.date_input(key="audit_dates").set_value((OLD.date(), OLD.date())).run()
    assert "1 events" in [t.value for t in at.text]
    assert at.get("download_button")[0].proto.label == "Download CSV"
    assert not any("second-password-2" in str(t.value) for t in at.text)


def test_clinicians_cannot_open_the_audit_page(app_db):
    engine, project = app_db
    at = _as(project.clinicians[0])
    assert "Audit log" not in [t.value for t in at.title]
    assert any("admins only" in e.value.lower() for e in at.error)
