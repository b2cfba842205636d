"""``therapref generate`` (candidate replies) and ``therapref pairs`` (comparisons)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from therapref.cli.common import DbOption, errors, fail, open_engine, settings_for, sigterm_as_interrupt


def parse_id_list(text: str) -> list[int]:
    """Prompt ids from ``"1,3,7-9"``.

    >>> parse_id_list("1, 3,7-9")
    [1, 3, 7, 8, 9]
    """
    ids: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, dash, high = part.partition("-")
        try:
            start, end = int(low), int(high) if dash else int(low)
        except ValueError:
            raise ValueError(f"--prompts: {part!r} is not an id or a range like 3-9") from None
        if start < 1 or end < start:
            raise ValueError(f"--prompts: bad range {part!r}")
        ids.extend(range(start, end + 1))
    if not ids:
        raise ValueError("--prompts: no ids given")
    return ids


def generate(
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="Candidate registry TOML (default: candidates_file setting, candidates.toml).")] = None,
    prompts: Annotated[Optional[str], typer.Option(
        help='Only these prompt ids, e.g. "1,4,10-20" (default: every prompt lacking replies).')] = None,
    source: Annotated[Optional[str], typer.Option(help="Only prompts imported from this source.")] = None,
    candidate: Annotated[Optional[list[str]], typer.Option(
        "--candidate", help="Only this candidate (repeatable).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    db: DbOption = None,
) -> None:
    """Generate missing candidate replies (resumable; failures are retried by the next run)."""
    from candidates.generate import run_generation
    from candidates.registry import load_registry, secret_names

    path = config or Path(settings_for(db).candidates_file)
    with errors():
        try:
            prompt_ids = parse_id_list(prompts) if prompts else None
        except ValueError as exc:
            raise fail(str(exc)) from None
        specs = load_registry(path)
        if candidate:
            unknown = sorted(set(candidate) - {s.name for s in specs})
            if unknown:
                raise fail(f"{path}: no candidate named {unknown[0]!r}")
            specs = [s for s in specs if s.name in candidate]
        # The only place API keys are read: by the names the registry lists, passed down as a mapping.
        secrets = {name: os.environ[name] for name in secret_names(specs) if name in os.environ}
        engine = open_engine(db)
        if source is not None:
            prompt_ids = _prompts_of_source(engine, source, prompt_ids)
        try:
            with sigterm_as_interrupt():
                summary = run_generation(engine, specs, prompt_ids=prompt_ids, progress=progress,
                                         secrets=secrets)
        except KeyboardInterrupt:
            typer.secho("Interrupted: replies already received are saved; run the command again to finish.",
                        err=True)
            raise typer.Exit(130) from None
    typer.echo(str(summary))
    for name, error in summary.errors.items():
        typer.secho(f"  {name}: first error: {error}", err=True, fg=typer.colors.YELLOW)
    if summary.failed:
        raise typer.Exit(1)

def pairs(
    overlap: Annotated[int, typer.Option(help="Judgments required on the overlap share (agreement).")] = 1,
    overlap_fraction: Annotated[float, typer.Option(
        help="Share of new comparisons that need --overlap judgments.")] = 0.2,
    budget: Annotated[Optional[int], typer.Option(
        help="At most N comparisons per prompt (default: every cross-source pair).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for choosing pairs and the overlap share.")] = 0,
    candidate: Annotated[Optional[list[str]], typer.Option(
        "--candidate", help="Only pair replies of these candidates/sources (repeatable).")] = None,
    db: DbOption = None,
) -> None:
    """Pair replies to the same prompt from different candidates into comparisons (idempotent)."""
    from candidates.pairing import make_pairs
    from db.engine import session_scope

    engine = open_engine(db)
    with errors(), session_scope(engine) as session:
        summary = make_pairs(session=session, overlap=overlap, overlap_fraction=overlap_fraction,
                             budget=budget, seed=seed, candidates=candidate or None)
    typer.echo(str(summary))


def _prompts_of_source(engine, source: str, prompt_ids: list[int] | None) -> list[int]:  # noqa: ANN001
    from sqlmodel import select

    from db.crud import DataError
    from db.engine import session_scope
    from db.models import Prompt

    with session_scope(engine) as session:
        ids = list(session.exec(select(Prompt.id).where(Prompt.source == source)).all())
    if not ids:
        raise DataError(f"no prompts from source {source!r}")
    return sorted(set(ids) & set(prompt_ids)) if prompt_ids is not None else ids


def register(app: typer.Typer) -> None:
    """Add ``generate`` and ``pairs`` to the root app."""
    app.command("generate")(generate)
    app.command("pairs")(pairs)
