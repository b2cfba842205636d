"""Reading a file that ``therapref export sft|dpo|kto`` wrote, for the method that trains on it.

Rows (``exports.formats``, the one owner of the export row format, its reader and the manifest's
name): SFT ``{"messages": [...]}`` (OpenAI chat, the reply last), DPO
``{"prompt": [...], "chosen": [assistant], "rejected": [assistant], "margin"?}``, KTO
``{"prompt": [...], "completion": [assistant], "label": bool}``. Every line is checked before any
model is loaded; the first bad one is reported as ``FILE line N: problem``. The manifest beside the
export (``<file>.manifest.json``) is its provenance.

SFT rows become TRL prompt/completion rows (the conversation before the last assistant message, and
that message), so that the loss is on the reply only, as in DPO and KTO.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exports.formats import SIGNATURES, manifest_path, read_jsonl, read_manifest, row_kind
from policy.errors import PolicyError

ROLES = ("system", "user", "assistant")
#: "an sft export", "a dpo export" (as the letters are read).
ARTICLE = {"sft": "an", "dpo": "a", "kto": "a", "openai-dpo": "an"}


def _columns(kind: str) -> str:
    """>>> _columns("dpo")
    'prompt/chosen/rejected'
    """
    return "/".join(SIGNATURES[kind])


@dataclass
class PolicyData:
    """The rows to train on (TRL conversational format) and where they came from."""

    path: Path
    method: str
    rows: list[dict[str, Any]]
    sha256: str
    manifest: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def provenance(self) -> dict[str, Any]:
        """The data file, its digest, and the export's manifest (None when the file has none)."""
        manifest = self.manifest or {}
        return {"file": str(self.path.resolve()), "sha256": self.sha256, "rows": len(self.rows),
                "manifest": self.manifest,
                "manifest_matches": bool(manifest) and manifest.get("sha256") == self.sha256,
                "export_run_id": manifest.get("export_run_id"),
                "database_fingerprint": manifest.get("database_fingerprint")}


def _messages(value: Any, what: str) -> list[dict[str, str]]:
    """A list of role/content messages (plain text is taken as one message of ``what``'s role)."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"{what} must be a non-empty list of role/content messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"{what}[{i}] is not a message with role system/user/assistant and text content")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _prompt(value: Any) -> list[dict[str, str]]:
    prompt = _messages(value, "prompt")
    if prompt[-1]["role"] != "user":
        raise ValueError("prompt must end with a user message")
    return prompt


def _reply(value: Any, what: str) -> list[dict[str, str]]:
    reply = _messages(value, what)
    if len(reply) != 1 or reply[0]["role"] != "assistant" or not reply[0]["content"].strip():
        raise ValueError(f"{what} must be one assistant message with text")
    return reply


def convert_row(row: dict[str, Any], method: str) -> dict[str, Any]:
    """One export row → the TRL row the method trains on (ValueError says what is wrong).

    >>> convert_row({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ...             "sft")["completion"]
    [{'role': 'assistant', 'content': 'hello'}]
    >>> convert_row({"prompt": [{"role": "user", "content": "hi"}],
    ...              "completion": [{"role": "assistant", "content": "ok"}], "label": "yes"}, "kto")
    Traceback (most recent call last):
    ...
    ValueError: label must be true or false
    """
    if method == "sft":
        messages = _messages(row["messages"], "messages")
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise ValueError("messages must end with the assistant's reply after at least one user message")
        return {"prompt": _prompt(messages[:-1]), "completion": _reply(messages[-1:], "the last message")}
    if method == "dpo":
        chosen, rejected = _reply(row["chosen"], "chosen"), _reply(row["rejected"], "rejected")
        return {"prompt": _prompt(row["prompt"]), "chosen": chosen, "rejected": rejected}
    if not isinstance(row["label"], bool):
        raise ValueError("label must be true or false")
    return {"prompt": _prompt(row["prompt"]), "completion": _reply(row["completion"], "completion"),
            "label": row["label"]}


def _export_manifest(path: Path, method: str) -> dict[str, Any] | None:
    """The manifest beside ``path`` (None when there is none); one saying another kind is an error."""
    mpath = manifest_path(path, method)
    if not mpath.is_file():
        return None
    manifest = read_manifest(mpath, error=PolicyError)
    kind = manifest.get("kind")
    if kind is not None and kind != method:
        raise PolicyError(f"{path}: its manifest says it is {ARTICLE.get(kind, 'a')} {kind} export, but --method "
                          f"{method} needs {ARTICLE[method]} {method} export ({_columns(method)})")
    return manifest


def read_export(path: str | Path, method: str) -> PolicyData:
    """Every row of ``path`` checked and converted for ``method``; one clear line on the first problem."""
    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"{path}: no such file")
    manifest = _export_manifest(path, method)
    digest = hashlib.sha256()
    rows: list[dict[str, Any]] = []
    for number, row in read_jsonl(path, digest=digest, error=PolicyError):
        kind = row_kind(row)
        if kind != method:
            found = (f"{ARTICLE[kind]} {kind} row ({_columns(kind)})" if kind
                     else "a row that no export kind writes")
            raise PolicyError(f"{path} line {number}: {found}, but --method {method} needs "
                              f"{ARTICLE[method]} {method} export ({_columns(method)})")
        try:
            rows.append(convert_row(row, method))
        except ValueError as exc:
            raise PolicyError(f"{path} line {number}: {exc}") from None
    if not rows:
        raise PolicyError(f"{path}: empty file (no rows to train on)")
    data = PolicyData(path=path, method=method, rows=rows, sha256=digest.hexdigest(), manifest=manifest)
    if method == "kto" and len({r["label"] for r in rows}) < 2:
        data.notes.append("every KTO row has the same label; KTO learns most from both kinds")
    return data
