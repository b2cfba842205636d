"""Single sign-on end to end: Chromium (Playwright) → the app (``labeling_app/sso_app.py``, st.login)
→ a real OIDC provider (oidc-provider-mock) on 127.0.0.1, and the admins' audit page.

One provider, one app and one browser per database (SQLite, then PostgreSQL); the tests run in
order and build on each other's accounts. Screenshots go to test-output/app/ (login-sso.png,
sso-refused.png, audit.png, audit-filtered.png).
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from sqlmodel import Session, select

from db.accounts import reset_account_password, set_account_active
from db.engine import session_scope
from db.models import Annotator, AnnotatorIdentity, AuditEvent
from tests.app_helpers import CHROMIUM, CHROMIUM_ARGS, OUTPUT, ROOT, login, running_app, sso_login
from tests.factories import PASSWORD, make_database
from tests.oidc_helpers import MockProvider
from tests.reliability_helpers import dump_tables

pytestmark = pytest.mark.browser
SCREENS = OUTPUT
HOSTILE = '<img src=x onerror="window.__xss = 1">'
USERS = {
    "dana": {"preferred_username": "dana", "name": f"Dana {HOSTILE}", "groups": ["therapists"]},
    "erin": {"preferred_username": "erin", "name": "Erin Admin", "groups": ["it-admins", "therapists"]},
    "vic": {"preferred_username": "vic" + HOSTILE, "name": "Visitor", "groups": ["guests"]},
    "mallory": {"preferred_username": "mallory", "name": "Mallory", "groups": ["therapists"]},
    "eve": {"preferred_username": "eve", "name": "Eve", "groups": ["therapists"]},
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def sso(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser-sso")
    if request.param == "sqlite":
        url = f"sqlite:///{folder / 'therapref.db'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database(f"sso{os.getpid()}")
    engine, _project = make_database(url, n_prompts=2, n_clinicians=1)
    client_secret = "client-secret-" + secrets.token_hex(12)
    with MockProvider(USERS) as provider:
        config = folder / "therapref.toml"
        config.write_text(f'[auth]\nissuer = "{provider.issuer}"\nclient_id = "therapref"\n'
                          'client_secret_env = "TP_TEST_OIDC_SECRET"\nrole_claim = "groups"\n'
                          'roles = {"therapists" = "clinician", "it-admins" = "admin"}\n')
        env = dict(os.environ, THERAPREF_CONFIG=str(config), TP_TEST_OIDC_SECRET=client_secret)
        processes: list[subprocess.Popen] = []
        log = folder / "streamlit.log"
        OUTPUT.mkdir(parents=True, exist_ok=True)
        SCREENS.mkdir(parents=True, exist_ok=True)
        with running_app(url, log, sso=True, env=env, process_out=processes) as base_url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield {"url": base_url, "engine": engine, "provider": provider, "browser": browser, "log": log,
                   "secret": client_secret, "process": processes[0], "folder": folder}
            browser.close()
    engine.dispose()


def _page(sso):
    context = sso["browser"].new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.add_init_script("window.__xss = undefined;")
    return context, page


def _account(sso, username: str) -> Annotator | None:
    with Session(sso["engine"]) as session:
        return session.exec(select(Annotator).where(Annotator.username == username)).first()


def _events(sso, action: str, target: str) -> list[AuditEvent]:
    with Session(sso["engine"]) as session:
        return list(session.exec(select(AuditEvent).where(AuditEvent.action == action, AuditEvent.target == target)))


def _log_out(page, base_url: str) -> None:
    """Our "Log out", then the provider's end-session page (confirm by keyboard), back to the app."""
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/oauth2/end_session**", timeout=60_000)
    page.get_by_role("button").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_url(base_url + "/**", timeout=60_000)
    page.get_by_role("button", name="Sign in with SSO").wait_for(timeout=60_000)


def test_first_sign_in_creates_a_clinician_and_untrusted_names_are_inert(sso):
    context, page = _page(sso)
    page.goto(sso["url"] + "/")
    page.get_by_role("button", name="Sign in with SSO").wait_for(timeout=60_000)
    page.get_by_role("textbox", name="Username").wait_for()  # local accounts stay on by default
    page.screenshot(path=str(SCREENS / "login-sso.png"), full_page=True)
    sso_login(page, sso["url"], "dana", expect=f"Signed in as Dana {HOSTILE}")
    assert page.evaluate("window.__xss") is None
    assert page.locator('img[src="x"]').count() == 0
    page.get_by_text("Which reply is better?").wait_for(timeout=60_000)
    dana = _account(sso, "dana")
    assert dana is not None and dana.role == "clinician" and dana.password_hash is None and dana.is_active
    with Session(sso["engine"]) as session:
        identity = session.exec(select(AnnotatorIdentity).where(AnnotatorIdentity.annotator_id == dana.id)).one()
    assert (identity.issuer, identity.subject) == (sso["provider"].issuer, "dana")
    assert [e.details for e in _events(sso, "annotator.add", "dana")] == [{"role": "clinician", "via": "sso"}]
    assert len(_events(sso, "auth.login", "dana")) == 1
    page.goto(sso["url"] + "/admin_audit")
    page.get_by_text("Admins only").first.wait_for(timeout=60_000)
    context.close()


def test_role_comes_from_the_claim_at_each_sign_in_and_logout_signs_out_everywhere(sso):
    context, page = _page(sso)
    sso_login(page, sso["url"], "erin", expect="Signed in as Erin Admin (admin)")
    assert _account(sso, "erin").role == "admin"  # two mapped groups: the more privileged role
    page.get_by_role("link", name="Audit log").wait_for(timeout=30_000)
    _log_out(page, sso["url"])
    page.goto(sso["url"] + "/")  # a new session: the identity cookie is gone, nobody is signed in
    page.get_by_role("button", name="Sign in with SSO").wait_for(timeout=60_000)
    assert "Signed in as" not in page.locator("body").inner_text()
    assert len(_events(sso, "auth.logout", "erin")) == 1

    sso["provider"].set_claims("erin", {**USERS["erin"], "groups": ["therapists"]})
    sso_login(page, sso["url"], "erin", expect="Signed in as Erin Admin (clinician)")
    assert _account(sso, "erin").role == "clinician"
    assert [e.details for e in _events(sso, "annotator.role", "erin")] == [
        {"from": "admin", "to": "clinician", "via": "sso"}]
    sso["provider"].set_claims("erin", USERS["erin"])
    _log_out(page, sso["url"])
    context.close()


def test_a_person_without_a_mapped_role_is_refused(sso):
    context, page = _page(sso)
    sso_login(page, sso["url"], "vic", expect="has no role in TheraPref")
    assert "Signed in as" not in page.locator("body").inner_text()
    assert _account(sso, "vic" + HOSTILE) is None
    assert [e.details for e in _events(sso, "auth.login_failed", "vic" + HOSTILE)] == [
        {"method": "sso", "reason": "no_role"}]
    page.get_by_role("button", name="Sign out of the identity provider").wait_for()
    page.screenshot(path=str(SCREENS / "sso-refused.png"), full_page=True)
    context.close()


def test_a_deactivated_account_is_refused_and_its_password_cannot_be_set(sso):
    with session_scope(sso["engine"]) as session:
        set_account_active("dana", False, session=session, actor="admin")
    with pytest.raises(ValueError, match="single sign-on"), session_scope(sso["engine"]) as session:
        reset_account_password("dana", "new-password-123", session=session, actor="admin")
    context, page = _page(sso)
    sso_login(page, sso["url"], "dana", expect="deactivated")
    assert "Signed in as" not in page.locator("body").inner_text()
    context.close()
    with session_scope(sso["engine"]) as session:
        set_account_active("dana", True, session=session, actor="admin")


@pytest.mark.parametrize("mode", ["forged", "expired"])
def test_a_forged_or_expired_id_token_is_refused(sso, mode):
    subject = {"forged": "mallory", "expired": "eve"}[mode]
    failures = sso["log"].read_text().count("OAuth token exchange failed")
    sso["provider"].mode = mode
    try:
        context, page = _page(sso)
        sso_login(page, sso["url"], subject)
        page.get_by_role("button", name="Sign in with SSO").wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        assert "Signed in as" not in page.locator("body").inner_text()
        page.goto(sso["url"] + "/")  # the callback set no identity cookie either
        page.get_by_role("button", name="Sign in with SSO").wait_for(timeout=60_000)
        assert "Signed in as" not in page.locator("body").inner_text()
        context.close()
    finally:
        sso["provider"].mode = "honest"
    assert _account(sso, subject) is None
    assert _events(sso, "auth.login", subject) == []
    assert sso["log"].read_text().count("OAuth token exchange failed") == failures + 1  # Authlib refused it


def test_audit_page_filters_by_keyboard_and_its_csv_holds_no_secret(sso):
    """An admin (password account) changes a password on the Annotators page, then reads the audit
    log: filtered by target, downloaded as CSV. Neither the CSV, the database, the app's log, its
    command line nor the repository holds the client secret, a password or any token issued."""
    new_password = "fresh-password-" + secrets.token_hex(4)
    context, page = _page(sso)
    login(page, sso["url"], "admin", PASSWORD)
    page.get_by_role("link", name="Annotators").click()
    page.get_by_role("tab", name="Reset password").click()
    page.get_by_role("textbox", name="New password (min. 8 characters)").fill(new_password)
    page.get_by_role("button", name="Reset password").click()
    page.get_by_text("Password reset for").wait_for(timeout=60_000)

    page.get_by_role("link", name="Audit log").click()
    page.get_by_role("heading", name="Audit log").wait_for(timeout=60_000)
    page.get_by_text("events").first.wait_for(timeout=60_000)
    page.wait_for_timeout(1000)
    assert page.evaluate("window.__xss") is None and page.locator('img[src="x"]').count() == 0  # vic's name
    page.screenshot(path=str(SCREENS / "audit.png"), full_page=True)
    page.get_by_role("textbox", name="Target contains").focus()
    page.keyboard.type("dana")
    page.keyboard.press("Enter")
    page.wait_for_function("() => /\\b\\d+ events/.test(document.body.innerText) && "
                           "document.body.innerText.includes('events')", timeout=30_000)
    with Session(sso["engine"]) as session:
        expected = len(session.exec(select(AuditEvent).where(AuditEvent.target.contains("dana"))).all())
    page.get_by_text(f"{expected} events").wait_for(timeout=30_000)
    page.screenshot(path=str(SCREENS / "audit-filtered.png"), full_page=True)
    page.get_by_role("button", name="Download CSV").focus()
    with page.expect_download(timeout=60_000) as download:
        page.keyboard.press("Enter")
    text = Path(download.value.path()).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == expected and all("dana" in r["target"] for r in rows)
    assert {"annotator.add", "auth.login", "annotator.deactivate"} <= {r["action"] for r in rows}
    assert page.evaluate("window.__xss") is None
    context.close()

    provider = sso["provider"]
    assert len(provider.issued) >= 6
    secrets_seen = [sso["secret"], PASSWORD, new_password, *provider.issued]
    database = dump_tables(sso["engine"])
    cmdline = Path(f"/proc/{sso['process'].pid}/cmdline").read_bytes().decode(errors="replace")
    tracked = subprocess.run(["git", "grep", "-l", "-F", sso["secret"]], cwd=ROOT, capture_output=True, text=True)
    for secret in secrets_seen:
        assert secret not in text
        assert secret not in database
        assert secret not in sso["log"].read_text()
        assert secret not in cmdline
    assert tracked.stdout == ""
    assert not any(p.name == "secrets.toml" for folder in (ROOT, sso["folder"]) for p in folder.rglob("secrets.toml"))
