"""Database layer: SQLModel tables, the engine factory, migrations and query/write functions."""

from db.engine import make_engine, normalize_url, read_only_engine, session_scope
from db.migrate import upgrade

__all__ = ["make_engine", "normalize_url", "read_only_engine", "session_scope", "upgrade"]
