"""``therapref train | evaluate | score``: reward models from judgments (library: ``reward``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from therapref.cli.common import DbOption, errors, open_engine
from therapref.config_cli import ConfigFlags, Flag, config_command

#: ``therapref train``'s training settings: ``reward.config.TheraRewardConfig``'s fields (their type and help),
#: the same names as in a ``--config`` file's ``[train]`` table except for the short flags named here.
TRAIN_FLAGS = ConfigFlags(
    "reward.config:TheraRewardConfig",
    ("base_model", Flag("num_train_epochs", "epochs"), "max_length", "sources", "aggregation", "margin_mapping",
     "guideline_versions", "eval_fraction", "seed", "learning_rate", Flag("per_device_train_batch_size", "batch_size"),
     "max_steps", Flag("use_lora", "lora"), "lora_r", "length_feature", "temperature", "head_only", "likelihood",
     "packing", "ensemble", "criterion"),
    panel="Training settings (also in --config FILE)")


def _train(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option("--output", "-o", help="Model folder to write (checkpoints go inside).")],
    db: DbOption = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="TOML file of training settings (a \\[train] table or top level); flags override it.")] = None,
    data: Annotated[str, typer.Option(help="'db' (judgments) or a preference file to train on "
                                           "(TRL JSONL, HH-RLHF, Counsel Chat CSV).")] = "db",
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --output.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --output folder.")] = False,
) -> None:
    """Train a reward model on preference pairs with TRL's RewardTrainer."""
    from reward.run import train_and_record

    settings = TRAIN_FLAGS.values(ctx)
    settings.update(output_dir=str(output), resume_from_checkpoint=True if resume else None)
    with errors():
        trained = train_and_record(settings, open_database=lambda: open_engine(db), config_file=config, data=data,
                                   overwrite=overwrite)
    if trained.run_id is None:  # another process of `accelerate launch`: the main one reports
        return
    result = trained.result
    if trained.pair_stats is not None:
        stats = trained.pair_stats
        typer.echo(f"Aggregation: {stats.aggregation}" + (
            f" ({stats.adjudicated} adjudicated comparisons: the lead's label replaces the votes)"
            if stats.aggregation == "adjudicated" else "") + ".")
    typer.echo(f"Trained on {result.n_train} pairs ({result.n_truncated} truncated to max_length, none dropped); "
               f"held out {result.n_eval}; {result.pairs_per_second:.1f} pairs/s.")
    if result.report:
        r = result.report
        low, high = r["accuracy_ci"]
        typer.echo(f"Held-out accuracy {r['accuracy']:.3f} (95% CI {low:.3f}–{high:.3f}); "
                   f"length baseline {r['length_baseline']:.3f}; ECE {r['ece']:.3f}.")
    members = result.meta.get("n_members")
    kind = f"Ensemble of {members} members" if members else "Model"
    typer.echo(f"{kind} written to {output} (reward model run #{trained.run_id}).")


def _evaluate(
    model_dir: Annotated[Path, typer.Argument(help="A model folder written by `therapref train`.")],
    data: Annotated[str, typer.Option(help="'db' (held-out judgments) or a preference file "
                                           "(TRL JSONL, HH-RLHF, Counsel Chat CSV).")] = "db",
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    output: Annotated[Optional[Path], typer.Option(help="Report folder (default MODEL_DIR/eval-<data>).")] = None,
    format: Annotated[Optional[str], typer.Option(
        help="File format: trl, hh-rlhf or counselchat-upvotes (default: detected).")] = None,
) -> None:
    """Accuracy with a 95% CI, length baseline, shorter-wins accuracy, per source, calibration."""
    from db.engine import read_only_engine, session_scope
    from db.json_values import nan_to_none
    from reward.evaluate import evaluate_model
    from reward.scoring import progress_bar

    with errors():
        if data == "db":
            engine = open_engine(db)
            with session_scope(read_only_engine(engine)) as session:
                report = evaluate_model(model_dir, data=data, session=session, output=output, format=format,
                                        progress=progress_bar)
        else:
            report = evaluate_model(model_dir, data=data, output=output, format=format, progress=progress_bar)
    if as_json:
        typer.echo(json.dumps(nan_to_none(report), sort_keys=True))
        return
    low, high = report["accuracy_ci"]
    typer.echo(f"{report['n_pairs']} pairs ({report['data']})")
    typer.echo(f"accuracy              {report['accuracy']:.3f}  (95% CI {low:.3f}–{high:.3f})")
    typer.echo(f"length baseline       {report['length_baseline']:.3f}  (longer reply chosen)")
    typer.echo(f"shorter-wins accuracy {report['shorter_wins_accuracy']:.3f}  ({report['n_shorter_wins']} pairs)")
    typer.echo(f"ECE                   {report['ece']:.3f}")
    if report.get("verdict"):
        typer.echo(report["verdict"])
    for source, row in report["per_source"].items():
        typer.echo(f"  {source:<40} {row['n_pairs']:>6} pairs  accuracy {row['accuracy']:.3f}")
    typer.echo(f"Report: {report['files']['markdown']}")


def _score(
    model_dir: Annotated[Path, typer.Argument(help="A model folder written by `therapref train`.")],
    db: DbOption = None,
    rescore: Annotated[bool, typer.Option(help="Score again responses this model already scored.")] = False,
    batch_size: Annotated[int, typer.Option(help="Replies per forward pass.")] = 64,
    comparisons: Annotated[bool, typer.Option(
        "--comparisons", help="Instead of the responses, score every open comparison: P(A better) and the "
        "model's uncertainty (ensemble disagreement), as ComparisonScore rows (docs/active.md).")] = False,
) -> None:
    """Score every stored response with a reward model (ResponseScore rows) and report best-of-n."""
    from tqdm import tqdm

    from db.audit import audit
    from db.engine import session_scope
    from reward.scoring import RewardModel
    from reward.store import best_responses, run_for_path, score_responses

    if comparisons:
        return _score_comparisons(model_dir, db=db, rescore=rescore, batch_size=batch_size)
    with errors():
        model = RewardModel.load(model_dir)
        engine = open_engine(db)
        with session_scope(engine) as session, tqdm(desc="Scoring", unit="reply", disable=None) as bar:
            run = run_for_path(model_dir, session=session)
            counts = score_responses(model, session=session, run=run, rescore=rescore, batch_size=batch_size,
                                     progress=bar.update)
            best = best_responses(session=session, run_id=run.id) if counts["responses"] else {}
            audit("cli", "reward.score", session=session, target=str(model_dir), details={"run_id": run.id, **counts})
    typer.echo(f"Scored {counts['scored']} responses ({counts['rescored']} rescored, {counts['skipped']} already "
               f"scored) with reward model run #{run.id}; best-of-n chosen for {len(best)} prompts.")


def _score_comparisons(model_dir: Path, *, db: str | None, rescore: bool, batch_size: int) -> None:
    """``therapref score MODEL_DIR --comparisons``: ComparisonScore rows for the open comparisons."""
    from tqdm import tqdm

    from candidates.priority import score_comparisons
    from db.audit import audit
    from db.engine import session_scope
    from reward.scoring import load_reward_model
    from reward.store import run_for_path

    with errors():
        model = load_reward_model(model_dir)
        engine = open_engine(db)
        with session_scope(engine) as session, tqdm(desc="Scoring", unit="pair", disable=None) as bar:
            run = run_for_path(model_dir, session=session)
            counts = score_comparisons(model, session=session, run_id=run.id, rescore=rescore, batch_size=batch_size,
                                       progress=bar.update)
            audit("cli", "reward.score_comparisons", session=session, target=str(model_dir),
                  details={"run_id": run.id, "n_members": model.n_members, **counts})
    typer.echo(f"Scored {counts['written'] + counts['updated']} of {counts['open']} open comparisons "
               f"({counts['skipped']} already scored) with reward model run #{run.id} "
               f"({model.n_members} member{'s' if model.n_members > 1 else ''}).")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("train", cls=config_command(TRAIN_FLAGS))(_train)
    app.command("evaluate")(_evaluate)
    app.command("score")(_score)
