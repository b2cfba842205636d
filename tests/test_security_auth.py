"""Accounts: argon2 hashes, passwords never in logs/output/tables, lockout, audit of admin actions.

Runs the real CLI as a subprocess and the library against SQLite and a real PostgreSQL server.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from argon2 import PasswordHasher
from sqlmodel import Session, select

from db.auth import authenticate, create_annotator, is_locked
from db.engine import make_engine
from db.models import Annotator, AuditEvent, utcnow
from tests.reliability_helpers import dump_tables, run_cli

SECRET = "PlantedPassw0rd-7f3a9c"


@pytest.fixture
def cli_db(tmp_path):
    url = f"sqlite:///{tmp_path / 'sec.db'}"
    result = run_cli("init", "--db", url)
    assert result.returncode == 0, result.stderr
    return url


def test_cli_add_user_hashes_with_argon2_and_never_prints_password(cli_db, tmp_path):
    add = run_cli("annotators", "add", "alice", "--db", cli_db, "--role", "admin", "--password-stdin",
                  input=SECRET + "\n")
    assert add.returncode == 0, add.stderr
    reset = run_cli("annotators", "reset-password", "alice", "--db", cli_db, "--password-stdin",
                    input=SECRET + "-new\n")
    assert reset.returncode == 0, reset.stderr
    listing = run_cli("annotators", "list", "--db", cli_db)
    short = run_cli("annotators", "add", "bob", "--db", cli_db, "--password-stdin", input="short\n")
    assert short.returncode == 1
    assert short.stderr.count("\n") == 1
    assert "short" not in short.stderr
    output = "".join(r.stdout + r.stderr for r in (add, reset, listing, short))
    assert SECRET not in output

    engine = make_engine(cli_db)
    with Session(engine) as session:
        alice = session.exec(select(Annotator).where(Annotator.username == "alice")).one()
        assert alice.password_hash.startswith("$argon2id$")
        assert PasswordHasher().verify(alice.password_hash, SECRET + "-new")
        assert authenticate("alice", SECRET + "-new", session=session) is not None
    dump = dump_tables(engine)
    assert SECRET not in dump, "a password reached the database in clear text"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(SECRET.encode() not in p.read_bytes() for p in files)


def test_library_login_never_logs_password(engine, caplog):
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)  # SQL echo would show bound params
    try:
        with Session(engine, expire_on_commit=False) as session:
            create_annotator("carol", SECRET, session=session)
            session.commit()
            assert authenticate("carol", "wrong-" + SECRET, session=session) is None
            assert authenticate("carol", SECRET, session=session) is not None
            session.commit()
    finally:
        logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    assert caplog.records, "SQL logging was expected to capture statements"
    assert SECRET not in caplog.text


def test_lockout_after_repeated_failures(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        create_annotator("dave", SECRET, session=session)
        session.commit()
        failures = 0
        while not is_locked("dave", session=session):
            assert failures < 10, "ten wrong passwords in a row must lock the account"
            assert authenticate("dave", "nope-nope-nope", session=session) is None
            session.commit()
            failures += 1
        assert failures >= 3, "a couple of typos must not lock an account"
        # Locked: even the right password fails, and the lock is not lifted by trying.
        assert authenticate("dave", SECRET, session=session) is None
        session.commit()
        assert is_locked("dave", session=session)
        dave = session.exec(select(Annotator).where(Annotator.username == "dave")).one()
        locked_for = dave.locked_until - utcnow() if dave.locked_until.tzinfo else None
        assert locked_for is None or locked_for >= timedelta(minutes=5)
        # When the lock expires the right password works again.
        dave.locked_until = utcnow() - timedelta(seconds=1)
        session.add(dave)
        session.commit()
        assert authenticate("dave", SECRET, session=session) is not None


def test_unknown_inactive_and_source_accounts_cannot_log_in(engine):
    from db.accounts import set_account_active
    from db.crud import get_or_create_source_annotator

    with Session(engine, expire_on_commit=False) as session:
        create_annotator("erin", SECRET, session=session)
        source = get_or_create_source_annotator("counselchat-upvotes", session=session)
        assert source.password_hash is None
        set_account_active("erin", False, session=session, actor="test")
        session.commit()
        assert authenticate("erin", SECRET, session=session) is None
        assert authenticate("nobody", SECRET, session=session) is None
        assert authenticate(source.username, "", session=session) is None
        assert authenticate(source.username, SECRET, session=session) is None


def test_cli_reset_password_lifts_lockout(cli_db):
    assert run_cli("annotators", "add", "frank", "--db", cli_db, "--password-stdin",
                   input=SECRET + "\n").returncode == 0
    engine = make_engine(cli_db)
    with Session(engine, expire_on_commit=False) as session:
        for _ in range(10):
            authenticate("frank", "wrong-password", session=session)
            session.commit()
            if is_locked("frank", session=session):
                break
        assert is_locked("frank", session=session)
    assert run_cli("annotators", "reset-password", "frank", "--db", cli_db, "--password-stdin",
                   input=SECRET + "2\n").returncode == 0
    with Session(engine, expire_on_commit=False) as session:
        assert not is_locked("frank", session=session)
        assert authenticate("frank", SECRET + "2", session=session) is not None


def test_admin_actions_are_audited(cli_db):
    started = utcnow()
    for args, stdin in [
        (("annotators", "add", "gina", "--role", "admin"), SECRET + "\n"),
        (("annotators", "add", "hank"), SECRET + "\n"),
        (("annotators", "reset-password", "hank"), SECRET + "x\n"),
        (("annotators", "deactivate", "hank"), None),
    ]:
        extra = ("--password-stdin",) if stdin else ()
        result = run_cli(*args, "--db", cli_db, *extra, input=stdin)
        assert result.returncode == 0, result.stderr
    engine = make_engine(cli_db)
    with Session(engine) as session:
        events = session.exec(select(AuditEvent).order_by(AuditEvent.id)).all()
    seen = [(e.action, e.target) for e in events]
    assert ("annotator.add", "gina") in seen
    assert ("annotator.add", "hank") in seen
    assert ("annotator.reset_password", "hank") in seen
    assert ("annotator.deactivate", "hank") in seen
    for event in events:
        assert event.actor, "every audit event names who acted"
        created = event.created_at if event.created_at.tzinfo else event.created_at.replace(tzinfo=started.tzinfo)
        assert created >= started - timedelta(seconds=5), "every audit event says when"
        assert SECRET not in repr(event.details)


def test_cli_deactivate_releases_the_annotators_reserved_pairs(cli_db):
    """`therapref annotators deactivate` hands the account's reserved pairs back to the queue, as the
    app's Annotators page does (it used to leave them held until the reservation expired)."""
    from db.assignment import next_comparison
    from db.models import Reservation
    from tests.factories import build_project

    engine = make_engine(cli_db)
    with Session(engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=2, n_clinicians=3)
        leaving, staying, newcomer = (c.id for c in project.clinicians)
        held = next_comparison(leaving, session=session, reservation_minutes=60)
        kept = next_comparison(staying, session=session, reservation_minutes=60)
        session.commit()
    assert held is not None
    assert kept is not None

    result = run_cli("annotators", "deactivate", "clin0", "--db", cli_db)
    assert result.returncode == 0, result.stderr

    with Session(engine) as session:
        holders = session.exec(select(Reservation.annotator_id)).all()
        assert holders == [staying], "the deactivated account's reservation must be released, others kept"
        assert not session.get(Annotator, leaving).is_active
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "annotator.deactivate")).one()
        assert (event.actor, event.target, event.details) == ("cli", "clin0", {"released_reservations": 1})
        # Both pairs were held; the one the deactivated account held is open again at once.
        assert next_comparison(newcomer, session=session).comparison_id == held.comparison_id


def test_admin_actions_in_the_app_are_audited_with_the_admin_as_actor(engine):
    """The account actions (db.accounts, which the app's Annotators page calls) record the signed-in
    admin as the actor."""
    from db.accounts import add_account, reset_account_password, set_account_active

    with Session(engine, expire_on_commit=False) as session:
        add_account("ivy", SECRET, session=session, actor="lead-admin", role="clinician")
        reset_account_password("ivy", SECRET + "-2", session=session, actor="lead-admin")
        set_account_active("ivy", False, session=session, actor="lead-admin")
        session.commit()
        events = session.exec(select(AuditEvent).order_by(AuditEvent.id)).all()
    assert [(e.actor, e.action, e.target) for e in events] == [
        ("lead-admin", "annotator.add", "ivy"), ("lead-admin", "annotator.reset_password", "ivy"),
        ("lead-admin", "annotator.deactivate", "ivy")]
    assert all(e.created_at is not None for e in events)
    assert SECRET not in dump_tables(engine)


def test_every_failed_login_takes_the_same_time(engine):
    """Timing must not tell an unknown user from a wrong password, a locked or an inactive account:
    each failure verifies one argon2 hash (a locked account used to answer ~2x faster, measured in
    a browser). Attempts are interleaved and rolled back, so no path changes the accounts' state."""
    import statistics
    import time

    from db.accounts import set_account_active

    with Session(engine, expire_on_commit=False) as session:
        create_annotator("known", SECRET, session=session)
        create_annotator("locked", SECRET, session=session)
        create_annotator("inactive", SECRET, session=session)
        session.exec(select(Annotator).where(Annotator.username == "locked")).one().locked_until = (
            utcnow() + timedelta(minutes=15))
        set_account_active("inactive", False, session=session, actor="test")
        session.commit()
        paths = {"unknown user": ("nobody-here", SECRET), "wrong password": ("known", "wrong-" + SECRET),
                 "locked (right password)": ("locked", SECRET), "inactive (right password)": ("inactive", SECRET)}
        timings: dict[str, list[float]] = {name: [] for name in paths}
        for _round in range(9):
            for name, (username, password) in paths.items():
                started = time.perf_counter()
                assert authenticate(username, password, session=session) is None
                timings[name].append(time.perf_counter() - started)
                session.rollback()
    medians = {name: statistics.median(values) for name, values in timings.items()}
    fastest, slowest = min(medians.values()), max(medians.values())
    shown = ", ".join(f"{name} {value * 1000:.1f} ms" for name, value in medians.items())
    assert slowest / fastest < 1.5, f"failed logins differ in time: {shown}"
