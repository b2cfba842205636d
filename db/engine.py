"""The one engine factory: SQLite (WAL, foreign keys, busy timeout) or any SQLAlchemy URL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

from db.writer_queue import WriterQueueConnection

__all__ = ["make_engine", "read_only_engine", "session_scope", "is_sqlite", "normalize_url"]

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
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    except Exception:  # noqa: BLE001 - in-memory databases cannot use WAL; that is fine
        pass
    cursor.close()


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


def make_engine(url_or_path: str | Path | None = None, *, echo: bool = False, writer_queue: bool = True) -> Engine:
    """Create an engine for a SQLAlchemy URL or a SQLite file path.

    SQLite gets WAL, foreign keys, a busy timeout and ``BEGIN IMMEDIATE`` transactions; on a file,
    writers of all processes queue on ``<file>-writer.lock`` (see ``WriterQueueConnection``) unless
    ``writer_queue`` is off (``Settings.sqlite_writer_queue``), which leaves them to SQLite's busy handler.
    """
    url = normalize_url(url_or_path)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        in_memory = database in ("", ":memory:")
        connect_args: dict = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        if not in_memory and not parsed.query.get("uri") and writer_queue:
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
