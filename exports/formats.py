"""The export row format, written and read in this one module (a shared owner, docs/architecture.md):
the row shape of each kind (pure functions; JSON-ready dicts), its JSONL line, the keys that tell
the kinds apart, the prompt of a row of any kind, and the provenance manifest beside every export.
Policy training reads exports through it (``policy.data``, ``policy.abtest``, ``policy.prompts``);
the OpenAI validator (``exports.validate``) parses lines with it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from db import rules
from exports.errors import ExportError

Messages = list[dict[str, str]]

#: The keys that identify each export kind's rows (``row_kind``).
SIGNATURES: dict[str, tuple[str, ...]] = {
    "sft": ("messages",),
    "dpo": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
    "openai-dpo": ("input", "preferred_output", "non_preferred_output"),
    "spans": ("text", "spans"),
}


def row_kind(row: Any) -> str | None:
    """Which export kind wrote a row, by its keys (``None``: no kind writes it).

    >>> row_kind({"messages": []}), row_kind({"prompt": "p", "chosen": "a", "rejected": "b"})
    ('sft', 'dpo')
    >>> row_kind({"prompt": "p", "completion": "a", "label": True}), row_kind({"text": "x"})
    ('kto', None)
    """
    if not isinstance(row, dict):
        return None
    for kind, keys in SIGNATURES.items():
        if all(k in row for k in keys):
            return kind
    return None


def checked_conversation(messages: Messages, system: str | None) -> Messages:
    """The prompt as chat messages, led by the system message when there is one (``db.rules.conversation``),
    after checking that the stored messages are user/assistant turns with text content.

    >>> checked_conversation([{"role": "user", "content": "hi"}], "Be kind.")
    [{'role': 'system', 'content': 'Be kind.'}, {'role': 'user', 'content': 'hi'}]
    >>> checked_conversation([{"role": "user", "content": "hi"}], None)
    [{'role': 'user', 'content': 'hi'}]
    >>> checked_conversation(True, None)
    Traceback (most recent call last):
    ...
    exports.errors.ExportError: a stored prompt has malformed messages (expected role/content objects, got bool)
    """
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
            for m in messages):
        # Rows written by hand or by an older version: refuse to export them rather than crash.
        raise ExportError("a stored prompt has malformed messages (expected role/content objects, "
                          f"got {type(messages).__name__})")
    # Only role and content go out: other stored keys are not part of any training format.
    return rules.conversation(messages, system, keys=("role", "content"))


def assistant(text: str) -> Messages:
    """>>> assistant("ok")
    [{'role': 'assistant', 'content': 'ok'}]
    """
    return [{"role": "assistant", "content": text}]


def sft_row(prompt: Messages, reply: str) -> dict[str, Any]:
    """OpenAI chat fine-tuning line (the Gaby file's shape).

    >>> sft_row([{"role": "user", "content": "hi"}], "hello")
    {'messages': [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}]}
    """
    return {"messages": prompt + assistant(reply)}


def dpo_row(prompt: Messages, chosen: str, rejected: str, margin: float | None = None) -> dict[str, Any]:
    """TRL conversational preference line (``prompt``/``chosen``/``rejected``, optional ``margin``).

    >>> dpo_row([{"role": "user", "content": "hi"}], "warm", "cold", 0.5)["chosen"]
    [{'role': 'assistant', 'content': 'warm'}]
    """
    row: dict[str, Any] = {"prompt": prompt, "chosen": assistant(chosen), "rejected": assistant(rejected)}
    if margin is not None:
        row["margin"] = margin
    return row


def openai_dpo_row(prompt: Messages, chosen: str, rejected: str) -> dict[str, Any]:
    """OpenAI preference fine-tuning line.

    >>> sorted(openai_dpo_row([{"role": "user", "content": "hi"}], "a", "b"))
    ['input', 'non_preferred_output', 'preferred_output']
    """
    return {"input": {"messages": prompt}, "preferred_output": assistant(chosen),
            "non_preferred_output": assistant(rejected)}


def kto_row(prompt: Messages, reply: str, label: bool) -> dict[str, Any]:
    """TRL unpaired preference line (conversational).

    >>> kto_row([{"role": "user", "content": "hi"}], "ok", False)["label"]
    False
    """
    return {"prompt": prompt, "completion": assistant(reply), "label": bool(label)}


def spans_row(response_id: int, prompt: Messages, text: str, spans: list[dict[str, Any]]) -> dict[str, Any]:
    """Unsafe-span line (``export spans``): the reply's text, its marked spans (``[start, end)`` character
    offsets into ``text``, flag kind, who marked it), the kinds and the annotators, and the prompt it
    answers.

    >>> row = spans_row(7, [], "You are lazy.", [{"start": 8, "end": 12, "flag": "toxic", "annotator_id": 3}])
    >>> row["text"][row["spans"][0]["start"]:row["spans"][0]["end"]], row["flags"], row["annotator_ids"]
    ('lazy', ['toxic'], [3])
    """
    return {"response_id": response_id, "prompt": prompt, "text": text, "spans": spans,
            "flags": sorted({s["flag"] for s in spans}), "annotator_ids": sorted({s["annotator_id"] for s in spans})}


def jsonl_line(row: dict[str, Any]) -> str:
    """One JSONL line: UTF-8 text kept as is (``ensure_ascii=False``), ``", "``/``": "`` separators
    as in the Gaby file.

    >>> jsonl_line({"a": "café"})
    '{"a": "café"}\\n'
    """
    return json.dumps(row, ensure_ascii=False) + "\n"


def parse_jsonl_line(raw: bytes) -> Any:
    """One JSONL line's value; ``ValueError`` says what is wrong with it.

    >>> parse_jsonl_line(b'{"a": 1}\\n')
    {'a': 1}
    >>> parse_jsonl_line(b"{oops")
    Traceback (most recent call last):
    ...
    ValueError: not valid JSON (Expecting property name enclosed in double quotes)
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from None


class Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...


def read_jsonl(path: Path, *, digest: Digest | None = None,
               error: type[Exception] = ExportError) -> Iterator[tuple[int, Any]]:
    """(line number, value) of every non-blank line of the JSONL file ``path``, streamed. Every raw line
    is fed to ``digest`` (a ``hashlib`` object: the file's sha256 as provenance). The first unreadable
    line is one ``error`` (the caller's area's error class): ``FILE line N: problem``."""
    try:
        handle = Path(path).open("rb")
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if digest is not None:
                digest.update(raw)
            if not raw.strip():
                continue
            try:
                yield number, parse_jsonl_line(raw)
            except ValueError as exc:
                raise error(f"{path} line {number}: {exc}") from None


def row_messages(row: Any) -> Any:
    """The prompt's messages as a row of any kind holds them (SFT ``messages``, OpenAI-DPO
    ``input.messages``, TRL ``prompt`` as chat or text), unchecked; ``None`` when it has none.

    >>> row_messages({"input": {"messages": [{"role": "user", "content": "hi"}]}})
    [{'role': 'user', 'content': 'hi'}]
    >>> row_messages({"prompt": "hi", "completion": "x", "label": True}), row_messages([1])
    ('hi', None)
    """
    if not isinstance(row, dict):
        return None
    messages: Any = row.get("messages")
    if messages is None and isinstance(row.get("input"), dict):
        messages = row["input"].get("messages")
    if messages is None:
        messages = row.get("prompt")
    return messages


def row_conversation(row: Any) -> Messages | None:
    """The prompt conversation of one row of any kind (``row_messages``; a text prompt is one user
    turn): user/assistant turns up to the last user turn, the system message left out (exports may
    replace it). ``None`` for a row of another shape.

    >>> row_conversation({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"},
    ...                                {"role": "assistant", "content": "hello"}]})
    [{'role': 'user', 'content': 'hi'}]
    >>> row_conversation({"prompt": "hi", "completion": "x", "label": True})
    [{'role': 'user', 'content': 'hi'}]
    >>> row_conversation({"text": "plain"}) is None
    True
    """
    messages = row_messages(row)
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return None
    turns = [{"role": str(m.get("role")), "content": str(m.get("content", ""))} for m in messages
             if m.get("role") in ("user", "assistant")]
    last_user = max((i for i, m in enumerate(turns) if m["role"] == "user"), default=None)
    return None if last_user is None else turns[:last_user + 1]


def manifest_path(path: Path, kind: str) -> Path:
    """The provenance manifest of an export: ``<file>.manifest.json`` beside a file export,
    ``manifest.json`` inside an HF dataset folder.

    >>> manifest_path(Path("out/dpo.jsonl"), "dpo").as_posix()
    'out/dpo.jsonl.manifest.json'
    >>> manifest_path(Path("out/ds"), "hf").as_posix()
    'out/ds/manifest.json'
    """
    return path / "manifest.json" if kind == "hf" else path.with_name(path.name + ".manifest.json")


def write_manifest(manifest: dict[str, Any], path: Path) -> None:
    """Write ``manifest`` to the file ``path`` (sorted keys, UTF-8 kept as is)."""
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def read_manifest(path: Path, *, error: type[Exception] = ExportError) -> dict[str, Any]:
    """The manifest in the file ``path``; one ``error`` when it is not a readable JSON object."""
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not a readable export manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise error(f"{path}: not a readable export manifest (not a JSON object)")
    return manifest
