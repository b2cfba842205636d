"""Counsel Chat CSV: one prompt per question, each therapist answer a Response of ``counselchat``.

A question is identified by its (cleaned) title and text, not by ``questionID`` alone: in the
published file 18 ``questionID``s carry two different questions (different title, text, link and
topic), and 9 questions appear under two ``questionID``s with the same answers (listed under two
topics). So each distinct question becomes one prompt (``external_id`` = the first ``questionID``
it appears under, ``topic`` = its first topic, ``tags`` = all its topics), and an answer repeated
under a second ``questionID`` is the same Response (counted as repeated within the file).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from db.importers.base import MAX_LINE_BYTES, ImportFormatError, ImportRun, check_text, iter_lines
from db.models import Prompt

CANDIDATE = "counselchat"
SOURCE = "counselchat"
REQUIRED = ("questionID", "questionTitle", "questionText", "answerText")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u202f\u205f\u3000]+")
_RUN_TOGETHER = re.compile(r"(?<=[a-z][.!?])(?=[A-Z][a-z])")


def clean_text(text: str) -> str:
    """Normalise Counsel Chat text: non-breaking and other odd spaces become one space, each line
    is trimmed, blank-line runs shrink to one, and sentences run together by the scrape
    (``word.Next``) get their space back.

    >>> clean_text("Hi\\u00a0 there.Seriously, yes.\\n   Second line  ")
    'Hi there. Seriously, yes.\\nSecond line'
    """
    lines = [_SPACES.sub(" ", line).strip() for line in text.replace("\r\n", "\n").split("\n")]
    joined = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return _RUN_TOGETHER.sub(" ", joined)


@dataclass(frozen=True)
class CounselChatRow:
    """One cleaned answer row of the Counsel Chat CSV."""

    row: int          # 1-based data row (header excluded)
    line: int         # physical line where the row ends
    questionID: str
    title: str
    text: str
    topic: str | None
    answer: str
    upvotes: int | None
    views: int | None
    therapist: str
    therapist_url: str
    link: str
    split: str

    @property
    def question(self) -> str:
        """The user message: title and text (the text alone if it repeats the title)."""
        if not self.text:
            return self.title
        if not self.title or self.text.startswith(self.title):
            return self.text
        return f"{self.title}\n\n{self.text}"


def _int(value: str, column: str, path: Path, line: int) -> int | None:
    value = value.strip()
    if not value:
        return None
    try:
        return int(float(value)) if re.fullmatch(r"\d+(\.0+)?", value) else int(value)
    except ValueError:
        raise ImportFormatError(path, f"{column} {value[:40]!r} is not a whole number", line=line) from None


def iter_counselchat_rows(path: str | Path, *, max_line_bytes: int = MAX_LINE_BYTES,
                          require: tuple[str, ...] = REQUIRED) -> Iterator[CounselChatRow]:
    """Stream cleaned rows of a Counsel Chat CSV (one per answer), checking the header and types.

    Raises ``ImportFormatError`` (file, line, problem) on missing columns, ragged rows, non-UTF-8
    bytes, over-long lines or non-numeric ``upvotes``/``views``.
    """
    path = Path(path)
    lines = (text for _, text in iter_lines(path, max_line_bytes=max_line_bytes, keep_ends=True))
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise ImportFormatError(path, "the file is empty (no header row)")
        header = [cell.strip() for cell in header]
        missing = [name for name in require if name not in header]
        if missing:
            raise ImportFormatError(path, f"missing column(s) {', '.join(missing)} "
                                    f"(Counsel Chat CSV needs {', '.join(require)})", line=1)
        index = {name: header.index(name) for name in header if name}
        number = 0
        for cells in reader:
            line = reader.line_num
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            number += 1
            if len(cells) != len(header):
                raise ImportFormatError(path, f"row {number} has {len(cells)} fields, the header has {len(header)}",
                                        line=line)

            def get(name: str, _cells=cells, _line=line) -> str:
                value = _cells[index[name]] if name in index else ""
                return check_text(value, name, path, _line, allow_empty=True)

            yield CounselChatRow(
                row=number, line=line, questionID=get("questionID").strip(),
                title=clean_text(get("questionTitle")), text=clean_text(get("questionText")),
                topic=get("topic").strip() or None, answer=clean_text(get("answerText")),
                upvotes=_int(get("upvotes"), "upvotes", path, line), views=_int(get("views"), "views", path, line),
                therapist=clean_text(get("therapistInfo")), therapist_url=get("therapistURL").strip(),
                link=get("questionLink").strip(), split=get("split").strip(),
            )
        if number == 0:
            raise ImportFormatError(path, "the file has a header but no rows")
    except csv.Error as exc:
        raise ImportFormatError(path, f"malformed CSV ({exc})", line=reader.line_num) from None


def add_question(row: CounselChatRow, run: ImportRun) -> Prompt | None:
    """The prompt of a row's question (tags gain the row's topic); None when the question is empty."""
    if not row.question:
        run.skip("empty question")
        return None
    prompt = run.prompt([{"role": "user", "content": row.question}], line=row.line, source=SOURCE,
                        external_id=row.questionID or None, topic=row.topic,
                        tags=[row.topic] if row.topic else [])
    if row.topic and row.topic not in (prompt.tags or []):
        prompt.tags = sorted({*(prompt.tags or []), row.topic})
        run.session.add(prompt)
        run.session.flush()
    return prompt


def answer_meta(row: CounselChatRow) -> dict:
    return {"upvotes": row.upvotes, "views": row.views, "therapistInfo": row.therapist,
            "therapistURL": row.therapist_url, "questionID": row.questionID, "questionLink": row.link,
            "split": row.split, "row": row.row}


def import_file(path: Path, run: ImportRun, *, max_line_bytes: int = MAX_LINE_BYTES) -> None:
    candidate = run.candidate(CANDIDATE, CANDIDATE, model_id="counselchat.com therapists")
    for row in iter_counselchat_rows(path, max_line_bytes=max_line_bytes):
        run.record()
        prompt = add_question(row, run)
        if prompt is not None:
            if row.answer:
                run.response(prompt, candidate, row.answer, line=row.line, meta=answer_meta(row))
            else:
                run.skip("empty answer")
        run.release()

