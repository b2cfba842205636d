"""The one engine factory: SQLite (WAL, foreign keys, busy timeout) or any SQLAlchemy URL."""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

DEFAULT_DATABASE = "therapref.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url_or_path: str | Path | None) -> str:
    """Turn a plain file path into a SQLite URL; pass SQLAlchemy URLs through.

    >>> normalize_url("data/my.db")
    'sqlite:///data/my.db'
    >>> normalize_url("postgresql+psycopg://u@127.0.0.1:5432/tp")
    'postgresql+psycopg://u@127.0.0.1:5432/tp'
    >>> normalize_url("postgresql://u@h/tp")
    'postgresql+psycopg://u@h/tp'
    """
    value = str(url_or_path or DEFAULT_DATABASE)
    if not re.match(r"^[a-zA-Z][a-zA-Z0-9+]*://", value):
        return f"sqlite:///{value}"
    if value.startswith("postgresql://") or value.startswith("postgres://"):
        # psycopg 3 is the driver we ship; SQLAlchemy would otherwise look for psycopg2.
        return "postgresql+psycopg://" + value.split("://", 1)[1]
    return value


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA mmap_size=268435456")
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    except Exception:  # noqa: BLE001 - in-memory databases cannot use WAL; that is fine
        pass
    cursor.close()


# Thread ident -> writer locks it holds through some connection (see WriterQueueConnection).
_WRITER_LOCKS_HELD: dict[int, int] = {}


def writer_lock_path(database: str) -> Path:
    """The file next to a SQLite database whose OS lock queues the writers of all processes.

    >>> writer_lock_path("/data/therapref.db").name
    'therapref.db-writer.lock'
    """
    return Path(f"{database}-writer.lock")


class WriterQueueConnection(sqlite3.Connection):
    """A pysqlite connection whose write transactions first wait on an OS lock (``flock``).

    Why: SQLite's own busy handler polls with sleeps that grow to 100 ms, so under many writers the
    database sits idle while waiters sleep, and an unlucky writer can wait seconds (the p99 of
    ``bench/load.py``). A blocked ``flock`` wakes as soon as the holder commits. SQLite's lock and
    busy timeout still apply underneath (other programs writing the file are safe, just not queued).
    The kernel drops the lock when a process dies (kill -9 leaves nothing stale). A thread that already
    holds the lock through another connection does not queue again (it would wait for itself); it
    falls back to the busy timeout as before.
    """

    def __init__(self, database, *args, **kwargs) -> None:  # noqa: ANN001
        super().__init__(database, *args, **kwargs)
        self._writer_fd: int | None = None
        self._writer_owner: int | None = None
        self._writer_path = None
        if isinstance(database, str | os.PathLike) and not kwargs.get("uri"):
            name = os.fspath(database)
            if name and name != ":memory:" and not name.startswith("file:"):
                self._writer_path = writer_lock_path(name)

    def acquire_writer_lock(self) -> None:
        if self._writer_path is None or self._writer_owner is not None:
            return
        me = threading.get_ident()
        if _WRITER_LOCKS_HELD.get(me):
            return
        if self._writer_fd is None:
            try:
                self._writer_fd = os.open(self._writer_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:  # read-only folder: SQLite's busy timeout alone
                self._writer_path = None
                return
        fcntl.flock(self._writer_fd, fcntl.LOCK_EX)  # releases the GIL while it waits
        self._writer_owner = me
        _WRITER_LOCKS_HELD[me] = _WRITER_LOCKS_HELD.get(me, 0) + 1

    def release_writer_lock(self) -> None:
        owner, self._writer_owner = self._writer_owner, None
        if owner is None or self._writer_fd is None:
            return
        fcntl.flock(self._writer_fd, fcntl.LOCK_UN)
        left = _WRITER_LOCKS_HELD.get(owner, 1) - 1
        if left > 0:
            _WRITER_LOCKS_HELD[owner] = left
        else:
            _WRITER_LOCKS_HELD.pop(owner, None)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.release_writer_lock()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.release_writer_lock()

    def close(self) -> None:
        try:
            self.release_writer_lock()
            if self._writer_fd is not None:
                os.close(self._writer_fd)
                self._writer_fd = None
        finally:
            super().close()


def writer_queue_enabled() -> bool:
    """``THERAPREF_SQLITE_WRITER_QUEUE=off`` leaves writers to SQLite's busy handler alone (to compare)."""
    return os.environ.get("THERAPREF_SQLITE_WRITER_QUEUE", "on").strip().lower() not in ("off", "0", "false", "no")


def _sqlite_begin(conn) -> None:  # noqa: ANN001
    # Writers take the write lock at BEGIN, so that concurrent writers queue instead of failing
    # with "database is locked" when a read transaction tries to upgrade. Long readers (exports,
    # reports) use ``read_only_engine`` and do not block writers (WAL).
    if conn.get_execution_options().get("therapref_read_only"):
        conn.exec_driver_sql("BEGIN")
        return
    raw = conn.connection.dbapi_connection
    queued = isinstance(raw, WriterQueueConnection)
    if queued:
        raw.acquire_writer_lock()
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        if queued:
            raw.release_writer_lock()
        raise


def make_engine(url_or_path: str | Path | None = None, *, echo: bool = False) -> Engine:
    """Create an engine for a SQLAlchemy URL or a SQLite file path.

    SQLite gets WAL, foreign keys, a busy timeout and ``BEGIN IMMEDIATE`` transactions; on a file,
    writers of all processes queue on ``<file>-writer.lock`` (see ``WriterQueueConnection``).
    """
    url = normalize_url(url_or_path)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        in_memory = database in ("", ":memory:")
        connect_args: dict = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        if not in_memory and not parsed.query.get("uri") and writer_queue_enabled():
            connect_args["factory"] = WriterQueueConnection
        kwargs: dict = {"connect_args": connect_args}
        if in_memory:
            kwargs["poolclass"] = StaticPool
        else:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)

        @event.listens_for(engine, "connect")
        def _no_pysqlite_begin(dbapi_connection, _record):  # noqa: ANN001
            # Let SQLAlchemy, not the driver, decide when transactions begin.
            dbapi_connection.isolation_level = None

        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True)


def read_only_engine(engine: Engine) -> Engine:
    """The same engine, but SQLite transactions start deferred (for long reads)."""
    return engine.execution_options(therapref_read_only=True)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
