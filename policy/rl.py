"""Training the policy against the reward model with TRL's own RL trainers (``GRPOTrainer``, ``RLOOTrainer``).

:func:`train_rl` follows ``policy.train``'s steps: :func:`prepare_online` (every check on the input before
a model loads: the reward and safety folders are reward models, the base is a causal LM with a chat
template, the output folder is free or resumable, prompts too long for ``max_prompt_length`` are left
out and at least one is left), then ``policy.train.prepare`` (the work folder), :func:`fit_rl` (TRL's
trainer with the reward function below, LoRA, KL to the base, llama.cpp rollouts) and
``policy.train.finish`` (LoRA merged, the full model, card, ``therapref_policy.json``, one rename).

The reward (:class:`RewardFunction`) is the toolkit's reward model with its own tokenizer and encoding
(``reward.scoring``), scoring each reply against the prompt's own conversation as it was trained; with a
safety model, ``reward.scoring.constrained_rewards`` gives an unsafe reply the lowest reward of its
batch, whatever the preference model says, so no advantage can favour it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from candidates.best_of_n import BestOfNError, Scorers
from candidates.best_of_n import load_scorers as load_best_of_n_scorers
from policy.config import RL_METHODS, PolicyFields
from policy.errors import PolicyError
from policy.prompts import PromptData, TrainingPrompts
from policy.train import (
    FittedPolicy,
    PolicyTrainResult,
    TrainingPlan,
    _restore_bf16,
    check_output,
    compact_lm_head,
    finish,
    load_for_training,
    prepare,
    resolve_base_model,
)
from reward.resources import accelerator_present, default_threads, peft_config

# --- the reward and safety models ------------------------------------------------------------------------


def check_reward_folder(path: str | Path, option: str = "--reward-model") -> Path:
    """A folder holding a reward model (``therapref train``: a sequence-classification model, or an
    ensemble) — checked without loading it; anything else is one clear line.

    >>> check_reward_folder("/no/such/rm")
    Traceback (most recent call last):
    ...
    policy.errors.PolicyError: --reward-model /no/such/rm: no such folder
    """
    from reward.scoring import ENSEMBLE_FILE, META_FILE, is_ensemble

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise PolicyError(f"{option} {folder}: no such folder")
    if is_ensemble(folder):
        return folder
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise PolicyError(f"{option} {folder}: not a reward model folder (no config.json or {ENSEMBLE_FILE})")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyError(f"{option} {config_file}: not valid JSON ({exc})") from None
    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    if not (folder / META_FILE).is_file() and not any(a.endswith("ForSequenceClassification") for a in architectures):
        found = ", ".join(architectures) or f"model_type {config.get('model_type')!r}"
        raise PolicyError(f"{option} {folder}: not a reward model ({found}); train one with `therapref train`")
    return folder


def load_scorers(config: Any) -> Scorers:
    """The reward (and safety) model of ``config``, loaded once on the CPU (``candidates.best_of_n``'s
    loader, as best-of-n candidates and rejection sampling load theirs)."""
    try:
        return load_best_of_n_scorers(config, where="training")
    except BestOfNError as exc:
        raise PolicyError(str(exc)) from None


def completion_text(completion: Any) -> str:
    """A TRL completion (conversational: a list with one assistant message; or plain text) as text.

    >>> completion_text([{"role": "assistant", "content": "Hi."}]), completion_text("Hi.")
    ('Hi.', 'Hi.')
    """
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    return str(completion)


class RewardFunction:
    """TRL reward function (``reward_func(prompts, completions, **kwargs) -> list[float]``): the reward model's
    score of each reply against its prompt's own conversation (the dataset's ``context`` column), with the
    safety constraint applied. Keeps the last batches' figures (``history``) for tests and the card."""

    __name__ = "reward_model"  # TRL logs it as rewards/reward_model/mean

    def __init__(self, scorers: Scorers, *, keep: int = 64) -> None:
        self.scorers = scorers
        self.keep = keep
        self.history: list[dict[str, Any]] = []
        self.unsafe_total = 0
        self.scored_total = 0

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], context: Sequence[str] | None = None,
                 log_metric: Callable[[str, float], None] | None = None, **_: Any) -> list[float]:
        from reward.scoring import constrained_rewards

        texts = [completion_text(c) for c in completions]
        contexts = [json.loads(c) for c in context] if context is not None else [list(p) for p in prompts]
        scores = self.scorers.score_items(list(zip(contexts, texts, strict=True)))
        raw, unsafe, safety = [s.reward for s in scores], [s.unsafe for s in scores], [s.safety for s in scores]
        rewards = constrained_rewards(raw, unsafe) if any(unsafe) else raw
        self.unsafe_total += sum(unsafe)
        self.scored_total += len(texts)
        if log_metric is not None and self.scorers.safety is not None:
            log_metric("safety/unsafe_fraction", sum(unsafe) / max(1, len(unsafe)))
        self.history.append({"texts": texts, "raw": raw, "unsafe": unsafe, "safety": safety, "rewards": rewards})
        del self.history[:-self.keep]
        return rewards


# --- checks before anything is written ----------------------------------------------------------------------


def prepare_online(config: PolicyFields, prompts: TrainingPrompts) -> str:
    """Every check of an online method's input that can fail, before anything is written; drops the prompts
    longer than ``max_prompt_length`` tokens. Returns the base's loadable path."""
    from transformers import AutoTokenizer

    check_reward_folder(config.reward_model, "--reward-model")  # type: ignore[attr-defined]
    if config.safety_model:  # type: ignore[attr-defined]
        check_reward_folder(config.safety_model, "--safety-model")  # type: ignore[attr-defined]
    base = resolve_base_model(config.base_model)
    check_output(Path(config.output_dir), resume=bool(config.resume_from_checkpoint))
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as exc:
        raise PolicyError(f"base model {base}: cannot load its tokenizer ({str(exc).splitlines()[0]})") from None
    if getattr(tokenizer, "chat_template", None) is None:
        raise PolicyError(f"base model {base}: its tokenizer has no chat template (the prompts are conversations)")
    limit = config.max_prompt_length  # type: ignore[attr-defined]
    lengths = [len(_ids(tokenizer.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=True)))
               for p in prompts.prompts]
    prompts.drop([n <= limit for n in lengths])
    prompts.longest_tokens = max((n for n in lengths if n <= limit), default=None)
    if not prompts.prompts:
        raise PolicyError(f"--prompts: every training prompt is longer than max_prompt_length {limit} tokens")
    if prompts.excluded_long:
        prompts.notes.append(f"{prompts.excluded_long} prompts longer than max_prompt_length {limit} tokens left out")
    return base


def _ids(encoded: Any) -> list[int]:
    """Token ids from ``apply_chat_template(tokenize=True)``, a list or a BatchEncoding (transformers 5)."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    return list(encoded)


# --- TRL's trainers with llama.cpp rollouts ------------------------------------------------------------------


def _rl_trainer_class(method: str) -> type:
    from trl import GRPOTrainer, RLOOTrainer

    base = {"grpo": GRPOTrainer, "rloo": RLOOTrainer}[method]

    class PolicyRLTrainer(base):  # type: ignore[valid-type, misc]
        """TRL's trainer; its rollouts come from :class:`policy.rollouts.LlamaCppRollouts` when one is set.

        ``_generate_single_turn`` is where both trainers turn the prompts' token ids into completion ids
        (GRPO returns sampling log-probs too, which only vLLM provides; TRL computes its own)."""

        rollouts: Any = None

        def _generate_single_turn(self, prompt_ids: Any, images: Any, multimodal_fields: Any, *args: Any,
                                  **kwargs: Any) -> Any:
            if self.rollouts is None or images is not None or self.use_vllm or not self.model.training:
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, *args, **kwargs)
            self.rollouts.sync(self.accelerator.unwrap_model(self.model), self.state.global_step)
            completion_ids = self.rollouts.generate(
                prompt_ids, step=self.state.global_step, max_tokens=self.max_completion_length,
                eos_ids=self.eos_token_ids, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or 0,
                min_p=self.min_p, repetition_penalty=self.repetition_penalty)
            return (completion_ids, None) if method == "grpo" else completion_ids

    return PolicyRLTrainer


def choose_engine(config: Any, base: str, work: Path) -> tuple[str, Path | None, str]:
    """Which engine generates the rollouts, the base GGUF for llama.cpp, and why (for the card).

    ``auto`` takes llama.cpp on a CPU under LoRA for a Llama that converts to GGUF (the base's vocabulary),
    else transformers (without LoRA every step would re-export the whole model, which costs about what
    llama.cpp saves); ``llamacpp`` insists (one line when the base cannot run there)."""
    from policy.gguf import NotConvertible
    from policy.rollouts import base_gguf_for

    wanted = config.rollout_engine
    if wanted == "transformers":
        return "transformers", None, "rollout_engine = transformers"
    if wanted == "auto" and accelerator_present():
        return "transformers", None, "an accelerator is present (TRL's generate runs there)"
    if wanted == "auto" and not config.use_lora:
        return "transformers", None, "full fine-tuning (llama.cpp would need the whole model re-exported each step)"
    embedded = base if str(config.base_model or "embedded").strip() == "embedded" else None
    try:
        gguf = base_gguf_for(base, embedded, work / "rollouts")
    except NotConvertible as exc:
        if wanted == "llamacpp":
            raise PolicyError(f"rollout_engine llamacpp: base model {base} does not run in llama.cpp ({exc})") from None
        return "transformers", None, f"the base does not convert to GGUF ({exc})"
    return "llamacpp", gguf, "llama.cpp " + ("(LoRA adapters rewritten each step)" if config.use_lora
                                            else "(the whole model re-exported each step)")


@dataclass
class RLRun:
    """What :func:`fit_rl` leaves besides the fitted trainer (for tests and the bench)."""

    reward_function: RewardFunction
    engine: str
    engine_reason: str
    rollouts: Any = None
    step_seconds: list[float] = field(default_factory=list)


def fit_rl(config: Any, plan: TrainingPlan, data: PromptData, scorers: Scorers, *,
           callbacks: Sequence[Any] | None = None) -> tuple[FittedPolicy, RLRun]:
    """Load the base, build TRL's trainer with the reward function and (on a CPU) llama.cpp rollouts, train."""
    from datasets import Dataset
    from transformers import TrainerCallback

    from policy.rollouts import LlamaCppRollouts

    model, tokenizer, pure_bf16 = load_for_training(config, plan)
    reward_function = RewardFunction(scorers)
    engine, gguf, reason = choose_engine(config, plan.base, plan.work)
    run = RLRun(reward_function, engine, reason)

    class StepTimes(TrainerCallback):
        """Wall time of each optimizer step (rollouts, scoring, the update): steps/hour."""

        started = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            run.step_seconds.append(time.perf_counter() - self.started)

    started = time.perf_counter()
    with compact_lm_head(config.compact_lm_head), _restore_bf16(config, pure_bf16):
        trainer = _rl_trainer_class(config.method)(
            model=model, reward_funcs=[reward_function], args=config, train_dataset=Dataset.from_list(data.rows),
            processing_class=tokenizer, callbacks=[StepTimes(), *(callbacks or [])],
            peft_config=peft_config(config, task_type="CAUSAL_LM") if config.use_lora else None)
        if gguf is not None:
            threads = config.num_threads or default_threads()
            longest = max(len(_ids(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True,
                                                                  tokenize=True))) for r in data.rows)
            run.rollouts = trainer.rollouts = LlamaCppRollouts(
                gguf, plan.work / "rollouts", lora=bool(config.use_lora), threads=threads,
                n_ctx=longest + config.max_completion_length + 16, seed=config.seed,
                model_dir=plan.base)
        train_started = time.perf_counter()
        try:
            trainer.train(resume_from_checkpoint=True if plan.resume else None)
        finally:
            if run.rollouts is not None:
                run.rollouts.close()
            shutil.rmtree(plan.work / "rollouts", ignore_errors=True)  # scratch GGUFs, not part of the model
    ended = time.perf_counter()
    history = list(trainer.state.log_history)
    rewards = [row["reward"] for row in history if "reward" in row]
    train_seconds = ended - train_started
    extra: dict[str, Any] = {
        "reward_start": rewards[0] if rewards else None, "reward_end": rewards[-1] if rewards else None,
        "rewards": rewards,
        "kl": [row["kl"] for row in history if "kl" in row],
        "unsafe_replies": reward_function.unsafe_total, "scored_replies": reward_function.scored_total,
        "rollout_engine": engine, "rollout_engine_reason": reason,
        "rollouts": run.rollouts.stats.as_dict() if run.rollouts is not None else None,
        "steps_per_hour": 3600 * len(run.step_seconds) / sum(run.step_seconds) if run.step_seconds else None,
        "step_seconds": [round(s, 3) for s in run.step_seconds],
        "completions_per_step": config.per_device_train_batch_size * config.gradient_accumulation_steps,
    }
    fitted = FittedPolicy(
        trainer=trainer, tokenizer=tokenizer, seconds=ended - started, train_seconds=train_seconds,
        n_train=len(trainer.train_dataset), tokens=0,
        losses=[row["loss"] for row in history if "loss" in row], log_history=history, extra=extra)
    return fitted, run


def train_rl(config: Any, prompts: TrainingPrompts, *, callbacks: Sequence[Any] | None = None,
             on_run: Callable[[RLRun], None] | None = None) -> PolicyTrainResult:
    """Train ``config.method`` (grpo or rloo) on ``prompts`` against the reward model; write the model folder.

    A failure leaves no output folder (and an earlier one untouched)."""
    if config.method not in RL_METHODS:
        raise PolicyError(f"train_rl trains {', '.join(RL_METHODS)}, not {config.method}")
    prepare_online(config, prompts)
    scorers = load_scorers(config)
    data = prompts.as_data(config.method, reward_model=str(Path(config.reward_model).resolve()),
                           safety_model=str(Path(config.safety_model).resolve()) if config.safety_model else None,
                           safety_threshold=config.safety_threshold)
    plan = prepare(config, data)
    try:
        fitted, run = fit_rl(config, plan, data, scorers, callbacks=callbacks)
        if on_run is not None:
            on_run(run)
        return finish(config, plan, fitted, data)
    except BaseException:
        if config.process_index == 0:
            shutil.rmtree(plan.work, ignore_errors=True)  # nothing half-written stays behind
        raise
