"""Training a reward model with TRL's ``RewardTrainer`` on pairs tokenised by the toolkit.

:func:`train_reward_model` runs three steps: :func:`prepare` (every check on the input, before any
model is loaded; the split by prompt), :func:`fit` (load, tokenise, train) and :func:`finish`
(length weight, held-out report, the model folder).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reward.config import TheraRewardConfig
from reward.errors import RewardError
from reward.packing import (
    PACKED_ATTENTION,
    PackedPooling,
    PackedPreferenceCollator,
    register_packed_attention,
    supports_packing,
)
from reward.pairs import PairStats, PreferencePair, log_length_gap, split_by_prompt
from reward.resources import accelerator_present, default_threads, load_pretrained, peft_config, resolve_base_model
from reward.scoring import META_FILE, RewardModel


def check_output_dir(path: str | Path, *, resume: bool, overwrite: bool, main_process: bool = True) -> None:
    """Refuse to write over a finished model unless asked to (only the main process deletes)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RewardError(f"output {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not (resume or overwrite):
        raise RewardError(f"output folder {path} is not empty (use --overwrite, or --resume to continue)")
    if overwrite and not resume and path.is_dir() and main_process:
        shutil.rmtree(path)


@dataclass
class TrainResult:
    """What a training did and wrote (``meta`` and ``files`` only on the main process)."""

    output_dir: str
    base_model: str
    n_train: int
    n_eval: int
    n_calibration: int
    n_truncated: int
    train_loss: list[float]
    report: dict[str, Any] | None
    meta: dict[str, Any]
    train_seconds: float
    pairs_per_second: float
    is_main_process: bool = True
    files: dict[str, str] = field(default_factory=dict)


def _load_model(base: str, config: TheraRewardConfig) -> tuple[Any, Any]:
    """The base as a sequence classifier with a new reward head drawn under ``config.seed``."""
    from transformers import set_seed

    set_seed(config.seed)  # the new reward head is drawn here, before the Trainer seeds: same seed, same model
    return load_pretrained(base, "sequence-classification", error=RewardError, new_head=True,
                           **(config.model_init_kwargs or {}))


LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


def freeze_lower_layers(model: Any, n_layers: int) -> int:
    """Freeze the embeddings and transformer layers 0..n_layers-1; returns how many tensors were frozen.

    Works by parameter name (``…layer.3.…``, ``…layers.3.…``, ``…h.3.…``) so that BERT- and
    Llama-style models are both covered; the reward head always stays trainable.
    """
    frozen = 0
    if n_layers <= 0:
        return 0
    for name, param in model.named_parameters():
        match = LAYER_INDEX.search(name)
        if ("embed" in name and "score" not in name) or (match and int(match.group(1)) < n_layers):
            param.requires_grad_(False)
            frozen += 1
    return frozen


def use_packing(config: TheraRewardConfig, model: Any) -> bool:
    """Whether to train on padding-free batches (``reward/packing.py``); ``packing=True`` on a base that
    cannot be packed is an error, found before any training."""
    if config.packing is False:
        return False
    possible = supports_packing(model) and not config.use_lora
    if config.packing is True and not possible:
        kind = getattr(model.config, "model_type", "unknown")
        raise RewardError(f"packing works for BERT-style bases without LoRA, not this one ({kind}"
                          f"{', LoRA' if config.use_lora else ''}): leave packing unset")
    return possible and (config.packing is True or not accelerator_present())


@contextmanager
def packed_training(model: Any, packed: bool) -> Iterator[None]:
    """Packed attention and per-sequence pooling for the duration of training; the saved model and
    later scoring use the model's own attention."""
    if not packed:
        yield
        return
    register_packed_attention()
    own = model.config._attn_implementation
    pooling = PackedPooling(model)
    model.config._attn_implementation = PACKED_ATTENTION
    try:
        yield
    finally:
        model.config._attn_implementation = own
        pooling.remove()


def _trainer_class() -> type:
    from trl import RewardTrainer

    class TheraRewardTrainer(RewardTrainer):
        """Keeps the ``length`` column (for length-grouped batches) next to TRL's columns."""

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["chosen_ids", "rejected_ids", "margin", "length"]

    return TheraRewardTrainer


def fit_length_weight(diffs: Sequence[float], gaps: Sequence[float]) -> tuple[float, float]:
    """Logistic fit of P(chosen) = σ(a·Δnetwork + w·Δloglength), no intercept (symmetric), with a ≥ 0.

    A negative network scale would make the saved model rank by the reverse of its own network on
    every new prompt (it happens when a short training left the network worse than chance on the
    calibration prompts); the network is then dropped (a = 0) and the length weight fitted alone.

    >>> a, w = fit_length_weight([0.1, -0.2, 0.3, 0.0], [1.0, 0.5, 0.8, -0.4])
    >>> w > 0
    True
    >>> a, w = fit_length_weight([-1.0, -2.0, -0.5, -1.5], [0.2, 0.1, 0.3, -0.1])
    >>> a, w > 0
    (0.0, True)
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.array([[d, g] for d, g in zip(diffs, gaps, strict=True)], dtype=float)
    if len(x) == 0:
        return 1.0, 0.0
    features = np.vstack([x, -x])
    labels = np.concatenate([np.ones(len(x)), np.zeros(len(x))])
    fit = LogisticRegression(fit_intercept=False, C=1.0).fit(features, labels)
    a, w = (float(v) for v in fit.coef_[0])
    if a < 0:
        length_only = LogisticRegression(fit_intercept=False, C=1.0).fit(features[:, 1:], labels)
        return 0.0, float(length_only.coef_[0][0])
    return a, w


@dataclass
class TrainingPlan:
    """What :func:`prepare` settled before any model is loaded: the base model's path, the pairs of
    each part (training, held-out evaluation, length-weight calibration) and where to resume from."""

    base: str
    train_pairs: list[PreferencePair]
    held: list[PreferencePair]
    calibration: list[PreferencePair]
    resume: bool | str | None


@dataclass
class FittedModel:
    """What :func:`fit` leaves for :func:`finish`: the trainer (its model, state and accelerator),
    the tokenizer and encoder the pairs were tokenised with, and how the training went."""

    trainer: Any  # None for head-only training (reward/probe.py), which needs no trainer
    tokenizer: Any
    encoder: Any
    packed: bool
    n_truncated: int
    seconds: float
    pairs_per_second: float
    losses: list[float]
    network: Any = None  # the fitted model when there is no trainer
    lm_head: Any = None  # head-only with the likelihood feature: the base's LM head (reward/likelihood.py)
    likelihood_weight: float | None = None  # … and the fitted weight of the reply's mean log-probability

    @property
    def global_step(self) -> int:
        return self.trainer.state.global_step if self.trainer is not None else 0


def train_reward_model(
    config: TheraRewardConfig,
    pairs: Sequence[PreferencePair],
    *,
    pair_stats: PairStats | None = None,
    provenance: dict[str, Any] | None = None,
    eval_pairs: Sequence[PreferencePair] | None = None,
    overwrite: bool = False,
    callbacks: Sequence[Any] | None = None,
) -> TrainResult:
    """Split ``pairs`` by prompt (unless ``eval_pairs`` is given), train, save the model folder with
    tokenizer, config, eval report and model card, and return what happened.

    ``callbacks`` (``transformers.TrainerCallback`` objects) are handed to the trainer, e.g. to stop
    on a time budget or to probe the model at each epoch's end.

    Under ``accelerate launch`` every process trains; only the main one writes artifacts.
    """
    plan = prepare(config, pairs, pair_stats=pair_stats, eval_pairs=eval_pairs, overwrite=overwrite)
    fitted = fit(config, plan, callbacks=callbacks)
    return finish(config, plan, fitted, pair_stats=pair_stats, provenance=provenance)


def prepare(config: TheraRewardConfig, pairs: Sequence[PreferencePair], *, pair_stats: PairStats | None = None,
            eval_pairs: Sequence[PreferencePair] | None = None, overwrite: bool = False) -> TrainingPlan:
    """Every check that can fail on the user's input, before any model is loaded (a missing base
    model, no pairs, an occupied output folder, nothing to resume), then the split by prompt."""
    base = resolve_base_model(config.base_model)
    if not pairs:
        raise RewardError(no_pairs_message(pair_stats))
    resume = config.resume_from_checkpoint
    check_output_dir(config.output_dir, resume=bool(resume), overwrite=overwrite,
                     main_process=config.process_index == 0)
    config.distributed_state.wait_for_everyone()  # the main process may just have emptied the folder
    resume = check_resume(config.output_dir, resume)
    if eval_pairs is None:
        train_pairs, held = split_by_prompt(pairs, eval_fraction=config.eval_fraction, seed=config.seed)
    else:
        train_pairs, held = list(pairs), list(eval_pairs)
    calibration: list[PreferencePair] = []
    config.temperature = wants_temperature(config.temperature, head_only=config.head_only,
                                           n_prompts=len({p.prompt_key for p in train_pairs}))
    if config.length_feature or config.temperature:
        train_pairs, calibration = split_by_prompt(train_pairs, eval_fraction=0.2, seed=config.seed + 1)
    if not train_pairs:
        raise RewardError("no training pairs left after the held-out split (add prompts or lower eval_fraction)")
    return TrainingPlan(base=base, train_pairs=train_pairs, held=held, calibration=calibration, resume=resume)


#: Fewest training prompts for which ``temperature = None`` holds 20% of them back for calibration.
MIN_TEMPERATURE_PROMPTS = 100


def wants_temperature(setting: bool | None, *, head_only: bool, n_prompts: int) -> bool:
    """Whether to fit a temperature: as set, or (None) when fine-tuning on enough prompts.

    >>> wants_temperature(None, head_only=False, n_prompts=800), wants_temperature(None, head_only=False, n_prompts=40)
    (True, False)
    >>> wants_temperature(None, head_only=True, n_prompts=800), wants_temperature(True, head_only=True, n_prompts=5)
    (False, True)
    """
    if setting is not None:
        return bool(setting)
    return not head_only and n_prompts >= MIN_TEMPERATURE_PROMPTS


def no_pairs_message(pair_stats: PairStats | None) -> str:
    """The one-line error when no pair is left, with the counts that say why.

    >>> no_pairs_message(None)
    "no preference pairs to train on: ties and 'both bad' votes are not pairs"
    """
    stats = pair_stats.as_dict() if pair_stats else {}
    detail = ", ".join(f"{k} {v}" for k, v in stats.items() if isinstance(v, int) and v)
    return ("no preference pairs to train on" + (f" ({detail})" if detail else "")
            + ": ties and 'both bad' votes are not pairs")


def check_resume(output_dir: str | Path, resume: bool | str | None) -> bool | str | None:
    """The checkpoint to resume from: True (the newest ``checkpoint-*`` in ``output_dir``), a folder,
    or None; a missing one is an error now rather than after the model is loaded.

    >>> check_resume("/no/such/out", None) is None
    True
    >>> check_resume("/no/such/out", "/no/such/checkpoint-3")
    Traceback (most recent call last):
    ...
    reward.errors.RewardError: checkpoint /no/such/checkpoint-3: no such folder
    """
    if resume is True or resume == "True":  # TOML and TrainingArguments may hand the flag over as text
        from transformers.trainer_utils import get_last_checkpoint

        if not Path(output_dir).is_dir() or get_last_checkpoint(str(output_dir)) is None:
            raise RewardError(f"nothing to resume: no checkpoint-* folder in {output_dir}")
        return True
    if resume and not Path(str(resume)).is_dir():
        raise RewardError(f"checkpoint {resume}: no such folder")
    return resume or None


def fit(config: TheraRewardConfig, plan: TrainingPlan, *, callbacks: Sequence[Any] | None = None) -> FittedModel:
    """Load the base model, tokenise the training pairs (nothing dropped) and train with TRL; with
    ``head_only``, fit only the reward head on the frozen base's features (``reward/probe.py``)."""
    import torch

    if config.head_only:
        from reward.probe import fit_head_only

        return fit_head_only(config, plan)
    from datasets import Dataset

    from reward.encoding import Encoder, encode_pairs

    threads = config.num_threads or default_threads()
    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = _load_model(plan.base, config)
    if config.freeze_layers and not config.use_lora:
        freeze_lower_layers(model, config.freeze_layers)
    encoder = Encoder(tokenizer, max_length=config.max_length or 512, min_context_tokens=config.min_context_tokens)
    with_margin = any(p.margin for p in plan.train_pairs)
    columns, n_truncated = encode_pairs(encoder, plan.train_pairs, with_margin=with_margin)
    config.max_length = encoder.max_length  # every row fits, so TRL's length filter drops nothing
    packed = use_packing(config, model)
    trainer = _trainer_class()(
        model=model, args=config, train_dataset=Dataset.from_dict(columns), processing_class=tokenizer,
        data_collator=PackedPreferenceCollator(pad_token_id=tokenizer.pad_token_id or 0) if packed else None,
        peft_config=peft_config(config) if config.use_lora else None, callbacks=list(callbacks or []) or None,
    )
    if len(trainer.train_dataset) != len(plan.train_pairs):  # pragma: no cover - guarded by encoding
        raise RewardError(f"TRL dropped {len(plan.train_pairs) - len(trainer.train_dataset)} pairs")
    started = time.perf_counter()
    with packed_training(model, packed):
        trainer.train(resume_from_checkpoint=plan.resume)
    seconds = time.perf_counter() - started
    epochs = trainer.state.epoch or config.num_train_epochs
    return FittedModel(
        trainer=trainer, tokenizer=tokenizer, encoder=encoder, packed=packed, n_truncated=n_truncated,
        seconds=seconds, pairs_per_second=len(plan.train_pairs) * float(epochs) / seconds if seconds else float("nan"),
        losses=[row["loss"] for row in trainer.state.log_history if "loss" in row])


def finish(config: TheraRewardConfig, plan: TrainingPlan, fitted: FittedModel, *,
           pair_stats: PairStats | None = None, provenance: dict[str, Any] | None = None) -> TrainResult:
    """On the main process: fit the length weight, evaluate on the held-out pairs and write the model
    folder; every process then gets the same account of the run."""
    main = config.process_index == 0
    config.distributed_state.wait_for_everyone()
    meta: dict[str, Any] = {}
    report = None
    files: dict[str, str] = {}
    if main:
        rm = _trained_reward_model(config, fitted)
        if plan.calibration:
            chosen, rejected = rm.score_pairs(plan.calibration)
            gaps = [log_length_gap(p) if config.length_feature else 0.0 for p in plan.calibration]
            rm.network_scale, rm.length_weight = fit_length_weight(
                [c - r for c, r in zip(chosen, rejected, strict=True)], gaps)
        if plan.held:
            from reward.metrics import evaluation_report

            report = evaluation_report(plan.held, *rm.score_pairs(plan.held))
            report["data"] = "held-out prompts of the training data"
        meta = run_meta(config, plan, fitted, rm, pair_stats=pair_stats, provenance=provenance)
        files = save_artifacts(rm, config, meta, report)
    config.distributed_state.wait_for_everyone()
    return TrainResult(output_dir=str(config.output_dir), base_model=plan.base, n_train=len(plan.train_pairs),
                       n_eval=len(plan.held), n_calibration=len(plan.calibration), n_truncated=fitted.n_truncated,
                       train_loss=fitted.losses, report=report, meta=meta, train_seconds=fitted.seconds,
                       pairs_per_second=fitted.pairs_per_second, is_main_process=main, files=files)


def _trained_reward_model(config: TheraRewardConfig, fitted: FittedModel) -> RewardModel:
    """The trained network as a scorer: unwrapped from DDP, LoRA adapters merged, in eval mode."""
    if fitted.trainer is None:
        network = fitted.network
    else:
        network = fitted.trainer.accelerator.unwrap_model(fitted.trainer.model)
    if config.use_lora and fitted.trainer is not None:
        network = network.merge_and_unload()
    network.eval()
    return RewardModel(model=network, tokenizer=fitted.tokenizer, encoder=fitted.encoder, path=str(config.output_dir),
                       lm_head=fitted.lm_head, likelihood_weight=fitted.likelihood_weight)


def run_meta(config: TheraRewardConfig, plan: TrainingPlan, fitted: FittedModel, rm: RewardModel, *,
             pair_stats: PairStats | None, provenance: dict[str, Any] | None) -> dict[str, Any]:
    """The model folder's ``therapref_reward.json``: encoding, hybrid weights, split, provenance."""
    trained_on = plan.train_pairs + plan.calibration
    return {
        "format": 1, "base_model": config.base_model, "base_model_path": plan.base, "path": str(config.output_dir),
        "encoder": fitted.encoder.describe(), "network_scale": rm.network_scale, "length_weight": rm.length_weight,
        "likelihood_weight": rm.likelihood_weight, "config": config.therapref_dict(),
        "train_prompt_keys": sorted({p.prompt_key for p in trained_on}),
        "eval_prompt_keys": sorted({p.prompt_key for p in plan.held}),
        "data": {**(provenance or {}), "n_pairs": len(trained_on) + len(plan.held),
                 "n_train": len(plan.train_pairs), "n_eval": len(plan.held), "n_calibration": len(plan.calibration),
                 "n_truncated": fitted.n_truncated,
                 "n_train_prompts": len({p.prompt_key for p in trained_on}),
                 "n_eval_prompts": len({p.prompt_key for p in plan.held}),
                 "pair_stats": pair_stats.as_dict() if pair_stats else {}},
        "training": {"seconds": fitted.seconds, "pairs_per_second": fitted.pairs_per_second, "loss": fitted.losses,
                     "global_step": fitted.global_step, "head_only": config.head_only, "packed_batches": fitted.packed},
    }


def save_artifacts(rm: RewardModel, config: TheraRewardConfig, meta: dict[str, Any],
                   report: dict[str, Any] | None) -> dict[str, str]:
    """Model + tokenizer, TheraPref metadata, the full config, the eval report and the model card."""
    from reward.report import model_card, write_report

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rm.model.save_pretrained(out)
    rm.tokenizer.save_pretrained(out)
    if rm.lm_head is not None:
        from reward.likelihood import save_lm_head

        save_lm_head(rm.model, rm.lm_head, out)
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    (out / "train_config.json").write_text(config.to_json_string())
    files = {"model": str(out), "config": str(out / "train_config.json")}
    if report is not None:
        report = {**report, "n_truncated": meta["data"]["n_truncated"]}
        files.update(write_report(report, out))
    (out / "README.md").write_text(model_card(meta, report))
    files["model_card"] = str(out / "README.md")
    return files
