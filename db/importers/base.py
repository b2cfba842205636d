"""Shared machinery of every importer: one-line errors, the summary, streaming line readers and
the bookkeeping that turns records into rows (counting added / already present / repeated).

Importers never commit: the caller owns the one transaction (``db.engine.session_scope``), so an
error anywhere rolls the whole file back.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from db.crud import (
    DataError,
    add_comparison,
    add_judgment,
    add_response,
    get_or_create_prompt,
    get_or_create_source_annotator,
    validate_messages,
)
from db.errors import TheraPrefError
from db.hashing import normalize_text, prompt_hash
from db.models import Annotator, CandidateModel, Prompt, Response

MAX_LINE_BYTES = 1_048_576
"""Longest accepted line (JSONL record, CSV line, text line), in bytes; ``--max-line-bytes``."""
PROGRESS_EVERY = 1000
RELEASE_BATCH = 2000
GZIP_MAGIC = b"\x1f\x8b"
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")


class ImportFormatError(TheraPrefError, ValueError):
    """Malformed input: one line naming the file, the place in it (line, row or zip entry) and the
    problem.

    >>> str(ImportFormatError("chats.jsonl", "invalid JSON", line=3))
    'chats.jsonl, line 3: invalid JSON'
    >>> str(ImportFormatError("a.zip", "not an object\\nsecond", entry="intents/X.json"))
    'a.zip, entry intents/X.json: not an object second'
    """

    def __init__(self, path: str | Path, problem: str, *, line: int | None = None,
                 entry: str | None = None) -> None:
        self.path, self.line, self.entry = str(path), line, entry
        self.problem = " ".join(str(problem).split())
        where = self.path
        if entry is not None:
            where += f", entry {entry}"
        if line is not None:
            where += f", line {line}"
        super().__init__(f"{where}: {self.problem}")


@dataclass
class ImportSummary:
    """What one import did. ``added``/``already_present``/``repeated`` count rows per kind
    (prompts, responses, comparisons, judgments); ``skipped`` counts records per reason."""

    path: str = field(metadata={"help": "the imported file"})
    format: str = field(metadata={"help": "the format it was read as"})
    dataset: str | None = field(default=None, metadata={"help": "preference dataset name, if any"})
    records: int = field(default=0, metadata={"help": "records read (lines, rows, training phrases)"})
    added: Counter = field(default_factory=Counter, metadata={"help": "new rows per kind"})
    already_present: Counter = field(default_factory=Counter,
                                     metadata={"help": "rows that existed before this import"})
    repeated: Counter = field(default_factory=Counter,
                              metadata={"help": "later hits on a row already counted in this import"})
    skipped: Counter = field(default_factory=Counter, metadata={"help": "records skipped, per reason"})

    def line(self) -> str:
        """The one summary line the CLI prints.

        >>> s = ImportSummary("x.jsonl", "openai-jsonl", records=3)
        >>> s.added.update(prompts=2, responses=2); s.skipped["chosen equals rejected"] += 1
        >>> print(s.line().replace("; ", ";\\n"))
        x.jsonl [openai-jsonl]: 3 records;
        added 2 prompts, 2 responses;
        already present 0;
        skipped 1 (1 chosen equals rejected)
        """
        extra = f", dataset {self.dataset}" if self.dataset and self.dataset != self.format else ""
        head = f"{Path(self.path).name} [{self.format}{extra}]"
        parts = [f"{head}: {self.records:,} records", f"added {_kinds(self.added)}",
                 f"already present {_kinds(self.already_present)}"]
        if sum(self.repeated.values()):
            parts.append(f"met again within the file {_kinds(self.repeated)}")
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{n:,} {why}" for why, n in sorted(self.skipped.items()))
        parts.append(f"skipped {skipped:,}" + (f" ({reasons})" if reasons else ""))
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "dataset": self.dataset, "records": self.records,
                "added": dict(self.added), "already_present": dict(self.already_present),
                "repeated": dict(self.repeated), "skipped": dict(self.skipped)}


def _kinds(counter: Counter) -> str:
    items = [f"{n:,} {kind}" for kind, n in counter.items() if n]
    return ", ".join(items) if items else "0"


# --------------------------------------------------------------------------- reading

def is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def iter_lines(path: Path, *, max_line_bytes: int = MAX_LINE_BYTES,
               keep_ends: bool = False) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` one line at a time (plain or gzip), refusing lines longer
    than ``max_line_bytes`` and bytes that are not UTF-8, without reading the file whole."""
    opener = gzip.open if is_gzip(path) else open
    number = 0
    try:
        with opener(path, "rb") as handle:
            while True:
                raw = handle.readline(max_line_bytes + 1)
                if not raw:
                    return
                number += 1
                if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                    raise ImportFormatError(path, f"line is longer than the limit of {max_line_bytes:,} bytes",
                                            line=number)
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ImportFormatError(path, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                                            f"{exc.start + 1})", line=number) from None
                yield number, (text if keep_ends else text.rstrip("\r\n"))
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise ImportFormatError(path, "no such file") from None
        raise ImportFormatError(path, f"cannot read the file ({type(exc).__name__}: {exc})",
                                line=number + 1 if number else None) from None


def iter_json_records(path: Path, *, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` per non-blank JSONL line; an empty file is an error."""
    seen = False
    for number, text in iter_lines(path, max_line_bytes=max_line_bytes):
        if not text.strip():
            continue
        seen = True
        yield number, parse_json_object(text, path, number)
    if not seen:
        raise ImportFormatError(path, "the file is empty (no records)")


def parse_json_object(text: str, path: Path | str, line: int | None) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportFormatError(path, f"invalid JSON ({exc.msg} at column {exc.colno})", line=line) from None
    except RecursionError:
        raise ImportFormatError(path, "invalid JSON (nested too deeply)", line=line) from None
    if not isinstance(value, dict):
        raise ImportFormatError(path, f"expected a JSON object, got {_json_type(value)}", line=line)
    return value


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def check_text(value: Any, what: str, path: Path | str, line: int | None = None, *,
               entry: str | None = None, allow_empty: bool = False) -> str:
    """A string that every database can store (no NUL, no unpaired surrogates).

    >>> check_text("ok", "prompt", "f.jsonl", 1)
    'ok'
    >>> check_text(3, "prompt", "f.jsonl", 2)
    Traceback (most recent call last):
    ...
    db.importers.base.ImportFormatError: f.jsonl, line 2: prompt must be a string, not a number
    """
    if not isinstance(value, str):
        raise ImportFormatError(path, f"{what} must be a string, not {_json_type(value)}", line=line, entry=entry)
    if "\x00" in value:
        raise ImportFormatError(path, f"{what} contains a NUL character", line=line, entry=entry)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ImportFormatError(path, f"{what} contains an unpaired surrogate (\\ud800-\\udfff)",
                                line=line, entry=entry) from None
    if not allow_empty and not value.strip():
        raise ImportFormatError(path, f"{what} is empty", line=line, entry=entry)
    return value


def check_margin(value: Any, path: Path | str, line: int) -> float | None:
    if value is None:
        return None
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:
        number = math.nan
    if not math.isfinite(number):
        raise ImportFormatError(path, f"margin must be a finite number, not {str(value)[:40]!r}", line=line)
    return number


def check_dataset(name: str) -> str:
    """>>> check_dataset("hh-rlhf")
    'hh-rlhf'
    """
    if not _DATASET_NAME.match(name or ""):
        raise ImportFormatError(name or "''", "dataset name must be 1-100 letters, digits, '.', '_', ':' or '-'")
    return name


def slug(text: str) -> str:
    """>>> slug("My Prefs (v2)")
    'my-prefs-v2'
    """
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:80] or "dataset"


# --------------------------------------------------------------------------- writing

def import_rationale(dataset: str, where: str) -> str:
    """The rationale stored on an imported judgment: where it came from (the dataset's margin has
    its own column, ``Judgment.margin``).

    >>> import_rationale("trl", "p.jsonl line 4")
    'imported from trl (p.jsonl line 4)'
    """
    return f"imported from {dataset} ({where})"


class ImportRun:
    """Bookkeeping for one file: wraps the crud functions, counts what they did, turns data-model
    errors into located one-line errors and releases ORM objects so memory stays flat."""

    def __init__(self, session: Session, path: Path, fmt: str, *, dataset: str | None = None,
                 progress: Callable[[int], None] | None = None) -> None:
        self.session, self.path = session, path
        self.summary = ImportSummary(str(path), fmt, dataset)
        self._seen: dict[str, set[int]] = {}
        self._candidates: dict[str, CandidateModel] = {}
        self._annotators: dict[str, Annotator] = {}
        self._touched: list[Any] = []
        self._recent_prompts: dict[str, Prompt] = {}  # content hash -> prompt, until the next release
        self._progress = progress

    # counting ---------------------------------------------------------------
    def record(self) -> None:
        self.summary.records += 1
        if self._progress and self.summary.records % PROGRESS_EVERY == 0:
            self._progress(self.summary.records)

    def skip(self, reason: str) -> None:
        self.summary.skipped[reason] += 1

    def _count(self, kind: str, row: Any, created: bool) -> None:
        """Each row counts once as added or already present; later hits count as repeated."""
        seen = self._seen.setdefault(kind, set())
        if row.id in seen:
            self.summary.repeated[kind] += 1
        else:
            seen.add(row.id)
            (self.summary.added if created else self.summary.already_present)[kind] += 1
        self._touched.append(row)

    def forget(self, *rows: Any) -> None:
        """Release these rows too at the next ``release``."""
        self._touched.extend(rows)

    def release(self, *, force: bool = False) -> None:
        """Forget the ORM objects of the records so far (they are flushed), once a batch has
        gathered (or when ``force``), so that long files run in flat memory."""
        if not force and len(self._touched) < RELEASE_BATCH:
            return
        for row in self._touched:
            if row in self.session:
                self.session.expunge(row)
        self._touched.clear()
        self._recent_prompts.clear()

    # rows -------------------------------------------------------------------
    def candidate(self, name: str, provider: str, model_id: str = "", **fields: Any) -> CandidateModel:
        """A non-model source by name, created once; never re-purposes another provider's model."""
        if name in self._candidates:
            return self._candidates[name]
        found = self.session.exec(select(CandidateModel).where(CandidateModel.name == name)).first()
        if found is None:
            found = CandidateModel(name=name, provider=provider, model_id=model_id or name, **fields)
            self.session.add(found)
            self.session.flush()
        elif found.provider != provider:
            raise ImportFormatError(self.path, f"candidate {name!r} already exists with provider "
                                    f"{found.provider!r} (not {provider!r}); choose another dataset name")
        self._candidates[name] = found
        return found

    def annotator(self, dataset: str) -> Annotator:
        if dataset not in self._annotators:
            annotator = get_or_create_source_annotator(dataset, session=self.session)
            if annotator.role != "source":
                raise ImportFormatError(self.path, f"{annotator.username!r} is a login account, "
                                        "not an imported source; choose another dataset name")
            self._annotators[dataset] = annotator
        return self._annotators[dataset]

    def prompt(self, messages: list[dict[str, Any]], *, line: int | None = None, entry: str | None = None,
               **fields: Any) -> Prompt:
        for name, limit in (("external_id", 500), ("topic", 200), ("source", 200)):
            if isinstance(fields.get(name), str):
                fields[name] = fields[name][:limit]
        try:
            digest = prompt_hash(validate_messages(messages), fields.get("system_prompt"))
            prompt = self._recent_prompts.get(digest)
            created = False
            if prompt is None:
                prompt, created = get_or_create_prompt(messages, session=self.session, **fields)
                self._recent_prompts[digest] = prompt
        except DataError as exc:
            raise ImportFormatError(self.path, str(exc), line=line, entry=entry) from None
        self._count("prompts", prompt, created)
        return prompt

    def response(self, prompt: Prompt, candidate: CandidateModel, text: str, *, meta: dict[str, Any] | None = None,
                 line: int | None = None, entry: str | None = None) -> Response:
        try:
            response, created = add_response(prompt, candidate, text, session=self.session, meta=meta)
        except DataError as exc:
            raise ImportFormatError(self.path, str(exc), line=line, entry=entry) from None
        self._count("responses", response, created)
        return response

    def preference(self, chosen: Response, rejected: Response, *, dataset: str, where: str,
                   margin: float | None = None, strength: int | None = None) -> bool:
        """Comparison of two replies of one prompt plus the dataset's judgment (chosen preferred).

        Returns False (and counts a skip) when this dataset already judged the pair the other way.
        """
        comparison, created = add_comparison(chosen, rejected, session=self.session)
        self._count("comparisons", comparison, created)
        preferred = "a" if comparison.response_a_id == chosen.id else "b"
        judgment, created = add_judgment(
            comparison, self.annotator(dataset), preferred, session=self.session, strength=strength,
            rationale=import_rationale(dataset, where), margin=margin)
        if not created and judgment.preferred != preferred:
            self.skip("contradicts an earlier pair of this dataset")
            self._touched.append(judgment)
            return False
        self._count("judgments", judgment, created)
        return True


def same_text(first: str, second: str) -> bool:
    """Equal once normalised the way the response hash sees them.

    >>> same_text("Fine. ", "Fine.")
    True
    """
    return normalize_text(first) == normalize_text(second)
