"""Reward-model benchmark on Counsel Chat upvotes (../shared/data/counsel_chat.csv).

Pairs: answers to the same question with different upvotes (more upvotes = chosen). For each of 5
seeds: 25% of questions held out, at most 5 pairs per held-out question (no long thread dominates),
all pairs of the training questions available for training. Prints mean ± sd over seeds of held-out
accuracy (hybrid score, and the network alone), the length baseline ("longer reply wins") and the
accuracy on pairs where the shorter reply won.

Throughput: the same pairs, model and hyperparameters trained once by the toolkit
(``reward.train_reward_model``: own tokenisation, padding-free packed batches, no gradient
checkpointing, bf16 autocast where the CPU has it) and once by a plain TRL ``RewardTrainer`` script
(TRL's defaults, text pairs, EOS set to [SEP] because BERT has none); pairs/s and the ratio. Only pairs
that fit the run's token limit either way are used there, so both train on identical data; one run
per limit in ``--speed-max-lengths`` (512 is the toolkit's default ``max_length``).

    .venv/bin/python bench/reward_counselchat.py            # ~10-15 min on 2 idle cores
    .venv/bin/python bench/reward_counselchat.py --seeds 1 --steps 10 --speed-pairs 16   # smoke run
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reward.config import load_config  # noqa: E402
from reward.data import read_preference_file  # noqa: E402
from reward.encoding import render_context  # noqa: E402
from reward.metrics import evaluation_report  # noqa: E402
from reward.pairs import cap_pairs_per_prompt, split_by_prompt  # noqa: E402
from reward.resources import default_threads, resolve_base_model  # noqa: E402
from reward.train import train_reward_model  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "counsel_chat.csv"


def quiet() -> None:
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def benchmark_split(pairs, seed: int) -> tuple[list, list]:
    """The issue's split: 25% of questions held out, at most 5 pairs per held-out question."""
    train, held = split_by_prompt(pairs, eval_fraction=0.25, seed=seed)
    return train, cap_pairs_per_prompt(held, cap=5, seed=seed)


def accuracy_run(pairs, seed: int, args, workdir: Path) -> dict:
    train, held = benchmark_split(pairs, seed)
    config = load_config(
        output_dir=str(workdir / f"seed{seed}"), seed=seed, eval_fraction=0.0, max_length=args.max_length,
        per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate, max_steps=args.steps,
        freeze_layers=args.freeze_layers, length_feature=True, save_strategy="no", logging_steps=10,
        disable_tqdm=True)
    result = train_reward_model(config, train, eval_pairs=held, overwrite=True)
    from reward.scoring import RewardModel

    model = RewardModel.load(config.output_dir)
    net = model.network_scores([(p.prompt, p.chosen) for p in held] + [(p.prompt, p.rejected) for p in held])
    network = evaluation_report(held, net[:len(held)], net[len(held):])
    report = result.report
    return {"seed": seed, "n_train": len(train), "n_held": len(held), "n_held_questions": report["n_prompts"],
            "accuracy": report["accuracy"], "network_accuracy": network["accuracy"],
            "length_baseline": report["length_baseline"], "shorter_wins": report["shorter_wins_accuracy"],
            "network_shorter_wins": network["shorter_wins_accuracy"], "ece": report["ece"],
            "length_weight": model.length_weight, "pairs_per_second": result.pairs_per_second,
            "seconds": result.train_seconds}


def speed_pairs(pairs, args):
    """Pairs that fit the speed test's max_length under both tokenisations (so no pair is cut or dropped)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("embedded"))
    rng = random.Random(0)
    pool = pairs[:]
    rng.shuffle(pool)
    chosen = []
    for p in pool:
        ctx = render_context(p.prompt)
        longest = max(len(tokenizer(ctx + "\n" + reply)["input_ids"]) for reply in (p.chosen, p.rejected))
        if longest + 2 <= args.speed_max_length:
            chosen.append(p)
        if len(chosen) == args.speed_pairs:
            break
    return chosen


def plain_trl(pairs, args, workdir: Path) -> float:
    """The plain script: TRL's RewardTrainer with its defaults on standard-format text pairs."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    torch.set_num_threads(args.plain_threads)
    base = resolve_base_model("embedded")
    rows = {"prompt": [render_context(p.prompt) + "\n" for p in pairs], "chosen": [p.chosen for p in pairs],
            "rejected": [p.rejected for p in pairs]}
    config = RewardConfig(output_dir=str(workdir / "plain"), use_cpu=True, eos_token="[SEP]", seed=0,
                          max_length=args.speed_max_length, per_device_train_batch_size=args.speed_batch_size,
                          learning_rate=args.learning_rate, num_train_epochs=1, save_strategy="no",
                          report_to="none", disable_tqdm=True, logging_steps=10)
    trainer = RewardTrainer(model=base, args=config, train_dataset=Dataset.from_dict(rows),
                            processing_class=AutoTokenizer.from_pretrained(base))
    assert len(trainer.train_dataset) == len(pairs), "plain TRL dropped pairs: choose shorter speed pairs"
    started = time.perf_counter()
    trainer.train()
    return len(pairs) / (time.perf_counter() - started)


def toolkit(pairs, args, workdir: Path) -> float:
    config = load_config(output_dir=str(workdir / "toolkit"), seed=0, eval_fraction=0.0,
                         max_length=args.speed_max_length, per_device_train_batch_size=args.speed_batch_size,
                         learning_rate=args.learning_rate, num_train_epochs=1, save_strategy="no",
                         disable_tqdm=True, logging_steps=10)
    result = train_reward_model(config, pairs, overwrite=True)
    assert result.n_train == len(pairs)
    return result.pairs_per_second


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def mean_sd(values) -> str:
    values = list(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per seed (batch of --batch-size pairs)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--freeze-layers", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--speed-pairs", type=int, default=256)
    parser.add_argument("--speed-max-lengths", default="256,512",
                        help="token limits of the throughput runs (512: the toolkit's default max_length)")
    parser.add_argument("--speed-batch-size", type=int, default=8)
    parser.add_argument("--speed-rounds", type=int, default=2)
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    quiet()
    pairs = read_preference_file(DATA, format="counselchat-upvotes", margins=False)
    print(f"Counsel Chat: {len(pairs)} pairs over {len({p.prompt_key for p in pairs})} questions; "
          f"{args.seeds} seeds, {args.steps} steps × {args.batch_size} pairs, max_length {args.max_length}, "
          f"lowest {args.freeze_layers} layers frozen, hybrid length feature on", flush=True)
    args.plain_threads = torch_threads()  # the plain script keeps torch's default
    print(f"toolkit CPU threads: {default_threads()} (plain TRL: torch default {args.plain_threads})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rows = []
        for seed in range(args.seeds):
            row = accuracy_run(pairs, seed, args, workdir)
            rows.append(row)
            print(f"seed {seed}: train {row['n_train']} pairs, held out {row['n_held']} pairs / "
                  f"{row['n_held_questions']} questions | accuracy {row['accuracy']:.3f} (network alone "
                  f"{row['network_accuracy']:.3f}) | length baseline {row['length_baseline']:.3f} | shorter-wins "
                  f"{row['shorter_wins']:.3f} | ECE {row['ece']:.3f} | length weight {row['length_weight']:.2f} | "
                  f"{row['pairs_per_second']:.1f} pairs/s", flush=True)
        print()
        print(f"held-out accuracy (hybrid)      {mean_sd(r['accuracy'] for r in rows)}")
        print(f"held-out accuracy (network)     {mean_sd(r['network_accuracy'] for r in rows)}")
        print(f"length baseline (longer wins)   {mean_sd(r['length_baseline'] for r in rows)}")
        print(f"shorter-wins accuracy (hybrid)  {mean_sd(r['shorter_wins'] for r in rows)}")
        print(f"shorter-wins accuracy (network) {mean_sd(r['network_shorter_wins'] for r in rows)}")
        print(f"gain over length baseline       {mean_sd(r['accuracy'] - r['length_baseline'] for r in rows)}")
        if not args.skip_speed:
            for limit in (int(x) for x in args.speed_max_lengths.split(",")):
                throughput(pairs, argparse.Namespace(**{**vars(args), "speed_max_length": limit}), workdir)


def throughput(pairs, args, workdir: Path) -> None:
    sample = speed_pairs(pairs, args)
    ours, plain = [], []
    for _ in range(args.speed_rounds):  # alternate, so load from other processes hits both alike
        plain.append(plain_trl(sample, args, workdir))
        ours.append(toolkit(sample, args, workdir))
    best_ours, best_plain = max(ours), max(plain)
    print(f"\nthroughput on {len(sample)} pairs (≤{args.speed_max_length} tokens, "
          f"batch {args.speed_batch_size}, 1 epoch, best of {args.speed_rounds} alternating rounds): "
          f"toolkit {best_ours:.2f} pairs/s (runs {', '.join(f'{x:.2f}' for x in ours)}), "
          f"plain TRL script {best_plain:.2f} pairs/s (runs {', '.join(f'{x:.2f}' for x in plain)}), "
          f"ratio {best_ours / best_plain:.2f}×", flush=True)


if __name__ == "__main__":
    main()
