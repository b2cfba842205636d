"""GPU check for reward-model training (one prepared script; finishes in well under 5 minutes).

Trains the embedded encoder base (all-MiniLM-L6-v2, full fine-tune) and the decoder base
(SmolLM2-135M-Instruct materialised into HF format by ``candidates.embedded``, conversational format;
full fine-tune and LoRA) for a few hundred steps in bf16 on the GPU, and prints pairs/s, the loss and
held-out accuracy next to the length baseline. Data: Counsel Chat upvote pairs from
``../shared/data`` (or ``shared/data``), else synthetic pairs. Writes ``$OUT/gpu_reward.json`` when
``$OUT`` is set.

    python bench/gpu_reward.py [--steps 300] [--budget-s 70]

On a GPU box that cannot install packages or reach the hub, pass the models and data as folders
(``--minilm DIR --smollm2 DIR --data FILE``). A ``--smollm2`` folder holding only the config and
tokenizer (no weights: the 540 MB float copy does not fit the transfer limit) is initialised
randomly with SmolLM2's exact architecture: pairs/s are the same, accuracy is then meaningless and
is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def find_data() -> Path | None:
    for folder in (ROOT.parent / "shared" / "data", ROOT / "shared" / "data", ROOT / "../shared/data"):
        if (folder / "counsel_chat.csv").is_file():
            return folder / "counsel_chat.csv"
    return None


def synthetic_pairs(n: int = 2000):
    import random

    from reward.pairs import PreferencePair

    rng = random.Random(0)
    topics = ["sleep", "work", "family", "exams", "grief", "panic", "money", "friends"]
    pairs = []
    for i in range(n):
        topic = rng.choice(topics)
        prompt = (("user", f"I have been struggling with {topic} lately ({i})."),)
        good = f"That sounds really hard. What about {topic} weighs on you most? " * rng.randint(1, 4)
        pairs.append(PreferencePair(prompt, good.strip(), "Just get over it.", prompt_key=f"s{i % 400}"))
    return pairs


class Budget:
    """A TrainerCallback that stops training once its wall-clock budget is spent."""

    def __new__(cls, seconds: float):
        from transformers import TrainerCallback

        class _Budget(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                self.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if time.perf_counter() - self.start > seconds:
                    control.should_training_stop = True

        return _Budget()


def run(name: str, base: str, pairs, held, args, workdir: Path, **overrides) -> dict:
    import torch

    from reward.config import load_config
    from reward.train import train_reward_model

    config = load_config(
        output_dir=str(workdir / name), base_model=base, seed=0, eval_fraction=0.0, max_steps=args.steps,
        save_strategy="no", logging_steps=25 if not args.smoke else 1, disable_tqdm=True,
        bf16=True if torch.cuda.is_available() else None, report_to="none", **overrides)
    # reward.train has no callback argument: wrap the trainer class so the budget applies
    import reward.train as rt

    original = rt._trainer_class

    def with_budget():
        cls = original()

        class Budgeted(cls):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                self.add_callback(Budget(args.budget_s))

        return Budgeted

    rt._trainer_class = with_budget
    try:
        result = train_reward_model(config, pairs, eval_pairs=held, overwrite=True)
    finally:
        rt._trainer_class = original
    steps = result.meta["training"]["global_step"]
    batch = config.per_device_train_batch_size
    row = {
        "run": name, "base": base, "steps": steps, "batch": batch, "max_length": config.max_length,
        "seconds": round(result.train_seconds, 1),
        "pairs_per_second": round(steps * batch / result.train_seconds, 1),
        "first_loss": result.train_loss[0] if result.train_loss else None,
        "last_loss": result.train_loss[-1] if result.train_loss else None,
        "held_out_accuracy": round(result.report["accuracy"], 3) if result.report else None,
        "length_baseline": round(result.report["length_baseline"], 3) if result.report else None,
        "truncated": result.n_truncated,
    }
    if torch.cuda.is_available():
        row["gpu"] = torch.cuda.get_device_name(0)
        row["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
    print(json.dumps(row), flush=True)
    return row


def random_init_if_empty(folder: Path) -> tuple[Path, bool]:
    """Use ``folder`` as is when it holds weights; else save a randomly initialised model of the
    same config (with its tokenizer) next to it and return that."""
    if any(folder.glob("*.safetensors")):
        return folder, False
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    target = folder.with_name(folder.name + "-random")
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(folder).save_pretrained(target)
    return target, True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--budget-s", type=float, default=55.0, help="wall-clock cap per training run")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run that checks the script itself")
    parser.add_argument("--minilm", help="all-MiniLM-L6-v2 folder (default: the embedded package)")
    parser.add_argument("--smollm2", help="SmolLM2 HF folder (default: materialised from the embedded GGUF)")
    parser.add_argument("--data", help="counsel_chat.csv (default: ../shared/data)")
    args = parser.parse_args()
    started = time.perf_counter()

    import torch

    if not torch.cuda.is_available() and not args.smoke:
        sys.exit("no CUDA device: this script is the GPU check (the CPU figures come from bench/reward_counselchat.py)")
    import transformers

    transformers.logging.set_verbosity_error()
    from candidates.embedded import smollm2_hf_path
    from reward.data import read_preference_file
    from reward.pairs import cap_pairs_per_prompt, split_by_prompt

    t0 = time.perf_counter()
    random_decoder = False
    if args.smollm2:
        smollm2, random_decoder = random_init_if_empty(Path(args.smollm2))
    else:
        smollm2 = smollm2_hf_path(None if args.smoke else Path(tempfile.gettempdir()) / "therapref-cache")
    print(f"SmolLM2 ready in {time.perf_counter() - t0:.1f}s at {smollm2}"
          + (" (random weights, SmolLM2 architecture: throughput only)" if random_decoder else ""), flush=True)
    minilm = args.minilm or "embedded"
    data = Path(args.data) if args.data else find_data()
    pairs = read_preference_file(data, format="counselchat-upvotes", margins=False) if data else synthetic_pairs()
    train, held = split_by_prompt(pairs, eval_fraction=0.25, seed=0)
    held = cap_pairs_per_prompt(held, cap=5, seed=0)
    sizes = {"minilm": (32, 512), "smollm2": (16, 512)}
    if args.smoke:
        train, held, sizes = train[:8], held[:4], {"minilm": (2, 64), "smollm2": (2, 64)}
    print(f"data: {data or 'synthetic'}; {len(train)} train pairs, {len(held)} held-out pairs", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (b1, l1), (b2, l2) = sizes["minilm"], sizes["smollm2"]
        rows.append(run("minilm-full", minilm, train, held, args, workdir, per_device_train_batch_size=b1,
                        max_length=l1, learning_rate=5e-5))
        rows.append(run("smollm2-full", str(smollm2), train, held, args, workdir, per_device_train_batch_size=b2,
                        max_length=l2, learning_rate=1e-5))
        rows.append(run("smollm2-lora", str(smollm2), train, held, args, workdir, per_device_train_batch_size=b2,
                        max_length=l2, learning_rate=2e-4, use_lora=True))
    if random_decoder:
        for row in rows[1:]:
            row["weights"] = "random init (accuracy not meaningful)"
    print(f"total {time.perf_counter() - started:.0f}s")
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "gpu_reward.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
