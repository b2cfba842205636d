"""Core commands: ``init``, ``db upgrade``, ``status``, ``backup`` and ``annotators …``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from db.engine import session_scope
from therapref import __version__
from therapref.cli.common import DbOption, errors, open_engine, read_password

db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)
annotators_app = typer.Typer(help="Manage annotator accounts.", no_args_is_help=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"therapref {__version__}")
        raise typer.Exit()


def main(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """TheraPref command line."""


def init(db: DbOption = None) -> None:
    """Create the database (or migrate it to the newest schema)."""
    from db.migrate import current_revision

    engine = open_engine(db)
    typer.echo(f"Database ready at {engine.url.render_as_string(hide_password=True)} "
               f"(schema {current_revision(engine)}).")


def db_upgrade(
    db: DbOption = None,
    revision: Annotated[str, typer.Option(help="Target Alembic revision.")] = "head",
) -> None:
    """Apply pending migrations."""
    from db.engine import make_engine
    from db.migrate import current_revision, upgrade
    from therapref.cli.common import settings_for

    settings = settings_for(db)
    engine = make_engine(settings.database_url, writer_queue=settings.sqlite_writer_queue)
    before = current_revision(engine)
    with errors():
        after = upgrade(engine, revision)
    typer.echo(f"Schema {before or 'empty'} -> {after}.")


def status(
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Counts per table, per source and per candidate model."""
    from db.status import counts_by_candidate, counts_by_source, table_counts

    engine = open_engine(db)
    with session_scope(engine) as session:
        report = {
            "tables": table_counts(session=session),
            "by_source": counts_by_source(session=session),
            "by_candidate": counts_by_candidate(session=session),
        }
    if as_json:
        typer.echo(json.dumps(report, sort_keys=True))
        return
    typer.echo("Tables:")
    for name, count in report["tables"].items():
        typer.echo(f"  {name:<20} {count:>10,}")
    typer.echo("Prompts by source:")
    for name, count in sorted(report["by_source"]["prompts"].items()):
        typer.echo(f"  {name:<40} {count:>8,}")
    typer.echo("Judgments by source:")
    for name, count in sorted(report["by_source"]["judgments"].items()):
        typer.echo(f"  {name:<40} {count:>8,}")
    typer.echo("Responses by candidate model:")
    for row in report["by_candidate"]:
        typer.echo(f"  {row['name']:<40} {row['provider']:<12} {row['responses']:>8,}")


def backup(
    file: Annotated[Path, typer.Argument(help="Where to write the copy (SQLite file).")],
    db: DbOption = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Online backup of a SQLite database (safe while the app is writing)."""
    from db.backup import backup_sqlite

    engine = open_engine(db)
    with errors():
        pages = backup_sqlite(engine, file, force=force)
    typer.echo(f"Backed up to {file} ({pages:,} pages).")


def annotators_add(
    username: str,
    db: DbOption = None,
    role: Annotated[str, typer.Option(help="clinician, lead (also adjudicates disputed pairs) or admin")] = "clinician",
    display_name: Annotated[str, typer.Option(help="Name shown in the app.")] = "",
    credential: Annotated[str, typer.Option(help='Clinical credential, e.g. "LCSW".')] = "",
    password_stdin: Annotated[bool, typer.Option(help="Read the password from standard input.")] = False,
) -> None:
    """Add an annotator (password by prompt or --password-stdin, never on the command line)."""
    from db.accounts import add_account

    password = read_password(password_stdin)
    engine = open_engine(db)
    with errors(), session_scope(engine) as session:
        annotator = add_account(username, password, session=session, actor="cli", role=role,
                                display_name=display_name, credential=credential)
        typer.echo(f"Added {annotator.role} {annotator.username!r}.")


def annotators_list(
    db: DbOption = None,
    all_: Annotated[bool, typer.Option("--all", help="Include imported-dataset sources.")] = False,
) -> None:
    """List annotators."""
    from db.auth import list_annotators

    engine = open_engine(db)
    with session_scope(engine) as session:
        rows = list_annotators(session=session, include_sources=all_)
        if not rows:
            typer.echo("No annotators yet: add one with `therapref annotators add NAME`.")
        for a in rows:
            state = "active" if a.is_active else "inactive"
            typer.echo(f"{a.username:<30} {a.role:<10} {state:<9} {a.credential:<10} {a.display_name}")


def annotators_deactivate(username: str, db: DbOption = None) -> None:
    """Deactivate an annotator (keeps their judgments; they can no longer log in; the pairs they
    had reserved go back to the queue)."""
    from db.accounts import set_account_active

    engine = open_engine(db)
    with errors(), session_scope(engine) as session:
        set_account_active(username, False, session=session, actor="cli")
    typer.echo(f"Deactivated {username!r}.")


def annotators_reset_password(
    username: str,
    db: DbOption = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from standard input.")] = False,
) -> None:
    """Set a new password (and lift any lockout)."""
    from db.accounts import reset_account_password

    password = read_password(password_stdin)
    engine = open_engine(db)
    with errors(), session_scope(engine) as session:
        reset_account_password(username, password, session=session, actor="cli")
    typer.echo(f"Password reset for {username!r}.")


def register(app: typer.Typer) -> None:
    """Add the core commands (database, status, backup, accounts) to the root app."""
    app.callback()(main)
    app.command("init")(init)
    app.command("status")(status)
    app.command("backup")(backup)
    db_app.command("upgrade")(db_upgrade)
    annotators_app.command("add")(annotators_add)
    annotators_app.command("list")(annotators_list)
    annotators_app.command("deactivate")(annotators_deactivate)
    annotators_app.command("reset-password")(annotators_reset_password)
    app.add_typer(db_app, name="db")
    app.add_typer(annotators_app, name="annotators")
