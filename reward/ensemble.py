"""Ensembles of reward models: K members trained alike with seeds ``seed … seed+K-1`` (``therapref train
--ensemble K``), so that their disagreement on a pair says how unsure the reward model is there.

Why K seeds of the same model: on a CPU it is the cheapest scheme that needs nothing new at scoring
time; each member is an ordinary model folder (``RewardModel.load`` reads it alone), the ensemble
folder adds ``therapref_ensemble.json`` and is loaded by ``reward.scoring.load_reward_model``. Members
share the training pairs and the held-out split (split once, by prompt, with ``seed``) and differ in
the reward head's initial weights, the data order, dropout and (with ``length_feature``) the
calibration prompts. Cost: K trainings, one after another (not measured against cheaper schemes yet).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reward.config import TheraRewardConfig
from reward.errors import RewardError
from reward.pairs import PairStats, PreferencePair, split_by_prompt
from reward.resources import resolve_base_model
from reward.scoring import ENSEMBLE_FILE, RewardEnsemble
from reward.train import TrainResult, check_output_dir, train_reward_model

#: The members' sub-folders: member-0, member-1, …
MEMBER_DIR = "member-{index}"


def member_seeds(seed: int, k: int) -> list[int]:
    """The members' seeds: consecutive from the configured one (member 0 is the single model that
    ``--ensemble 1`` would train).

    >>> member_seeds(42, 3)
    [42, 43, 44]
    """
    return [seed + index for index in range(k)]


def member_config(config: TheraRewardConfig, index: int) -> TheraRewardConfig:
    """Member ``index``'s settings: its own folder and seed, the rest as configured."""
    return dataclasses.replace(config, output_dir=str(Path(config.output_dir) / MEMBER_DIR.format(index=index)),
                               seed=member_seeds(config.seed, index + 1)[-1], ensemble=1)


def train_ensemble(
    config: TheraRewardConfig,
    pairs: Sequence[PreferencePair],
    *,
    pair_stats: PairStats | None = None,
    provenance: dict[str, Any] | None = None,
    eval_pairs: Sequence[PreferencePair] | None = None,
    overwrite: bool = False,
    callbacks: Sequence[Any] | None = None,
) -> TrainResult:
    """Train ``config.ensemble`` members one after another into ``output_dir/member-*``, write the
    manifest and the ensemble's held-out report (mean reward of the members), and return one account
    of the whole (its ``meta`` is the manifest, which ``reward.store.record_run`` records)."""
    k = config.ensemble
    if k < 2:
        raise RewardError("an ensemble needs at least 2 members (--ensemble 2 or more)")
    if config.world_size > 1:
        raise RewardError("--ensemble trains its members one after another in one process: run it without "
                          "accelerate launch / torchrun")
    if config.resume_from_checkpoint:
        raise RewardError("--resume is not supported with --ensemble (train the ensemble again with --overwrite)")
    base = resolve_base_model(config.base_model)
    if not pairs:
        from reward.train import no_pairs_message

        raise RewardError(no_pairs_message(pair_stats))
    out = Path(config.output_dir)
    check_output_dir(out, resume=False, overwrite=overwrite)
    if eval_pairs is None:
        train_pairs, held = split_by_prompt(pairs, eval_fraction=config.eval_fraction, seed=config.seed)
    else:
        train_pairs, held = list(pairs), list(eval_pairs)
    if not train_pairs:
        raise RewardError("no training pairs left after the held-out split (add prompts or lower eval_fraction)")
    results = []
    for index in range(k):
        results.append(train_reward_model(member_config(config, index), train_pairs, pair_stats=pair_stats,
                                          provenance=provenance, eval_pairs=held, overwrite=True,
                                          callbacks=callbacks))
    manifest = ensemble_manifest(config, base, results, train_pairs, held, pair_stats=pair_stats,
                                 provenance=provenance)
    (out / ENSEMBLE_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    report, files = None, {"model": str(out), "manifest": str(out / ENSEMBLE_FILE)}
    if held:
        from reward.metrics import evaluation_report
        from reward.report import write_report

        ensemble = RewardEnsemble.load(out)
        report = evaluation_report(held, *ensemble.score_pairs(held))
        report["data"] = f"held-out prompts of the training data (mean reward of {k} members)"
        manifest["eval"] = {key: report[key] for key in ("accuracy", "accuracy_ci", "length_baseline", "ece")
                            if key in report}
        (out / ENSEMBLE_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        files.update(write_report({**report, "n_truncated": results[0].n_truncated}, out))
    seconds = sum(r.train_seconds for r in results)
    first = results[0]
    return TrainResult(output_dir=str(out), base_model=base, n_train=first.n_train, n_eval=first.n_eval,
                       n_calibration=first.n_calibration, n_truncated=first.n_truncated,
                       train_loss=first.train_loss, report=report, meta=manifest, train_seconds=seconds,
                       pairs_per_second=(sum(r.n_train for r in results) / seconds) if seconds else float("nan"),
                       is_main_process=all(r.is_main_process for r in results), files=files)


def ensemble_manifest(config: TheraRewardConfig, base: str, results: Sequence[TrainResult],
                      train_pairs: Sequence[PreferencePair], held: Sequence[PreferencePair], *,
                      pair_stats: PairStats | None, provenance: dict[str, Any] | None) -> dict[str, Any]:
    """``therapref_ensemble.json``: the members (folder, seed, held-out accuracy, training time) and what
    ``therapref evaluate`` reads from a model's metadata (config, which prompts were trained on)."""
    seeds = member_seeds(config.seed, len(results))
    members = []
    for index, (seed, result) in enumerate(zip(seeds, results, strict=True)):
        members.append({"folder": MEMBER_DIR.format(index=index), "seed": seed,
                        "accuracy": (result.report or {}).get("accuracy"),
                        "train_seconds": round(result.train_seconds, 2),
                        "length_weight": result.meta.get("length_weight", 0.0)})
    trained_keys = set()
    for result in results:
        trained_keys.update(result.meta.get("train_prompt_keys", []))
    return {
        "format": 1, "kind": "ensemble", "n_members": len(results), "path": str(config.output_dir),
        "members": [m["folder"] for m in members], "member_runs": members,
        "base_model": config.base_model, "base_model_path": base, "config": config.therapref_dict(),
        "uncertainty": "population std over members of sigma(reward A - reward B); P(A better) is their mean",
        "train_prompt_keys": sorted(trained_keys), "eval_prompt_keys": sorted({p.prompt_key for p in held}),
        "data": {**(provenance or {}), "n_pairs": len(train_pairs) + len(held), "n_train": len(train_pairs),
                 "n_eval": len(held), "pair_stats": pair_stats.as_dict() if pair_stats else {}},
        "length_weight": sum(m["length_weight"] or 0.0 for m in members) / len(members),
    }
