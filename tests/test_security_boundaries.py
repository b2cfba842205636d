"""Boundaries: imported archives cannot write outside their folder (zip entries with `../`, absolute
paths), the app binds to 127.0.0.1 unless told otherwise, sessions time out, repeated failed
logins are refused and audited."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest
from sqlmodel import Session, select
from streamlit.testing.v1 import AppTest

from candidates.fake_server import free_port
from db.engine import make_engine
from db.models import AuditEvent
from tests.app_helpers import APP, app_login
from tests.conftest import DIALOGFLOW
from tests.factories import PASSWORD, make_database
from tests.reliability_helpers import ROOT, assert_sound, cli_env, dump_tables, run_cli, wait_until

AGENT = '{"displayName": "Evil agent", "language": "en"}'
PHRASES = '[{"data": [{"text": "I feel low"}]}]'
INTENT = '{"name": "Low", "responses": [{"messages": [{"type": 0, "speech": ["That sounds hard."]}]}]}'


def _evil_zip(path: Path, bad_name: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("agent.json", AGENT)
        archive.writestr("intents/Low.json", INTENT)
        archive.writestr("intents/Low_usersays_en.json", PHRASES)
        archive.writestr(bad_name, "owned")
    return path


@pytest.mark.parametrize("bad_name", ["../escaped.json", "intents/../../escaped.json", "/tmp/escaped.json",
                                      "..\\escaped.json"])
def test_zip_entries_cannot_escape(tmp_path, bad_name):
    work = tmp_path / "work"
    work.mkdir()
    url = f"sqlite:///{tmp_path / 'zip.db'}"
    assert run_cli("import", "prompts", str(DIALOGFLOW), "--db", url).returncode == 0
    before = dump_tables(make_engine(url))
    evil = _evil_zip(work / "agent.zip", bad_name)
    result = run_cli("import", "prompts", str(evil), "--db", url, cwd=work)
    assert result.returncode == 1
    error = result.stderr.strip()
    assert error.count("\n") == 0, error
    assert "agent.zip" in error, error
    assert "outside" in error or ".." in error, error
    assert "Traceback" not in result.stderr
    assert dump_tables(make_engine(url)) == before, "the database changed"
    escaped = [p for p in (tmp_path, Path("/tmp")) if (p / "escaped.json").exists()]
    assert escaped == [], "an entry was written outside the import folder"
    assert sorted(p.name for p in work.iterdir()) == ["agent.zip"], "nothing is extracted next to the file"
    assert_sound(url)


def test_app_binds_to_loopback_by_default(tmp_path):
    url = f"sqlite:///{tmp_path / 'bind.db'}"
    port = free_port()
    log = open(tmp_path / "app.log", "w")  # noqa: SIM115
    import subprocess

    process = subprocess.Popen([str(ROOT / ".venv" / "bin" / "therapref"), "app", "--db", url, "--port", str(port)],
                               cwd=tmp_path, env=cli_env(), stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        wait_until(lambda: any(p == port for p, _ in _listening()), timeout=120, what="the app to listen")
        addresses = {address for p, address in _listening() if p == port}
        assert addresses == {"127.0.0.1"}, f"the app listens on {addresses}"
        # The streamlit child got the loopback address, and the database URL is not on its command line.
        children = _cmdlines_with("streamlit")
        assert any("--server.address=127.0.0.1" in c for c in children), children
        assert all(url not in c for c in children)
    finally:
        import os
        import signal

        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def _listening() -> list[tuple[int, str]]:
    """(port, address) of every listening TCP socket (IPv4 and IPv6), from /proc/net."""
    out = []
    for name, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            hex_address, hex_port = fields[1].split(":")
            if width == 8:
                address = ".".join(str(b) for b in reversed(bytes.fromhex(hex_address)))
            else:
                address = "::1" if hex_address.endswith("01000000") and set(hex_address[:24]) == {"0"} else (
                    "::" if set(hex_address) == {"0"} else hex_address)
            out.append((int(hex_port, 16), address))
    return out


def _cmdlines_with(word: str) -> list[str]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if word in cmd and "labeling_app" in cmd:
                lines.append(cmd)
    return lines


@pytest.fixture
def app_db(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine, _project = make_database(url, n_prompts=3, n_clinicians=1)
    monkeypatch.setenv("THERAPREF_DATABASE_URL", url)
    return engine


def _signed_in(at: AppTest) -> bool:
    return any("Signed in as" in t.value for t in at.text)


def test_session_times_out_after_idle(app_db, monkeypatch):
    monkeypatch.setenv("THERAPREF_SESSION_TIMEOUT_MINUTES", "1")
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    app_login(at, "clin0", PASSWORD)
    assert _signed_in(at)
    at.run()
    assert _signed_in(at), "activity within the timeout keeps the session"
    # Pretend the last activity was two minutes ago.
    at.session_state["_therapref_last_seen"] = time.time() - 120
    at.run()
    assert not _signed_in(at)
    assert any("timed out" in m.value for m in at.info), [m.value for m in at.info]
    with Session(app_db) as session:  # the pair on screen went back to the queue
        from db.models import Reservation

        assert session.exec(select(Reservation)).all() == []


def test_failed_logins_lock_the_account_and_are_audited(app_db):
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    for _ in range(5):
        app_login(at, "clin0", "wrong-password-123")
        assert not _signed_in(at)
    app_login(at, "clin0", PASSWORD)
    assert not _signed_in(at), "a locked account must not log in even with the right password"
    errors = " ".join(e.value for e in at.error)
    assert "Login failed" in errors
    assert "wrong-password" not in errors
    with Session(app_db) as session:
        events = session.exec(select(AuditEvent).where(AuditEvent.action == "auth.login_failed")).all()
    assert len(events) == 6
    assert all(e.target == "clin0" for e in events)
    assert PASSWORD not in dump_tables(app_db)
    assert "wrong-password-123" not in dump_tables(app_db)


def test_login_attempts_are_rate_limited_per_session(app_db):
    """Password spraying (one guess per account, many accounts) never trips the per-account lockout,
    so the login form itself must slow a browser session down after repeated failures: after ten
    failed attempts an eleventh (even with valid credentials) is refused for a cooldown, or at least
    delayed by seconds compared with the first attempt."""
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    durations = []
    for i in range(10):
        started = time.monotonic()
        app_login(at, f"nobody{i}", "guess-password-1")
        durations.append(time.monotonic() - started)
    started = time.monotonic()
    app_login(at, "clin0", PASSWORD)
    eleventh = time.monotonic() - started
    refused = not _signed_in(at)
    assert refused or eleventh >= min(durations) + 3.0, (
        f"after 10 failed logins in one session the 11th went straight through ({eleventh:.1f}s; "
        f"first attempts {min(durations):.1f}s)")
