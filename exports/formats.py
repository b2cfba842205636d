"""Row shapes of each export format (pure functions; JSON-ready dicts)."""

from __future__ import annotations

import json
from typing import Any

from db import rules
from exports.errors import ExportError

Messages = list[dict[str, str]]


def conversation(messages: Messages, system: str | None) -> Messages:
    """The prompt as chat messages, led by the system message when there is one (``db.rules.conversation``),
    after checking that the stored messages are user/assistant turns with text content.

    >>> conversation([{"role": "user", "content": "hi"}], "Be kind.")
    [{'role': 'system', 'content': 'Be kind.'}, {'role': 'user', 'content': 'hi'}]
    >>> conversation([{"role": "user", "content": "hi"}], None)
    [{'role': 'user', 'content': 'hi'}]
    >>> conversation(True, None)
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


def jsonl_line(row: dict[str, Any]) -> str:
    """One JSONL line: UTF-8 text kept as is (``ensure_ascii=False``), ``", "``/``": "`` separators
    as in the Gaby file.

    >>> jsonl_line({"a": "café"})
    '{"a": "café"}\\n'
    """
    return json.dumps(row, ensure_ascii=False) + "\n"
