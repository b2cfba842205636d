"""``therapref import prompts|preferences FILE``: parse, call one importer, print the summary line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from therapref.cli.common import DbOption, errors, open_engine

import_app = typer.Typer(help="Import prompts or preference pairs from files.", no_args_is_help=True)

FileArgument = Annotated[Path, typer.Argument(help="The file to import (.jsonl, .jsonl.gz, .csv, .zip, .txt).",
                                              show_default=False)]
MaxLineOption = Annotated[int, typer.Option("--max-line-bytes", min=1024,
                                            help="Refuse lines longer than this many bytes.")]


def _progress(count: int) -> None:
    if sys.stderr.isatty():
        typer.echo(f"\r… {count:,} records", err=True, nl=False)


def prompts(
    file: FileArgument,
    format: Annotated[Optional[str], typer.Option(
        "--format", help="openai-jsonl | counselchat | dialogflow | plaintext (default: detected).")] = None,
    db: DbOption = None,
    max_line_bytes: MaxLineOption = 1_048_576,
) -> None:
    """Import prompts (and their reference replies) from a file.

    Formats: OpenAI chat JSONL (the final assistant turn becomes a `reference` reply), Counsel Chat
    CSV (answers become `counselchat` replies), Dialogflow ES agent zip, plain text (one prompt per
    line). All or nothing; re-importing adds nothing.
    """
    from db.engine import session_scope
    from db.importers import import_prompts

    engine = open_engine(db)
    with errors(), session_scope(engine) as session:
        summary = import_prompts(file, session=session, format=format, max_line_bytes=max_line_bytes,
                                 actor="cli", progress=_progress)
    typer.echo(summary.line())


def preferences(
    file: FileArgument,
    format: Annotated[Optional[str], typer.Option(
        "--format", help="trl | hh-rlhf | counselchat-upvotes (default: detected).")] = None,
    dataset: Annotated[Optional[str], typer.Option(
        "--dataset", help="Name of the dataset: source annotator import:<NAME>, prompt source and reply "
                          "candidate (default hh-rlhf, counselchat-upvotes, or the TRL file's name).")] = None,
    db: DbOption = None,
    max_line_bytes: MaxLineOption = 1_048_576,
) -> None:
    """Import preference pairs (chosen vs rejected replies) from a file.

    Formats: TRL prompt/chosen/rejected JSONL (standard or conversational, optional margin),
    Anthropic HH-RLHF JSONL or .jsonl.gz, Counsel Chat CSV upvotes. Each pair becomes a prompt, two
    replies, a comparison and a judgment by the source annotator import:<dataset>. All or nothing;
    re-importing adds nothing.
    """
    from db.engine import session_scope
    from db.importers import import_preferences

    engine = open_engine(db)
    with errors(), session_scope(engine) as session:
        summary = import_preferences(file, session=session, format=format, dataset=dataset,
                                     max_line_bytes=max_line_bytes, actor="cli", progress=_progress)
    typer.echo(summary.line())


def register(app: typer.Typer) -> None:
    """Add ``import prompts`` and ``import preferences`` to the root app."""
    import_app.command("prompts")(prompts)
    import_app.command("preferences")(preferences)
    app.add_typer(import_app, name="import")
