"""Dialogflow ES agent export (zip): each training phrase a prompt (topic = intent name), the
intent's text responses Responses of the candidate ``dialogflow:<agent displayName>``.

The zip is read in memory, never extracted: entries with absolute paths or ``..`` are refused
outright, and entry sizes, entry counts and the total are capped (zip bombs). Only text messages
(``type`` 0) in the agent's language are used; an intent without training phrases adds nothing.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from db.importers.base import ImportFormatError, ImportRun, check_text

MAX_ZIP_BYTES = 200 * 1024 * 1024
MAX_ENTRY_BYTES = 16 * 1024 * 1024
MAX_TOTAL_BYTES = 256 * 1024 * 1024
MAX_ENTRIES = 20_000
PROVIDER = "dialogflow"


def unsafe_name(name: str) -> bool:
    """True for zip entry names that would point outside an extraction folder.

    >>> [unsafe_name(n) for n in ("intents/A b.json", "../x.json", "/etc/passwd", "a/../../b", "C:/x", "a\\\\..\\\\b")]
    [False, True, True, True, True, True]
    """
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or "\x00" in name:
        return True
    return ".." in re.split(r"[\\/]", name)


class _Zip:
    def __init__(self, path: Path) -> None:
        self.path, self.total = path, 0
        if path.stat().st_size > MAX_ZIP_BYTES:
            raise ImportFormatError(path, f"zip is larger than {MAX_ZIP_BYTES:,} bytes")
        try:
            self.zip = zipfile.ZipFile(path)
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ImportFormatError(path, f"not a readable zip file ({exc})") from None
        if len(infos) > MAX_ENTRIES:
            raise ImportFormatError(path, f"zip has more than {MAX_ENTRIES:,} entries")
        for info in infos:
            if unsafe_name(info.filename):
                raise ImportFormatError(path, "entry points outside the archive (absolute path or '..'); "
                                        "refusing the whole file", entry=repr(info.filename)[1:-1])
        self.files = {info.filename: info for info in infos if not info.is_dir()}

    def read_json(self, name: str) -> Any:
        info = self.files[name]
        if info.file_size > MAX_ENTRY_BYTES:
            raise ImportFormatError(self.path, f"entry is larger than {MAX_ENTRY_BYTES:,} bytes", entry=name)
        try:
            with self.zip.open(info) as handle:
                data = handle.read(MAX_ENTRY_BYTES + 1)
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError) as exc:
            raise ImportFormatError(self.path, f"cannot read entry ({exc})", entry=name) from None
        self.total += len(data)
        if len(data) > MAX_ENTRY_BYTES or self.total > MAX_TOTAL_BYTES:
            raise ImportFormatError(self.path, "uncompressed size over the limit (zip bomb?)", entry=name)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ImportFormatError(self.path, f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset "
                                    f"{exc.start})", entry=name) from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ImportFormatError(self.path, f"invalid JSON ({exc.msg})", entry=name, line=exc.lineno) from None
        except RecursionError:
            raise ImportFormatError(self.path, "invalid JSON (nested too deeply)", entry=name) from None


def _texts(messages: Any, lang: str, path: Path, entry: str) -> list[str]:
    out: list[str] = []
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict) or str(message.get("type", "0")) not in ("0", "message"):
            continue
        if message.get("lang", lang) != lang:
            continue
        speech = message.get("speech", [])
        for text in [speech] if isinstance(speech, str) else speech if isinstance(speech, list) else []:
            text = check_text(text, "speech", path, entry=entry, allow_empty=True).strip()
            if text and text not in out:
                out.append(text)
    return out


def import_file(path: Path, run: ImportRun, **_: Any) -> None:
    archive = _Zip(path)
    agents = sorted((n for n in archive.files if PurePosixPath(n).name == "agent.json"), key=len)
    if not agents:
        raise ImportFormatError(path, "no agent.json in the zip (not a Dialogflow ES agent export)")
    base = agents[0][: -len("agent.json")]
    agent = archive.read_json(agents[0])
    if not isinstance(agent, dict):
        raise ImportFormatError(path, "agent.json is not a JSON object", entry=agents[0])
    name = agent.get("displayName") or agent.get("name")
    name = check_text(name, "agent displayName", path, entry=agents[0]).strip()
    if len(name) > 150:
        raise ImportFormatError(path, "agent displayName is longer than 150 characters", entry=agents[0])
    lang = agent.get("language") or "en"
    if not isinstance(lang, str):
        raise ImportFormatError(path, "agent language must be a string", entry=agents[0])
    candidate = run.candidate(f"dialogflow:{name}", PROVIDER, model_id=name)
    source = f"dialogflow:{name}"

    suffix = f"_usersays_{lang}.json"
    phrase_files = sorted(n for n in archive.files if n.startswith(base + "intents/") and n.endswith(suffix))
    for phrases_name in phrase_files:
        stem = phrases_name[len(base + "intents/"): -len(suffix)]
        intent_name, replies = stem, []
        intent_file = f"{base}intents/{stem}.json"
        if intent_file in archive.files:
            intent = archive.read_json(intent_file)
            if not isinstance(intent, dict):
                raise ImportFormatError(path, "intent file is not a JSON object", entry=intent_file)
            intent_name = check_text(intent.get("name") or stem, "intent name", path, entry=intent_file).strip()
            for block in intent.get("responses") or []:
                if isinstance(block, dict):
                    replies += [t for t in _texts(block.get("messages"), lang, path, intent_file) if t not in replies]
        phrases = archive.read_json(phrases_name)
        if not isinstance(phrases, list):
            raise ImportFormatError(path, "training phrases must be a JSON array", entry=phrases_name)
        for number, phrase in enumerate(phrases, 1):
            if not isinstance(phrase, dict) or not isinstance(phrase.get("data"), list):
                raise ImportFormatError(path, f"training phrase {number} has no 'data' list", entry=phrases_name)
            pieces = [check_text(part.get("text") if isinstance(part, dict) else None,
                                 f"training phrase {number} text", path, entry=phrases_name, allow_empty=True)
                      for part in phrase["data"]]
            run.record()
            text = "".join(pieces).strip()
            if not text:
                run.skip("empty training phrase")
                continue
            prompt = run.prompt([{"role": "user", "content": text}], entry=phrases_name, source=source,
                                external_id=str(phrase.get("id") or f"{stem}#{number}"), topic=intent_name)
            for reply in replies:
                run.response(prompt, candidate, reply, entry=intent_file,
                             meta={"intent": intent_name, "agent": name})
            run.release()
