"""``therapref candidates add | list``: fine-tuned policies as candidates (library: ``policy.register``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from db.engine import session_scope
from therapref.cli.common import DbOption, errors, open_engine

candidates_app = typer.Typer(help="Candidate models: register a fine-tuned policy, list them all.",
                             no_args_is_help=True)


def candidates_add(
    name: Annotated[str, typer.Argument(help="Candidate name (shown in reports, never to clinicians).")],
    model: Annotated[Path, typer.Option(
        "--model", help="Hugging Face causal-LM folder, e.g. the output of `therapref finetune local`.")],
    system_prompt: Annotated[Optional[str], typer.Option(
        help="System message for its replies (default: the prompt's own, else the TheraPref persona; "
             "'' = none).")] = None,
    gguf_type: Annotated[str, typer.Option(
        help="Weights of the GGUF written for llama.cpp: f16 (matches transformers) or q8_0 (half the size).")]
        = "f16",
    db: DbOption = None,
) -> None:
    """Register a fine-tuned policy so that `therapref generate` produces its replies (a Llama is
    converted once to DIR/model.gguf and runs through llama.cpp; other causal LMs through transformers)."""
    from policy.register import register_policy

    engine = open_engine(db)
    with errors(), session_scope(engine) as session:
        row = register_policy(model, name, session=session, system_prompt=system_prompt, outtype=gguf_type,
                              note=lambda line: typer.echo(line, err=True))
        typer.echo(f"Registered candidate {row.name!r} ({row.provider}, {row.model_id}): "
                   "`therapref generate` now produces its replies.")


def candidates_list(
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON array.")] = False,
) -> None:
    """List candidates: registry-file models, registered policies and imported sources, with reply counts."""
    from policy.register import list_candidates

    engine = open_engine(db)
    with errors(), session_scope(engine) as session:
        rows = list_candidates(session=session)
    if as_json:
        typer.echo(json.dumps(rows, sort_keys=True))
        return
    if not rows:
        typer.echo("No candidates yet: run `therapref generate`, or `therapref candidates add NAME --model DIR`.")
    for row in rows:
        kind = "policy" if row["policy"] else ""
        typer.echo(f"{row['name']:<30} {row['provider']:<12} {row['replies']:>7} replies  {kind:<6} {row['model_id']}")


def register(app: typer.Typer) -> None:
    """Add ``candidates add|list`` to the root app."""
    candidates_app.command("add")(candidates_add)
    candidates_app.command("list")(candidates_list)
    app.add_typer(candidates_app, name="candidates")
