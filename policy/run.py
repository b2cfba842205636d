"""``therapref finetune local`` as one library call: read the export, train, record the ``PolicyRun``
row and its audit event, and optionally register the policy as a candidate model.

The steps are here, not in the CLI, so that a script or a notebook trains and records a policy
exactly as the command does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from db.crud import audit
from db.engine import session_scope
from db.models import PolicyRun
from policy.config import PolicyFields
from policy.data import read_export
from policy.train import PolicyTrainResult, nan_to_none, train_policy


@dataclass
class PolicyResult:
    """A finished training: the model folder, its ``PolicyRun`` id, the figures and, if registered,
    the candidate's name. ``run_id`` is None on every process but the main one (which alone writes)."""

    path: Path
    run_id: int | None
    metrics: dict[str, Any] = field(default_factory=dict)
    candidate_name: str | None = None
    method: str = ""
    train: PolicyTrainResult | None = None


def finetune_and_record(file: Path, *, config: PolicyFields, engine: Engine, register: str | None = None,
                        actor: str = "cli", callbacks: Sequence[Any] | None = None) -> PolicyResult:
    """Train ``config.method`` on the export ``file``, then write the ``PolicyRun`` row (provenance = the
    export's manifest) and an audit event; with ``register``, add the policy as that candidate.

    The file is read and checked completely before any model is loaded; a failure writes no row and
    leaves no model folder.
    """
    data = read_export(file, config.method)
    result = train_policy(config, data, callbacks=callbacks)
    if not result.is_main_process:
        return PolicyResult(path=Path(result.path), run_id=None, metrics={}, method=config.method, train=result)
    meta = result.meta
    with session_scope(engine) as session:
        run = PolicyRun(path=str(Path(result.path).resolve()), method=config.method, base_model=config.base_model,
                        config=nan_to_none(meta["config"]), metrics=nan_to_none(meta["metrics"]),
                        provenance=nan_to_none(data.manifest or {}), data_fingerprint=data.sha256,
                        n_train=result.n_train)
        session.add(run)
        session.flush()
        audit(actor, "policy.train", session=session, target=run.path,
              details={"run_id": run.id, "method": config.method, "n_train": result.n_train,
                       "global_step": result.global_step, "file": str(Path(file).resolve()),
                       "sha256": data.sha256, "export_run_id": (data.manifest or {}).get("export_run_id")})
        candidate_name = None
        if register:
            from policy.register import register_policy

            candidate = register_policy(Path(result.path), register, session=session)
            run.candidate_model_id = candidate.id
            session.add(run)
            candidate_name = candidate.name
        run_id = run.id
    return PolicyResult(path=Path(result.path), run_id=run_id, metrics=meta["metrics"], candidate_name=candidate_name,
                        method=config.method, train=result)
