"""Backup and restore: `therapref backup` while another process keeps writing judgments; the copy
opens, passes integrity checks and holds every judgment committed before the backup started.
PostgreSQL: the documented pg_dump / pg_restore round trip (docs/operations.md)."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import textwrap
import time

import pytest
from sqlmodel import Session, select

from db.auth import create_annotator
from db.crud import add_comparison, add_judgment, add_response, get_or_create_candidate, get_or_create_prompt
from db.engine import make_engine
from db.migrate import upgrade
from db.models import Annotator, Comparison
from tests.pg import _pg_tool
from tests.reliability_helpers import PYTHON, ROOT, assert_sound, cli_env, count, run_cli, sqlite_file_checks

N_PROMPTS = 600
FILLER = "I keep thinking about what happened at work and it is hard to sleep. " * 20  # ~1.4 kB


def _build(url: str) -> None:
    """A database of several MB (well over one backup step of pages) with open comparisons."""
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        warm, _ = get_or_create_candidate("warm", session=session, provider="local")
        terse, _ = get_or_create_candidate("terse", session=session, provider="local")
        create_annotator("writer", "correct-horse-battery", session=session)
        for i in range(N_PROMPTS):
            prompt, _ = get_or_create_prompt([{"role": "user", "content": f"{i}: {FILLER}"}], session=session)
            a, _ = add_response(prompt, warm, f"Long warm reply {i}. {FILLER}", session=session)
            b, _ = add_response(prompt, terse, f"Okay {i}.", session=session)
            add_comparison(a, b, session=session)
        session.commit()
    engine.dispose()


WRITER = textwrap.dedent("""
    import sys, time
    from sqlmodel import Session, select
    from db.crud import add_judgment
    from db.engine import make_engine
    from db.models import Annotator, Comparison
    engine = make_engine(sys.argv[1])
    with Session(engine) as s:
        ids = [c.id for c in s.exec(select(Comparison).order_by(Comparison.id))]
    for cid in ids:
        with Session(engine, expire_on_commit=False) as s:
            who = s.exec(select(Annotator).where(Annotator.username == "writer")).one()
            add_judgment(s.get(Comparison, cid), who, "a", session=s, idempotency_key=f"k{cid}")
            s.commit()
        print(cid, flush=True)
        time.sleep(0.01)
""")


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def _judgment_ids(path) -> set[int]:
    conn = sqlite3.connect(path, timeout=30)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM judgment")}
    finally:
        conn.close()


def test_online_backup_while_writing_and_restore(tmp_path):
    db = tmp_path / "live.db"
    url = f"sqlite:///{db}"
    _build(url)
    assert db.stat().st_size > 2_000_000
    writer = subprocess.Popen([str(PYTHON), "-c", WRITER, url], cwd=ROOT, env=cli_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: len(_judgment_ids(db)) >= 20)
        committed_before = _judgment_ids(db)
        backup_file = tmp_path / "backup.db"
        result = run_cli("backup", str(backup_file), "--db", url, timeout=120)
        assert result.returncode == 0, result.stderr
        after = _judgment_ids(db)
        assert writer.poll() is None, "the writer must still be running during the backup"
        assert len(after) > len(committed_before), "writes went on during the backup"
    finally:
        writer.send_signal(signal.SIGKILL)
        _, err = writer.communicate(timeout=30)
    assert "Traceback" not in err, err  # the writer saw no 'database is locked'

    # The copy: a single self-contained file that passes every check and holds all prior judgments.
    assert not (tmp_path / "backup.db-wal").exists() or (tmp_path / "backup.db-wal").stat().st_size == 0
    assert sqlite_file_checks(backup_file) == []
    assert committed_before <= _judgment_ids(backup_file)
    assert not list(tmp_path.glob(".backup.db.tmp*")), "temporary backup file left behind"

    # Restore: copy the backup over the (pretend-lost) database and use it with --db.
    restored = tmp_path / "restored.db"
    shutil.copyfile(backup_file, restored)
    restored_url = f"sqlite:///{restored}"
    status = run_cli("status", "--json", "--db", restored_url)
    assert status.returncode == 0, status.stderr
    assert_sound(restored_url)
    engine = make_engine(restored_url)
    with Session(engine, expire_on_commit=False) as session:
        judged = {j for j in _judgment_ids(restored)}
        open_comparison = session.exec(select(Comparison).where(Comparison.judgments_count == 0)).first()
        who = session.exec(select(Annotator).where(Annotator.username == "writer")).one()
        _, created = add_judgment(open_comparison, who, "b", session=session)
        session.commit()
    assert created
    assert count(engine, "judgment") == len(judged) + 1
    assert_sound(engine)


def test_backup_refuses_to_overwrite_and_rejects_postgres(tmp_path, postgres_url):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    assert run_cli("init", "--db", url).returncode == 0
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"keep me")
    result = run_cli("backup", str(existing), "--db", url)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "exists" in result.stderr
    assert existing.read_bytes() == b"keep me"
    assert run_cli("backup", str(existing), "--db", url, "--force").returncode == 0
    assert sqlite_file_checks(existing) == []

    pg = run_cli("backup", str(tmp_path / "pg.db"), "--db", postgres_url)
    assert pg.returncode == 1
    assert "pg_dump" in pg.stderr
    assert "Traceback" not in pg.stderr
    assert not (tmp_path / "pg.db").exists()


@pytest.mark.postgres
def test_pg_dump_and_restore_round_trip(tmp_path, postgres_server):
    """The PostgreSQL procedure in docs/operations.md: pg_dump -Fc, pg_restore into a new database."""
    from tests.factories import build_project

    source_url = postgres_server.create_database("bk_source")
    engine = make_engine(source_url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        build_project(session, n_prompts=4, n_clinicians=2, with_judgments=True)
    dump = tmp_path / "therapref.dump"
    host = ["-h", "127.0.0.1", "-p", str(postgres_server.port), "-U", "postgres"]
    subprocess.run([_pg_tool("pg_dump"), *host, "-Fc", "-f", str(dump), "bk_source"], check=True,
                   capture_output=True)
    target_url = postgres_server.create_database("bk_target")
    subprocess.run([_pg_tool("pg_restore"), *host, "--no-owner", "-d", "bk_target", str(dump)], check=True,
                   capture_output=True)
    restored = make_engine(target_url)
    for table in ("annotator", "prompt", "response", "comparison", "judgment", "guidelineversion"):
        assert count(restored, table) == count(engine, table) > 0
    assert_sound(restored)
    # Sequences came along: new rows get fresh ids instead of colliding with restored ones.
    status = run_cli("status", "--json", "--db", target_url)
    assert status.returncode == 0, status.stderr
    with Session(restored, expire_on_commit=False) as session:
        create_annotator("after-restore", "correct-horse-battery", session=session)
        session.commit()
    assert count(restored, "annotator") == count(engine, "annotator") + 1
