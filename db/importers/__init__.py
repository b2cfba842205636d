"""Importers: files of prompts (with reference replies) and of preferences into the database.

>>> sorted(PROMPT_FORMATS), sorted(PREFERENCE_FORMATS)
(['counselchat', 'dialogflow', 'openai-jsonl', 'plaintext'], ['counselchat-upvotes', 'hh-rlhf', 'trl'])

Every importer streams its file, writes through the ``db.crud`` functions inside the caller's one
transaction (it never commits: use ``db.engine.session_scope`` so an error rolls everything back),
is idempotent (re-importing adds nothing) and raises ``ImportFormatError`` (one line: file,
line/row/entry, problem) on malformed input. See ``docs/importers.md``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sqlmodel import Session

from db.audit import audit
from db.importers import (
    counselchat,
    counselchat_upvotes,
    dialogflow,
    hh_rlhf,
    openai_jsonl,
    plaintext,
    trl_prefs,
)
from db.importers.base import (
    MAX_LINE_BYTES,
    ImportFormatError,
    ImportRun,
    ImportSummary,
    check_dataset,
    is_gzip,
    iter_lines,
    slug,
)
from db.importers.counselchat import CounselChatRow, clean_text, iter_counselchat_rows

PROMPT_FORMATS = {
    "openai-jsonl": openai_jsonl.import_file,
    "counselchat": counselchat.import_file,
    "dialogflow": dialogflow.import_file,
    "plaintext": plaintext.import_file,
}
PREFERENCE_FORMATS = {
    "trl": trl_prefs.import_file,
    "hh-rlhf": hh_rlhf.import_file,
    "counselchat-upvotes": counselchat_upvotes.import_file,
}
ALIASES = {
    "openai": "openai-jsonl", "jsonl": "openai-jsonl", "chat-jsonl": "openai-jsonl", "csv": "counselchat",
    "counsel-chat": "counselchat", "zip": "dialogflow", "dialogflow-es": "dialogflow", "text": "plaintext",
    "txt": "plaintext", "trl-prefs": "trl", "hh": "hh-rlhf", "anthropic-hh": "hh-rlhf",
    "upvotes": "counselchat-upvotes",
}


def _first_record(path: Path) -> dict | None:
    for _, text in iter_lines(path):
        if text.strip():
            try:
                value = json.loads(text)
            except (json.JSONDecodeError, RecursionError):
                return None
            return value if isinstance(value, dict) else None
    return None


def detect_format(path: str | Path, *, kind: str | None = None) -> str:
    """Guess a file's format from its extension and first bytes/record.

    ``kind`` is ``"prompts"`` or ``"preferences"`` (a Counsel Chat CSV is ``counselchat`` as prompts
    and ``counselchat-upvotes`` as preferences). Raises ``ImportFormatError`` when it cannot tell.
    """
    path = Path(path)
    if not path.is_file():
        raise ImportFormatError(path, "no such file")
    with open(path, "rb") as handle:
        head = handle.read(4)
    name = path.name.lower()
    if head.startswith(b"PK\x03\x04") or name.endswith(".zip"):
        return "dialogflow"
    if name.endswith(".csv"):
        return "counselchat-upvotes" if kind == "preferences" else "counselchat"
    if name.endswith(".txt"):
        return "plaintext"
    if head.startswith(b"\x1f\x8b") or name.endswith((".jsonl", ".json", ".ndjson")):
        record = _first_record(path) if head else None
        if record is not None:
            if "messages" in record:
                return "openai-jsonl"
            if "chosen" in record and "rejected" in record:
                hh = "prompt" not in record and isinstance(record["chosen"], str) and "\n\nHuman:" in record["chosen"]
                return "hh-rlhf" if hh else "trl"
        if kind == "prompts":
            return "openai-jsonl"
        if kind == "preferences":
            return "trl"
    raise ImportFormatError(path, "cannot tell the file's format; pass --format (one of "
                            f"{', '.join([*PROMPT_FORMATS, *PREFERENCE_FORMATS])})")


def _resolve(path: Path, fmt: str | None, kind: str, formats: dict) -> str:
    chosen = ALIASES.get(fmt, fmt) if fmt else detect_format(path, kind=kind)
    if kind == "preferences" and chosen == "counselchat":
        chosen = "counselchat-upvotes"
    if chosen not in formats:
        other = "preferences" if kind == "prompts" else "prompts"
        hint = f" (that is a {other} format: use `therapref import {other}`)" if chosen in (
            PREFERENCE_FORMATS if kind == "prompts" else PROMPT_FORMATS) else ""
        raise ImportFormatError(path, f"{chosen!r} is not a {kind} format{hint}; choose one of {', '.join(formats)}")
    if not path.is_file():
        raise ImportFormatError(path, "no such file")
    return chosen


def import_prompts(path: str | Path, *, session: Session, format: str | None = None,
                   max_line_bytes: int = MAX_LINE_BYTES, actor: str | None = None,
                   progress: Callable[[int], None] | None = None) -> ImportSummary:
    """Import a file of prompts (OpenAI chat JSONL, Counsel Chat CSV, Dialogflow ES zip, plain text).

    Writes in ``session`` without committing; ``actor`` (e.g. ``"cli"``) records an audit event.
    """
    path = Path(path)
    fmt = _resolve(path, format, "prompts", PROMPT_FORMATS)
    run = ImportRun(session, path, fmt, progress=progress)
    PROMPT_FORMATS[fmt](path, run, max_line_bytes=max_line_bytes)
    run.release(force=True)
    if actor:
        audit(actor, "import.prompts", session=session, target=path.name, details=run.summary.as_dict())
    return run.summary


def import_preferences(path: str | Path, *, session: Session, format: str | None = None, dataset: str | None = None,
                       max_line_bytes: int = MAX_LINE_BYTES, actor: str | None = None,
                       progress: Callable[[int], None] | None = None) -> ImportSummary:
    """Import preference pairs (TRL JSONL, HH-RLHF JSONL/.gz, Counsel Chat upvotes).

    ``dataset`` names the source annotator (``import:<dataset>``), the prompts' source and the
    replies' candidate; default ``hh-rlhf`` / ``counselchat-upvotes`` / the TRL file's name.
    """
    path = Path(path)
    fmt = _resolve(path, format, "preferences", PREFERENCE_FORMATS)
    if dataset is None:
        defaults = {"hh-rlhf": hh_rlhf.DATASET, "counselchat-upvotes": counselchat_upvotes.DATASET}
        dataset = defaults.get(fmt) or slug(path.name.split(".")[0])
    check_dataset(dataset)
    run = ImportRun(session, path, fmt, dataset=dataset, progress=progress)
    PREFERENCE_FORMATS[fmt](path, run, dataset=dataset, max_line_bytes=max_line_bytes)
    run.release(force=True)
    if actor:
        audit(actor, "import.preferences", session=session, target=path.name, details=run.summary.as_dict())
    return run.summary


__all__ = [
    "ImportFormatError", "ImportSummary", "CounselChatRow", "PROMPT_FORMATS", "PREFERENCE_FORMATS",
    "MAX_LINE_BYTES", "detect_format", "import_prompts", "import_preferences", "iter_counselchat_rows",
    "clean_text", "is_gzip",
]
