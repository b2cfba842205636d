"""SQLite writers of all processes queue on ``<file>-writer.lock`` (db/writer_queue.py).

Each test fails if the queue breaks: a writer that does not wait for the lock, a wait without
bound, a lock that outlives a killed process, a thread that deadlocks on its own lock, or the
switch that turns the queue off.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from sqlalchemy import text

from db.engine import make_engine, session_scope
from db.migrate import upgrade
from db.writer_queue import WriterQueueConnection, writer_lock_path
from tests.reliability_helpers import ROOT


def _raw(engine):
    return engine.raw_connection().dbapi_connection


def _write_in_thread(engine, sql: str) -> tuple[threading.Thread, threading.Event]:
    """Start one write transaction in another thread; the event is set once it committed."""
    wrote = threading.Event()

    def writer() -> None:
        with session_scope(engine) as session:
            session.connection().execute(text(sql))
        wrote.set()

    thread = threading.Thread(target=writer)
    thread.start()
    return thread, wrote


def test_file_databases_queue_writers_and_memory_ones_do_not(tmp_path):
    path = tmp_path / "q.db"
    engine = make_engine(path)
    with session_scope(engine) as session:
        session.connection().execute(text("CREATE TABLE t (x INTEGER)"))
    assert isinstance(_raw(engine), WriterQueueConnection)
    assert writer_lock_path(str(path)).exists()
    assert not isinstance(_raw(make_engine("sqlite://")), WriterQueueConnection)
    engine.dispose()


def test_switch_turns_the_queue_off(tmp_path):
    engine = make_engine(tmp_path / "off.db", writer_queue=False)
    assert not isinstance(_raw(engine), WriterQueueConnection)
    assert not writer_lock_path(str(tmp_path / "off.db")).exists()
    engine.dispose()


def test_the_switch_comes_from_the_settings_not_from_the_library(tmp_path, monkeypatch):
    """``THERAPREF_SQLITE_WRITER_QUEUE=off`` reaches the engine through ``Settings`` at the edge (the CLI's
    ``open_engine``); ``make_engine`` itself reads no environment."""
    from therapref.cli.common import open_engine
    from therapref.settings import Settings

    assert Settings.load(environ={}).sqlite_writer_queue is True
    assert Settings.load(environ={"THERAPREF_SQLITE_WRITER_QUEUE": "off"}).sqlite_writer_queue is False
    monkeypatch.setenv("THERAPREF_SQLITE_WRITER_QUEUE", "off")
    library = make_engine(tmp_path / "library.db")
    assert isinstance(_raw(library), WriterQueueConnection)
    edge = open_engine(str(tmp_path / "edge.db"), migrate=False)
    assert not isinstance(_raw(edge), WriterQueueConnection)
    library.dispose()
    edge.dispose()


def test_second_writer_waits_for_the_first_to_commit(tmp_path):
    engine = make_engine(tmp_path / "w.db")
    with session_scope(engine) as session:
        session.connection().execute(text("CREATE TABLE log (who TEXT)"))
    order: list[str] = []
    first_in = threading.Event()

    def first() -> None:
        with session_scope(engine) as session:
            session.connection().execute(text("INSERT INTO log VALUES ('first')"))
            first_in.set()
            time.sleep(0.3)
            order.append("first commits")

    thread = threading.Thread(target=first)
    thread.start()
    assert first_in.wait(5)
    started = time.perf_counter()
    with session_scope(engine) as session:
        session.connection().execute(text("INSERT INTO log VALUES ('second')"))
        order.append("second writes")
    waited = time.perf_counter() - started
    thread.join()
    assert order == ["first commits", "second writes"]
    assert waited >= 0.2
    engine.dispose()


def test_writers_wait_on_the_os_lock_not_only_on_sqlite(tmp_path):
    # Hold only the queue's lock (not SQLite's): a writer must wait for it, then go ahead.
    path = tmp_path / "f.db"
    engine = make_engine(path)
    with session_scope(engine) as session:
        session.connection().execute(text("CREATE TABLE t (x INTEGER)"))
    fd = os.open(writer_lock_path(str(path)), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    thread, wrote = _write_in_thread(engine, "INSERT INTO t VALUES (1)")
    try:
        assert not wrote.wait(0.5)  # queued behind the lock holder
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert wrote.wait(5)
    thread.join()
    engine.dispose()


@pytest.mark.timeout(30)
def test_the_wait_is_bounded_then_sqlite_decides(tmp_path, monkeypatch):
    # A stuck lock holder that does not hold SQLite's lock: after wait_seconds the writer goes on.
    monkeypatch.setattr(WriterQueueConnection, "wait_seconds", 0.4)
    path = tmp_path / "b.db"
    engine = make_engine(path)
    fd = os.open(writer_lock_path(str(path)), os.O_RDONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        started = time.perf_counter()
        with session_scope(engine) as session:
            session.connection().execute(text("CREATE TABLE t (x INTEGER)"))
        assert 0.3 <= time.perf_counter() - started < 5
        # The given-up wait is still in flight on that connection; the next write takes it over
        # and is served as soon as the holder lets go.
        monkeypatch.setattr(WriterQueueConnection, "wait_seconds", 10)
        thread, wrote = _write_in_thread(engine, "INSERT INTO t VALUES (1)")
        assert not wrote.wait(0.5)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
    assert wrote.wait(5)
    thread.join()
    # Nothing is left holding the lock: another descriptor takes it at once.
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    engine.dispose()


def test_a_thread_holding_the_lock_does_not_wait_for_itself(tmp_path):
    engine = make_engine(tmp_path / "n.db")
    first, two = engine.raw_connection(), engine.raw_connection()  # two pooled connections, both held
    one = first.dbapi_connection
    assert one is not two.dbapi_connection

    def stuck(_signum, _frame):  # noqa: ANN001
        raise TimeoutError("a thread waited for its own writer lock")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(5)
    try:
        one.acquire_writer_lock()
        two.dbapi_connection.acquire_writer_lock()  # same thread, second connection: no wait
        two.dbapi_connection.release_writer_lock()
        one.release_writer_lock()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        two.close()
        first.close()
        engine.dispose()


def test_lock_of_a_killed_process_is_released(tmp_path):
    path = tmp_path / "k.db"
    engine = make_engine(path)
    upgrade(engine)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(ROOT)!r})
            from sqlalchemy import text
            from db.engine import make_engine
            engine = make_engine({str(path)!r})
            conn = engine.connect()
            conn.begin()
            conn.execute(text("INSERT INTO guidelineversion (version, text, created_at) VALUES (7, 'x', '2026-01-01')"))
            print("holding", flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "holding"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        started = time.perf_counter()
        with session_scope(engine) as session:
            session.connection().execute(
                text("INSERT INTO guidelineversion (version, text, created_at) VALUES (8, 'y', '2026-01-01')"))
        assert time.perf_counter() - started < 5
        with engine.connect() as conn:  # the killed writer's row was rolled back, ours is there
            assert conn.execute(text("SELECT version FROM guidelineversion ORDER BY version")).scalars().all() == [8]
    finally:
        if holder.poll() is None:
            holder.kill()
        engine.dispose()
