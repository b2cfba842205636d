"""The admin analytics page under Streamlit's AppTest, on a real SQLite database."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session, select
from streamlit.testing.v1 import AppTest

from db.engine import make_engine
from db.migrate import upgrade
from db.models import AuditEvent, Comparison
from labeling_app import state
from tests.factories import HOSTILE_NAME, build_rich_project
from therapref.settings import Settings

PAGE = Path(__file__).resolve().parent.parent / "labeling_app" / "pages" / "admin_dashboard.py"


@pytest.fixture(scope="module")
def dashboard_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("dashboard") / "therapref.db"
    engine = make_engine(path)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        project = build_rich_project(session)
        admin_id = project.admin.id
    engine.dispose()
    return path, admin_id


def _page(db: Path, user: state.User) -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=90)
    at.session_state[state.SETTINGS_KEY] = Settings(database_url=f"sqlite:///{db}")
    at.session_state[state.USER_KEY] = user
    return at


def save(at: AppTest):  # noqa: ANN201
    return next(b for b in at.button if b.label == "Save")


def test_dashboard_shows_every_section_and_sets_gold(dashboard_db):
    db, admin_id = dashboard_db
    at = _page(db, state.User(admin_id, "admin", "Admin", "admin")).run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Analytics"
    assert [t.label for t in at.tabs] == ["Progress", "Agreement", "Annotators", "Leaderboard", "Safety flags", "Gold"]
    subheaders = {s.value for s in at.subheader}
    for expected in ("Judgments over time", "Preferred reply", "Annotator quality", "Position bias", "Bradley–Terry",
                     "Length-controlled", "Win rates", "Safety flags per candidate model", "Gold comparisons"):
        assert expected in subheaders
    charts = at.get("vega_lite_chart")
    assert len(charts) >= 6
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Comparisons"] == "18"
    assert metrics["Annotators"] == "4"
    annotators = next(d.value for d in at.dataframe if "position bias" in d.value.columns)
    assert HOSTILE_NAME in set(annotators["annotator"])  # shown as data, never as markup
    assert all(HOSTILE_NAME not in m.value for m in at.markdown)

    comparison_id = 3
    at.number_input[0].set_value(comparison_id)
    at.selectbox[1].set_value("both_bad")
    save(at).click().run()
    assert not at.exception, at.exception
    assert any("gold answer both_bad" in s.value for s in at.success)
    engine = make_engine(db)
    with Session(engine) as session:
        assert session.get(Comparison, comparison_id).gold_answer == "both_bad"
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "comparison.set_gold")).one()
        assert event.actor == "admin"
    gold = next(d.value for d in at.dataframe if "gold answer" in d.value.columns)
    assert list(gold["comparison"]) == [1, comparison_id]

    at.number_input[0].set_value(9999)
    save(at).click().run()
    assert any("does not exist" in e.value for e in at.error)


def test_dashboard_is_for_admins_only(dashboard_db):
    db, _ = dashboard_db
    at = _page(db, state.User(2, "clin0", "clin0", "clinician")).run()
    assert [e.value for e in at.error] == ["This page is for admins only."]
    assert not at.title
