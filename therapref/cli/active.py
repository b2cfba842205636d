"""``therapref prioritize``: which open comparisons clinicians see first (library: ``candidates.priority``).

``therapref pairs --strategy … --budget N`` (new pairs under a budget) lives with ``pairs`` in
``therapref/cli/generating.py``; ``therapref score MODEL_DIR --comparisons`` with ``score``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from therapref.cli.common import DbOption, errors, fail, open_engine


def prioritize(
    strategy: Annotated[str, typer.Option(
        help="'random' (seeded), 'uncertainty' (the reward model's, scored where missing) or 'disagreement' "
             "(entropy of the votes so far).")],
    reward_model: Annotated[Optional[Path], typer.Option(
        "--reward-model", help="Reward model or ensemble folder (needed for --strategy uncertainty).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of --strategy random.")] = 0,
    db: DbOption = None,
) -> None:
    """Set the queue priority of every open comparison (the app serves the highest first)."""
    from tqdm import tqdm

    from candidates.priority import STRATEGIES
    from candidates.priority import prioritize as set_queue_priorities
    from db.engine import session_scope

    if strategy not in STRATEGIES:
        raise fail(f"--strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if strategy == "uncertainty" and reward_model is None:
        raise fail("--strategy uncertainty needs --reward-model DIR")
    with errors():
        if reward_model is not None:
            from reward.scoring import check_model_folder

            check_model_folder(reward_model)  # a bad folder fails here, before the database is opened
        engine = open_engine(db)
        with session_scope(engine) as session, tqdm(desc="Scoring", unit="pair", disable=None) as bar:
            run_id = None
            if strategy == "uncertainty":
                from reward.store import run_for_path

                run_id = run_for_path(reward_model, session=session).id
            summary = set_queue_priorities(strategy, session=session, seed=seed, run_id=run_id,
                                           model_dir=reward_model, progress=bar.update)
    typer.echo(str(summary))


def register(app: typer.Typer) -> None:
    """Add ``prioritize`` to the root app."""
    app.command("prioritize")(prioritize)
