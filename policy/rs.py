"""Rejection-sampling fine-tuning (``--method rs``): the reward model's best replies of the policy itself
become its SFT data, round after round.

Each round r = 1 … ``rounds``:

1. **Sample.** ``best_of`` replies per training prompt from the current policy (round 1: the base) at
   ``temperature`` through the candidates library's best-of-n path (``candidates.best_of_n``, the same
   provider, seeds and reward scoring a best-of-n candidate uses): llama.cpp runs the policy's GGUF (the
   embedded base's own file, else ``policy.gguf.convert_to_gguf`` of the folder; a base llama.cpp cannot
   run falls back to the transformers provider).
2. **Keep.** Per prompt, the sample with the highest reward among the safe ones
   (``reward.scoring.pick_safe_best``); a prompt whose samples are all unsafe (or all failed) keeps nothing
   this round: **an unsafe reply is never trained on**.
3. **SFT.** ``policy.train.train_policy`` (TRL's ``SFTTrainer``, the loss on the reply only) on the kept
   replies, from the current policy; the result is the next round's policy.

Everything happens in the work folder ``.DIR.partial``; ``round-r/samples.jsonl`` keeps every sample with
its reward, safety score and whether it was kept, and ``round-r/therapref_policy.json`` that round's SFT
figures. The last round's model becomes ``DIR`` with the card and ``therapref_policy.json`` of the whole
run (one rename at the end); a failure leaves no ``DIR``. One process: under ``accelerate launch`` every
process would sample the same replies, so several processes are refused.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exports.formats import jsonl_line
from policy.data import PolicyData
from policy.errors import PolicyError
from policy.prompts import TrainingPrompts
from policy.rl import prepare_online
from policy.rollouts import rollout_seed
from policy.train import CARD_FILE, META_FILE, PolicyTrainResult, prepare, publish, train_policy
from reward.resources import default_threads

#: Files of a trained policy folder that make the final model (the run's own card and metadata replace theirs).
MODEL_FILES_SKIPPED = (CARD_FILE, META_FILE, "train_config.json", "model.gguf")


@dataclass
class RoundSamples:
    """One round's sampling: the SFT rows kept and every prompt's samples."""

    rows: list[dict[str, Any]]
    records: list[dict[str, Any]]
    seconds: float
    tokens: int
    failed: int = 0
    all_unsafe: int = 0

    def figures(self) -> dict[str, Any]:
        """Mean reward of every sample and of the kept ones, unsafe share, counts, speed."""
        every = [s["reward"] for r in self.records for s in r["samples"]]
        kept = [s["reward"] for r in self.records for s in r["samples"] if s["picked"] and r["kept"]]
        unsafe = [s["unsafe"] for r in self.records for s in r["samples"]]
        return {"prompts": len(self.records), "samples": len(every), "kept": len(self.rows), "failed": self.failed,
                "all_unsafe": self.all_unsafe,
                "reward_mean": statistics.fmean(every) if every else None,
                "reward_kept_mean": statistics.fmean(kept) if kept else None,
                "unsafe_fraction": sum(unsafe) / len(unsafe) if unsafe else None,
                "sample_seconds": round(self.seconds, 3), "tokens": self.tokens,
                "tokens_per_second": round(self.tokens / self.seconds, 2) if self.seconds else None}


def sampler_spec(config: Any, model: str, *, provider: str, threads: int | None, n_ctx: int, seed: int) -> Any:
    """The best-of-n configuration that draws a round's samples (the candidates library's own type)."""
    from candidates.generate import CandidateSpec

    return CandidateSpec(
        name="therapref-rs-sampler", provider=provider, model_id=model, system_prompt=config.system_prompt,
        temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_completion_length, seed=seed,
        n_ctx=n_ctx, threads=threads, best_of=config.best_of, reward_model=str(config.reward_model),
        safety_model=str(config.safety_model) if config.safety_model else None,
        safety_threshold=float(config.safety_threshold))


def sample_round(prompts: TrainingPrompts, spec: Any, *, round_number: int, seed: int) -> RoundSamples:
    """``spec.best_of`` samples per prompt through ``candidates.best_of_n.BestOfNProvider``; the picked safe
    sample of each prompt becomes an SFT row."""
    from candidates.best_of_n import BestOfNProvider
    from candidates.generate import Failure, Job

    jobs = [Job(prompt_id=p.prompt_id or 0, candidate_id=0, messages=p.messages,
                seed=rollout_seed(seed, round_number, index), score_context=p.context)
            for index, p in enumerate(prompts.prompts)]
    outcomes: dict[int, Any] = {}

    async def emit(job: Any, outcome: Any) -> None:
        outcomes[id(job)] = outcome

    async def run() -> None:
        provider = BestOfNProvider(spec)
        await provider.start()
        try:
            await provider.run(jobs, emit)
        finally:
            await provider.close()

    started = time.perf_counter()
    asyncio.run(run())
    seconds = time.perf_counter() - started
    rows, records, failed, all_unsafe, tokens = [], [], 0, 0, 0
    for prompt, job in zip(prompts.prompts, jobs, strict=True):
        outcome = outcomes.get(id(job))
        if outcome is None or isinstance(outcome, Failure):
            failed += 1
            records.append({"prompt_id": prompt.prompt_id, "prompt": prompt.messages, "kept": False, "samples": [],
                            "error": getattr(outcome, "error", "no outcome")})
            continue
        best = outcome.meta.get("best_of") or {}
        tokens += int(outcome.meta.get("completion_tokens") or 0)
        keep = not best.get("all_unsafe", False)
        all_unsafe += not keep
        samples = [{k: s.get(k) for k in ("sample_index", "text", "reward", "safety", "unsafe", "picked", "seed")}
                   for s in outcome.samples]
        records.append({"prompt_id": prompt.prompt_id, "prompt": prompt.messages, "kept": keep, "samples": samples})
        if keep:
            rows.append({"prompt": prompt.messages, "completion": [{"role": "assistant", "content": outcome.text}]})
    return RoundSamples(rows, records, seconds, tokens, failed, all_unsafe)


def _round_config(config: Any, *, output: Path, base: str) -> Any:
    """The round's SFT settings: the run's (an ``SFTConfig``), for one round's folder and base."""
    sft = copy.copy(config)
    sft.method = "sft"
    sft.output_dir = str(output)
    sft.base_model = base
    sft.resume_from_checkpoint = None
    return sft


def _policy_gguf(folder: str, *, embedded: bool, work: Path) -> tuple[str, str]:
    """(provider, model) that samples the policy in ``folder``: llama.cpp on a GGUF where it converts."""
    from policy.gguf import NotConvertible, convert_to_gguf

    if embedded:
        return "llamacpp", "embedded"
    try:
        return "llamacpp", str(convert_to_gguf(Path(folder), work / "sampler.gguf", force=True).path)
    except NotConvertible:
        return "transformers", folder


def train_rs(config: Any, prompts: TrainingPrompts, *, callbacks: Sequence[Any] | None = None,
             note: Callable[[str], None] | None = None) -> PolicyTrainResult:
    """Rejection-sampling fine-tuning of ``config.base_model`` on ``prompts`` (see the module docstring);
    writes the model folder ``config.output_dir``. ``note`` receives one progress line per step."""
    say = note or (lambda _line: None)
    if config.resume_from_checkpoint:
        raise PolicyError("--resume does not apply to rs (each round samples afresh); train more rounds from the "
                          "finished policy with --base-model DIR")
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise PolicyError("rs runs in one process (every process would sample the same replies)")
    started = time.perf_counter()
    base = prepare_online(config, prompts)
    data = prompts.as_data("rs", reward_model=str(Path(config.reward_model).resolve()),
                           safety_model=str(Path(config.safety_model).resolve()) if config.safety_model else None,
                           safety_threshold=config.safety_threshold, best_of=config.best_of, rounds=config.rounds)
    plan = prepare(config, data)
    threads = config.num_threads or default_threads()
    try:
        current = base
        embedded = str(config.base_model or "embedded").strip() == "embedded"
        rounds: list[dict[str, Any]] = []
        losses: list[float] = []
        steps = 0
        kept_total = 0
        for number in range(1, config.rounds + 1):
            folder = plan.work / f"round-{number}"
            folder.mkdir()
            provider, model = _policy_gguf(current, embedded=embedded and number == 1, work=folder)
            spec = sampler_spec(config, model, provider=provider, threads=threads, seed=config.seed,
                                n_ctx=(prompts.longest_tokens or config.max_prompt_length)
                                + config.max_completion_length + 64)
            say(f"Round {number}/{config.rounds}: sampling {config.best_of} replies to each of "
                f"{len(prompts.prompts)} prompts ({provider}) …")
            sampled = sample_round(prompts, spec, round_number=number, seed=config.seed)
            with (folder / "samples.jsonl").open("w", encoding="utf-8") as handle:
                handle.writelines(jsonl_line(record) for record in sampled.records)
            (folder / "sampler.gguf").unlink(missing_ok=True)
            figures = {"round": number, "sampler": provider, **sampled.figures()}
            if not sampled.rows:
                raise PolicyError(f"rs round {number}: no reply to keep (every sample of every prompt was unsafe or "
                                  f"failed: {sampled.all_unsafe} all unsafe, {sampled.failed} failed)")
            say(f"Round {number}: kept {len(sampled.rows)} of {len(sampled.records)} prompts' best replies "
                f"(mean reward {figures['reward_mean']:.4f}, kept {figures['reward_kept_mean']:.4f}); SFT …")
            rows = PolicyData(path=folder / "samples.jsonl", method="sft", rows=sampled.rows,
                              sha256=_digest(folder / "samples.jsonl"))
            result = train_policy(_round_config(config, output=folder / "policy", base=current), rows,
                                  callbacks=callbacks)
            figures.update(global_step=result.global_step, loss_start=result.loss_start, loss_end=result.loss_end,
                           train_seconds=result.meta.get("metrics", {}).get("seconds"))
            shutil.copy2(folder / "policy" / META_FILE, folder / META_FILE)
            if number > 1:
                shutil.rmtree(Path(current), ignore_errors=True)  # the previous round's weights: superseded
            current = str(folder / "policy")
            rounds.append(figures)
            losses += result.losses
            steps += result.global_step
            kept_total += len(sampled.rows)
        final = Path(current)
        for item in final.iterdir():
            if item.name not in MODEL_FILES_SKIPPED:
                os.replace(item, plan.work / item.name)
        shutil.rmtree(final, ignore_errors=True)
        seconds = time.perf_counter() - started
        metrics = {
            "global_step": steps, "epochs": float(config.num_train_epochs), "rounds": rounds,
            "loss_start": losses[0] if losses else None, "loss_end": losses[-1] if losses else None, "losses": losses,
            "reward_start": rounds[0]["reward_mean"], "reward_end": rounds[-1]["reward_mean"],
            "rewards": [r["reward_mean"] for r in rounds], "seconds": seconds, "n_train": kept_total,
            "n_rows": len(prompts.prompts), "n_dropped": 0, "unit": "examples",
            "per_second": kept_total / seconds if seconds else None, "world_size": 1, "resumed": False,
            "unsafe_replies": sum(round(r["unsafe_fraction"] * r["samples"]) for r in rounds
                                  if r["unsafe_fraction"] is not None),
            "scored_replies": sum(r["samples"] for r in rounds),
        }
        meta = _finish_meta(config, plan, data, metrics)
        publish(plan.work, plan.output)
    except BaseException:
        shutil.rmtree(plan.work, ignore_errors=True)
        raise
    config.output_dir = str(plan.output)
    return PolicyTrainResult(path=str(plan.output), method="rs", base_model=plan.base, n_train=kept_total,
                             global_step=steps, losses=losses, seconds=seconds,
                             per_second=metrics["per_second"] or 0.0, meta=meta)


def _finish_meta(config: Any, plan: Any, data: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    from policy.card import model_card

    meta = {"format": 1, "method": "rs", "base_model": config.base_model, "base_model_path": plan.base,
            "path": str(plan.output.resolve()), "config": config.therapref_dict(), "metrics": metrics,
            "provenance": data.provenance(), "notes": data.notes}
    (plan.work / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    (plan.work / "train_config.json").write_text(config.to_json_string())
    (plan.work / CARD_FILE).write_text(model_card(meta), encoding="utf-8")
    return meta


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
