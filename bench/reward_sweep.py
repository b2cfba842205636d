"""Reward-model accuracy sweep on Counsel Chat upvotes (issue #5, item 6): one prepared GPU script.

For a short list of configurations (in priority order) × 5 seeds, on exactly the split of
``bench/reward_counselchat.py`` (``split_by_prompt(eval_fraction=0.25, seed)``, held-out pairs capped
at 5 per question by ``cap_pairs_per_prompt(cap=5, seed)``), trains the embedded MiniLM with the
toolkit's ``reward.train_reward_model`` on all training pairs for a few epochs (bf16 on CUDA) and
prints, per configuration, mean ± sd over seeds of: held-out accuracy of the hybrid score (network +
log-length feature) and of the network alone, the length baseline, shorter-wins accuracy, the gain
over the baseline and the seconds spent. Each seed is its own split (no averaging of models).

At every epoch's end a callback also scores the held-out pairs (network alone, and hybrid with the
length weight fitted on the same calibration questions as the toolkit): a per-epoch curve, a
diagnostic only (choosing the epoch by it would be selection on the test questions; the linear
learning-rate schedule also differs from a shorter run's).

Time budget: before each configuration its time is predicted from the seeds already run; a
configuration that would not fit in ``--budget-s`` (counted from the script's start) is skipped and
reported as such; a configuration under way stops between seeds once the budget is spent.
``$OUT/reward_sweep.json`` (or ``--json``) is rewritten after every configuration.

GPU box (no network; wheels, the fp16 MiniLM copy and the data in the git-excluded ``.gpu/``)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
    PYTHONPATH=/tmp/site python3 bench/reward_sweep.py --minilm .gpu/minilm --data .gpu/counsel_chat.csv.gz

CPU self-check (1 seed, tiny data, 1 epoch, every configuration)::

    taskset -c 1 .venv/bin/python bench/reward_sweep.py --smoke
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from gpu_reward import Budget, find_data  # noqa: E402  (also sets the offline flags)
from reward_counselchat import benchmark_split, mean_sd, quiet  # noqa: E402

from db.rules import reply_length  # noqa: E402
from reward.pairs import PreferencePair, cap_pairs_per_prompt, split_by_prompt  # noqa: E402

#: Overhead of one training run (load, tokenise, trainer, scoring, saving) in pair-epochs, for the
#: time prediction: a run costs about (overhead + epochs × training pairs × length factor) units.
OVERHEAD_PAIR_EPOCHS = 2000.0


@dataclass(frozen=True)
class Sweep:
    """One configuration of the sweep (batch of pairs, bf16 on CUDA, everything else the toolkit's)."""

    name: str
    why: str
    epochs: int = 2
    learning_rate: float = 3e-5
    max_length: int = 512
    freeze_layers: int = 0
    length_feature: bool = True
    #: "none", or "log-gap": TRL margin log(upvote gap), i.e. 0 for the usual 1-upvote gap, 0.69 for 2, ...
    margin: str = "none"
    #: train only on pairs whose upvote gap is at least this (held-out pairs never filtered)
    min_upvote_gap: int = 1
    #: keep only the first N words of the question (reply-focused context); None keeps it whole
    prompt_words: int | None = None
    batch_size: int = 32

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("name", "why")}


#: In priority order (the budget skips from the end): the most promising first.
CONFIGS: tuple[Sweep, ...] = (
    Sweep("full-3e-5", "full fine-tune of all 6 layers at 512 tokens, 2 epochs (the CPU bench: 4 frozen, "
          "128 tokens, 30 steps)"),
    Sweep("reply-focus", "question cut to its first 32 words: the pair shares the question, the reply decides",
          prompt_words=32),
    Sweep("margin-log-gap", "TRL margin log(upvote gap): a 3-vs-0 pair must be separated more than 1-vs-0",
          margin="log-gap"),
    Sweep("gap2-only", "train only on pairs with an upvote gap >= 2 (a quarter of the pairs, less label noise)",
          epochs=3, min_upvote_gap=2),
    Sweep("freeze4-1e-4", "lowest 4 layers frozen, lr 1e-4 (the CPU bench's recipe, trained to the end)",
          learning_rate=1e-4, freeze_layers=4),
    Sweep("lr1e-5-3ep", "gentler: lr 1e-5 for 3 epochs (noisy labels)", learning_rate=1e-5, epochs=3),
    Sweep("ml256", "256 tokens (28% of replies cut): cheaper, checks whether the tail of a reply matters",
          max_length=256),
    Sweep("network-only", "no length feature: the network alone, trained on all training questions",
          length_feature=False),
)


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f}s] {message}", flush=True)


def prepare_train(pairs: Sequence[PreferencePair], cfg: Sweep) -> list[PreferencePair]:
    """Training pairs for ``cfg``; their ``margin`` comes in as the upvote gap (read_preference_file's default)."""
    kept = [p for p in pairs if p.margin >= cfg.min_upvote_gap]
    out = []
    for p in kept:
        margin = math.log(p.margin) if cfg.margin == "log-gap" else 0.0
        out.append(dataclasses.replace(p, margin=margin, prompt=shorten(p.prompt, cfg.prompt_words)))
    return out


def prepare_held(pairs: Sequence[PreferencePair], cfg: Sweep) -> list[PreferencePair]:
    return [dataclasses.replace(p, margin=0.0, prompt=shorten(p.prompt, cfg.prompt_words)) for p in pairs]


def shorten(prompt: tuple[tuple[str, str], ...], words: int | None) -> tuple[tuple[str, str], ...]:
    """The conversation with each turn cut to its first ``words`` words (None: unchanged).

    >>> shorten((("user", "a b c d"),), 2)
    (('user', 'a b'),)
    """
    if words is None:
        return prompt
    return tuple((role, " ".join(text.split()[:words])) for role, text in prompt)


def fingerprint(pairs: Sequence[PreferencePair]) -> str:
    rows = sorted((p.prompt_key, p.chosen, p.rejected) for p in pairs)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:12]


def epoch_probe(held: Sequence[PreferencePair], calibration: Sequence[PreferencePair], max_length: int,
                min_context_tokens: int, curve: list[dict[str, Any]]) -> Any:
    """A TrainerCallback that scores ``held`` (and fits the length weight on ``calibration``) at each
    epoch's end, appending to ``curve``; the model is put back in training mode afterwards."""
    from transformers import TrainerCallback

    from reward.encoding import Encoder
    from reward.metrics import evaluation_report
    from reward.scoring import RewardModel
    from reward.train import fit_length_weight

    def hybrid(a: float, w: float, scores: Sequence[float], replies: Sequence[str]) -> list[float]:
        return [a * s + w * math.log1p(reply_length(r)) for s, r in zip(scores, replies, strict=True)]

    class EpochProbe(TrainerCallback):
        def on_epoch_end(self, args, state, control, model=None, processing_class=None, **kwargs):
            started = time.perf_counter()
            was_training = model.training
            model.eval()
            try:
                encoder = Encoder(processing_class, max_length=max_length, min_context_tokens=min_context_tokens)
                rm = RewardModel(model=model, tokenizer=processing_class, encoder=encoder)
                everything = list(held) + list(calibration)
                raw = rm.network_scores([(p.prompt, p.chosen) for p in everything]
                                        + [(p.prompt, p.rejected) for p in everything], batch_size=64)
            finally:
                model.train(was_training)
            n, m = len(held), len(everything)
            chosen, rejected = raw[:m], raw[m:]
            net = evaluation_report(held, chosen[:n], rejected[:n])
            row = {"epoch": round(float(state.epoch or 0.0), 3), "step": state.global_step,
                   "network_accuracy": net["accuracy"], "network_shorter_wins": net["shorter_wins_accuracy"]}
            if calibration:
                gaps = [math.log1p(reply_length(p.chosen)) - math.log1p(reply_length(p.rejected))
                        for p in calibration]
                a, w = fit_length_weight([c - r for c, r in zip(chosen[n:], rejected[n:], strict=True)], gaps)
                hyb = evaluation_report(held, hybrid(a, w, chosen[:n], [p.chosen for p in held]),
                                        hybrid(a, w, rejected[:n], [p.rejected for p in held]))
                row.update(accuracy=hyb["accuracy"], shorter_wins=hyb["shorter_wins_accuracy"], length_weight=w)
            else:
                row.update(accuracy=net["accuracy"], shorter_wins=net["shorter_wins_accuracy"], length_weight=0.0)
            row["probe_seconds"] = round(time.perf_counter() - started, 2)
            curve.append(row)

    return EpochProbe()


def run_seed(cfg: Sweep, pairs: Sequence[PreferencePair], seed: int, args: argparse.Namespace,
             workdir: Path, run_budget_s: float) -> dict[str, Any]:
    import torch

    from reward.config import load_config
    from reward.train import train_reward_model

    started = time.perf_counter()
    train_all, held_all = benchmark_split(pairs, seed)
    held_fp = fingerprint(held_all)
    if args.smoke:  # a few questions, a few pairs each
        train_all = cap_pairs_per_prompt(train_all, cap=3, seed=seed)[:30]
        held_all = held_all[:10]
    train, held = prepare_train(train_all, cfg), prepare_held(held_all, cfg)
    calibration: list[PreferencePair] = []
    if cfg.length_feature:  # the toolkit's own calibration split (reward.train), for the per-epoch probe
        _, calibration = split_by_prompt(train, eval_fraction=0.2, seed=seed + 1)
    max_length = 64 if args.smoke else cfg.max_length
    min_context = 64 if not args.smoke else 16
    cuda = torch.cuda.is_available()
    config = load_config(
        output_dir=str(workdir / f"{cfg.name}-seed{seed}"), base_model=args.minilm, seed=seed, eval_fraction=0.0,
        max_length=max_length, min_context_tokens=min_context,
        per_device_train_batch_size=4 if args.smoke else cfg.batch_size, learning_rate=cfg.learning_rate,
        num_train_epochs=1 if args.smoke else cfg.epochs, freeze_layers=cfg.freeze_layers,
        length_feature=cfg.length_feature, temperature=False,  # calibration only with the length feature, as sized
        save_strategy="no", logging_steps=1 if args.smoke else 10, disable_tqdm=True,
        report_to="none", bf16=True if cuda else None, num_threads=1 if args.smoke else None)
    curve: list[dict[str, Any]] = []
    probe = epoch_probe(held, calibration, max_length, min_context, curve)
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer prints every log row when tqdm is off
        result = train_reward_model(config, train, eval_pairs=held, overwrite=True,
                                    callbacks=[probe, Budget(run_budget_s)])
    report = result.report or {}
    last = curve[-1] if curve else {}
    expected_steps = math.ceil(result.n_train / config.per_device_train_batch_size) * int(config.num_train_epochs)
    row = {
        "seed": seed, "held_fingerprint": held_fp, "n_train_pairs": len(train), "n_network_train": result.n_train,
        "n_calibration": result.n_calibration, "n_held": len(held), "n_held_questions": report.get("n_prompts"),
        "n_truncated": result.n_truncated,
        "accuracy": report.get("accuracy"), "network_accuracy": last.get("network_accuracy"),
        "length_baseline": report.get("length_baseline"), "shorter_wins": report.get("shorter_wins_accuracy"),
        "network_shorter_wins": last.get("network_shorter_wins"), "ece": report.get("ece"),
        "length_weight": result.meta.get("length_weight"), "network_scale": result.meta.get("network_scale"),
        "steps": result.meta.get("training", {}).get("global_step"), "expected_steps": expected_steps,
        "first_loss": result.train_loss[0] if result.train_loss else None,
        "last_loss": result.train_loss[-1] if result.train_loss else None,
        "train_seconds": round(result.train_seconds, 2), "pairs_per_second": round(result.pairs_per_second, 1),
        "seconds": round(time.perf_counter() - started, 2), "curve": curve,
        # the probe's last hybrid must equal the toolkit's own report (same calibration split, same model)
        "probe_matches_report": (abs(last["accuracy"] - report["accuracy"]) < 1e-9) if curve and report else None,
    }
    row["budget_stopped"] = bool(row["steps"] is not None and row["steps"] < expected_steps)
    shutil.rmtree(config.output_dir, ignore_errors=True)
    return row


def fmt_loss(row: dict[str, Any]) -> str:
    first, last = row["first_loss"], row["last_loss"]
    return "n/a" if first is None else f"{first:.3f} -> {last:.3f}"


def stats(values: Sequence[float | None]) -> dict[str, float | int | None]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": round(statistics.mean(vals), 4), "sd": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0,
            "n": len(vals)}


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    summary = {key: stats([r[key] for r in rows]) for key in (
        "accuracy", "network_accuracy", "length_baseline", "shorter_wins", "network_shorter_wins", "ece",
        "length_weight", "pairs_per_second", "seconds")}
    summary["gain"] = stats([r["accuracy"] - r["length_baseline"] for r in rows])
    summary["network_gain"] = stats([r["network_accuracy"] - r["length_baseline"] for r in rows
                                     if r["network_accuracy"] is not None])
    epochs = sorted({c["epoch"] for r in rows for c in r["curve"]})
    summary["per_epoch"] = [
        {"epoch": e, **{k: stats([c[k] for r in rows for c in r["curve"] if c["epoch"] == e])
                        for k in ("accuracy", "network_accuracy")}} for e in epochs]
    return summary


def predict_seconds(cfg: Sweep, seeds: int, work: dict[tuple[str, int], float],
                    done: Sequence[tuple[float, float]]) -> float | None:
    """Seconds for ``cfg`` from the seeds already run: worst seconds per work unit seen so far (the very
    first run, which pays for CUDA's warm-up, left out once there are others), times this config's units
    (overhead + epochs × pairs × length factor)."""
    if not done:
        return None
    rate = max(seconds / units for seconds, units in (done[1:] or done))
    return sum(rate * work_units(cfg, work[(cfg.name, seed)]) for seed in range(seeds))


def work_units(cfg: Sweep, n_train: float) -> float:
    return OVERHEAD_PAIR_EPOCHS + cfg.epochs * n_train * (cfg.max_length / 512) * (0.75 if cfg.freeze_layers else 1.0)


def environment() -> dict[str, Any]:
    import torch
    import transformers
    import trl

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
           "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)


def print_table(results: Sequence[dict[str, Any]]) -> None:
    print("\nconfig              hybrid           network          length base     gain (hybrid)     "
          "shorter-wins (hyb / net)      seconds")
    for res in results:
        if res["status"] == "skipped":
            print(f"{res['name']:<19} skipped: {res['reason']}")
            continue
        s = res["summary"]

        def fmt(key: str, _s: dict[str, Any] = s) -> str:
            v = _s[key]
            return f"{v['mean']:.3f} ± {v['sd']:.3f}" if v["mean"] is not None else "n/a"

        print(f"{res['name']:<19} {fmt('accuracy'):<16} {fmt('network_accuracy'):<16} {fmt('length_baseline'):<15} "
              f"{s['gain']['mean']:+.3f} ± {s['gain']['sd']:.3f}    {fmt('shorter_wins')} / "
              f"{fmt('network_shorter_wins')}   {res['seconds']:.0f}"
              + ("" if res["status"] == "done" else f"  ({res['status']}: {res.get('reason', '')})"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=340.0,
                        help="wall-clock budget from the script's start; configs that would not fit are skipped")
    parser.add_argument("--only", help="comma-separated config names (default: all, in priority order)")
    parser.add_argument("--minilm", default="embedded", help="all-MiniLM-L6-v2 folder (default: the embedded package)")
    parser.add_argument("--data", help="counsel_chat.csv[.gz] (default: ../shared/data)")
    parser.add_argument("--json", help="output JSON (default: $OUT/reward_sweep.json when $OUT is set)")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU self-check: 1 seed, ~30 training pairs, 64 tokens, 1 epoch, every config")
    parser.add_argument("--list", action="store_true", help="print the configurations and exit")
    args = parser.parse_args()
    configs = list(CONFIGS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - {c.name for c in configs})
        if unknown:
            sys.exit(f"unknown config(s) {', '.join(unknown)}; known: {', '.join(c.name for c in configs)}")
        configs = [c for c in configs if c.name in names]
    if args.list:
        for cfg in configs:
            print(f"{cfg.name:<16} {cfg.why}\n{'':<16} {cfg.settings()}")
        return
    if args.smoke:
        args.seeds = 1
        import torch

        torch.set_num_threads(1)
    else:
        import torch

        if not torch.cuda.is_available():
            sys.exit("no CUDA device: this sweep is meant for the lent GPU (use --smoke for a CPU self-check)")
    quiet()
    import transformers

    transformers.utils.logging.disable_progress_bar()  # "Loading weights", "Writing model shards"
    from reward.data import read_preference_file

    data = Path(args.data) if args.data else find_data()
    if data is None:
        sys.exit("no counsel_chat.csv found (pass --data)")
    pairs = read_preference_file(data, format="counselchat-upvotes")
    out_json = Path(args.json) if args.json else (Path(os.environ["OUT"]) / "reward_sweep.json"
                                                  if os.environ.get("OUT") else None)
    env = environment()
    log(f"{env}; data {data}: {len(pairs)} pairs over {len({p.prompt_key for p in pairs})} questions; "
        f"{args.seeds} seeds × {len(configs)} configs, budget {args.budget_s:.0f}s")
    splits = {seed: benchmark_split(pairs, seed) for seed in range(args.seeds)}
    work = {(cfg.name, seed): float(len(prepare_train(splits[seed][0], cfg)) * (0.8 if cfg.length_feature else 1.0))
            for cfg in configs for seed in range(args.seeds)}
    payload: dict[str, Any] = {
        "benchmark": "Counsel Chat upvote pairs; split_by_prompt(eval_fraction=0.25, seed), held-out capped at 5 "
                     "pairs per question; each seed its own split; accuracy = held-out pairs ranked right "
                     "(ties half)", "data": str(data), "n_pairs": len(pairs), "seeds": args.seeds,
        "budget_s": args.budget_s, "smoke": args.smoke, "environment": env, "configs": [], "skipped": []}
    done: list[tuple[float, float]] = []  # (seconds, work units) per seed run
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in configs:
            elapsed = time.perf_counter() - STARTED
            predicted = predict_seconds(cfg, args.seeds, work, done)
            res: dict[str, Any] = {"name": cfg.name, "why": cfg.why, "settings": cfg.settings(),
                                   "predicted_seconds": round(predicted, 1) if predicted is not None else None}
            if predicted is not None and elapsed + predicted > args.budget_s:
                res.update(status="skipped", reason=f"predicted {predicted:.0f}s, {args.budget_s - elapsed:.0f}s left")
                log(f"SKIP {cfg.name}: {res['reason']}")
                results.append(res)
                payload["skipped"].append(cfg.name)
                continue
            log(f"config {cfg.name}: {cfg.settings()}"
                + (f" (predicted {predicted:.0f}s)" if predicted is not None else ""))
            started = time.perf_counter()
            rows: list[dict[str, Any]] = []
            status, reason = "done", ""
            for seed in range(args.seeds):
                left = args.budget_s - (time.perf_counter() - STARTED)
                if left <= 0:
                    status, reason = "partial", f"budget spent after {len(rows)} of {args.seeds} seeds"
                    log(f"STOP {cfg.name}: {reason}")
                    break
                row = run_seed(cfg, pairs, seed, args, Path(tmp), run_budget_s=max(30.0, left + 30.0))
                rows.append(row)
                done.append((row["seconds"], work_units(cfg, row["n_network_train"])))
                curve = " ".join(f"e{c['epoch']:g}:{c['accuracy']:.3f}/{c['network_accuracy']:.3f}"
                                 for c in row["curve"])
                log(f"  seed {seed}: train {row['n_train_pairs']} pairs (network {row['n_network_train']}, "
                    f"calibration {row['n_calibration']}), held {row['n_held']} | hybrid {row['accuracy']:.3f} "
                    f"network {row['network_accuracy']:.3f} | baseline {row['length_baseline']:.3f} | "
                    f"shorter-wins {row['shorter_wins']:.3f} | w_len {row['length_weight']:.2f} | "
                    f"loss {fmt_loss(row)} | {row['pairs_per_second']:.0f} pairs/s, "
                    f"{row['seconds']:.1f}s | per epoch hybrid/network {curve}"
                    + (" | BUDGET-STOPPED" if row["budget_stopped"] else "")
                    + ("" if row["probe_matches_report"] in (True, None) else " | PROBE != REPORT"))
            res.update(status=status, reason=reason, seconds=round(time.perf_counter() - started, 1), seeds=rows,
                       summary=summarise(rows) if rows else None)
            if rows:
                s = res["summary"]
                log(f"{cfg.name}: hybrid {mean_sd(r['accuracy'] for r in rows)} | network "
                    f"{mean_sd(r['network_accuracy'] for r in rows)} | baseline "
                    f"{mean_sd(r['length_baseline'] for r in rows)} | gain {s['gain']['mean']:+.3f} ± "
                    f"{s['gain']['sd']:.3f} | shorter-wins {mean_sd(r['shorter_wins'] for r in rows)} | "
                    f"{res['seconds']:.0f}s")
            results.append(res)
            payload["configs"] = results
            payload["total_seconds"] = round(time.perf_counter() - STARTED, 1)
            write_json(out_json, payload)
    fps = {(r["seed"], r["held_fingerprint"]) for res in results for r in res.get("seeds", [])}
    payload["same_held_out_sets"] = len(fps) == len({seed for seed, _ in fps})
    payload["configs"] = results
    payload["total_seconds"] = round(time.perf_counter() - STARTED, 1)
    write_json(out_json, payload)
    print_table(results)
    print(f"\nsame held-out pairs in every config (per seed): {payload['same_held_out_sets']}; "
          f"skipped for the budget: {', '.join(payload['skipped']) or 'none'}; total {payload['total_seconds']:.0f}s"
          + (f"; JSON: {out_json}" if out_json else ""))


if __name__ == "__main__":
    main()
