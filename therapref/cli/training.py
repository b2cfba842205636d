"""``therapref train | evaluate | score``: reward models from judgments (library: ``reward``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from therapref.cli_common import DbOption, errors, open_engine


def _train(
    output: Annotated[Path, typer.Option("--output", "-o", help="Model folder to write (checkpoints go inside).")],
    db: DbOption = None,
    base_model: Annotated[Optional[str], typer.Option(
        help="'embedded' (all-MiniLM-L6-v2), 'smollm2', a local folder or a hub id.")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Training epochs.")] = None,
    max_length: Annotated[Optional[int], typer.Option(
        help="Tokens per sequence (context truncated from the left; no pair dropped).")] = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="TOML file of training settings (a \\[train] table or top level); flags override it.")] = None,
    data: Annotated[str, typer.Option(help="'db' (judgments) or a preference file to train on.")] = "db",
    sources: Annotated[Optional[str], typer.Option(
        help="clinicians | imported | both | dataset names (comma-separated).")] = None,
    aggregation: Annotated[Optional[str], typer.Option(help="judgment | majority")] = None,
    margin_mapping: Annotated[Optional[str], typer.Option(
        help="Strength→margin, e.g. '1:0,2:0.5,3:1' or 'linear' (off by default).")] = None,
    guideline_versions: Annotated[Optional[str], typer.Option(
        help="Only judgments under these guideline versions ('latest' or '1,2').")] = None,
    eval_fraction: Annotated[Optional[float], typer.Option(help="Share of prompts held out.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for the split, the head and the data order.")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="AdamW learning rate.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Pairs per device per step.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps (overrides epochs).")] = None,
    lora: Annotated[Optional[bool], typer.Option("--lora/--no-lora", help="Train LoRA adapters (peft).")] = None,
    lora_r: Annotated[Optional[int], typer.Option(help="LoRA rank.")] = None,
    length_feature: Annotated[Optional[bool], typer.Option(
        "--length-feature/--no-length-feature", help="Hybrid score with a fitted log-length weight.")] = None,
    packing: Annotated[Optional[bool], typer.Option(
        "--packing/--no-packing", help="Padding-free batches (default: on for BERT-style bases on a CPU).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --output.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --output folder.")] = False,
) -> None:
    """Train a reward model on preference pairs with TRL's RewardTrainer."""
    from db.crud import audit, current_guideline, database_fingerprint
    from db.engine import read_only_engine, session_scope
    from reward.config import load_config, parse_guideline_versions
    from reward.pairs import parse_margin_mapping
    from reward.train import resolve_base_model, train_reward_model

    with errors():
        cfg = load_config(
            config, output_dir=str(output), base_model=base_model, num_train_epochs=epochs, max_length=max_length,
            sources=sources, aggregation=aggregation, margin_mapping=margin_mapping,
            guideline_versions=guideline_versions, eval_fraction=eval_fraction, seed=seed,
            learning_rate=learning_rate, per_device_train_batch_size=batch_size, max_steps=max_steps,
            use_lora=lora, lora_r=lora_r, length_feature=length_feature, packing=packing,
            resume_from_checkpoint=True if resume else None)
        resolve_base_model(cfg.base_model)  # a missing base model fails before any work
        mapping = parse_margin_mapping(cfg.margin_mapping)
        engine = open_engine(db)
        fingerprint = ""
        if data == "db":
            from reward.data import pairs_from_db

            with session_scope(read_only_engine(engine)) as session:
                latest = current_guideline(session=session)
                pairs, stats = pairs_from_db(
                    session=session, aggregation=cfg.aggregation, margin_mapping=mapping, sources=cfg.sources,
                    guideline_versions=parse_guideline_versions(cfg.guideline_versions,
                                                                latest.version if latest else None))
                fingerprint = database_fingerprint(session=session)
            origin = "judgments in the database"
        else:
            from dataclasses import replace

            from reward.data import read_preference_file

            pairs = [p if mapping else replace(p, margin=0.0) for p in read_preference_file(data)]
            stats, origin = None, f"preference file {Path(data).name}"
        result = train_reward_model(cfg, pairs, pair_stats=stats, overwrite=overwrite,
                                    provenance={"database_fingerprint": fingerprint, "origin": origin})
        if not result.is_main_process:
            return
        from reward.store import record_run

        with session_scope(engine) as session:
            run = record_run(result, session=session, data_fingerprint=fingerprint)
            audit("cli", "reward.train", session=session, target=str(output),
                  details={"run_id": run.id, "n_train": result.n_train, "n_eval": result.n_eval})
            run_id = run.id
    typer.echo(f"Trained on {result.n_train} pairs ({result.n_truncated} truncated to max_length, none dropped); "
               f"held out {result.n_eval}; {result.pairs_per_second:.1f} pairs/s.")
    if result.report:
        r = result.report
        low, high = r["accuracy_ci"]
        typer.echo(f"Held-out accuracy {r['accuracy']:.3f} (95% CI {low:.3f}–{high:.3f}); "
                   f"length baseline {r['length_baseline']:.3f}; ECE {r['ece']:.3f}.")
    typer.echo(f"Model written to {output} (reward model run #{run_id}).")


def _evaluate(
    model_dir: Annotated[Path, typer.Argument(help="A model folder written by `therapref train`.")],
    data: Annotated[str, typer.Option(help="'db' (held-out judgments) or a preference file "
                                           "(TRL JSONL, HH-RLHF, Counsel Chat CSV).")] = "db",
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    output: Annotated[Optional[Path], typer.Option(help="Report folder (default MODEL_DIR/eval-<data>).")] = None,
    format: Annotated[Optional[str], typer.Option(help="File format (default: detected).")] = None,
) -> None:
    """Accuracy with a 95% CI, length baseline, shorter-wins accuracy, per source, calibration."""
    from db.engine import read_only_engine, session_scope
    from reward.evaluate import evaluate_model
    from reward.train import nan_to_none

    with errors():
        if data == "db":
            engine = open_engine(db)
            with session_scope(read_only_engine(engine)) as session:
                report = evaluate_model(model_dir, data=data, session=session, output=output, format=format)
        else:
            report = evaluate_model(model_dir, data=data, output=output, format=format)
    if as_json:
        typer.echo(json.dumps(nan_to_none(report), sort_keys=True))
        return
    low, high = report["accuracy_ci"]
    typer.echo(f"{report['n_pairs']} pairs ({report['data']})")
    typer.echo(f"accuracy              {report['accuracy']:.3f}  (95% CI {low:.3f}–{high:.3f})")
    typer.echo(f"length baseline       {report['length_baseline']:.3f}  (longer reply chosen)")
    typer.echo(f"shorter-wins accuracy {report['shorter_wins_accuracy']:.3f}  ({report['n_shorter_wins']} pairs)")
    typer.echo(f"ECE                   {report['ece']:.3f}")
    for source, row in report["per_source"].items():
        typer.echo(f"  {source:<40} {row['n_pairs']:>6} pairs  accuracy {row['accuracy']:.3f}")
    typer.echo(f"Report: {report['files']['markdown']}")


def _score(
    model_dir: Annotated[Path, typer.Argument(help="A model folder written by `therapref train`.")],
    db: DbOption = None,
    rescore: Annotated[bool, typer.Option(help="Score again responses this model already scored.")] = False,
    batch_size: Annotated[int, typer.Option(help="Replies per forward pass.")] = 64,
) -> None:
    """Score every stored response with a reward model (ResponseScore rows) and report best-of-n."""
    from tqdm import tqdm

    from db.crud import audit
    from db.engine import session_scope
    from reward.scoring import RewardModel
    from reward.store import best_responses, run_for_path, score_responses

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


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("train")(_train)
    app.command("evaluate")(_evaluate)
    app.command("score")(_score)
