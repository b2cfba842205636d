"""The work queue shared by pairs (``db.assignment``) and ranking tasks (``db.rankings``): open work
in queue order, expiring reservations, capacity under concurrency, skip, release, and the
re-reservation an undo needs. One ``Queue`` per kind of work names its tables; the two are
``PAIRS`` (``Comparison``) and ``RANKINGS`` (``RankingTask``).

Every method takes ``session=`` and never commits: the caller owns one short transaction per call
(``session_scope``). They are safe for many annotators at once:

- SQLite: transactions start with ``BEGIN IMMEDIATE`` (see ``db.engine``), so writers queue on the
  busy timeout and the check-then-reserve runs alone.
- PostgreSQL (READ COMMITTED): a task is reserved or completed only while its row is locked
  (``FOR UPDATE``; ``SKIP LOCKED`` when choosing), and capacity is re-checked by a fresh statement
  after the lock is held, so two annotators can never both take the last place.

Every statement the hot path runs (``next_comparison``, ``submit_judgment``) is built once here with
bound parameters; a call only binds values (``bench/load.py`` and ``bench/app_queries.py`` measure them).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, exists, func, insert, select
from sqlmodel import Session

from db.engine import is_sqlite as _engine_is_sqlite
from db.errors import TheraPrefError
from db.models import (
    Annotator,
    Comparison,
    Judgment,
    Ranking,
    RankingReservation,
    RankingSkip,
    RankingTask,
    Reservation,
    Skip,
    utcnow,
)

CANDIDATES_PER_TRY = 25


class AssignmentError(TheraPrefError):
    """A problem with an assignment that the app shows as one line."""


class ReservationNotFound(AssignmentError):
    """The token is unknown, belongs to someone else, or the pair was already handed back."""


class ComparisonFull(AssignmentError):
    """Other annotators completed this comparison first: move on to the next pair."""


class RankingNotReserved(ReservationNotFound):
    """The token is unknown, belongs to someone else, or the task was already handed back."""


class RankingTaskFull(AssignmentError):
    """Other clinicians completed this ranking task first: move on to the next one."""


def is_sqlite(session: Session) -> bool:
    return _engine_is_sqlite(session.get_bind())


def aware(value: datetime | None) -> datetime | None:
    """A database timestamp in UTC (SQLite returns naive ones).

    >>> aware(datetime(2026, 1, 2, 3, 4)).isoformat()
    '2026-01-02T03:04:00+00:00'
    """
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


# One annotator, two tabs: serialise their requests (NO KEY UPDATE leaves foreign-key checks of their
# concurrent submits unblocked). PostgreSQL only; SQLite already holds the write lock.
_LOCK_ANNOTATOR = select(Annotator.id).where(Annotator.id == bindparam("annotator_id")).with_for_update(key_share=True)


def lock_annotator(annotator_id: int, *, session: Session) -> None:
    if not is_sqlite(session):
        session.connection().execute(_LOCK_ANNOTATOR, {"annotator_id": annotator_id})


class Queue:
    """One kind of work: ``task`` rows needing ``judgments_required`` results each, a ``done`` row per
    annotator and task (unique by ``idempotency_key``), ``reservation`` and ``skip`` rows per annotator
    and task; all four link the task by the column ``key``. ``state`` are the task columns a lock
    reads (``judgments_count``, ``judgments_required`` first), ``order`` the queue order after the
    highest ``priority``. ``noun``, ``gone`` and ``full`` make the one-line errors."""

    def __init__(self, *, task: Any, done: Any, reservation: Any, skip: Any, key: str, state: Sequence[str],
                 order: Sequence[str], noun: str, gone: type[ReservationNotFound], full: type[AssignmentError],
                 full_message: str) -> None:
        self.task, self.done, self.reservation, self.skip_table, self.key = task, done, reservation, skip, key
        self.noun, self._gone, self._full, self._full_message = noun, gone, full, full_message
        self._order = [task.priority.desc(), *(getattr(task, name) for name in order)]
        r = reservation
        self.reservation_key = getattr(r, key)
        # Built once: the hot path only binds parameters (statement construction is a large share of the cost).
        self._others_live = self.others_live(bindparam("task_id"), bindparam("annotator_id"), bindparam("now"))
        self._own = (select(r.id, self.reservation_key, r.token, r.expires_at, r.created_at)
                     .where(r.annotator_id == bindparam("annotator_id")).order_by(r.id.desc()))
        self._drop_own = delete(r).where(r.annotator_id == bindparam("annotator_id"))
        self._by_token = (select(r.id, self.reservation_key, r.annotator_id, r.expires_at, r.created_at)
                          .where(r.token == bindparam("token")))
        self._done_by_key = select(done).where(done.idempotency_key == bindparam("key"))
        self._insert = insert(r)
        self._consume = delete(r).where(r.id == bindparam("reservation_id"))
        self._state = select(*(getattr(task, name) for name in state)).where(task.id == bindparam("task_id"))
        self._state_for_update = self._state.with_for_update()
        self._state_skip_locked = self._state.with_for_update(skip_locked=True)

    # --- Statements -----------------------------------------------------------------------------

    def others_live(self, task_id: Any, annotator_id: Any, now: Any):
        """How many live reservations others hold on the task (a statement)."""
        r = self.reservation
        return select(func.count(r.id)).where(getattr(r, self.key) == task_id, r.annotator_id != annotator_id,
                                              r.expires_at > now)

    def untouched(self, annotator_id: Any, *, done_set: bool = False) -> list:
        """Conditions: the annotator has neither completed nor skipped the task.

        ``done_set``: one pass over the annotator's own results (index-only with an (annotator, task)
        index), then hash/b-tree probes, instead of a correlated probe per task."""
        task, done, skip = self.task, self.done, self.skip_table
        if done_set:
            finished = task.id.in_(select(getattr(done, self.key)).where(done.annotator_id == annotator_id))
        else:
            finished = exists().where(getattr(done, self.key) == task.id, done.annotator_id == annotator_id)
        skipped = exists().where(getattr(skip, self.key) == task.id, skip.annotator_id == annotator_id)
        return [~finished, ~skipped]

    def open_query(self, annotator_id: Any, now: Any, *, done_set: bool = False,
                   limit: int = CANDIDATES_PER_TRY):
        """Ids of the tasks the annotator may take next, in queue order: untouched by them, not full,
        and not reserved to capacity by others."""
        task = self.task
        others = self.others_live(task.id, annotator_id, now).scalar_subquery()
        return (select(task.id).where(*self.untouched(annotator_id, done_set=done_set))
                .where(task.judgments_count < task.judgments_required,
                       task.judgments_count + others < task.judgments_required)
                .order_by(*self._order).limit(limit))

    # --- Reserving --------------------------------------------------------------------------------

    def gone(self) -> ReservationNotFound:
        return self._gone(f"this {self.noun} is no longer reserved for you; here is the next one")

    def has_capacity(self, task_id: int, count: int, required: int, annotator_id: int, now: datetime,
                     *, session: Session) -> bool:
        """Fresh check (a new statement, so on PostgreSQL it sees everything committed so far)."""
        others = session.connection().execute(self._others_live, {"task_id": task_id, "annotator_id": annotator_id,
                                                                  "now": now}).scalar_one()
        return count + others < required

    def lock(self, task_id: int, *, session: Session, skip_locked: bool = False):
        """The task's ``state`` columns with its row locked (PostgreSQL; SQLite holds the write lock)."""
        statement = self._state if is_sqlite(session) else (
            self._state_skip_locked if skip_locked else self._state_for_update)
        return session.connection().execute(statement, {"task_id": task_id}).first()

    def lock_row(self, task_id: int, *, session: Session) -> Any:
        """The task as a fresh ORM object with its row locked (PostgreSQL)."""
        query = select(self.task).where(self.task.id == task_id).execution_options(populate_existing=True)
        if not is_sqlite(session):
            query = query.with_for_update()
        return session.execute(query).scalars().first()

    def held(self, annotator_id: int, now: datetime, *, session: Session) -> tuple | None:
        """The live reservation the annotator holds, ``(task_id, token, expires_at, reserved_at)``;
        otherwise their stale ones are dropped and ``None`` comes back."""
        conn = session.connection()
        own = conn.execute(self._own, {"annotator_id": annotator_id}).all()
        for _rid, task_id, token, expires_at, created_at in own:
            if aware(expires_at) > now:
                return task_id, token, expires_at, created_at
        if own:
            conn.execute(self._drop_own, {"annotator_id": annotator_id})
        return None

    def reserve(self, task_id: int, annotator_id: int, prefix: str, now: datetime, minutes: float,
                *, session: Session) -> tuple[str, datetime]:
        """Reserve the task for ``minutes``; the token is ``prefix-…``. Returns ``(token, expires_at)``."""
        token, expires_at = f"{prefix}-{secrets.token_hex(24)}", now + timedelta(minutes=minutes)
        session.connection().execute(self._insert, {self.key: task_id, "annotator_id": annotator_id, "token": token,
                                                    "expires_at": expires_at, "created_at": now})
        return token, expires_at

    def reserve_again(self, task_id: int, annotator_id: int, prefix: str, now: datetime, minutes: float,
                      *, session: Session) -> tuple[str, datetime]:
        """Undo: the annotator's other reservations go, and this task is theirs again at once."""
        session.connection().execute(self._drop_own, {"annotator_id": annotator_id})
        return self.reserve(task_id, annotator_id, prefix, now, minutes, session=session)

    def take_next(self, statement: Any, annotator_id: int, now: datetime, *, session: Session,
                  prefix: Callable[[], str], minutes: float, capacity: bool = True) -> tuple | None:
        """Reserve the first task ``statement`` (an ``open_query`` with bound ``annotator_id`` and
        ``now``) offers that can still be had: ``(task_id, token, expires_at)``, or ``None``.

        PostgreSQL: each candidate's row lock is taken with SKIP LOCKED (rows others are taking right
        now are passed over), then capacity is re-checked with a fresh statement (``capacity=False``
        for work drawn whether or not it is full: gold pairs); a few rounds when all were taken.
        SQLite: BEGIN IMMEDIATE holds the write lock, so the query's first answer stands."""
        sqlite = is_sqlite(session)
        conn = session.connection()  # Core on the connection: no ORM layer per statement
        for _attempt in range(1 if sqlite else 5):
            candidates = conn.execute(statement, {"annotator_id": annotator_id, "now": now}).scalars().all()
            if not candidates:
                break
            for task_id in candidates:
                if not sqlite:
                    state = conn.execute(self._state_skip_locked, {"task_id": task_id}).first()
                    if state is None or (capacity and not self.has_capacity(
                            task_id, state[0], state[1], annotator_id, now, session=session)):
                        continue
                token, expires_at = self.reserve(task_id, annotator_id, prefix(), now, minutes, session=session)
                return task_id, token, expires_at
        return None

    # --- Completing -------------------------------------------------------------------------------

    def claim(self, token: str, *, session: Session, annotator_id: int, key: str | None = None) -> tuple:
        """``(reservation, None)`` for the annotator's reservation under ``token`` (id, task id,
        owner, expires_at, reserved_at), or ``(None, stored)`` for a retry whose result (looked up by
        ``key``, default the token) is stored already: the reservation is consumed with it."""
        reservation = session.connection().execute(self._by_token, {"token": token}).first()
        if reservation is None:
            previous = session.execute(self._done_by_key, {"key": key or token}).scalars().first()
            if previous is None or previous.annotator_id != annotator_id:
                raise self.gone()
            return None, previous
        if reservation[2] != annotator_id:
            raise self.gone()
        return reservation, None

    def check_room(self, task_id: int, count: int, required: int, expires_at: datetime, annotator_id: int,
                   now: datetime, *, session: Session) -> None:
        """Raise ``full`` when others completed the task first: a live reservation is honoured while
        the task is not full; an expired one only while there is still room."""
        live = aware(expires_at) > now
        if count >= required or (not live and not self.has_capacity(task_id, count, required, annotator_id, now,
                                                                    session=session)):
            raise self._full(self._full_message)

    def consume(self, reservation_id: int, *, session: Session) -> None:
        session.connection().execute(self._consume, {"reservation_id": reservation_id})

    def skip(self, token: str, *, session: Session, annotator_id: int, reason: str,
             now: datetime | None = None) -> Any:
        """Hand the task back with a reason; it is never offered to this annotator again."""
        reason = (reason or "").strip()
        if not reason:
            raise AssignmentError(f"say why you skip this {self.noun}")
        r = self.reservation
        reservation = session.execute(select(r).where(r.token == token)).scalars().first()
        if reservation is None or reservation.annotator_id != annotator_id:
            raise self.gone()
        task_id = getattr(reservation, self.key)
        skip = self.skip_table
        existing = session.execute(select(skip).where(
            getattr(skip, self.key) == task_id, skip.annotator_id == annotator_id)).scalars().first()
        if existing is None:
            existing = skip(**{self.key: task_id}, annotator_id=annotator_id, reason=reason[:500],
                            created_at=now or utcnow())
            session.add(existing)
        # Expire instead of deleting, so that a retried skip finds the same row and changes nothing.
        reservation.expires_at = now or utcnow()
        session.add(reservation)
        session.flush()
        return existing

    def release(self, annotator_id: int, *, session: Session) -> int:
        """Drop the annotator's reservations; returns how many were dropped."""
        return session.connection().execute(self._drop_own, {"annotator_id": annotator_id}).rowcount or 0

    def remaining(self, annotator_id: int, *, session: Session) -> int:
        """Open tasks this annotator could still be given (not completed, not skipped, not full)."""
        task = self.task
        return session.execute(select(func.count(task.id)).where(
            task.judgments_count < task.judgments_required, *self.untouched(annotator_id))).scalar_one()


PAIRS = Queue(task=Comparison, done=Judgment, reservation=Reservation, skip=Skip, key="comparison_id",
              state=("judgments_count", "judgments_required", "gold_answer"),
              # Fewest judgments, then lowest id: with priority, exactly the keys of ix_comparison_queue.
              order=("judgments_count", "judgments_required", "id"), noun="pair",
              gone=ReservationNotFound, full=ComparisonFull,
              full_message="another clinician completed this pair first; here is the next one")
RANKINGS = Queue(task=RankingTask, done=Ranking, reservation=RankingReservation, skip=RankingSkip, key="task_id",
                 state=("judgments_count", "judgments_required", "response_ids", "prompt_id"),
                 order=("judgments_count", "id"), noun="ranking", gone=RankingNotReserved, full=RankingTaskFull,
                 full_message="other clinicians completed this ranking first; here is the next one")
QUEUES = (PAIRS, RANKINGS)


def release(annotator_id: int, *, session: Session) -> int:
    """Drop the annotator's reservations in every queue (logout, idle timeout, deactivation): their
    work goes back to the queues at once. Returns how many were dropped."""
    return sum(queue.release(annotator_id, session=session) for queue in QUEUES)


__all__ = [
    "AssignmentError", "ComparisonFull", "PAIRS", "QUEUES", "Queue", "RANKINGS", "RankingNotReserved",
    "RankingTaskFull", "ReservationNotFound", "aware", "is_sqlite", "lock_annotator", "release",
]
