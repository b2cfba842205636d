"""TRL preference JSONL: ``prompt`` / ``chosen`` / ``rejected`` per line, optional ``margin``.

Both TRL layouts are read: *standard* (strings) and *conversational* (lists of chat messages; the
prompt may start with a system message, each of chosen/rejected is one assistant message). The
*implicit-prompt* conversational layout (no ``prompt``; chosen/rejected are whole conversations)
is split at the first differing message. Each record becomes a prompt, two Responses of the
dataset's candidate, a comparison and the dataset's judgment (chosen preferred).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from db.importers.base import (
    MAX_LINE_BYTES,
    ImportFormatError,
    ImportRun,
    check_margin,
    check_text,
    iter_json_records,
    same_text,
)
from db.importers.openai_jsonl import split_conversation

PROVIDER = "imported"


def add_preference(run: ImportRun, *, dataset: str, system: str | None, context: list[dict[str, str]],
                   chosen: str, rejected: str, line: int, margin: float | None = None,
                   strength: int | None = None) -> None:
    """One preference record: prompt + two replies + comparison + the dataset's judgment."""
    if same_text(chosen, rejected):
        run.skip("chosen equals rejected")
        return
    candidate = run.candidate(dataset, PROVIDER, model_id=dataset)
    prompt = run.prompt(context, line=line, system_prompt=system, source=dataset, external_id=str(line))
    meta = {"dataset": dataset, "source_file": run.path.name, "line": line}
    chosen_row = run.response(prompt, candidate, chosen, line=line, meta=meta)
    rejected_row = run.response(prompt, candidate, rejected, line=line, meta=meta)
    run.preference(chosen_row, rejected_row, dataset=dataset, where=f"{run.path.name} line {line}",
                   margin=margin, strength=strength)
    run.release()


def _reply(value: Any, what: str, path: Path, line: int) -> str:
    if isinstance(value, str):
        return check_text(value, what, path, line)
    system, turns = split_conversation(value, path, line, what=what)
    if system is not None or len(turns) != 1 or turns[0]["role"] != "assistant":
        raise ImportFormatError(path, f"{what} must be a string or exactly one assistant message", line=line)
    return turns[0]["content"]


def _prompt(value: Any, path: Path, line: int) -> tuple[str | None, list[dict[str, str]]]:
    if isinstance(value, str):
        return None, [{"role": "user", "content": check_text(value, "prompt", path, line)}]
    system, turns = split_conversation(value, path, line, what="prompt")
    if not turns or turns[-1]["role"] != "user":
        raise ImportFormatError(path, "prompt must end with a user message", line=line)
    return system, turns


def _implicit(record: dict, path: Path, line: int) -> tuple[str | None, list[dict[str, str]], str, str]:
    """Split implicit-prompt conversations at their last shared message."""
    if not isinstance(record["chosen"], list) or not isinstance(record["rejected"], list):
        raise ImportFormatError(path, "no 'prompt' field: implicit-prompt records must be chat message lists "
                                "(use --format hh-rlhf for Human:/Assistant: transcripts)", line=line)
    system, chosen = split_conversation(record["chosen"], path, line, what="chosen")
    other_system, rejected = split_conversation(record["rejected"], path, line, what="rejected")
    if system != other_system or chosen[:-1] != rejected[:-1]:
        raise ImportFormatError(path, "chosen and rejected must share everything but their last message", line=line)
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant" or len(chosen) < 2:
        raise ImportFormatError(path, "chosen and rejected must each end with an assistant reply", line=line)
    return system, chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def import_file(path: Path, run: ImportRun, *, dataset: str, max_line_bytes: int = MAX_LINE_BYTES) -> None:
    for line, record in iter_json_records(path, max_line_bytes=max_line_bytes):
        run.record()
        missing = [key for key in ("chosen", "rejected") if key not in record]
        if missing:
            raise ImportFormatError(path, f"missing field(s) {', '.join(missing)} (TRL preference records need "
                                    "prompt, chosen and rejected)", line=line)
        margin = check_margin(record.get("margin"), path, line)
        if "prompt" in record:
            system, context = _prompt(record["prompt"], path, line)
            chosen = _reply(record["chosen"], "chosen", path, line)
            rejected = _reply(record["rejected"], "rejected", path, line)
        else:
            system, context, chosen, rejected = _implicit(record, path, line)
        if context[-1]["role"] != "user":
            raise ImportFormatError(path, "the prompt must end with a user message", line=line)
        add_preference(run, dataset=dataset, system=system, context=context, chosen=chosen, rejected=rejected,
                       line=line, margin=margin)
