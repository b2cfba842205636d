"""``therapref finetune local`` as one library call: read the export (or, for the methods that sample
their own replies, the training prompts), train, record the ``PolicyRun`` row and its audit event, and
optionally register the policy as a candidate model.

The steps are here, not in the CLI, so that a script or a notebook trains and records a policy
exactly as the command does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from db.audit import audit
from db.engine import read_only_engine, session_scope
from db.json_values import nan_to_none
from db.models import PolicyRun
from policy.config import ONLINE_METHODS, PolicyFields
from policy.data import read_export
from policy.errors import PolicyError
from policy.train import PolicyTrainResult, train_policy


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


def finetune_online_and_record(config: PolicyFields, *, engine: Engine, register: str | None = None,
                               actor: str = "cli", callbacks: Sequence[Any] | None = None,
                               note: Callable[[str], None] | None = None) -> PolicyResult:
    """Train ``config.method`` (``rs``, ``grpo`` or ``rloo``: a ``policy.config.PolicyRSConfig`` /
    ``PolicyGRPOConfig`` / ``PolicyRLOOConfig``) against ``config.reward_model`` on the database's prompts,
    then write the ``PolicyRun`` row and a ``policy.train`` audit event; with ``register``, add the policy as
    that candidate (``policy.register.register_policy``, with ``config.system_prompt``) in the same transaction.

    1. **Prompts** (``policy.prompts.select_training_prompts``): ``config.prompts`` is a SPEC over the stored
       prompts (N at random with ``config.seed``, ids, ``source:NAME``, ``topic:NAME``; None = all) or a JSONL
       file of chat rows; prompts of any A/B test are left out, and none left is an error.
    2. **Training**: ``policy.rs.train_rs`` (rejection sampling) or ``policy.rl.train_rl`` (TRL's GRPO/RLOO).
    3. **Row**: ``PolicyRun(method, base_model, config, metrics, provenance, data_fingerprint, n_train)``; its
       ``provenance`` holds ``prompt_ids`` (the stored prompts trained on: ``policy.abtest.seen_prompts``
       reads them, so A/B tests stay on unseen prompts), ``reward_model``, ``safety_model``,
       ``safety_threshold`` and how the prompts were chosen.

    Every check that can fail on the input (the reward folders, the base, the output folder, the prompts)
    runs before anything is written: a failure leaves no model folder and no row. ``note`` receives
    progress lines (rs). ``run_id`` is None on every process but the main one.
    """
    from policy.prompts import select_training_prompts

    if config.method not in ONLINE_METHODS:
        raise PolicyError(f"--method {config.method} trains on a file (use finetune_and_record)")
    with session_scope(read_only_engine(engine)) as session:
        prompts = select_training_prompts(config.prompts, session=session, seed=config.seed,  # type: ignore[attr-defined]
                                          system_prompt=config.system_prompt)  # type: ignore[attr-defined]
        if register:
            _check_register_name(register, Path(config.output_dir), session=session)
    if config.method == "rs":
        from policy.rs import train_rs

        result = train_rs(config, prompts, callbacks=callbacks, note=note)
    else:
        from policy.rl import train_rl

        result = train_rl(config, prompts, callbacks=callbacks)
    if not result.is_main_process:
        return PolicyResult(path=Path(result.path), run_id=None, metrics={}, method=config.method, train=result)
    meta = result.meta
    provenance = meta["provenance"]
    with session_scope(engine) as session:
        run = PolicyRun(path=str(Path(result.path).resolve()), method=config.method, base_model=config.base_model,
                        config=nan_to_none(meta["config"]), metrics=nan_to_none(meta["metrics"]),
                        provenance=nan_to_none(provenance), data_fingerprint=str(provenance.get("sha256") or ""),
                        n_train=result.n_train)
        session.add(run)
        session.flush()
        audit(actor, "policy.train", session=session, target=run.path,
              details={"run_id": run.id, "method": config.method, "n_train": result.n_train,
                       "global_step": result.global_step, "prompts": len(provenance.get("prompt_ids") or []),
                       "reward_model": provenance.get("reward_model"),
                       "safety_model": provenance.get("safety_model")})
        candidate_name = None
        if register:
            from policy.register import register_policy

            candidate = register_policy(Path(result.path), register, session=session,
                                        system_prompt=config.system_prompt)  # type: ignore[attr-defined]
            run.candidate_model_id = candidate.id
            session.add(run)
            candidate_name = candidate.name
        run_id = run.id
    return PolicyResult(path=Path(result.path), run_id=run_id, metrics=meta["metrics"], candidate_name=candidate_name,
                        method=config.method, train=result)


def _check_register_name(name: str, output: Path, *, session: Any) -> None:
    """A ``--register`` name that would be refused after training is refused before it (hours of RL lost
    otherwise): an empty name, or one that belongs to another model."""
    from sqlmodel import select

    from db.models import CandidateModel
    from policy.register import _check_replaceable, check_name

    existing = session.exec(select(CandidateModel).where(CandidateModel.name == check_name(name))).first()
    if existing is not None:
        _check_replaceable(existing, output.expanduser().resolve())
