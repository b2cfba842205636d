"""Single sign-on below the browser: ``[auth]`` settings, ``db.sso`` on SQLite and PostgreSQL, the
identity migration up and down with data, the login page in AppTest, and ``therapref app`` refusing
a bad ``[auth]`` with one line and nothing written."""

from __future__ import annotations

import time

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlmodel import Session, select
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from db.accounts import account_rows, add_account, reset_account_password, set_account_active
from db.auth import AccountError
from db.migrate import alembic_config, current_revision, head_revision, upgrade
from db.models import Annotator, AnnotatorIdentity, AuditEvent, Judgment
from db.sso import RoleMapping, SsoConfigError, SsoRefused, sso_sign_in
from labeling_app.state import USER_KEY
from tests.app_helpers import APP, app_login
from tests.factories import PASSWORD, build_project, make_database
from therapref.cli import app as cli
from therapref.settings import AuthSettings, Settings, SettingsError

ISSUER = "https://idp.example/realms/clinic"
MAPPING = RoleMapping("groups", {"therapists": "clinician", "it-admins": "admin"})
BASE = '[auth]\nissuer = "https://idp"\nclient_id = "tp"\n'
TOML = ('[auth]\nissuer = "https://idp.example/realms/clinic"\nclient_id = "therapref"\n'
        'roles = {"therapists" = "clinician", "it-admins" = "admin"}\n')


def claims(sub: str = "s-1", groups=("therapists",), **extra):
    return {"iss": ISSUER, "sub": sub, "exp": time.time() + 600, "iat": time.time(), "aud": ["therapref"],
            "preferred_username": extra.pop("username", f"user-{sub}"), "groups": list(groups), **extra}


def _events(session: Session, action: str) -> list[AuditEvent]:
    return list(session.exec(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


# --- settings --------------------------------------------------------------------------------------

def test_auth_table_is_read_from_therapref_toml(tmp_path):
    path = tmp_path / "therapref.toml"
    path.write_text('app_port = 8600\n' + TOML + 'local_accounts = false\nrole_claim = "realm_access.roles"\n')
    settings = Settings.load(config_file=path, environ={})
    assert settings.app_port == 8600
    assert settings.auth == AuthSettings(issuer=ISSUER, client_id="therapref", local_accounts=False,
                                         role_claim="realm_access.roles",
                                         roles={"therapists": "clinician", "it-admins": "admin"})
    assert Settings.load(config_file=tmp_path / "none.toml", environ={}).auth is None
    with pytest.raises(SettingsError, match="THERAPREF_OIDC_CLIENT_SECRET"):
        settings.auth.client_secret({})
    assert settings.auth.client_secret({"THERAPREF_OIDC_CLIENT_SECRET": "s"}) == "s"


@pytest.mark.parametrize(("table", "message"), [
    ('[auth]\nclient_id = "tp"\n', "therapref.toml: [auth] issuer is missing"),
    ('[auth]\nissuer = "https://idp"\n', "therapref.toml: [auth] client_id is missing"),
    (BASE + 'client_secret = "x"\n', "[auth] client_secret is not a setting"),
    (BASE + 'local_accounts = "no"\n', "[auth] local_accounts must be a boolean"),
    (BASE + 'roles = "admin"\n', "[auth] roles must be a table"),
    ('[auth]\nissuer = "idp.example"\nclient_id = "tp"\n', "[auth] issuer must be an http(s) URL"),
])
def test_bad_auth_tables_are_one_clear_line(tmp_path, table, message):
    path = tmp_path / "therapref.toml"
    path.write_text(table)
    with pytest.raises(SettingsError) as error:
        Settings.load(config_file=path, environ={})
    assert message in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(("table", "message"), [
    ('[auth]\nclient_id = "tp"\n', "[auth] issuer is missing"),
    ('[auth]\nissuer = "https://idp"\nclient_id = "tp"\nroles = {"staff" = "superuser"}\n',
     "[auth] roles.staff: unknown role 'superuser' (known: clinician, lead, admin)"),
])
def test_therapref_app_refuses_a_bad_auth_table_and_writes_nothing(tmp_path, monkeypatch, table, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "therapref.toml").write_text(table)
    result = CliRunner().invoke(cli, ["app", "--port", "1"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "therapref.toml" in lines[0], result.output
    assert not (tmp_path / "therapref.db").exists()


def test_therapref_app_without_the_client_secret_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("THERAPREF_OIDC_CLIENT_SECRET", raising=False)
    (tmp_path / "therapref.toml").write_text(TOML)
    result = CliRunner().invoke(cli, ["app", "--port", "1"])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "THERAPREF_OIDC_CLIENT_SECRET" in result.output
    assert not (tmp_path / "therapref.db").exists()


def test_role_mapping_knows_lead_and_rejects_unknown_roles():
    mapping = RoleMapping("groups", {"therapists": "clinician", "leads": "lead", "it-admins": "admin"})
    assert mapping.role_for({"groups": ["therapists", "leads"]}) == "lead"  # between clinician and admin
    assert mapping.role_for({"groups": ["leads", "it-admins"]}) == "admin"
    with pytest.raises(SsoConfigError, match="unknown role 'chief'"):
        RoleMapping("groups", {"chiefs": "chief"})


# --- accounts ---------------------------------------------------------------------------------------

def test_first_sign_in_creates_the_account_and_later_ones_follow_the_claim(any_engine):
    with Session(any_engine) as session:
        dana = sso_sign_in(claims("d-1", username="dana", name="Dana Lee"), issuer=ISSUER + "/", mapping=MAPPING,
                           session=session)
        session.commit()
        assert (dana.username, dana.display_name, dana.role, dana.password_hash) == ("dana", "Dana Lee", "clinician",
                                                                                    None)
        identity = session.exec(select(AnnotatorIdentity)).one()
        assert (identity.issuer, identity.subject, identity.annotator_id) == (ISSUER, "d-1", dana.id)
        again = sso_sign_in(claims("d-1", groups=("therapists", "it-admins"), username="renamed"), issuer=ISSUER,
                            mapping=MAPPING, session=session)
        session.commit()
        assert again.id == dana.id and again.username == "dana" and again.role == "admin"
        assert [e.details for e in _events(session, "annotator.role")] == [
            {"from": "clinician", "to": "admin", "via": "sso"}]
        assert [e.details for e in _events(session, "annotator.add")] == [{"role": "clinician", "via": "sso"}]
        assert len(_events(session, "auth.login")) == 2
        assert {r["username"]: r["sign_in"] for r in account_rows(session=session)} == {"dana": "sso"}
        with pytest.raises(SsoRefused) as refused:
            sso_sign_in(claims("d-1", groups=("visitors",)), issuer=ISSUER, mapping=MAPPING, session=session)
        assert refused.value.reason == "no_role"
        session.commit()
        assert session.get(Annotator, dana.id).role == "admin"  # unchanged by a refusal
        assert [e.details["reason"] for e in _events(session, "auth.login_failed")] == ["no_role"]


@pytest.mark.parametrize(("changes", "reason"), [
    ({"groups": ["visitors"]}, "no_role"),
    ({"iss": "https://evil.example"}, "issuer"),
    ({"exp": time.time() - 3600}, "expired"),
    ({"sub": ""}, "bad_claims"),
    ({"preferred_username": "import:hh", "email": None, "sub": "judge:x"}, "bad_claims"),
    ({"preferred_username": "admin"}, "username_taken"),
])
def test_refusals_create_nothing_and_are_audited(any_engine, changes, reason):
    with Session(any_engine) as session:
        build_project(session, n_prompts=1, n_clinicians=1)
        session.commit()
        before = len(session.exec(select(Annotator)).all())
        with pytest.raises(SsoRefused) as refused:
            sso_sign_in({**claims("x-1"), **changes}, issuer=ISSUER, mapping=MAPPING, session=session)
        session.commit()
        assert refused.value.reason == reason
        assert len(session.exec(select(Annotator)).all()) == before
        assert session.exec(select(AnnotatorIdentity)).all() == []
        assert [e.details for e in _events(session, "auth.login_failed")] == [{"method": "sso", "reason": reason}]


def test_deactivation_is_honoured_and_sso_accounts_have_no_password(any_engine):
    with Session(any_engine) as session:
        sso_sign_in(claims("d-1", username="dana"), issuer=ISSUER, mapping=MAPPING, session=session)
        set_account_active("dana", False, session=session, actor="boss")
        with pytest.raises(SsoRefused, match="deactivated"):
            sso_sign_in(claims("d-1", username="dana"), issuer=ISSUER, mapping=MAPPING, session=session)
        with pytest.raises(AccountError, match="single sign-on"):
            reset_account_password("dana", "a-new-password-1", session=session, actor="boss")
        set_account_active("dana", True, session=session, actor="boss")
        assert sso_sign_in(claims("d-1", username="dana"), issuer=ISSUER, mapping=MAPPING, session=session).is_active
        add_account("local", PASSWORD, session=session, actor="boss")
        reset_account_password("local", "a-new-password-1", session=session, actor="boss")  # password accounts still


# --- migration --------------------------------------------------------------------------------------

def test_migration_0011_up_and_down_with_data(any_db_url):
    engine, project = make_database(any_db_url, n_prompts=2, n_clinicians=2, with_judgments=True)
    with Session(engine) as session:
        judgments = len(session.exec(select(Judgment)).all())
        accounts = sorted(a.username for a in session.exec(select(Annotator)))
        sso_sign_in(claims("d-1", username="dana"), issuer=ISSUER, mapping=MAPPING, session=session)
        session.commit()
    assert current_revision(engine) == head_revision()
    with pytest.raises(RuntimeError, match="single sign-on accounts exist"):
        command.downgrade(alembic_config(engine), "0010")
    assert "annotatoridentity" in inspect(engine).get_table_names()
    with engine.begin() as connection:  # the admin removes the SSO account, then downgrades
        connection.execute(text("DELETE FROM annotatoridentity"))
        connection.execute(text("DELETE FROM auditevent"))
        connection.execute(text("DELETE FROM annotator WHERE username = 'dana'"))
    command.downgrade(alembic_config(engine), "0010")
    assert current_revision(engine) == "0010"
    assert "annotatoridentity" not in inspect(engine).get_table_names()
    with engine.connect() as connection:
        assert sorted(r[0] for r in connection.execute(text("SELECT username FROM annotator"))) == accounts
        assert connection.execute(text("SELECT count(*) FROM judgment")).scalar() == judgments
    assert upgrade(engine) == head_revision()
    with Session(engine) as session:
        dana = sso_sign_in(claims("d-2", username="dana"), issuer=ISSUER, mapping=MAPPING, session=session)
        session.commit()
        assert session.exec(select(AnnotatorIdentity)).one().annotator_id == dana.id
        assert len(session.exec(select(Judgment)).all()) == judgments
    engine.dispose()


# --- the login page ---------------------------------------------------------------------------------

@pytest.fixture
def sso_app(sqlite_url, tmp_path, monkeypatch):
    engine, project = make_database(sqlite_url, n_prompts=2, n_clinicians=1)
    monkeypatch.setenv("THERAPREF_DATABASE_URL", sqlite_url)
    config = tmp_path / "therapref.toml"
    monkeypatch.setenv("THERAPREF_CONFIG", str(config))
    yield engine, config
    engine.dispose()


def _at(user: dict | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    if user is not None:
        at.user = user
    return at.run()


def test_login_page_offers_sso_and_local_accounts_sign_in_too(sso_app):
    engine, config = sso_app
    config.write_text(TOML)
    at = _at()
    assert [b.label for b in at.button if b.key == "sso_login"] == ["Sign in with SSO"]
    app_login(at, "clin0", PASSWORD)
    assert at.session_state[USER_KEY].username == "clin0" and not at.session_state[USER_KEY].via_sso


def test_local_accounts_can_be_switched_off(sso_app):
    engine, config = sso_app
    config.write_text(TOML + "local_accounts = false\n")
    at = _at()
    assert [b.key for b in at.button] == ["sso_login"]
    assert not any(t.key == "login_username" for t in at.text_input)


def test_verified_claims_sign_in_and_a_refusal_is_shown_once(sso_app):
    engine, config = sso_app
    config.write_text(TOML)
    at = _at({"is_logged_in": True, **claims("d-1", username="dana", name="Dana")})
    user = at.session_state[USER_KEY]
    assert (user.username, user.role, user.via_sso) == ("dana", "clinician", True)
    at = _at({"is_logged_in": True, **claims("v-1", groups=("guests",), username="vic")})
    assert USER_KEY not in at.session_state
    assert any("has no role in TheraPref" in e.value for e in at.error)
    assert [b.key for b in at.button if b.key == "sso_logout"] == ["sso_logout"]
    at.run()
    with Session(engine) as session:
        assert len(_events(session, "auth.login_failed")) == 1  # reruns do not audit it again
