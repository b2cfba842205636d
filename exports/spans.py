"""``therapref export spans``: the unsafe spans clinicians marked, as JSONL for training a safety
classifier (token or span classification).

One line per reply with at least one span that passes the filters: the reply's ``text``, its
``spans`` (``start``/``end`` character offsets into ``text``, ``[start, end)``, the flag kind, the
annotator id and the judgment or ranking it came with), the kinds and annotators, and the ``prompt``
it answers (system message first, as the other kinds write it). The judgment-level filters (sources,
guideline version, dates, candidates) apply to the span's judgment or ranking; the vote filters do not
apply to spans and are refused.

With ``--scrub-pii`` the text changes length where a placeholder replaces PII, so offsets are carried
over (``exports.pii.Scrubber.scrub_spans``): a span boundary inside a replaced stretch moves to the
placeholder's edge, and the manifest counts the spans whose covered text the scrubbing changed.
Offsets always point into the ``text`` of the same line.

Written like every export: streamed, into a temporary file moved into place, with a manifest, an
``ExportRun`` row and an audit event (``exports.run``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from db.engine import read_only_engine, session_scope
from db.models import utcnow
from exports import formats, source
from exports.atomic import check_target, discard, temp_file
from exports.errors import ExportError
from exports.filters import ExportFilters, check_filters
from exports.pii import Scrubber
from exports.run import ExportOptions, ExportResult, Tracker, _check_options, _record, _system, _write_jsonl

KIND = "spans"
#: Filters about votes, which spans do not have: refused unless left at their defaults.
VOTE_FILTERS = {"min_votes": 1, "min_margin": 1, "min_agreement": 0.0, "exclude_flagged": False,
                "not_worse_on": None}


def check_span_filters(filters: ExportFilters) -> None:
    """Refuse vote filters on a spans export (one line).

    >>> check_span_filters(ExportFilters(min_votes=2))
    Traceback (most recent call last):
    ...
    exports.errors.ExportError: --min-votes applies to preference exports, not to spans
    """
    for name, default in VOTE_FILTERS.items():
        if getattr(filters, name) != default:
            raise ExportError(f"--{name.replace('_', '-')} applies to preference exports, not to spans")


class _Counts:
    def __init__(self) -> None:
        self.spans, self.by_flag, self.moved = 0, Counter(), 0


def export_spans(output: str | Path, *, engine: Engine, filters: ExportFilters | None = None,
                 options: ExportOptions | None = None,
                 progress: Callable[[int], None] | None = None) -> ExportResult:
    """Write the spans JSONL to ``output`` and its manifest; nothing is written on bad input or when no
    span passes the filters."""
    filters, options = filters or ExportFilters(), options or ExportOptions()
    check_span_filters(filters)
    _check_options(KIND, options)
    path = Path(output)
    check_target(path, force=options.force)
    check_target(formats.manifest_path(path, KIND), force=True)
    with session_scope(read_only_engine(engine)) as session:
        check_filters(filters, session=session)
    scrubber = Scrubber() if options.scrub_pii else None
    started, tmp = utcnow(), None
    tracker, counted = Tracker("replies", progress), _Counts()
    try:
        with read_only_engine(engine).connect() as conn:
            with conn.begin():
                total = source.count_span_replies(conn)
                tmp = temp_file(path)
                n_rows, digest = _write_jsonl(_rows(conn, filters, options, scrubber, tracker, counted), tmp, path)
        tracker.seen, tracker.rows = total, n_rows
        tracker.drop("filtered", total - n_rows)
        if n_rows == 0:
            raise ExportError(f"nothing to export: 0 of {total} replies with unsafe spans passed the filters; "
                              "no spans file written")
        counts: dict[str, Any] = {"unit": "replies", "in": total, "out": n_rows,
                                  "dropped": dict(sorted(tracker.dropped.items())), "spans": counted.spans,
                                  "spans_per_flag": dict(sorted(counted.by_flag.items()))}
        if scrubber:
            counts["pii_replaced"] = scrubber.report()
            counts["spans_changed_by_scrubbing"] = counted.moved
        result = _record(KIND, path, tmp, engine=engine, filters=filters, options=options, counts=counts,
                         digest=digest, started=started, prompt_ids=sorted(tracker.prompt_ids))
        tmp = None
        return result
    finally:
        discard(tmp)


def _rows(conn: Any, filters: ExportFilters, options: ExportOptions, scrubber: Scrubber | None,
          tracker: Tracker, counted: _Counts) -> Iterator[dict[str, Any]]:
    for response_id, group in groupby(source.iter_spans(conn, filters), key=lambda s: s.response_id):
        spans = list(group)
        first = spans[0]
        tracker.step()
        prompt = formats.checked_conversation(first.messages, _system(options, first.system_prompt))
        text, offsets = first.text, [(s.start, s.end) for s in spans]
        if scrubber is not None:
            prompt = scrubber.messages(prompt)
            text, moved = scrubber.scrub_spans(first.text, offsets)
            counted.moved += sum(1 for (a, b), (c, d) in zip(offsets, moved, strict=True)
                                 if first.text[a:b] != text[c:d])
            offsets = moved
        marks = [{"start": a, "end": b, "flag": s.flag, "annotator_id": s.annotator_id,
                  "judgment_id": s.judgment_id, "ranking_id": s.ranking_id}
                 for s, (a, b) in zip(spans, offsets, strict=True)]
        counted.spans += len(marks)
        counted.by_flag.update(m["flag"] for m in marks)
        tracker.kept(first.prompt_id)
        yield formats.spans_row(response_id, prompt, text, marks)


__all__ = ["export_spans", "check_span_filters", "KIND"]
