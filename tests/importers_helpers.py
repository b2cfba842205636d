"""Helpers for the importer tests: expected counts computed from the shared files with the standard
library only (independently of db.importers), and small file writers."""

from __future__ import annotations

import csv
import gzip
import io
import json
import unicodedata
import zipfile
from collections import defaultdict
from pathlib import Path

from sqlmodel import Session

from db.engine import session_scope
from db.status import table_counts

DOMAIN = ("prompt", "response", "candidatemodel", "comparison", "judgment", "annotator")


def counts(engine) -> dict[str, int]:
    with Session(engine) as session:
        return table_counts(session=session)


def run_import(engine, function, path, **kwargs):
    """One import in one transaction (as the CLI does); returns the summary."""
    with session_scope(engine) as session:
        return function(path, session=session, **kwargs)


def norm(text: str) -> str:
    """Whitespace-insensitive key: NBSP -> space, all whitespace runs -> one space, NFC."""
    return " ".join(unicodedata.normalize("NFC", text.replace("\u00a0", " ")).split())


def expected_gaby(path: Path) -> tuple[int, int]:
    prompts, responses = set(), set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        messages = json.loads(line)["messages"]
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        turns = [m for m in messages if m["role"] != "system"]
        assert turns[-1]["role"] == "assistant"
        key = (norm(system), tuple((m["role"], norm(m["content"])) for m in turns[:-1]))
        prompts.add(key)
        responses.add((key, norm(turns[-1]["content"])))
    return len(prompts), len(responses)


def counselchat_questions(path: Path) -> dict[tuple[str, str], dict[str, int]]:
    """Distinct question (title, text) -> {answer: upvotes}, straight from the csv module."""
    questions: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            key = (norm(row["questionTitle"]), norm(row["questionText"]))
            questions[key].setdefault(norm(row["answerText"]), int(row["upvotes"]))
    return questions


def expected_counselchat(path: Path) -> tuple[int, int, int, int]:
    """(prompts, responses, rows, preference pairs)."""
    questions = counselchat_questions(path)
    with open(path, newline="", encoding="utf-8") as handle:
        rows = sum(1 for _ in csv.DictReader(handle))
    pairs = 0
    for answers in questions.values():
        votes = list(answers.values())
        pairs += sum(1 for i in range(len(votes)) for j in range(i + 1, len(votes)) if votes[i] != votes[j])
    return len(questions), sum(len(a) for a in questions.values()), rows, pairs


def expected_dialogflow(path: Path) -> tuple[str, int, int]:
    """(agent name, prompts, responses) read with zipfile + json."""
    with zipfile.ZipFile(path) as archive:
        agent = json.loads(archive.read("agent.json"))["displayName"]
        phrases = responses = 0
        for name in archive.namelist():
            if not name.endswith("_usersays_en.json"):
                continue
            texts = {"".join(p["text"] for p in item["data"]).strip()
                     for item in json.loads(archive.read(name))}
            intent = json.loads(archive.read(name.replace("_usersays_en", "")))
            replies = set()
            for block in intent["responses"]:
                for message in block["messages"]:
                    speech = message.get("speech", [])
                    replies |= {s for s in ([speech] if isinstance(speech, str) else speech) if s.strip()}
            phrases += len(texts)
            responses += len(texts) * len(replies)
    return agent, phrases, responses


def write_jsonl(path: Path, records: list, *, gz: bool = False) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_zip(path: Path, entries: dict[str, str | bytes]) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in entries.items():
            info = zipfile.ZipInfo(name)
            archive.writestr(info, content)
    path.write_bytes(buffer.getvalue())
    return path


AGENT = json.dumps({"displayName": "TestAgent", "language": "en"})
INTENT = json.dumps({"name": "Sad", "responses": [{"messages": [{"type": "0", "speech": ["I hear you."]}]}]})
PHRASES = json.dumps([{"id": "p1", "data": [{"text": "I feel "}, {"text": "sad"}]}])


def hh(*turns: str) -> str:
    """An HH-RLHF transcript from alternating Human/Assistant turns."""
    roles = ("Human", "Assistant")
    return "".join(f"\n\n{roles[i % 2]}: {t}" for i, t in enumerate(turns))
