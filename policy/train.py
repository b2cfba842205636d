"""Training a chatbot policy with TRL's ``SFTTrainer`` / ``DPOTrainer`` / ``KTOTrainer`` on an export.

:func:`train_policy` runs three steps: :func:`prepare` (every check on the input before any model is
loaded: the base is a causal LM, the output folder is free or holds a checkpoint to resume), :func:`fit`
(load, tokenise, train in a work folder beside the output) and :func:`finish` (merge LoRA, save the
full model, tokenizer, ``README.md`` card and ``therapref_policy.json``, then move the work folder into
place in one rename). A failure leaves no output folder (and an earlier one untouched).

Under ``accelerate launch`` every process trains; only the main one writes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy.config import EMBEDDED, PolicyFields
from policy.data import PolicyData
from policy.errors import PolicyError
from reward.resources import default_threads, load_pretrained, peft_config

META_FILE = "therapref_policy.json"
CARD_FILE = "README.md"
UNITS = {"sft": "examples", "dpo": "pairs", "kto": "examples", "rs": "examples", "grpo": "prompts", "rloo": "prompts"}


# --- checks before any model is loaded -------------------------------------------------------------------

def resolve_base_model(spec: str | None) -> str:
    """A loadable folder or hub id for ``spec`` ('embedded', a folder, a hub id); a folder must exist
    and hold a causal LM.

    >>> resolve_base_model("/no/such/base")
    Traceback (most recent call last):
    ...
    policy.errors.PolicyError: base model /no/such/base: no such folder
    """
    spec = (spec or EMBEDDED).strip()
    if spec == EMBEDDED:
        from candidates.embedded import smollm2_hf_path

        try:
            return str(smollm2_hf_path())
        except (OSError, RuntimeError) as exc:
            raise PolicyError(f"embedded base model: not available ({exc})") from None
    path = Path(spec).expanduser()
    if path.exists():
        check_causal_lm(path)
        return str(path)
    if spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") != 1:
        raise PolicyError(f"base model {spec}: no such folder")
    return spec  # a hub id (needs network or a warm cache); checked when loaded


def check_causal_lm(path: Path) -> None:
    """A folder whose ``config.json`` names a ``…ForCausalLM`` (or a decoder model type); anything else
    (a BERT encoder such as the reward base) is one clear line."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise PolicyError(f"base model {path}: folder has no config.json (not a Hugging Face model)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyError(f"base model {config_file}: not valid JSON ({exc})") from None
    architectures = [a for a in (config.get("architectures") or []) if isinstance(a, str)]
    if architectures:
        causal = any(a.endswith("ForCausalLM") for a in architectures)
        found = ", ".join(architectures)
    else:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        # BERT-like encoders are in the causal mapping too (as LM heads); without architectures, they are not.
        model_type = config.get("model_type")
        causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in ENCODER_TYPES
        found = f"model_type {model_type!r}"
    if not causal or config.get("is_encoder_decoder"):
        raise PolicyError(f"base model {path}: not a causal language model ({found}); a policy needs a decoder "
                          "such as the embedded SmolLM2 (--base-model embedded)")


ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie", "data2vec-text", "rembert",
                 "roc_bert", "xmod", "megatron-bert", "bert-generation")


def work_dir(output: Path) -> Path:
    """The folder a training writes into before it is moved to ``output`` (same file system, one name
    for every process of a distributed run).

    >>> work_dir(Path("runs/p1")).as_posix()
    'runs/.p1.partial'
    """
    return output.with_name(f".{output.name}.partial")


def check_output(output: Path, *, resume: bool) -> None:
    """An output folder that is free, or (``resume``) one holding a ``checkpoint-*`` to continue from."""
    if output.exists() and not output.is_dir():
        raise PolicyError(f"output {output} exists and is not a folder")
    parent = output.parent
    if not parent.is_dir():
        raise PolicyError(f"cannot write {output}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PolicyError(f"cannot write {output}: folder {parent} is not writable")
    if resume:
        if not output.is_dir() or last_checkpoint(output) is None:
            raise PolicyError(f"nothing to resume: no checkpoint-* folder in {output}")
    elif output.is_dir() and any(output.iterdir()):
        raise PolicyError(f"output folder {output} is not empty (choose another, or --resume to continue its training)")


def last_checkpoint(folder: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


# --- the steps ---------------------------------------------------------------------------------------------

@dataclass
class TrainingPlan:
    """What :func:`prepare` settled: the base's path, the final and the work folder, whether to resume."""

    base: str
    output: Path
    work: Path
    resume: bool


@dataclass
class FittedPolicy:
    """What :func:`fit` leaves for :func:`finish`."""

    trainer: Any
    tokenizer: Any
    seconds: float
    train_seconds: float
    n_train: int
    tokens: int
    losses: list[float]
    log_history: list[dict[str, Any]]
    #: Figures a method adds to the metrics (the RL trainers: rewards, rollout speed, steps/hour).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PolicyTrainResult:
    """What a training did and wrote (``meta`` only on the main process)."""

    path: str
    method: str
    base_model: str
    n_train: int
    global_step: int
    losses: list[float]
    seconds: float
    per_second: float
    meta: dict[str, Any] = field(default_factory=dict)
    is_main_process: bool = True

    @property
    def loss_start(self) -> float | None:
        return self.losses[0] if self.losses else None

    @property
    def loss_end(self) -> float | None:
        return self.losses[-1] if self.losses else None


def train_policy(config: PolicyFields, data: PolicyData, *,
                 callbacks: Sequence[Any] | None = None) -> PolicyTrainResult:
    """Train ``config.method`` on ``data`` and write the model folder ``config.output_dir``."""
    plan = prepare(config, data)
    try:
        fitted = fit(config, plan, data, callbacks=callbacks)
        return finish(config, plan, fitted, data)
    except BaseException:
        if config.process_index == 0:
            shutil.rmtree(plan.work, ignore_errors=True)  # nothing half-written stays behind
        raise


def prepare(config: PolicyFields, data: PolicyData) -> TrainingPlan:
    """Every check that can fail on the user's input, before any model is loaded; then the work
    folder (a copy of the output's checkpoints when resuming)."""
    if data.method != config.method:
        raise PolicyError(f"{data.path}: read for {data.method}, but the settings are for {config.method}")
    base = resolve_base_model(config.base_model)
    output = Path(config.output_dir)
    resume = bool(config.resume_from_checkpoint)
    check_output(output, resume=resume)
    work = work_dir(output)
    if config.process_index == 0:
        shutil.rmtree(work, ignore_errors=True)  # left by a killed run
        if resume:
            checkpoint = Path(str(last_checkpoint(output)))
            work.mkdir()
            shutil.copytree(checkpoint, work / checkpoint.name)
        else:
            work.mkdir()
    config.distributed_state.wait_for_everyone()
    config.output_dir = str(work)
    return TrainingPlan(base=base, output=output, work=work, resume=resume)


def _load(base: str, config: PolicyFields) -> tuple[Any, Any]:
    import torch

    # A frozen base under LoRA is held in bf16 itself: under autocast, fp32 weights are cast to bf16
    # again by every matmul of every step (see docs/policy.md); trained weights stay fp32 (autocast).
    dtype = torch.bfloat16 if (config.bf16 and config.use_lora) else torch.float32
    model, tokenizer = load_pretrained(base, "causal-lm", dtype=dtype, error=PolicyError,
                                       **(config.model_init_kwargs or {}))
    if getattr(tokenizer, "chat_template", None) is None:
        raise PolicyError(f"base model {base}: its tokenizer has no chat template (the exports are conversations)")
    return model, tokenizer


def _trainer_class(method: str) -> type:
    from trl import DPOTrainer, KTOTrainer, SFTTrainer

    base = {"sft": SFTTrainer, "dpo": DPOTrainer, "kto": KTOTrainer}[method]

    class PolicyTrainer(base):  # type: ignore[valid-type, misc]
        """Keeps the ``length`` column (length-grouped batches) next to TRL's columns."""

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if self._signature_columns is not None and "length" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "length"]

    return PolicyTrainer


def _with_lengths(dataset: Any) -> Any:
    """A ``length`` column (tokens of the longest sequence a row makes) for length-grouped batches."""
    columns = set(dataset.column_names)
    if "length" in columns:
        return dataset
    if {"prompt_ids", "chosen_ids", "rejected_ids"} <= columns:
        def length(row: dict[str, Any]) -> dict[str, int]:
            return {"length": len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"]))}
    elif "input_ids" in columns:
        def length(row: dict[str, Any]) -> dict[str, int]:
            return {"length": len(row["input_ids"])}
    else:
        return dataset
    return dataset.map(length, desc="Measuring lengths")


def _token_count(dataset: Any) -> int:
    """Real tokens of one pass over the training set (chosen and rejected both count for DPO)."""
    columns = set(dataset.column_names)
    if {"prompt_ids", "chosen_ids", "rejected_ids"} <= columns:
        return sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(
            dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True))
    if {"prompt_ids", "completion_ids"} <= columns:
        return sum(len(p) + len(c) for p, c in zip(dataset["prompt_ids"], dataset["completion_ids"], strict=True))
    if "input_ids" in columns:
        return sum(len(ids) for ids in dataset["input_ids"])
    return 0


@contextmanager
def compact_lm_head(enabled: bool) -> Iterator[bool]:
    """Project only the positions that have a label through the LM head on every device.

    TRL's fused head (``trl.trainer.utils.add_fused_lm_head``) drops unlabelled positions only where
    Triton runs (CUDA/XPU) and, elsewhere, projects every position (prompt and padding too) onto the
    whole vocabulary and back in the backward pass. Its torch fallback handles the compact layout as
    well; this flips the one switch for the duration of training. A no-op if TRL moves it.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if not enabled or original is None:
        yield False
        return
    trl_utils._use_triton = lambda device: True
    try:
        yield True
    finally:
        trl_utils._use_triton = original


@contextmanager
def _restore_bf16(config: PolicyFields, pure_bf16: bool) -> Iterator[None]:
    """The recorded setting stays what the user asked for (bf16), whatever the trainer was handed."""
    try:
        yield
    finally:
        if pure_bf16:
            config.bf16 = True


# --- padding-free batches ------------------------------------------------------------------------------------

PACKED_ATTENTION = "therapref_policy_packed"


def _packed_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                      scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """Causal attention of sequences laid end to end (``[1, heads, tokens, dim]``): each sequence
    attends only to itself, one fused SDPA call per sequence. ``packed_lengths`` comes through the
    model's keyword arguments. Returns ``[1, tokens, heads, dim]``."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv

    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    outs, start = [], 0
    for n in kwargs["packed_lengths"]:
        end = start + n
        outs.append(torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], is_causal=True, scale=scaling,
            dropout_p=dropout if module.training else 0.0))
        start = end
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None  # packed sequences need no mask: _packed_attention keeps each sequence to itself


def can_pack(model: Any) -> bool:
    """Decoders whose backbone passes keyword arguments down to a registered attention function and
    takes ``position_ids`` (Llama, the embedded SmolLM2, and their kin)."""
    return getattr(getattr(model, "config", None), "model_type", None) in ("llama", "mistral", "qwen2", "qwen3")


@contextmanager
def padding_free(model: Any, enabled: bool) -> Iterator[bool]:
    """Run the backbone on the real tokens only. TRL's batches stay padded (its losses sum per row),
    but the backbone sees the rows' real tokens laid end to end with restarting positions, and its
    output is put back into the padded layout for the LM head. Every linear layer then works on real
    tokens only; on LLMEval2 pairs about half of a batch of 8 pairs was padding."""
    import types

    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    backbone = getattr(model, "base_model", None) if enabled and can_pack(model) else None
    if backbone is None or backbone is model:
        yield False
        return
    AttentionInterface.register(PACKED_ATTENTION, _packed_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_ATTENTION, _no_mask)
    original = backbone.forward

    def packed_forward(self: Any, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
        if input_ids is None or attention_mask is None or kwargs.get("inputs_embeds") is not None:
            return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        keep = attention_mask.bool()
        lengths = keep.sum(dim=1)
        if not bool((keep == (torch.arange(keep.shape[1], device=keep.device) < lengths[:, None])).all()):
            return original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)  # not right-padded
        lengths = [int(n) for n in lengths.tolist() if n]
        kwargs.pop("position_ids", None)
        positions = torch.cat([torch.arange(n, device=input_ids.device) for n in lengths])[None]
        out = original(input_ids=input_ids[keep][None], attention_mask=None, position_ids=positions,
                       packed_lengths=lengths, **kwargs)
        hidden = out.last_hidden_state[0]
        full = hidden.new_zeros(*keep.shape, hidden.shape[-1])
        out.last_hidden_state = full.index_put((keep,), hidden)
        return out

    own = model.config._attn_implementation
    backbone.forward = types.MethodType(packed_forward, backbone)
    model.config._attn_implementation = PACKED_ATTENTION
    try:
        yield True
    finally:
        model.config._attn_implementation = own
        del backbone.forward  # the class's own forward again


def load_for_training(config: PolicyFields, plan: TrainingPlan) -> tuple[Any, Any, bool]:
    """Threads, seed, the base and its tokenizer, as every method trains them. Returns whether the
    frozen base is held in pure bf16 (``config.bf16`` is then off for the trainer: see below; wrap the
    training in ``_restore_bf16`` so that the recorded setting stays what the user asked for)."""
    import torch
    from transformers import set_seed

    threads = config.num_threads or default_threads()
    if threads:
        torch.set_num_threads(threads)
    set_seed(config.seed)
    model, tokenizer = _load(plan.base, config)
    # Under LoRA with bf16 the frozen base already is bf16 (_load): its matmuls run in bf16 as they are,
    # and autocast would only add casts (peft lifts every adapter input to fp32, autocast lowers it again:
    # a sixth of a step's CPU time went to such copies). The fp32 adapters then train without autocast.
    pure_bf16 = bool(config.bf16 and config.use_lora)
    config.bf16 = not pure_bf16 and bool(config.bf16)
    return model, tokenizer, pure_bf16


def fit(config: PolicyFields, plan: TrainingPlan, data: PolicyData, *,
        callbacks: Sequence[Any] | None = None) -> FittedPolicy:
    """Load the base, let TRL tokenise (and compute the reference log-probs once), train."""
    from datasets import Dataset

    model, tokenizer, pure_bf16 = load_for_training(config, plan)
    started = time.perf_counter()
    with compact_lm_head(config.compact_lm_head), _restore_bf16(config, pure_bf16), \
            padding_free(model, config.padding_free_batches):
        trainer = _trainer_class(config.method)(
            model=model, args=config, train_dataset=Dataset.from_list(data.rows), processing_class=tokenizer,
            peft_config=peft_config(config, task_type="CAUSAL_LM") if config.use_lora else None,
            callbacks=list(callbacks or []) or None)
        if config.train_sampling_strategy == "group_by_length":
            trainer.train_dataset = _with_lengths(trainer.train_dataset)
        if len(trainer.train_dataset) == 0:
            raise PolicyError(f"{data.path}: every row's prompt is longer than max_length {config.max_length}")
        dropped = len(data.rows) - len(trainer.train_dataset)
        if dropped:
            # TRL drops rows whose prompt alone fills max_length (nothing of the reply would be trained on)
            data.notes.append(f"{dropped} of {len(data.rows)} rows dropped by TRL: the prompt alone fills "
                              f"max_length {config.max_length} (raise --max-length to keep them)")
        train_started = time.perf_counter()
        trainer.train(resume_from_checkpoint=True if plan.resume else None)
    ended = time.perf_counter()
    return FittedPolicy(
        trainer=trainer, tokenizer=tokenizer, seconds=ended - started, train_seconds=ended - train_started,
        n_train=len(trainer.train_dataset), tokens=_token_count(trainer.train_dataset),
        losses=[row["loss"] for row in trainer.state.log_history if "loss" in row],
        log_history=list(trainer.state.log_history))


def finish(config: PolicyFields, plan: TrainingPlan, fitted: FittedPolicy, data: PolicyData) -> PolicyTrainResult:
    """On the main process: the full model (LoRA merged), tokenizer, card and metadata into the work
    folder, then the work folder moved to the output in one rename; every process gets the account."""
    trainer = fitted.trainer
    main = trainer.is_world_process_zero()
    trainer.accelerator.wait_for_everyone()
    state = trainer.state
    epochs = float(state.epoch or 0.0)
    metrics = {
        "global_step": state.global_step, "epochs": epochs, "loss_start": fitted.losses[0] if fitted.losses else None,
        "loss_end": fitted.losses[-1] if fitted.losses else None, "losses": fitted.losses,
        "seconds": fitted.seconds, "train_seconds": fitted.train_seconds,
        "n_train": fitted.n_train, "n_rows": len(data.rows), "n_dropped": len(data.rows) - fitted.n_train,
        "unit": UNITS[config.method],
        "per_second": fitted.n_train * epochs / fitted.seconds if fitted.seconds else None,
        "tokens_per_epoch": fitted.tokens, "world_size": trainer.accelerator.num_processes,
        "resumed": plan.resume, **fitted.extra,
    }
    meta: dict[str, Any] = {}
    if main:
        from policy.card import model_card

        meta = {"format": 1, "method": config.method, "base_model": config.base_model, "base_model_path": plan.base,
                "path": str(plan.output.resolve()), "config": config.therapref_dict(), "metrics": metrics,
                "provenance": data.provenance(), "notes": data.notes}
        model = _merged_model(trainer, config, plan.base)
        model.save_pretrained(plan.work)
        fitted.tokenizer.save_pretrained(plan.work)
        (plan.work / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
        (plan.work / "train_config.json").write_text(trainer.args.to_json_string())
        (plan.work / CARD_FILE).write_text(model_card(meta), encoding="utf-8")
        publish(plan.work, plan.output)
    trainer.accelerator.wait_for_everyone()
    config.output_dir = str(plan.output)
    return PolicyTrainResult(path=str(plan.output), method=config.method, base_model=plan.base,
                             n_train=fitted.n_train, global_step=state.global_step, losses=fitted.losses,
                             seconds=fitted.seconds, per_second=metrics["per_second"] or 0.0, meta=meta,
                             is_main_process=main)


def _merged_model(trainer: Any, config: PolicyFields, base: str) -> Any:
    """The trained network as a plain causal LM. LoRA adapters are merged into a fresh fp32 copy of the
    base: merged into bf16 weights, updates smaller than bf16's resolution would be rounded away."""
    network = trainer.accelerator.unwrap_model(trainer.model)
    if config.use_lora:
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        adapters = get_peft_model_state_dict(network)
        fresh, _ = load_pretrained(base, "causal-lm", error=PolicyError)
        merged = get_peft_model(fresh, peft_config(config, task_type="CAUSAL_LM"))
        set_peft_model_state_dict(merged, {k: v.float() for k, v in adapters.items()})
        network = merged.merge_and_unload()
    network = network.float()
    network.eval()
    return network


def publish(work: Path, output: Path) -> None:
    """Move the finished work folder to ``output``; an earlier output (being resumed) is swapped out."""
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
        os.replace(work, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, output)
