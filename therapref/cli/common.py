"""Pieces every command shares: the ``--db`` option, opening the database, one-line errors."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Optional

import typer
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, IntegrityError

from db.engine import make_engine
from db.errors import TheraPrefError
from therapref.settings import Settings, SettingsError


def _flags_show_no_type() -> None:
    """typer 0.29's rich help prints a type after every option, flags included (``--json <bool>``), which
    reads as if they took a value; its plain help prints none for them. Flags and counters show none here
    either (once, for every command: each imports this module)."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "flags_show_no_type", False):
        return

    def display_type_rich(self: TyperOption, ctx: typer.Context) -> str | None:
        return None if self.is_flag or self.count else shown(self, ctx)

    display_type_rich.flags_show_no_type = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_type()

DbOption = Annotated[
    Optional[str],
    typer.Option("--db", help="SQLAlchemy URL or SQLite file (env THERAPREF_DATABASE_URL; default therapref.db)",
                 show_default=False),
]


def settings_for(db: str | None, **overrides) -> Settings:
    """The settings of this command; a bad ``therapref.toml`` (``[auth]`` included) is one line, exit 1."""
    from db.sso import RoleMapping

    try:
        settings = Settings.load({"database_url": db, **overrides})
        if settings.auth is not None:
            try:
                RoleMapping(settings.auth.role_claim, settings.auth.roles)
            except TheraPrefError as exc:
                raise SettingsError(f"{settings.config_file}: [auth] {exc}") from None
    except SettingsError as exc:
        raise fail(str(exc)) from None
    return settings


def open_engine(db: str | None, *, migrate: bool = True) -> Engine:
    """Engine for the chosen database, migrated to the newest schema (cheap when up to date)."""
    from db.migrate import upgrade

    settings = settings_for(db)
    engine = make_engine(settings.database_url, writer_queue=settings.sqlite_writer_queue)
    if migrate:
        with errors():
            upgrade(engine)
    return engine


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"Error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


@contextmanager
def errors() -> Iterator[None]:
    """Turn user-facing errors into one line on stderr and exit status 1 (no traceback)."""
    try:
        yield
    except (TheraPrefError, SettingsError) as exc:
        raise fail(str(exc)) from None
    except IntegrityError as exc:
        raise fail(f"database constraint violated: {str(exc.orig).splitlines()[0]}") from None
    except DatabaseError as exc:
        raise fail(f"database error: {str(exc.orig).splitlines()[0]}") from None
    except KeyboardInterrupt:
        typer.secho("Interrupted; nothing half-written was kept.", err=True)
        raise typer.Exit(130) from None


def read_password(password_stdin: bool, *, confirm: bool = True) -> str:
    """A password from stdin (one line) or an interactive prompt; never from argv."""
    if password_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise fail("no password on standard input")
        return password
    return typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)


def _raise_interrupt(signum, frame) -> None:  # noqa: ANN001
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a service manager, a test's ``terminate()``) handled like Ctrl-C, so that the
    command's own clean-up runs: children stopped, partial work kept."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
