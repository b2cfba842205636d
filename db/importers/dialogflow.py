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
from collections.abc import Iterator
from dataclasses import dataclass, field
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


class AgentZip:
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

    def read_bytes(self, name: str) -> bytes:
        """An entry's bytes, as stored (within the size limits)."""
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
        return data

    def read_json(self, name: str) -> Any:
        data = self.read_bytes(name)
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


@dataclass
class Agent:
    """An agent export's header: where ``agent.json`` lies, its display name and language."""

    base: str
    entry: str
    name: str
    lang: str

    @property
    def candidate(self) -> str:
        """The candidate (and prompt source) its intents' responses are imported as."""
        return f"dialogflow:{self.name}"


@dataclass
class Intent:
    """One intent with training phrases: its file stem, its JSON (``None`` without an intent file),
    its name and its text responses in the agent's language."""

    stem: str
    phrases_entry: str
    entry: str | None
    data: dict[str, Any] | None
    name: str
    replies: list[str] = field(default_factory=list)


def read_agent(archive: AgentZip) -> Agent:
    """The agent header of an opened zip; a zip without ``agent.json`` is not a Dialogflow ES agent."""
    path = archive.path
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
    return Agent(base=base, entry=agents[0], name=name, lang=lang)


def iter_intents(archive: AgentZip, agent: Agent) -> Iterator[Intent]:
    """Every intent that has a training-phrase file, in file-name order, with its text responses."""
    path, base, lang = archive.path, agent.base, agent.lang
    suffix = f"_usersays_{lang}.json"
    phrase_files = sorted(n for n in archive.files if n.startswith(base + "intents/") and n.endswith(suffix))
    for phrases_name in phrase_files:
        stem = phrases_name[len(base + "intents/"): -len(suffix)]
        intent_file = f"{base}intents/{stem}.json"
        intent = Intent(stem=stem, phrases_entry=phrases_name, entry=None, data=None, name=stem)
        if intent_file in archive.files:
            data = archive.read_json(intent_file)
            if not isinstance(data, dict):
                raise ImportFormatError(path, "intent file is not a JSON object", entry=intent_file)
            intent.entry, intent.data = intent_file, data
            intent.name = check_text(data.get("name") or stem, "intent name", path, entry=intent_file).strip()
            for block in data.get("responses") or []:
                if isinstance(block, dict):
                    intent.replies += [t for t in _texts(block.get("messages"), lang, path, intent_file)
                                       if t not in intent.replies]
        yield intent


def iter_phrases(archive: AgentZip, intent: Intent) -> Iterator[tuple[int, str, str | None]]:
    """(number, text, phrase id) of an intent's training phrases; the text is the phrase's ``data``
    parts joined and stripped (empty for a phrase without text)."""
    path, name = archive.path, intent.phrases_entry
    phrases = archive.read_json(name)
    if not isinstance(phrases, list):
        raise ImportFormatError(path, "training phrases must be a JSON array", entry=name)
    for number, phrase in enumerate(phrases, 1):
        if not isinstance(phrase, dict) or not isinstance(phrase.get("data"), list):
            raise ImportFormatError(path, f"training phrase {number} has no 'data' list", entry=name)
        pieces = [check_text(part.get("text") if isinstance(part, dict) else None,
                             f"training phrase {number} text", path, entry=name, allow_empty=True)
                  for part in phrase["data"]]
        yield number, "".join(pieces).strip(), (str(phrase["id"]) if phrase.get("id") else None)


def import_file(path: Path, run: ImportRun, **_: Any) -> None:
    archive = AgentZip(path)
    agent = read_agent(archive)
    candidate = run.candidate(agent.candidate, PROVIDER, model_id=agent.name)
    source = agent.candidate
    for intent in iter_intents(archive, agent):
        intent_file = intent.entry or f"{agent.base}intents/{intent.stem}.json"
        for number, text, phrase_id in iter_phrases(archive, intent):
            run.record()
            if not text:
                run.skip("empty training phrase")
                continue
            prompt = run.prompt([{"role": "user", "content": text}], entry=intent.phrases_entry, source=source,
                                external_id=phrase_id or f"{intent.stem}#{number}", topic=intent.name)
            for reply in intent.replies:
                run.response(prompt, candidate, reply, entry=intent_file,
                             meta={"intent": intent.name, "agent": agent.name})
            run.release()
