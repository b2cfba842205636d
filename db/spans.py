"""Unsafe spans: the characters of a reply that a clinician marked as what makes it unsafe.

A span is ``[start, end)`` in the reply's *stored* text (``Response.text``, Python string offsets:
code points), with a flag kind from ``SAFETY_FLAGS``. Spans are checked before anything is written
(``check_spans``: one clear line for a span outside the text or an unknown kind) and written in the
transaction of their judgment (``db.assignment.submit_judgment(spans=)``) or ranking
(``db.rankings.submit_ranking(spans=)``) by :func:`insert_spans`. A span's kind also flags its
reply (:func:`flags_with_spans`), so flag counts, filters and exports agree with the spans.

Every function takes ``session=`` and never commits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, or_
from sqlmodel import Session, select

from db.crud import DataError
from db.models import SAFETY_FLAGS, Annotator, Comparison, Judgment, Ranking, Response, UnsafeSpan
from db.rules import Sources

MAX_SPANS_PER_REPLY = 50


@dataclass(frozen=True, order=True)
class SpanMark:
    """One marked span as a page or a test gives it: offsets into the reply's stored text and a kind."""

    start: int
    end: int
    flag: str

    def as_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "flag": self.flag}


@dataclass(frozen=True)
class StoredSpan:
    """A stored span with who marked it and the text it covers (for leads and reports)."""

    id: int
    response_id: int
    start: int
    end: int
    flag: str
    annotator_id: int
    username: str
    judgment_id: int | None
    ranking_id: int | None
    quote: str
    side: str | None = None  # "a"/"b" of the comparison, for spans_for_comparison


def as_mark(value: Any) -> SpanMark:
    """A span from a ``SpanMark``, a ``(start, end, flag)`` triple or a ``{"start", "end", "flag"}`` dict.

    >>> as_mark((3, 9, "toxic")), as_mark({"start": 0, "end": 2, "flag": "boundary"})
    (SpanMark(start=3, end=9, flag='toxic'), SpanMark(start=0, end=2, flag='boundary'))
    >>> as_mark("3-9")
    Traceback (most recent call last):
    ...
    db.crud.DataError: a span is (start, end, flag kind), not '3-9'
    """
    if isinstance(value, SpanMark):
        return value
    if isinstance(value, Mapping):
        value = (value.get("start"), value.get("end"), value.get("flag"))
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise DataError(f"a span is (start, end, flag kind), not {value!r}")
    start, end, flag = value
    if isinstance(start, bool) or isinstance(end, bool) or not isinstance(start, int) or not isinstance(end, int):
        raise DataError(f"span offsets must be whole numbers, not {start!r} and {end!r}")
    return SpanMark(start, end, str(flag))


def check_marks(marks: Iterable[Any], text: str, *, label: str = "the reply") -> list[SpanMark]:
    """Check spans against the stored text they point into; return them sorted, duplicates dropped.

    >>> check_marks([(4, 8, "toxic"), (4, 8, "toxic")], "You are lazy.")
    [SpanMark(start=4, end=8, flag='toxic')]
    >>> check_marks([(5, 40, "toxic")], "You are lazy.", label="reply 2")
    Traceback (most recent call last):
    ...
    db.crud.DataError: span 5–40 lies outside reply 2 (its text has 13 characters: 0 ≤ start < end ≤ 13)
    >>> check_marks([(0, 3, "rude")], "You are lazy.")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    db.crud.DataError: span 0–3 of the reply: unknown flag kind 'rude' (known: misses_risk, harmful_advice, ...)
    """
    clean = sorted({as_mark(m) for m in marks})
    if len(clean) > MAX_SPANS_PER_REPLY:
        raise DataError(f"{label}: at most {MAX_SPANS_PER_REPLY} spans per reply, not {len(clean)}")
    for mark in clean:
        if not 0 <= mark.start < mark.end <= len(text):
            raise DataError(f"span {mark.start}–{mark.end} lies outside {label} (its text has {len(text)} "
                            f"characters: 0 ≤ start < end ≤ {len(text)})")
        if mark.flag not in SAFETY_FLAGS:
            raise DataError(f"span {mark.start}–{mark.end} of {label}: unknown flag kind {mark.flag!r} "
                            f"(known: {', '.join(SAFETY_FLAGS)})")
    return clean


def check_spans(spans: Mapping[Any, Iterable[Any]] | None, replies: Mapping[Any, tuple[int, str]],
                *, what: str = "reply") -> dict[int, list[SpanMark]]:
    """Check spans given per screen key (``"left"``/``"right"``, or reply numbers 1..K) against
    ``replies`` (screen key → (response id, stored text)); return them per response id.

    >>> check_spans({"left": [(0, 3, "toxic")]}, {"left": (7, "You are lazy."), "right": (8, "Hi")})
    {7: [SpanMark(start=0, end=3, flag='toxic')]}
    >>> check_spans({"middle": [(0, 1, "toxic")]}, {"left": (7, "x")})
    Traceback (most recent call last):
    ...
    db.crud.DataError: spans are given per reply (left), not for 'middle'
    """
    out: dict[int, list[SpanMark]] = {}
    for key, marks in (spans or {}).items():
        if key not in replies:
            raise DataError(f"spans are given per {what} ({', '.join(map(str, replies))}), not for {key!r}")
        response_id, text = replies[key]
        clean = check_marks(marks or (), text, label=f"{what} {key}")
        if clean:
            out[response_id] = clean
    return out


def flags_with_spans(flags: Sequence[str], marks: Iterable[SpanMark]) -> list[str]:
    """A reply's flags with its spans' kinds added (a marked span flags the reply).

    >>> flags_with_spans(["toxic"], [SpanMark(0, 2, "boundary"), SpanMark(3, 4, "toxic")])
    ['boundary', 'toxic']
    """
    return sorted(set(flags) | {m.flag for m in marks})


def response_texts(response_ids: Iterable[int], *, session: Session) -> dict[int, str]:
    ids = list(response_ids)
    return dict(session.exec(select(Response.id, Response.text).where(Response.id.in_(ids))).all()) if ids else {}


_INSERT_SPAN = insert(UnsafeSpan)


def insert_spans(spans: Mapping[int, Sequence[SpanMark]], *, session: Session, judgment_id: int | None = None,
                 ranking_id: int | None = None) -> int:
    """Write checked spans (response id → marks) for one judgment or one ranking; one executemany."""
    if (judgment_id is None) == (ranking_id is None):
        raise DataError("a span belongs to exactly one judgment or one ranking")
    rows = [{"judgment_id": judgment_id, "ranking_id": ranking_id, "response_id": rid, "start_char": m.start,
             "end_char": m.end, "flag": m.flag} for rid, marks in sorted(spans.items()) for m in marks]
    if rows:
        session.connection().execute(_INSERT_SPAN, rows)
    return len(rows)


def _stored(rows: Iterable[Any], sides: Mapping[int, str] | None = None) -> list[StoredSpan]:
    return [StoredSpan(id=sid, response_id=rid, start=start, end=end, flag=flag, annotator_id=aid,
                       username=username, judgment_id=jid, ranking_id=rkid, quote=text[start:end],
                       side=(sides or {}).get(rid))
            for sid, rid, start, end, flag, aid, username, jid, rkid, text in rows]


def _columns(annotator_id: Any) -> tuple[Any, ...]:
    s = UnsafeSpan
    return (s.id, s.response_id, s.start_char, s.end_char, s.flag, annotator_id, Annotator.username,
            s.judgment_id, s.ranking_id, Response.text)


def spans_for_comparison(comparison_id: int, *, session: Session) -> list[StoredSpan]:
    """Every span marked on either reply of a comparison: by the judgments of this comparison and by
    the rankings that expanded into it (``Judgment.ranking_id``), each with its annotator and the
    quoted text, ordered by reply side, start, annotator. Adjudication shows these to leads."""
    comparison = session.get(Comparison, comparison_id)
    if comparison is None:
        raise DataError(f"comparison {comparison_id} does not exist")
    sides = {comparison.response_a_id: "a", comparison.response_b_id: "b"}
    direct = (
        select(*_columns(Judgment.annotator_id))
        .join(Judgment, Judgment.id == UnsafeSpan.judgment_id)
        .join(Annotator, Annotator.id == Judgment.annotator_id)
        .join(Response, Response.id == UnsafeSpan.response_id)
        .where(Judgment.comparison_id == comparison_id)
    )
    rankings = select(Judgment.ranking_id).where(Judgment.comparison_id == comparison_id,
                                                 Judgment.ranking_id.is_not(None))
    ranked = (
        select(*_columns(Ranking.annotator_id))
        .join(Ranking, Ranking.id == UnsafeSpan.ranking_id)
        .join(Annotator, Annotator.id == Ranking.annotator_id)
        .join(Response, Response.id == UnsafeSpan.response_id)
        .where(UnsafeSpan.ranking_id.in_(rankings), UnsafeSpan.response_id.in_(list(sides)))
    )
    spans = _stored(session.execute(direct).all(), sides) + _stored(session.execute(ranked).all(), sides)
    return sorted(spans, key=lambda s: (s.side or "", s.start, s.end, s.username, s.id))


def spans_of(*, session: Session, judgment_id: int | None = None, ranking_id: int | None = None) -> list[StoredSpan]:
    """The spans written with one judgment or one ranking."""
    owner = Judgment if judgment_id is not None else Ranking
    query = (select(*_columns(owner.annotator_id))
             .join(owner, owner.id == (UnsafeSpan.judgment_id if judgment_id is not None else UnsafeSpan.ranking_id))
             .join(Annotator, Annotator.id == owner.annotator_id)
             .join(Response, Response.id == UnsafeSpan.response_id)
             .where(owner.id == (judgment_id if judgment_id is not None else ranking_id))
             .order_by(UnsafeSpan.response_id, UnsafeSpan.start_char, UnsafeSpan.id))
    return _stored(session.execute(query).all())


@dataclass(frozen=True)
class SpanCounts:
    """Spans of one flag kind: how many, on how many replies, by how many annotators, characters covered."""

    flag: str
    label: str
    spans: int
    replies: int
    annotators: int
    characters: int

    def as_dict(self) -> dict[str, Any]:
        return {"flag": self.flag, "label": self.label, "spans": self.spans, "replies": self.replies,
                "annotators": self.annotators, "characters": self.characters}


def span_counts(*, session: Session, sources: Sources | None = None) -> list[SpanCounts]:
    """Per flag kind (every kind listed, zero included): spans marked by the annotators ``sources``
    includes (default: clinicians), the replies they are on, the annotators who marked them and the
    characters they cover."""
    who = or_(Annotator.id == Judgment.annotator_id, Annotator.id == Ranking.annotator_id)
    rows = session.exec(
        select(UnsafeSpan.flag, UnsafeSpan.response_id, Annotator.id, UnsafeSpan.start_char, UnsafeSpan.end_char)
        .outerjoin(Judgment, Judgment.id == UnsafeSpan.judgment_id)
        .outerjoin(Ranking, Ranking.id == UnsafeSpan.ranking_id)
        .join(Annotator, who)
        .where((sources or Sources.parse("clinicians")).condition())
    ).all()
    spans, chars = Counter(), Counter()
    replies: dict[str, set[int]] = {f: set() for f in SAFETY_FLAGS}
    annotators: dict[str, set[int]] = {f: set() for f in SAFETY_FLAGS}
    for flag, rid, aid, start, end in rows:
        spans[flag] += 1
        chars[flag] += end - start
        replies.setdefault(flag, set()).add(rid)
        annotators.setdefault(flag, set()).add(aid)
    return [SpanCounts(flag, SAFETY_FLAGS.get(flag, flag), spans[flag], len(replies[flag]), len(annotators[flag]),
                       chars[flag]) for flag in replies]


__all__ = ["SpanMark", "StoredSpan", "SpanCounts", "as_mark", "check_marks", "check_spans", "flags_with_spans",
           "insert_spans", "response_texts", "spans_for_comparison", "spans_of", "span_counts",
           "MAX_SPANS_PER_REPLY"]
