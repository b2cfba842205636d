"""A fair queue for SQLite writers of all processes: an OS lock (``flock``) next to the database file.

Why: SQLite's busy handler retries a locked database with sleeps that grow to 100 ms, so under many
writers the database sits idle while waiters sleep and an unlucky writer waits seconds
(``bench/load.py``: p99 332 ms without the queue, 45–61 ms with it). A writer blocked in ``flock``
wakes as soon as the holder commits. SQLite's own lock and busy timeout still apply underneath:
other programs writing the file are safe, just not queued. The kernel drops the lock of a process
that dies (kill -9 leaves nothing stale).

Bounded: a writer waits at most ``WriterQueueConnection.wait_seconds`` for the queue, then goes on
to SQLite's busy timeout as before (so a process that hangs inside a write transaction produces the
same "database is locked" error as without the queue, not a hang).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from pathlib import Path

# Thread ident -> writer locks it holds through some connection: a thread that already holds the
# lock does not queue again (it would wait for itself); SQLite's busy timeout applies instead.
_HELD_BY_THREAD: dict[int, int] = {}


def writer_lock_path(database: str) -> Path:
    """The lock file next to a SQLite database.

    >>> writer_lock_path("/data/therapref.db").name
    'therapref.db-writer.lock'
    """
    return Path(f"{database}-writer.lock")


def writer_queue_enabled() -> bool:
    """``THERAPREF_SQLITE_WRITER_QUEUE=off`` leaves writers to SQLite's busy handler alone (to compare)."""
    return os.environ.get("THERAPREF_SQLITE_WRITER_QUEUE", "on").strip().lower() not in ("off", "0", "false", "no")


def _lock_within(fd: int, seconds: float) -> bool:
    """Take ``flock(fd, LOCK_EX)`` within ``seconds``; False (and no lock) when it did not come.

    The uncontended case is one non-blocking call. Otherwise a helper thread blocks in ``flock``
    (woken by the kernel the moment the lock is free; Python cannot time out a blocking ``flock``).
    If we stop waiting first, the helper owns ``fd``: it unlocks and closes it once it gets the
    lock, so the caller must not use ``fd`` again.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pass
    guard = threading.Lock()
    state = {"got": False, "abandoned": False}
    arrived = threading.Event()

    def wait() -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with guard:
            if state["abandoned"]:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            else:
                state["got"] = True
        arrived.set()

    threading.Thread(target=wait, name="therapref-writer-queue", daemon=True).start()
    arrived.wait(seconds)
    with guard:
        if state["got"]:
            return True
        state["abandoned"] = True
        return False


class WriterQueueConnection(sqlite3.Connection):
    """A pysqlite connection whose write transactions first queue on ``<database>-writer.lock``.

    ``db.engine`` calls :meth:`acquire_writer_lock` before ``BEGIN IMMEDIATE``; commit, rollback
    and close release it.
    """

    wait_seconds: float = 30.0

    def __init__(self, database, *args, **kwargs) -> None:  # noqa: ANN001
        super().__init__(database, *args, **kwargs)
        self._writer_fd: int | None = None
        self._writer_owner: int | None = None
        self._writer_path: Path | None = None
        if isinstance(database, str | os.PathLike) and not kwargs.get("uri"):
            name = os.fspath(database)
            if name and name != ":memory:" and not name.startswith("file:"):
                self._writer_path = writer_lock_path(name)

    def acquire_writer_lock(self) -> None:
        if self._writer_path is None or self._writer_owner is not None:
            return
        me = threading.get_ident()
        if _HELD_BY_THREAD.get(me):
            return
        if self._writer_fd is None:
            try:
                self._writer_fd = os.open(self._writer_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:  # read-only folder: SQLite's busy timeout alone
                self._writer_path = None
                return
        if not _lock_within(self._writer_fd, self.wait_seconds):
            self._writer_fd = None  # now owned by the waiting helper thread
            return
        self._writer_owner = me
        _HELD_BY_THREAD[me] = _HELD_BY_THREAD.get(me, 0) + 1

    def release_writer_lock(self) -> None:
        owner, self._writer_owner = self._writer_owner, None
        if owner is None or self._writer_fd is None:
            return
        fcntl.flock(self._writer_fd, fcntl.LOCK_UN)
        left = _HELD_BY_THREAD.get(owner, 1) - 1
        if left > 0:
            _HELD_BY_THREAD[owner] = left
        else:
            _HELD_BY_THREAD.pop(owner, None)

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
