"""Stable content hashes used by unique constraints (re-import never duplicates)."""

from __future__ import annotations

import hashlib
import json
import unicodedata


def normalize_text(text: str) -> str:
    """NFC-normalise and strip, so that invisible differences do not create duplicates.

    >>> normalize_text("  caf\\u0065\\u0301 ")
    'café'
    """
    return unicodedata.normalize("NFC", text).strip()


def text_hash(text: str) -> str:
    """>>> text_hash("hello") == text_hash(" hello ")
    True
    """
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()


def prompt_hash(messages: list[dict[str, str]], system_prompt: str | None = None) -> str:
    """Hash of a conversation and its system prompt.

    >>> prompt_hash([{"role": "user", "content": "hi"}]) == prompt_hash([{"role": "user", "content": "hi "}])
    True
    """
    canonical = {
        "system": normalize_text(system_prompt or ""),
        "messages": [[m["role"], normalize_text(m["content"])] for m in messages],
    }
    payload = json.dumps(canonical, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
