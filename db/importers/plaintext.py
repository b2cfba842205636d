"""Plain text: one prompt (a single user turn) per non-empty line."""

from __future__ import annotations

from pathlib import Path

from db.importers.base import MAX_LINE_BYTES, ImportFormatError, ImportRun, check_text, iter_lines


def import_file(path: Path, run: ImportRun, *, max_line_bytes: int = MAX_LINE_BYTES) -> None:
    source = f"text:{path.name.split('.')[0]}"
    seen = False
    for line, text in iter_lines(path, max_line_bytes=max_line_bytes):
        if not text.strip():
            continue
        seen = True
        run.record()
        message = check_text(text.strip(), "line", path, line)
        run.prompt([{"role": "user", "content": message}], line=line, source=source, external_id=str(line))
        run.release()
    if not seen:
        raise ImportFormatError(path, "the file is empty (no non-blank lines)")
