"""Anthropic HH-RLHF JSONL (or .jsonl.gz): ``{"chosen": transcript, "rejected": transcript}``.

A transcript is ``\\n\\nHuman: …\\n\\nAssistant: …`` turns. The turns before the final Assistant
reply are the shared context (the prompt); the two final replies are chosen and rejected.
Structural problems (no turns, text before the first turn, a transcript not ending with an
Assistant reply) are errors; well-formed records that cannot make a pair are skipped with a
reason: an empty final reply, contexts that differ, or chosen equal to rejected.
"""

from __future__ import annotations

import re
from pathlib import Path

from db.importers.base import MAX_LINE_BYTES, ImportFormatError, ImportRun, check_text, iter_json_records
from db.importers.trl_prefs import add_preference

DATASET = "hh-rlhf"
_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def split_transcript(text: str) -> list[tuple[str, str]]:
    """``[(role, text), …]`` of an HH-RLHF transcript (roles ``user``/``assistant``).

    >>> split_transcript("\\n\\nHuman: I feel low\\n\\nAssistant: I'm sorry.")
    [('user', 'I feel low'), ('assistant', "I'm sorry.")]
    >>> split_transcript("hello")
    Traceback (most recent call last):
    ...
    ValueError: no '\\n\\nHuman:' turn found
    """
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip(" \t\r\n")
    parts = _TURN.split(text)
    if len(parts) < 3:
        raise ValueError("no '\\n\\nHuman:' turn found")
    if parts[0].strip():
        raise ValueError("text before the first Human: turn")
    return [(_ROLES[role], body.strip()) for role, body in zip(parts[1::2], parts[2::2], strict=True)]


def import_file(path: Path, run: ImportRun, *, dataset: str = DATASET, max_line_bytes: int = MAX_LINE_BYTES) -> None:
    for line, record in iter_json_records(path, max_line_bytes=max_line_bytes):
        run.record()
        missing = [key for key in ("chosen", "rejected") if key not in record]
        if missing:
            raise ImportFormatError(path, f"missing field(s) {', '.join(missing)} (HH-RLHF records need chosen "
                                    "and rejected transcripts)", line=line)
        turns = {}
        for key in ("chosen", "rejected"):
            text = check_text(record[key], key, path, line)
            try:
                turns[key] = split_transcript(text)
            except ValueError as exc:
                raise ImportFormatError(path, f"{key}: {exc}", line=line) from None
            if turns[key][0][0] != "user":
                raise ImportFormatError(path, f"{key}: the first turn must be Human", line=line)
            if turns[key][-1][0] != "assistant":
                raise ImportFormatError(path, f"{key}: the last turn must be an Assistant reply", line=line)
        chosen, rejected = turns["chosen"], turns["rejected"]
        if not chosen[-1][1] or not rejected[-1][1]:
            run.skip("empty final reply")
            continue
        if chosen[:-1] != rejected[:-1]:
            run.skip("chosen and rejected contexts differ")
            continue
        context = [{"role": role, "content": body} for role, body in chosen[:-1]]
        if any(not m["content"] for m in context):
            run.skip("empty turn in the context")
            continue
        if context[-1]["role"] != "user":
            run.skip("two Assistant turns in a row at the end")
            continue
        add_preference(run, dataset=dataset, system=None, context=context, chosen=chosen[-1][1],
                       rejected=rejected[-1][1], line=line)
