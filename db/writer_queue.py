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

On by default for every SQLite file (``db.engine.make_engine(..., writer_queue=True)``); the edges
take the switch from ``Settings.sqlite_writer_queue`` (``THERAPREF_SQLITE_WRITER_QUEUE=off``).
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


class _FlockWaiter:
    """A helper thread, one per connection, that blocks in ``flock`` on the connection's behalf.

    Python cannot time out a blocking ``flock``, and polling with ``LOCK_NB`` would bring back the
    sleeps this queue exists to avoid. The helper is woken by the kernel the moment the lock is free;
    the caller waits on a condition with a timeout. A wait given up stays in flight: the lock it
    brings is released at once, or handed to the connection's next request. The thread is started
    at the first contended write and kept (creating one per wait costs ~8% of the load benchmark).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.cond = threading.Condition()
        self.in_flight = False  # the helper is (or is about to be) blocked in flock
        self.got = False  # the helper took the lock for the caller
        self.abandoned = False  # the caller stopped waiting: release what arrives
        self.closed = False
        threading.Thread(target=self._run, name="therapref-writer-queue", daemon=True).start()

    def _run(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.in_flight or self.closed)
                if not self.in_flight:  # closed and idle: the descriptor is ours to close
                    os.close(self.fd)
                    return
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            with self.cond:
                self.in_flight = False
                if self.abandoned or self.closed:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
                    self.abandoned = False
                else:
                    self.got = True
                self.cond.notify_all()

    def busy(self) -> bool:
        with self.cond:
            return self.in_flight or self.got

    def lock(self, seconds: float) -> bool:
        with self.cond:
            self.abandoned = False  # a wait still in flight from an earlier request serves this one
            if not self.got and not self.in_flight:
                self.in_flight = True
                self.cond.notify_all()
            if self.cond.wait_for(lambda: self.got, seconds):
                self.got = False  # the lock is the caller's now (held on the shared descriptor)
                return True
            self.abandoned = True
            return False

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class WriterQueueConnection(sqlite3.Connection):
    """A pysqlite connection whose write transactions first queue on ``<database>-writer.lock``.

    ``db.engine`` calls :meth:`acquire_writer_lock` before ``BEGIN IMMEDIATE``; commit, rollback
    and close release it.
    """

    wait_seconds: float = 30.0

    def __init__(self, database, *args, **kwargs) -> None:  # noqa: ANN001
        super().__init__(database, *args, **kwargs)
        self._writer_fd: int | None = None
        self._writer_waiter: _FlockWaiter | None = None
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
        # Uncontended: one non-blocking call. Not while an earlier, given-up wait is still in flight
        # on this descriptor: the lock it brings would be released under us.
        waiter = self._writer_waiter
        got = False
        if waiter is None or not waiter.busy():
            try:
                fcntl.flock(self._writer_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                got = True
            except BlockingIOError:
                pass
        if not got:
            if waiter is None:
                waiter = self._writer_waiter = _FlockWaiter(self._writer_fd)
            if not waiter.lock(self.wait_seconds):
                return  # SQLite's busy timeout decides, as without the queue
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
            if self._writer_waiter is not None:
                self._writer_waiter.close()  # it closes the descriptor when no wait is in flight
            elif self._writer_fd is not None:
                os.close(self._writer_fd)
            self._writer_fd = self._writer_waiter = None
        finally:
            super().close()
