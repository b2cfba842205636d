"""``therapref generate`` (candidate replies) and ``therapref pairs`` (comparisons)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from db.rules import parse_id_list
from therapref.cli.common import DbOption, errors, fail, open_engine, settings_for, sigterm_as_interrupt


def generate(
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="Candidate registry TOML (default: candidates_file setting, candidates.toml).")] = None,
    prompts: Annotated[Optional[str], typer.Option(
        help='Only these prompt ids, e.g. "1,4,10-20" (default: every prompt lacking replies).')] = None,
    source: Annotated[Optional[str], typer.Option(help="Only prompts imported from this source.")] = None,
    candidate: Annotated[Optional[list[str]], typer.Option(
        "--candidate", help="Only this candidate (repeatable).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    registered: Annotated[bool, typer.Option(
        "--registered/--no-registered", help="Also generate for policies registered in the database "
        "(`therapref candidates add`, `finetune local --register`); the registry file wins a shared name.")] = True,
    db: DbOption = None,
) -> None:
    """Generate missing candidate replies (resumable; failures are retried by the next run)."""
    from candidates.generate import run_generation
    from candidates.registry import load_registry, registered_policy_specs, secret_names, with_registered
    from db.engine import session_scope

    path = config or Path(settings_for(db).candidates_file)
    with errors():
        try:
            prompt_ids = parse_id_list(prompts) if prompts else None
        except ValueError as exc:
            raise fail(str(exc)) from None
        # Without a registry file, registered policies alone will do (unless --config named one).
        specs = load_registry(path) if config is not None or path.is_file() or not registered else []
        engine = open_engine(db)
        if registered:
            with session_scope(engine) as session:
                specs = with_registered(specs, registered_policy_specs(session=session))
            if not specs:
                load_registry(path)  # no file and nothing registered: the registry's own error
        if candidate:
            unknown = sorted(set(candidate) - {s.name for s in specs})
            if unknown:
                where = f"{path} or the registered policies" if registered else str(path)
                raise fail(f"no candidate named {unknown[0]!r} in {where}")
            specs = [s for s in specs if s.name in candidate]
        # The only place API keys are read: by the names the registry lists, passed down as a mapping.
        secrets = {name: os.environ[name] for name in secret_names(specs) if name in os.environ}
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
    k: Annotated[Optional[int], typer.Option(
        "--k", help="Ranking tasks of K replies (3-9) from K distinct candidates instead of pairs; "
        "--budget is then tasks per prompt (default 1) and --overlap rankings per task.")] = None,
    strategy: Annotated[Optional[str], typer.Option(
        help="Active selection: create exactly --budget new comparisons in all (not per prompt), chosen "
        "'random' (seeded) or by 'uncertainty' of --reward-model (docs/active.md).")] = None,
    reward_model: Annotated[Optional[Path], typer.Option(
        "--reward-model", help="Reward model or ensemble folder for --strategy uncertainty.")] = None,
    db: DbOption = None,
) -> None:
    """Pair replies to the same prompt from different candidates into comparisons (idempotent)."""
    from candidates.pairing import make_pairs, make_ranking_tasks
    from db.engine import session_scope

    engine = open_engine(db)
    with errors(), session_scope(engine) as session:
        if strategy is not None:
            from candidates.priority import pairs_by_strategy

            if budget is None or k is not None:
                raise fail("--strategy needs --budget N (new comparisons in all) and chooses pairs, not --k rankings")
            summary = pairs_by_strategy(strategy, budget, session=session, seed=seed, model_dir=reward_model,
                                        overlap=overlap, overlap_fraction=overlap_fraction,
                                        candidates=candidate or None)
        elif k is not None:
            summary = make_ranking_tasks(k, session=session, overlap=overlap, overlap_fraction=overlap_fraction,
                                         budget=budget, seed=seed, candidates=candidate or None)
        else:
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
