"""OpenAI chat fine-tuning JSONL: ``{"messages": [system?, user, assistant, …]}`` per line.

The conversation up to the last user turn becomes a prompt (a leading system/developer message is
kept as ``Prompt.system_prompt``, not in the messages); the final assistant turn, when present,
becomes a Response of the non-model source ``reference``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from db.importers.base import MAX_LINE_BYTES, ImportFormatError, ImportRun, check_text, iter_json_records

REFERENCE = "reference"
SYSTEM_ROLES = ("system", "developer")


def message_text(message: Any, path: Path | str, line: int, index: int) -> tuple[str, str]:
    """``(role, text)`` of one chat message; content may be a string or a list of text parts.

    >>> message_text({"role": "user", "content": [{"type": "text", "text": "Hi"}]}, "f", 1, 0)
    ('user', 'Hi')
    """
    if not isinstance(message, dict):
        raise ImportFormatError(path, f"message {index + 1} is not an object", line=line)
    role = message.get("role")
    if role not in ("user", "assistant", *SYSTEM_ROLES):
        raise ImportFormatError(path, f"message {index + 1} has role {role!r}"[:200]
                                + " (expected system, user or assistant)", line=line)
    content = message.get("content")
    if isinstance(content, list):
        pieces = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise ImportFormatError(path, f"message {index + 1} has a non-text content part", line=line)
            pieces.append(check_text(part.get("text"), f"message {index + 1} text", path, line, allow_empty=True))
        content = "".join(pieces)
    text = check_text(content, f"message {index + 1} ({role}) content", path, line)
    return role, text


def split_conversation(messages: Any, path: Path | str, line: int, *, what: str = "messages"
                       ) -> tuple[str | None, list[dict[str, str]]]:
    """``(system_prompt, turns)`` of a chat: a system message may only come first.

    >>> split_conversation([{"role": "system", "content": "Be kind"}, {"role": "user", "content": "Hi"}], "f", 1)
    ('Be kind', [{'role': 'user', 'content': 'Hi'}])
    """
    if not isinstance(messages, list) or not messages:
        raise ImportFormatError(path, f"{what} must be a non-empty list of chat messages", line=line)
    system, turns = None, []
    for index, message in enumerate(messages):
        role, text = message_text(message, path, line, index)
        if role in SYSTEM_ROLES:
            if index != 0:
                raise ImportFormatError(path, f"{role} message {index + 1} is not the first message", line=line)
            system = text
        else:
            turns.append({"role": role, "content": text})
    return system, turns


def import_file(path: Path, run: ImportRun, *, max_line_bytes: int = MAX_LINE_BYTES) -> None:
    source = f"openai-jsonl:{path.name.split('.')[0]}"
    reference = None
    for line, record in iter_json_records(path, max_line_bytes=max_line_bytes):
        run.record()
        if "messages" not in record:
            raise ImportFormatError(path, "no 'messages' field (expected OpenAI chat format)", line=line)
        system, turns = split_conversation(record["messages"], path, line)
        last_user = max((i for i, t in enumerate(turns) if t["role"] == "user"), default=None)
        if last_user is None:
            raise ImportFormatError(path, "conversation has no user turn", line=line)
        tail = turns[last_user + 1:]
        if len(tail) > 1:
            raise ImportFormatError(path, f"expected one assistant reply after the last user turn, found {len(tail)}",
                                    line=line)
        prompt = run.prompt(turns[:last_user + 1], line=line, system_prompt=system, source=source,
                            external_id=str(line))
        if tail:
            reference = reference or run.candidate(REFERENCE, REFERENCE, model_id=REFERENCE)
            run.response(prompt, reference, tail[0]["content"], line=line,
                         meta={"source_file": path.name, "line": line})
        run.release()
