"""Counsel Chat upvotes as preferences: answers to one question with different upvotes give pairs
(more upvotes preferred); equal upvotes give no pair.

Two streaming passes: the first notes, per question, which upvote counts occur; the second adds
the questions that can form at least one pair (prompt and answers exactly as the Counsel Chat
prompt importer adds them, so both imports share rows) and then every pair. Margin = the upvote
difference; strength = min(difference, 3).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

from db.importers.base import MAX_LINE_BYTES, ImportFormatError, ImportRun
from db.importers.counselchat import CANDIDATE, add_question, answer_meta, iter_counselchat_rows
from db.models import Response

DATASET = "counselchat-upvotes"
REQUIRED = ("questionID", "questionTitle", "questionText", "answerText", "upvotes")


def _digest(question: str) -> bytes:
    return hashlib.blake2b(question.encode("utf-8"), digest_size=16).digest()


def import_file(path: Path, run: ImportRun, *, dataset: str = DATASET,
                max_line_bytes: int = MAX_LINE_BYTES) -> None:
    upvote_values: dict[bytes, set[int]] = defaultdict(set)  # question digest -> upvote counts seen
    for row in iter_counselchat_rows(path, max_line_bytes=max_line_bytes, require=REQUIRED):
        if row.upvotes is None:
            raise ImportFormatError(path, f"row {row.row} has no upvotes", line=row.line)
        if row.question and row.answer:
            upvote_values[_digest(row.question)].add(row.upvotes)

    candidate = run.candidate(CANDIDATE, CANDIDATE, model_id="counselchat.com therapists")
    answers: dict[int, dict[int, tuple[int, int]]] = defaultdict(dict)  # prompt -> response -> (upvotes, row)
    for row in iter_counselchat_rows(path, max_line_bytes=max_line_bytes, require=REQUIRED):
        run.record()
        if not row.question or not row.answer:
            run.skip("empty question or answer")
            continue
        if len(upvote_values.get(_digest(row.question), ())) < 2:
            run.skip("no pair (single answer or equal upvotes)")
            continue
        prompt = add_question(row, run)
        response = run.response(prompt, candidate, row.answer, line=row.line, meta=answer_meta(row))
        answers[prompt.id].setdefault(response.id, (row.upvotes, row.row))
        run.release()
    del upvote_values

    for replies in answers.values():
        rows = {rid: run.session.get(Response, rid) for rid in replies}
        ranked = sorted(replies.items())
        for i, (first_id, (first_votes, _)) in enumerate(ranked):
            for second_id, (second_votes, _) in ranked[i + 1:]:
                if first_votes == second_votes:
                    continue
                high, low = (first_id, second_id) if first_votes > second_votes else (second_id, first_id)
                diff = abs(first_votes - second_votes)
                run.preference(rows[high], rows[low], dataset=dataset,
                               where=f"{path.name} rows {replies[high][1]} > {replies[low][1]}",
                               margin=float(diff), strength=min(diff, 3))
        run.forget(*rows.values())
        run.release()
