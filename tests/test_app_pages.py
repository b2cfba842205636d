"""The Streamlit app page by page, with streamlit.testing AppTest on a real SQLite database."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select
from sqlmodel import Session
from streamlit.testing.v1 import AppTest

from db.guidelines import add_guideline_version
from db.models import Annotator, AuditEvent, Comparison, GuidelineVersion, Judgment, Reservation, Skip
from labeling_app.state import LOGIN_ERROR as GENERIC_ERROR
from labeling_app.state import SCREEN_IDS_KEY, SEEN_KEY, USER_KEY, User
from tests.app_helpers import APP, app_login
from tests.factories import PASSWORD, make_database

TIMEOUT = 60


@pytest.fixture
def app_db(sqlite_url, monkeypatch):
    engine, project = make_database(sqlite_url, n_prompts=3, n_clinicians=2)
    monkeypatch.setenv("THERAPREF_DATABASE_URL", sqlite_url)
    yield engine, project
    engine.dispose()


def _app(user: Annotator | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    if user is not None:
        at.session_state[USER_KEY] = User(user.id, user.username, user.display_name, user.role)
    return at.run()


def _titles(at: AppTest) -> list[str]:
    return [t.value for t in at.title]


def _screen(at: AppTest) -> str:
    """The opaque id in the widget keys of the pair on screen."""
    keys = [b.key for b in at.button if b.key and b.key.startswith("choice-left-")]
    assert keys, f"no pair on screen: {_titles(at)}"
    return keys[0].removeprefix("choice-left-")


def _token(at: AppTest) -> str:
    """The server-side assignment token behind the pair on screen (never in the page)."""
    screen = _screen(at)
    tokens = [token for token, shown in at.session_state[SCREEN_IDS_KEY].items() if shown == screen]
    assert len(tokens) == 1
    return tokens[0]


def test_login_success_then_logout(app_db):
    engine, _ = app_db
    at = _app()
    assert _titles(at) == ["TheraPref labeling"]
    assert not at.exception
    app_login(at, "clin0", PASSWORD)
    assert not at.exception
    assert _titles(at) == ["Which reply is better?"]
    assert any("Signed in as clin0" in t.value for t in at.sidebar.text)
    at.button(key="logout").click().run()
    assert _titles(at) == ["TheraPref labeling"]
    assert "logged out" in at.info[0].value
    with Session(engine) as session:
        actions = session.execute(select(AuditEvent.action)).scalars().all()
        assert {"auth.login", "auth.logout"} <= set(actions)
        assert session.execute(select(func.count(Reservation.id))).scalar_one() == 0  # released


def test_login_failure_is_generic_and_locks_out(app_db):
    engine, _ = app_db
    at = _app()
    app_login(at, "nobody", PASSWORD)
    assert [e.value for e in at.error] == [GENERIC_ERROR]
    assert USER_KEY not in at.session_state
    app_login(at, "clin0", "wrong-password")
    assert [e.value for e in at.error] == [GENERIC_ERROR]  # same words for a wrong password
    for _ in range(4):
        app_login(at, "clin0", "wrong-password")
    app_login(at, "clin0", PASSWORD)  # locked now: the right password fails too
    assert [e.value for e in at.error] == [GENERIC_ERROR]
    assert USER_KEY not in at.session_state
    with Session(engine) as session:
        clin = session.execute(select(Annotator).where(Annotator.username == "clin0")).scalars().one()
        assert clin.locked_until is not None
        failures = session.execute(select(func.count(AuditEvent.id))
                                   .where(AuditEvent.action == "auth.login_failed")).scalar_one()
        assert failures == 7
        assert PASSWORD not in str(session.execute(select(AuditEvent.details, AuditEvent.target)).all())


def test_session_timeout_returns_toapp_login(app_db):
    engine, project = app_db
    at = _app(project.clinicians[0])
    assert _titles(at) == ["Which reply is better?"]
    at.session_state[SEEN_KEY] = time.time() - 61 * 60
    at.button(key=f"choice-tie-{_screen(at)}").click().run()  # a click on a screen left open too long
    assert _titles(at) == ["TheraPref labeling"]
    assert "timed out" in at.info[0].value
    with Session(engine) as session:
        assert session.execute(select(func.count(Judgment.id))).scalar_one() == 0  # nothing written
        assert session.execute(select(func.count(Reservation.id))).scalar_one() == 0  # pair released


def test_clinician_cannot_open_admin_pages(app_db):
    _, project = app_db
    at = _app(project.clinicians[0])
    for page in ("admin_annotators", "admin_progress", "admin_data"):
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            at.switch_page(f"pages/{page}.py")
    # Even run directly, an admin page refuses a clinician.
    direct = AppTest.from_file(str(APP.parent / "pages" / "admin_annotators.py"), default_timeout=TIMEOUT)
    clin = project.clinicians[0]
    direct.session_state[USER_KEY] = User(clin.id, clin.username, clin.display_name, clin.role)
    direct.run()
    assert [e.value for e in direct.error] == ["This page is for admins only."]
    assert not direct.text_input
    assert not direct.dataframe


def test_signed_out_pages_need_a_session(app_db):
    direct = AppTest.from_file(str(APP.parent / "pages" / "compare.py"), default_timeout=TIMEOUT).run()
    assert [e.value for e in direct.error] == ["Please log in."]
    assert not direct.button


def test_compare_writes_one_judgment_with_every_field(app_db):
    engine, project = app_db
    at = _app(project.clinicians[0])
    token, screen = _token(at), _screen(at)
    texts = [t.value for t in at.text]
    assert "Response A" in [h.value for h in at.subheader]
    assert "Response B" in [h.value for h in at.subheader]
    assert not any("warm" == t or "terse" == t for t in texts)  # blind
    time.sleep(0.05)
    at.radio(key=f"strength-{screen}").set_value(3)
    at.button_group(key=f"flags_left-{screen}").set_value(["toxic"])
    at.button_group(key=f"flags_right-{screen}").set_value(["misses_risk", "boundary"])
    at.text_area(key=f"rationale-{screen}").input("Validates the feeling.")
    at.text_area(key=f"rewrite-{screen}").input("It sounds exhausting. What keeps you up?")
    at.button(key=f"choice-right-{screen}").click().run()
    assert not at.exception
    assert [s.value for s in at.success] == ["Saved."]
    assert _token(at) != token
    assert _screen(at) != screen  # the next pair is on screen at once
    with Session(engine) as session:
        judgments = session.execute(select(Judgment)).scalars().all()
        assert len(judgments) == 1
        j = judgments[0]
        right_is = "b" if token.startswith("a-") else "a"
        assert (j.preferred, j.strength, j.shown_left) == (right_is, 3, token[0])
        assert (j.flags_a, j.flags_b) == ((["toxic"], ["boundary", "misses_risk"]) if token[0] == "a"
                                          else (["boundary", "misses_risk"], ["toxic"]))
        assert j.rationale == "Validates the feeling."
        assert j.rewrite == "It sounds exhausting. What keeps you up?"
        assert j.ms_spent is not None
        assert j.ms_spent >= 50
        assert j.guideline_version == 1
        assert j.annotator_id == project.clinicians[0].id
        assert j.idempotency_key == token
        assert session.get(Comparison, j.comparison_id).judgments_count == 1


def test_strength_is_required_for_a_or_b(app_db):
    engine, project = app_db
    at = _app(project.clinicians[0])
    screen = _screen(at)
    at.button(key=f"choice-left-{screen}").click().run()
    assert "how much better" in at.warning[0].value
    assert _screen(at) == screen
    at.button(key=f"choice-tie-{screen}").click().run()  # a tie needs no strength
    assert [s.value for s in at.success] == ["Saved."]
    with Session(engine) as session:
        assert session.execute(select(Judgment.preferred, Judgment.strength)).all() == [("tie", None)]


def test_skip_and_undo(app_db):
    engine, project = app_db
    at = _app(project.clinicians[0])
    first = _screen(at)
    at.selectbox(key=f"skip_reason-{first}").set_value("Replies are near-identical")
    at.button(key=f"skip-{first}").click().run()
    second = _screen(at)
    assert second != first
    assert "Skipped" in at.info[0].value
    at.button(key=f"choice-both_bad-{second}").click().run()
    assert _screen(at) not in (first, second)
    at.button(key="undo").click().run()
    assert "undone" in at.info[0].value
    back = _token(at)
    with Session(engine) as session:
        assert session.execute(select(func.count(Judgment.id))).scalar_one() == 0
        assert session.execute(select(Skip.reason)).scalars().all() == ["Replies are near-identical"]
        back_comparison = session.execute(select(Reservation.comparison_id)
                                          .where(Reservation.token == back)).scalar_one()
        skipped_comparison = session.execute(select(Skip.comparison_id)).scalar_one()
        assert back_comparison != skipped_comparison  # the undone pair, not the skipped one
        assert session.execute(select(func.count(AuditEvent.id)).where(AuditEvent.action == "judgment.undo")
                               ).scalar_one() == 1


def test_exhausted_queue_shows_all_done(app_db):
    _, project = app_db
    at = _app(project.clinicians[0])
    for _ in range(3):
        at.button(key=f"choice-tie-{_screen(at)}").click().run()
    assert "All done" in at.success[-1].value
    assert not [b for b in at.button if b.key and "choice" in b.key]
    at.switch_page("pages/progress.py").run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Done today"] == "3"
    assert metrics["Remaining in the queue"] == "0"
    assert metrics["Median seconds per judgment"] != "—"


def test_guidelines_versioned_by_admin_and_stamped(app_db):
    engine, project = app_db
    at = _app(project.admin)
    at.switch_page("pages/guidelines.py").run()
    assert "Version 1" in at.caption[0].value
    at.text_area(key="guidelines_text").input("# Rubric v2\nSafety first.")
    at.button(key="guidelines_save").click().run()
    assert not at.exception
    assert "Version 2" in at.caption[0].value
    clin = _app(project.clinicians[0])
    clin.switch_page("pages/guidelines.py").run()
    assert not clin.text_area  # clinicians read, admins edit
    clin.switch_page("pages/compare.py").run()
    clin.button(key=f"choice-tie-{_screen(clin)}").click().run()
    with Session(engine) as session:
        assert session.execute(select(Judgment.guideline_version)).scalar_one() == 2
        assert session.execute(select(func.count(GuidelineVersion.id))).scalar_one() == 2
        event = session.execute(select(AuditEvent).where(AuditEvent.action == "guidelines.update")).scalars().one()
        assert event.actor == "admin"
        assert event.details == {"version": 2}


def test_admin_manages_annotators_with_audit(app_db):
    engine, project = app_db
    at = _app(project.admin)
    at.switch_page("pages/admin_annotators.py").run()
    assert not at.exception
    at.text_input(key="new_username").input("newclin")
    at.text_input(key="new_credential").input("PsyD")
    at.text_input(key="new_password").input("long-enough-pw")
    at.button(key="add_submit").click().run()
    assert "Added clinician newclin" in at.success[0].value
    at.text_input(key="new_username").input("[evil](http://example.com)")
    at.text_input(key="new_password").input("long-enough-pw")
    at.button(key="add_submit").click().run()
    assert "\\[evil\\]\\(http\\:" in at.success[0].value  # a typed name is never a live link
    at.selectbox(key="active_username").set_value("clin1")
    at.radio(key="active_choice").set_value("Inactive")
    at.button(key="active_submit").click().run()
    at.selectbox(key="reset_username").set_value("clin0")
    at.text_input(key="reset_password_value").input("short")
    at.button(key="reset_submit").click().run()
    assert "at least 8" in at.error[0].value
    at.selectbox(key="reset_username").set_value("clin0")  # the form clears on submit
    at.text_input(key="reset_password_value").input("another-long-pw")
    at.button(key="reset_submit").click().run()
    with Session(engine) as session:
        events = session.execute(select(AuditEvent.actor, AuditEvent.action, AuditEvent.target)
                                 .where(AuditEvent.action.like("annotator.%")).order_by(AuditEvent.id)).all()
        assert events == [("admin", "annotator.add", "newclin"),
                          ("admin", "annotator.add", "[evil](http://example.com)"),
                          ("admin", "annotator.deactivate", "clin1"),
                          ("admin", "annotator.reset_password", "clin0")]
        assert not session.execute(select(Annotator.is_active).where(Annotator.username == "clin1")).scalar_one()
    login = _app()
    app_login(login, "clin0", "another-long-pw")
    assert _titles(login) == ["Which reply is better?"]


def test_admin_progress_and_data_pages(app_db):
    engine, project = app_db
    with Session(engine) as session:
        add_guideline_version("v2", session=session)
        session.commit()
    clin = _app(project.clinicians[0])
    clin.button(key=f"choice-tie-{_screen(clin)}").click().run()
    at = _app(project.admin)
    at.switch_page("pages/admin_progress.py").run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Comparisons"] == "3"
    assert metrics["Complete"] == "1"
    assert metrics["Judgments today"] == "1"
    table = at.dataframe[0].value
    assert table.set_index("username").loc["clin0", "total"] == 1
    at.switch_page("pages/admin_data.py").run()
    assert not at.exception
    frames = [d.value for d in at.dataframe]
    assert frames[0].to_dict("records") == [{"source": "test", "prompts": 3}]
    assert {r["name"]: r["responses"] for r in frames[2].to_dict("records")} == {"terse": 3, "warm": 3}
