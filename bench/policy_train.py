"""DPO speed on this machine: a plain TRL ``DPOTrainer`` (TRL's defaults) against ``therapref finetune
local``'s path (policy.train), side by side in one run, on the same DPO file and the same model.

The file is built from real preference pairs (LLMEval2, ../shared/data/llmeval2_en_pairs.jsonl) in the
export's DPO format (exports.formats.dpo_row); the model is the embedded SmolLM2-135M-Instruct.

Prints, for each side: pairs/s (wall clock, everything from the trainer's construction on: tokenising,
the reference pass, the steps), CPU-seconds per pair (robust on a shared machine), the ratio, and the
achieved model FLOP/s (6·params·tokens for the policy update plus 2·params·tokens for the reference
forward, real tokens only, the same work counted for both sides) as a share of this machine's bf16
matmul peak, measured in the same run (a large bf16 ``torch.matmul``).

    .venv/bin/python bench/policy_train.py                 # short: 2 steps of 8 pairs each side
    .venv/bin/python bench/policy_train.py --steps 6 --baseline fp32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
PAIRS_FILE = ROOT.parent / "shared" / "data" / "llmeval2_en_pairs.jsonl"


def write_dpo_file(path: Path, n: int, max_prompt_chars: int = 600) -> Path:
    """The first ``n`` LLMEval2 pairs as export DPO rows (the prompt as one user message). Prompts that
    would fill max_length alone are skipped: TRL drops those rows, which would leave the sides unequal."""
    from exports import formats

    rows = []
    with PAIRS_FILE.open(encoding="utf-8") as handle:
        for line in handle:
            pair = json.loads(line)
            if len(pair["prompt"]) > max_prompt_chars:
                continue
            rows.append(formats.dpo_row([{"role": "user", "content": pair["prompt"]}], pair["chosen"],
                                        pair["rejected"]))
            if len(rows) == n:
                break
    path.write_text("".join(formats.jsonl_line(r) for r in rows), encoding="utf-8")
    return path


def matmul_peak(threads: int, size: int = 4096, repeats: int = 5) -> float:
    """bf16 matmul FLOP/s of this machine at ``threads`` threads (best of a few)."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    a @ b
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - started))
    return best


def real_tokens(dataset, max_length: int) -> int:
    """Tokens of the chosen and rejected sequences as trained (truncated at max_length, no padding)."""
    total = 0
    for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True):
        total += min(len(p) + len(c), max_length) + min(len(p) + len(r), max_length)
    return total


def run_plain_trl(path: Path, base: str, *, steps: int, batch: int, max_length: int, variant: str) -> dict:
    """TRL's DPOTrainer with its defaults; only what a CPU needs (use_cpu) and the shared shape set.
    ``variant`` 'defaults' keeps TRL's bf16=True and gradient checkpointing; 'fp32' turns both off."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(os.cpu_count() or 1)  # torch's own default, restored after the other side
    dataset = load_dataset("json", data_files=str(path), split="train")
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    extra = {} if variant == "defaults" else {"bf16": False, "gradient_checkpointing": False}
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=batch, max_length=max_length, max_steps=steps,
                         use_cpu=True, report_to="none", save_strategy="no", **extra)
        wall, cpu = time.perf_counter(), time.process_time()
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        trainer.train()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if len(trainer.train_dataset) != steps * batch:
            raise SystemExit(f"TRL kept {len(trainer.train_dataset)} of {steps * batch} pairs; the sides would differ")
        tokens = real_tokens(trainer.train_dataset, max_length)
    return {"side": f"plain TRL ({variant}: bf16={args.bf16}, gradient checkpointing={args.gradient_checkpointing}, "
                    f"reference model in memory, {torch.get_num_threads()} threads)",
            "pairs": steps * batch, "wall": wall, "cpu": cpu, "tokens": tokens, "steps": trainer.state.global_step}


def run_toolkit(path: Path, *, steps: int, batch: int, max_length: int, lora: bool) -> dict:
    """policy.train on the same file: bf16 (detected), LoRA, reference log-probs once, padding-free
    batches, compact LM head, length-grouped batches, threads = free cores."""
    import torch

    from policy.config import load_config
    from policy.data import read_export
    from policy.train import train_policy

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config("dpo", output_dir=str(Path(tmp) / "policy"), per_device_train_batch_size=batch,
                             max_length=max_length, max_steps=steps, save_strategy="no", use_lora=lora,
                             logging_steps=1)
        data = read_export(path, "dpo")
        wall, cpu = time.perf_counter(), time.process_time()
        result = train_policy(config, data)
        total_wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        meta = result.meta["metrics"]
    # fit's own clock starts at the trainer's construction, as the plain side's does (model loading excluded)
    wall = meta["seconds"]
    cpu = cpu * wall / total_wall  # CPU time of the same span, pro rata (loading and saving excluded)
    return {"side": f"therapref (bf16={config.bf16}, LoRA={lora}, reference log-probs once, padding-free, "
                    f"compact LM head, length-grouped batches, {torch.get_num_threads()} threads)",
            "pairs": steps * batch, "wall": wall, "cpu": cpu, "steps": result.global_step,
            "tokens_epoch": meta["tokens_per_epoch"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per side (default 2)")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step (default 8)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument("--baseline", choices=("defaults", "fp32"), default="defaults",
                        help="plain TRL with all its defaults (bf16, gradient checkpointing) or fp32 without "
                             "gradient checkpointing")
    parser.add_argument("--full", action="store_true", help="toolkit side without LoRA (all weights)")
    parser.add_argument("--skip-baseline", action="store_true", help="only the toolkit side")
    args = parser.parse_args(argv)

    import torch

    from candidates.embedded import smollm2_hf_path

    base = str(smollm2_hf_path())
    params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(base).parameters())
    with tempfile.TemporaryDirectory() as tmp:
        path = write_dpo_file(Path(tmp) / "dpo.jsonl", args.steps * args.batch)
        print(f"data: {path.name}, {args.steps * args.batch} LLMEval2 pairs; model SmolLM2-135M-Instruct "
              f"({params / 1e6:.0f}M parameters); batch {args.batch}, max length {args.max_length}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a shared machine slows both sides)")
        ours = run_toolkit(path, steps=args.steps, batch=args.batch, max_length=args.max_length, lora=not args.full)
        threads = torch.get_num_threads()
        plain = None if args.skip_baseline else run_plain_trl(
            path, base, steps=args.steps, batch=args.batch, max_length=args.max_length, variant=args.baseline)
    peak = matmul_peak(threads)
    tokens = plain["tokens"] if plain else ours["tokens_epoch"]
    work = 8 * params * tokens  # 6·N·T policy update + 2·N·T reference forward, the same for both sides
    print(f"bf16 matmul peak at {threads} threads: {peak / 1e9:.0f} GFLOP/s (4096² torch.matmul, best of 5)")
    print(f"work counted: 8 · {params / 1e6:.0f}M params · {tokens} real tokens = {work / 1e12:.2f} TFLOP")
    for side in [s for s in (plain, ours) if s]:
        rate = side["pairs"] / side["wall"]
        flops = work / side["wall"]
        print(f"{side['side']}: {side['steps']} steps, {side['wall']:.1f} s wall, {rate:.3f} pairs/s, "
              f"{side['cpu'] / side['pairs']:.2f} CPU-s/pair; {flops / 1e9:.1f} GFLOP/s = "
              f"{100 * flops / peak:.1f}% of the bf16 matmul peak")
    if plain:
        print(f"ratio (therapref / plain TRL): {plain['wall'] / ours['wall']:.1f}x pairs/s (wall), "
              f"{plain['cpu'] / ours['cpu']:.1f}x per CPU-second")


if __name__ == "__main__":
    main()
