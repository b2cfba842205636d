"""Rankings of K replies: tasks, the ranking queue (overlap, expiring reservations, skip), submit,
and the expansion of a ranking into pairwise judgments.

A clinician ranks a task's K replies best first in *tiers* (replies in one tier are tied). On submit
the ranking is stored as it was given (``Ranking.order``, response ids, best tier first) and, in the
same transaction, expanded into one judgment per pair of replies ("all pairs", K(K−1)/2 of them) on
the canonical comparison of that pair, written by ``db.crud.insert_judgment`` and marked with
``Judgment.ranking_id``: the reward trainer, the exports and the analytics read rankings as the pairs
they imply, with no change of their own. A comparison created for the expansion needs one judgment,
so that it does not enter other clinicians' pair queue; an existing one keeps its requirement. A pair
the clinician already judged directly keeps that judgment (one judgment per clinician and pair).

Every function takes ``session=`` and never commits. The queue of tasks (reservations, locks,
capacity, skip, release) is the one pairs use too, in the ranking tables: ``db.queue.RANKINGS``.
Screen order: position-randomised per clinician but seeded by (task, clinician), so that a reload
shows the same order, and a retried submit maps screen numbers to replies the same way.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, update
from sqlmodel import Session, select

from db.crud import DataError, add_comparison, existing_judgment_id, insert_judgment
from db.models import (
    SAFETY_FLAGS,
    GuidelineVersion,
    Judgment,
    Prompt,
    Ranking,
    RankingSkip,
    RankingTask,
    Response,
    utcnow,
)
from db.queue import RANKINGS, RankingNotReserved, RankingTaskFull, aware, is_sqlite, lock_annotator
from db.spans import check_spans, flags_with_spans, insert_spans, response_texts

MIN_K, MAX_K = 3, 9  # K replies per task: two is a pair (the compare page); keys 1..9 rank them

Tiers = list[list[int]]


@dataclass
class RankingAssignment:
    """One ranking task as shown to one clinician (blind: no model names, no other rankings).

    ``texts[i]`` is reply number ``i + 1`` on screen; ``response_ids`` (same order) stay on the server.
    """

    task_id: int
    token: str = field(metadata={"help": "idempotency key of this rendering; pass it to submit/skip"})
    messages: list[dict[str, str]] = field(default_factory=list)
    system_prompt: str | None = None
    texts: list[str] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)
    expires_at: datetime | None = None
    reserved_at: datetime | None = None

    @property
    def k(self) -> int:
        return len(self.texts)


# --- Pure rules ---------------------------------------------------------------------------------


def response_key(response_ids: Sequence[int]) -> str:
    """The canonical key of a set of replies (ascending ids, comma-separated).

    >>> response_key([12, 3, 7])
    '3,7,12'
    """
    return ",".join(str(i) for i in sorted(response_ids))


def shown_order_for(task_id: int, annotator_id: int, response_ids: Sequence[int]) -> list[int]:
    """The replies in screen order (1..K) for this clinician: shuffled, seeded by (task, clinician),
    so that every clinician sees their own order and a reload shows the same one.

    >>> order = shown_order_for(4, 9, [10, 11, 12])
    >>> sorted(order), order == shown_order_for(4, 9, [12, 10, 11])
    ([10, 11, 12], True)
    """
    order = sorted(response_ids)
    random.Random(f"ranking:{task_id}:{annotator_id}").shuffle(order)
    return order


def check_tiers(tiers: Any, k: int) -> Tiers:
    """Validate a ranking in screen numbers: tiers best first, every number 1..K exactly once.

    >>> check_tiers([[2], [1, 3]], 3)
    [[2], [1, 3]]
    >>> check_tiers([[2], [1]], 3)
    Traceback (most recent call last):
    ...
    db.crud.DataError: rank every reply: missing 3
    """
    if not isinstance(tiers, (list, tuple)) or not tiers:
        raise DataError("a ranking is a list of tiers, best first")
    clean: Tiers = []
    for tier in tiers:
        if not isinstance(tier, (list, tuple)) or not tier:
            raise DataError("each tier is a non-empty list of reply numbers")
        if not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= k for n in tier):
            raise DataError(f"reply numbers go from 1 to {k}")
        clean.append([int(n) for n in tier])
    placed = [n for tier in clean for n in tier]
    if len(placed) != len(set(placed)):
        raise DataError("each reply is ranked once")
    missing = sorted(set(range(1, k + 1)) - set(placed))
    if missing:
        raise DataError(f"rank every reply: missing {', '.join(map(str, missing))}")
    return clean


def screen_to_response_tiers(tiers: Tiers, shown_order: Sequence[int]) -> Tiers:
    """Map tiers of screen numbers (1..K) to tiers of response ids (each tier sorted).

    >>> screen_to_response_tiers([[2], [3, 1]], [30, 10, 20])
    [[10], [20, 30]]
    """
    return [sorted(shown_order[n - 1] for n in tier) for tier in tiers]


def expand_to_pairs(tiers: Tiers) -> list[tuple[int, int, str, int | None]]:
    """Every pair of a ranking, canonical ``(a, b, preferred, strength)`` with ``a < b``.

    ``preferred`` is ``'a'``/``'b'`` for the reply in the better tier, ``'tie'`` within one tier;
    ``strength`` is the tier distance capped at 3 (``None`` for ties).

    >>> expand_to_pairs([[2], [1, 3]])
    [(1, 2, 'b', 1), (1, 3, 'tie', None), (2, 3, 'a', 1)]
    >>> expand_to_pairs([[4], [3], [2], [1]])[:3]
    [(1, 2, 'b', 1), (1, 3, 'b', 2), (1, 4, 'b', 3)]
    """
    tier_of = {rid: index for index, tier in enumerate(tiers) for rid in tier}
    pairs = []
    for a, b in itertools.combinations(sorted(tier_of), 2):
        distance = tier_of[b] - tier_of[a]
        if distance == 0:
            pairs.append((a, b, "tie", None))
        else:
            pairs.append((a, b, "a" if distance > 0 else "b", min(abs(distance), 3)))
    return pairs


def describe_tiers(tiers: Tiers) -> str:
    """A ranking in screen numbers as one line.

    >>> describe_tiers([[2], [1, 3]])
    '2 > 1 = 3'
    """
    return " > ".join(" = ".join(str(n) for n in tier) for tier in tiers)


def _check_flags(flags: Any, k: int) -> dict[int, list[str]]:
    clean: dict[int, list[str]] = {}
    for position, values in dict(flags or {}).items():
        if not isinstance(position, int) or not 1 <= position <= k:
            raise DataError(f"safety flags are given per reply number 1 to {k}")
        chosen = sorted(set(values or ()))
        unknown = [f for f in chosen if f not in SAFETY_FLAGS]
        if unknown:
            raise DataError(f"unknown safety flag(s): {', '.join(unknown)}")
        if chosen:
            clean[position] = chosen
    return clean


# --- Tasks --------------------------------------------------------------------------------------


def add_ranking_task(responses: Sequence[Response], *, session: Session,
                     judgments_required: int = 1) -> tuple[RankingTask, bool]:
    """A task ranking these K distinct replies to one prompt (ids stored ascending); an existing task
    for the same set is returned unchanged."""
    ids = sorted({r.id for r in responses})
    if len(ids) != len(responses):
        raise DataError("a ranking task needs distinct replies")
    if not MIN_K <= len(ids) <= MAX_K:
        raise DataError(f"a ranking task has {MIN_K} to {MAX_K} replies, not {len(ids)}")
    if len({r.prompt_id for r in responses}) != 1:
        raise DataError("all replies of a ranking task must answer the same prompt")
    if judgments_required < 1:
        raise DataError("a ranking task needs at least one ranking")
    prompt_id, key = responses[0].prompt_id, response_key(ids)
    existing = session.exec(select(RankingTask).where(
        RankingTask.prompt_id == prompt_id, RankingTask.response_key == key)).first()
    if existing is not None:
        return existing, False
    task = RankingTask(prompt_id=prompt_id, response_ids=ids, response_key=key,
                       judgments_required=judgments_required)
    session.add(task)
    session.flush()
    return task, True


# --- The ranking queue --------------------------------------------------------------------------


# Built once with bound parameters (annotator_id, now): a call only binds values.
_OPEN_TASKS = RANKINGS.open_query(bindparam("annotator_id"), bindparam("now"))


def _assignment(task_id: int, annotator_id: int, token: str, expires_at: datetime, reserved_at: datetime,
                *, session: Session) -> RankingAssignment:
    response_ids, messages, system_prompt = session.exec(
        select(RankingTask.response_ids, Prompt.messages, Prompt.system_prompt)
        .join(Prompt, Prompt.id == RankingTask.prompt_id).where(RankingTask.id == task_id)).one()
    texts = dict(session.exec(select(Response.id, Response.text).where(Response.id.in_(response_ids))).all())
    shown = shown_order_for(task_id, annotator_id, response_ids)
    return RankingAssignment(task_id=task_id, token=token, messages=list(messages or []),
                             system_prompt=system_prompt, texts=[texts[i] for i in shown], response_ids=shown,
                             expires_at=aware(expires_at), reserved_at=aware(reserved_at))


def next_ranking(annotator_id: int, *, session: Session, reservation_minutes: float = 10,
                 now: datetime | None = None) -> RankingAssignment | None:
    """Reserve and return the next ranking task for this clinician, or ``None`` when none is left.

    A live reservation they hold is returned again (a reload shows the same task, token and order).
    Otherwise their stale reservations are dropped and the open task with the highest priority, then
    fewest rankings, then lowest id, that they have neither ranked nor skipped and that others have
    not filled or reserved to capacity, is reserved for ``reservation_minutes``.
    """
    now = now or utcnow()
    lock_annotator(annotator_id, session=session)
    held = RANKINGS.held(annotator_id, now, session=session)
    if held is not None:
        task_id, token, expires_at, reserved_at = held
        return _assignment(task_id, annotator_id, token, expires_at, reserved_at, session=session)
    taken = RANKINGS.take_next(_OPEN_TASKS, annotator_id, now, session=session, prefix=lambda: "r",
                               minutes=reservation_minutes)
    if taken is None:
        return None
    task_id, token, expires_at = taken
    return _assignment(task_id, annotator_id, token, expires_at, now, session=session)


def submit_ranking(
    token: str,
    order: Any,
    *,
    session: Session,
    annotator_id: int,
    flags: dict[int, Sequence[str]] | None = None,
    rationale: str = "",
    ms_spent: int | None = None,
    idempotency_key: str | None = None,
    now: datetime | None = None,
    spans: Mapping[int, Iterable[Any]] | None = None,
) -> tuple[Ranking, bool]:
    """Store the ranking of the task reserved under ``token`` and its pairwise judgments; return
    ``(ranking, created)``.

    ``order``: tiers best first of *screen numbers* 1..K (``[[2], [1, 3]]``: reply 2 best, 1 and 3
    tied behind it); ``flags``: safety flags per screen number. Idempotent by ``idempotency_key``
    (default: the token): a double submit returns the stored ranking with ``created=False`` and
    writes nothing. ``spans``: unsafe spans per screen number (``{2: [(start, end, flag), …]}``, offsets
    into the reply's stored text; ``db.spans``), checked before anything is written and stored with the
    ranking (a span's kind also flags its reply). Raises ``RankingTaskFull`` when others completed the
    task first (a live reservation is honoured while there is room) and ``RankingNotReserved`` for an
    unknown token.
    """
    now = now or utcnow()
    key = idempotency_key or token
    reservation, previous = RANKINGS.claim(token, session=session, annotator_id=annotator_id, key=key)
    if reservation is None:
        # Already submitted (the reservation is consumed in the same transaction): a retry.
        return previous, False
    reservation_id, task_id, _owner, expires_at, reserved_at = reservation
    count, required, response_ids, prompt_id = RANKINGS.lock(task_id, session=session)
    previous = session.exec(select(Ranking).where(
        (Ranking.idempotency_key == key) | ((Ranking.task_id == task_id) & (Ranking.annotator_id == annotator_id))
    )).first()
    if previous is not None:
        return previous, False
    k = len(response_ids)
    screen_tiers = check_tiers(order, k)
    screen_flags = _check_flags(flags, k)
    RANKINGS.check_room(task_id, count, required, expires_at, annotator_id, now, session=session)
    if not is_sqlite(session):
        # Rankings of different tasks on one prompt may create the same comparison: take turns.
        session.exec(select(Prompt.id).where(Prompt.id == prompt_id).with_for_update(key_share=True)).all()
    if ms_spent is None and reserved_at is not None:
        ms_spent = int((now - aware(reserved_at)).total_seconds() * 1000)
    shown = shown_order_for(task_id, annotator_id, response_ids)
    tiers = screen_to_response_tiers(screen_tiers, shown)
    flags_by_id = {shown[position - 1]: values for position, values in screen_flags.items()}
    marks = {}
    if spans:
        texts = response_texts(shown, session=session)
        marks = check_spans(spans, {n: (rid, texts[rid]) for n, rid in enumerate(shown, start=1)}, what="reply")
        for rid, own in marks.items():
            flags_by_id[rid] = flags_with_spans(flags_by_id.get(rid, ()), own)
    guideline = session.exec(select(func.max(GuidelineVersion.version))).one()
    if ms_spent is not None:
        ms_spent = max(0, int(ms_spent))
    ranking = Ranking(task_id=task_id, annotator_id=annotator_id, order=tiers, shown_order=shown,
                      flags={str(rid): values for rid, values in sorted(flags_by_id.items())},
                      rationale=(rationale or "").strip(), ms_spent=ms_spent,
                      guideline_version=guideline, idempotency_key=key, created_at=now)
    session.add(ranking)
    session.flush()
    _expand(ranking, session=session, flags_by_id=flags_by_id, now=now)
    insert_spans(marks, ranking_id=ranking.id, session=session)
    session.execute(update(RankingTask).where(RankingTask.id == task_id)
                    .values(judgments_count=RankingTask.judgments_count + 1))
    RANKINGS.consume(reservation_id, session=session)
    return ranking, True


def _expand(ranking: Ranking, *, session: Session, flags_by_id: dict[int, list[str]], now: datetime) -> list[int]:
    """Write the ranking's pairwise judgments (see the module docstring); return their ids."""
    position = {rid: index for index, rid in enumerate(ranking.shown_order)}
    responses = {r.id: r for r in session.exec(
        select(Response).where(Response.id.in_(ranking.shown_order)))}
    rationale = f"ranking #{ranking.id}" + (f": {ranking.rationale}" if ranking.rationale else "")
    written = []
    for a, b, preferred, strength in expand_to_pairs(ranking.order):
        # A comparison created here needs one judgment (this one): it stays out of other clinicians'
        # pair queues. An existing comparison keeps its requirement and counts this judgment.
        comparison, _created = add_comparison(responses[a], responses[b], session=session, judgments_required=1)
        if existing_judgment_id(comparison.id, ranking.annotator_id, session=session) is not None:
            continue  # the clinician judged this pair directly: that judgment stands
        judgment = insert_judgment(
            comparison.id, ranking.annotator_id, preferred, session=session, strength=strength,
            shown_left="a" if position[a] < position[b] else "b", flags_a=flags_by_id.get(a, ()),
            flags_b=flags_by_id.get(b, ()), rationale=rationale, ms_spent=None,
            guideline_version=ranking.guideline_version, created_at=now)
        written.append(judgment.id)
    if written:
        # insert_judgment (the one judgment writer) has no ranking_id parameter: mark them in one UPDATE.
        session.execute(update(Judgment).where(Judgment.id.in_(written)).values(ranking_id=ranking.id))
    return written


def skip_ranking(token: str, *, session: Session, annotator_id: int, reason: str,
                 now: datetime | None = None) -> RankingSkip:
    """Hand the task back with a reason; it is never offered to this clinician again."""
    return RANKINGS.skip(token, session=session, annotator_id=annotator_id, reason=reason, now=now)


def remaining_rankings_for(annotator_id: int, *, session: Session) -> int:
    """Open ranking tasks this clinician could still be given (not ranked, not skipped, not full)."""
    return RANKINGS.remaining(annotator_id, session=session)


__all__ = [
    "MIN_K", "MAX_K", "RankingAssignment", "RankingNotReserved", "RankingTaskFull", "add_ranking_task",
    "check_tiers", "describe_tiers", "expand_to_pairs", "next_ranking",
    "remaining_rankings_for", "response_key", "screen_to_response_tiers", "shown_order_for", "skip_ranking",
    "submit_ranking",
]
