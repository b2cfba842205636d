"""``therapref train`` as one library call: the settings, the pairs (the database's judgments or a
preference file), the training, and the ``RewardModelRun`` row with its audit event.

The steps are here, not in the CLI, so that a script, a notebook or another front end trains and
records a model exactly as the command does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from db.audit import audit
from db.engine import read_only_engine, session_scope
from db.guidelines import current_guideline
from db.status import database_fingerprint
from reward.config import TheraRewardConfig, load_config, parse_guideline_versions
from reward.data import pairs_from_db, read_preference_file
from reward.ensemble import train_ensemble
from reward.pairs import PairStats, PreferencePair, parse_margin_mapping
from reward.resources import resolve_base_model
from reward.store import record_run
from reward.train import TrainResult, train_reward_model

DATABASE = "db"


@dataclass
class TrainingData:
    """The pairs to train on and where they came from (written into the model card and the run row)."""

    pairs: list[PreferencePair]
    stats: PairStats | None
    origin: str
    fingerprint: str = ""

    def provenance(self) -> dict[str, str]:
        return {"database_fingerprint": self.fingerprint, "origin": self.origin}


@dataclass
class TrainRun:
    """A finished training and its ``RewardModelRun`` id (None on every process but the main one,
    which alone writes the model folder and the row)."""

    result: TrainResult
    run_id: int | None
    #: How the judgments became pairs (``auto`` resolved) and how many comparisons a lead adjudicated.
    pair_stats: PairStats | None = None


def train_and_record(settings: Mapping[str, Any], *, open_database: Callable[[], Engine],
                     config_file: str | Path | None = None, data: str = DATABASE, overwrite: bool = False,
                     actor: str = "cli") -> TrainRun:
    """Train on ``data`` ('db' or a preference file) with the settings of ``config_file`` overridden
    by ``settings`` (config field names; None values leave the file's), then record the run in the
    database that ``open_database`` opens.

    Bad settings and a missing base model fail before the database is opened (a typo creates no
    database file) and before any data is read.
    """
    config = load_config(config_file, **settings)
    resolve_base_model(config.base_model)
    engine = open_database()
    training = load_training_data(data, config, engine=engine)
    # --ensemble K: K members with consecutive seeds (reward/ensemble.py), recorded as one run.
    trainer = train_reward_model if config.ensemble <= 1 else train_ensemble
    result = trainer(config, training.pairs, pair_stats=training.stats, overwrite=overwrite,
                     provenance=training.provenance())
    if not result.is_main_process:
        return TrainRun(result=result, run_id=None)
    return TrainRun(result=result, run_id=record_training(result, engine=engine, data=training, actor=actor),
                    pair_stats=training.stats)


def load_training_data(data: str, config: TheraRewardConfig, *, engine: Engine) -> TrainingData:
    """Pairs from the judgments (built with the config's sources, aggregation, margins and guideline
    versions) or from a preference file read by the importers."""
    mapping = parse_margin_mapping(config.margin_mapping)
    if data != DATABASE:
        # A file's own margins count only when margins are on, as for imported judgments.
        return TrainingData(pairs=read_preference_file(data, margins=bool(mapping)), stats=None,
                            origin=f"preference file {Path(data).name}")
    with session_scope(read_only_engine(engine)) as session:
        latest = current_guideline(session=session)
        pairs, stats = pairs_from_db(
            session=session, aggregation=config.aggregation, margin_mapping=mapping, sources=config.sources,
            guideline_versions=parse_guideline_versions(config.guideline_versions,
                                                        latest.version if latest else None),
            criterion=config.criterion)
        fingerprint = database_fingerprint(session=session)
    return TrainingData(pairs=pairs, stats=stats, origin="judgments in the database", fingerprint=fingerprint)


def record_training(result: TrainResult, *, engine: Engine, data: TrainingData, actor: str = "cli") -> int:
    """The ``RewardModelRun`` row and its audit event, in one transaction; returns the run's id."""
    with session_scope(engine) as session:
        run = record_run(result, session=session, data_fingerprint=data.fingerprint)
        audit(actor, "reward.train", session=session, target=result.output_dir,
              details={"run_id": run.id, "n_train": result.n_train, "n_eval": result.n_eval})
        return run.id
