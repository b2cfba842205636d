"""SQLite online backup (consistent while other connections write)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlalchemy.engine import Engine

from db.errors import TheraPrefError


def backup_sqlite(engine: Engine, target: str | Path, *, force: bool = False) -> int:
    """Copy the database to ``target`` with SQLite's backup API; return the page count.

    Written to a temporary file first and renamed, so a failed backup leaves nothing behind.
    """
    if engine.dialect.name != "sqlite":
        raise TheraPrefError("backup works on SQLite; for PostgreSQL use pg_dump (see README)")
    target = Path(target)
    if target.exists() and not force:
        raise TheraPrefError(f"{target} exists (use --force to overwrite)")
    if not target.parent.is_dir():
        raise TheraPrefError(f"{target.parent} is not a directory")
    source_path = engine.url.database
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    source = sqlite3.connect(source_path, timeout=30)
    try:
        destination = sqlite3.connect(tmp)
        try:
            source.backup(destination, pages=256)
            pages = destination.execute("PRAGMA page_count").fetchone()[0]
            destination.execute("PRAGMA journal_mode=DELETE")
        finally:
            destination.close()
        os.replace(tmp, target)
    except sqlite3.Error as exc:
        tmp.unlink(missing_ok=True)
        raise TheraPrefError(f"backup failed: {exc}") from None
    finally:
        source.close()
    return pages
