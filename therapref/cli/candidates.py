"""``therapref candidates add | list``: fine-tuned policies as candidates (library: ``policy.register``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from db.engine import session_scope
from therapref.cli.common import DbOption, errors, fail, open_engine

candidates_app = typer.Typer(help="Candidate models: register a fine-tuned policy, list them all.",
                             no_args_is_help=True)


def candidates_add(
    name: Annotated[str, typer.Argument(help="Candidate name (shown in reports, never to clinicians).")],
    model: Annotated[Optional[Path], typer.Option(
        "--model", help="Hugging Face causal-LM folder, e.g. the output of `therapref finetune local`.")] = None,
    system_prompt: Annotated[Optional[str], typer.Option(
        help="System message for its replies (default: the prompt's own, else the TheraPref persona; "
             "'' = none).")] = None,
    gguf_type: Annotated[str, typer.Option(
        help="Weights of the GGUF written for llama.cpp: f16 (matches transformers) or q8_0 (half the size).")]
        = "f16",
    best_of: Annotated[Optional[int], typer.Option(
        "--best-of", help="Best-of-n: sample N replies from --of and keep the --reward-model's best.")] = None,
    of: Annotated[Optional[str], typer.Option(
        "--of", metavar="BASE", help="Best-of-n: the candidate whose configuration draws the samples.")] = None,
    reward_model: Annotated[Optional[Path], typer.Option(
        help="Best-of-n: a `therapref train` folder (or ensemble) that picks the best sample.")] = None,
    safety_model: Annotated[Optional[Path], typer.Option(
        help="Best-of-n: a `therapref train --criterion safety` folder; unsafe samples are never picked "
             "while a safe one exists.")] = None,
    safety_threshold: Annotated[float, typer.Option(
        help="Best-of-n: safety-model score below which a sample is unsafe.")] = 0.0,
    db: DbOption = None,
) -> None:
    """Register a fine-tuned policy (--model DIR) so that `therapref generate` produces its replies (a Llama
    is converted once to DIR/model.gguf and runs through llama.cpp; other causal LMs through transformers),
    or a best-of-n candidate (--best-of N --of BASE --reward-model DIR)."""
    from policy.register import register_policy

    best_of_n = best_of is not None or of is not None or reward_model is not None or safety_model is not None
    if best_of_n and model is not None:
        raise fail("give either --model DIR (a fine-tuned policy) or --best-of N --of BASE --reward-model DIR")
    if best_of_n:
        if best_of is None or of is None or reward_model is None:
            raise fail("a best-of-n candidate needs --best-of N, --of BASE and --reward-model DIR")
        if best_of < 1:
            raise fail(f"--best-of must be at least 1, not {best_of}")
        _add_best_of_n(name, of=of, best_of=best_of, reward_model=reward_model, safety_model=safety_model,
                       safety_threshold=safety_threshold, db=db)
        return
    if model is None:
        raise fail("give --model DIR (a fine-tuned policy) or --best-of N --of BASE --reward-model DIR")
    engine = open_engine(db)
    with errors(), session_scope(engine) as session:
        row = register_policy(model, name, session=session, system_prompt=system_prompt, outtype=gguf_type,
                              note=lambda line: typer.echo(line, err=True))
        typer.echo(f"Registered candidate {row.name!r} ({row.provider}, {row.model_id}): "
                   "`therapref generate` now produces its replies.")


def _add_best_of_n(name: str, *, of: str, best_of: int, reward_model: Path, safety_model: Path | None,
                   safety_threshold: float, db: str | None) -> None:
    from candidates.best_of_n import register_best_of_n

    engine = open_engine(db)
    with errors(), session_scope(engine) as session:
        row = register_best_of_n(name, of=of, best_of=best_of, reward_model=str(reward_model), session=session,
                                 safety_model=str(safety_model) if safety_model else None,
                                 safety_threshold=safety_threshold)
        safety = f", safety model {safety_model}" if safety_model else ""
        typer.echo(f"Registered candidate {row.name!r}: best of {best_of} samples of {of!r} by reward model "
                   f"{reward_model}{safety}; `therapref generate` now produces its replies.")


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
