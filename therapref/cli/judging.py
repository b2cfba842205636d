"""``therapref judge``: a model judge pre-annotates comparisons; ``--gate`` lets the verdicts of a judge
stand in for a clinician above a confidence threshold at which its agreement with clinicians is shown,
with a stated confidence, to reach the clinicians' agreement with each other."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from therapref.cli.common import DbOption, errors, open_engine, settings_for, sigterm_as_interrupt


def judge(
    judge_name: Annotated[str, typer.Option(
        "--judge", help="A chat model named in the candidate registry (provider openai or llamacpp), 'embedded' "
                        "(SmolLM2 in-process, offline) or 'reward:DIR' (a reward model from `therapref train`). "
                        "Its verdicts are judgments of the source annotator judge:<name>.")],
    comparisons: Annotated[Optional[str], typer.Option(
        help="Which comparisons: all (default), open (those that still need judgments) or ids like 1,4,10-20. "
             "Comparisons this judge already judged are skipped.")] = None,
    gate: Annotated[bool, typer.Option(
        help="Afterwards, let verdicts stand in for a clinician above the confidence threshold at which the judge's "
             "agreement with clinicians is at least theirs with each other (Clopper-Pearson, fixed sequence); "
             "never on a comparison anyone flagged or the judge finds unsafe.")] = False,
    alpha: Annotated[float, typer.Option(
        help="--gate: the guarantee holds with probability at least 1 - alpha.")] = 0.1,
    target: Annotated[Optional[float], typer.Option(
        help="--gate: the agreement to guarantee (default: the clinicians' agreement with each other).")] = None,
    min_calibration: Annotated[int, typer.Option(
        help="--gate: refuse below this many calibration comparisons (judged by the judge and by at least two "
             "clinicians).")] = 30,
    min_confidence: Annotated[Optional[float], typer.Option(
        help="--gate: a fixed threshold (0..1) instead of the guaranteed one; the judge must then reach the "
             "clinicians' kappa, and the line reports the bound this threshold gives.")] = None,
    min_shared: Annotated[int, typer.Option(
        help="--gate with --min-confidence: least comparisons the judge must share with clinicians.")] = 10,
    revoke: Annotated[bool, typer.Option(
        help="Withdraw every stand-in of this judge (its verdicts stay stored) and ask nothing.")] = False,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="Candidate registry TOML (default: candidates_file setting, candidates.toml).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the order in which the judge sees the two replies.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    db: DbOption = None,
) -> None:
    """Ask a model judge for verdicts on comparisons (malformed answers are recorded and retried next run)."""
    from analytics.judges import apply_gate, check_gate_options
    from candidates.judge import parse_comparisons, resolve_judge, run_judge
    from candidates.registry import secret_names
    from db.engine import session_scope

    with errors():
        selection = parse_comparisons(comparisons)
        check_gate_options(alpha=alpha, target=target, min_confidence=min_confidence, min_calibration=min_calibration)
        registry = config or Path(settings_for(db).candidates_file)
        spec = resolve_judge(judge_name, registry=registry if (config or registry.is_file()) else None)
        engine = open_engine(db)
        if revoke:
            with session_scope(engine) as session:
                result = apply_gate(spec.name, session=session, revoke=True)
            typer.echo(str(result))
            return
        # The only place API keys are read: by the name the registry lists, passed down as a mapping.
        names = secret_names([spec.spec]) if spec.spec is not None else []
        secrets = {name: os.environ[name] for name in names if name in os.environ}
        try:
            with sigterm_as_interrupt():
                summary = run_judge(engine, spec, comparisons=selection, seed=seed, secrets=secrets,
                                    progress=progress)
        except KeyboardInterrupt:
            typer.secho("Interrupted: verdicts already received are saved; run the command again to finish.",
                        err=True)
            raise typer.Exit(130) from None
        typer.echo(str(summary))
        if summary.first_error:
            typer.secho(f"  first error: {summary.first_error}", err=True, fg=typer.colors.YELLOW)
        if gate:
            with session_scope(engine) as session:
                result = apply_gate(spec.name, session=session, min_confidence=min_confidence, min_shared=min_shared,
                                    alpha=alpha, target=target, min_calibration=min_calibration)
            typer.echo(str(result))
    if summary.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("judge")(judge)
