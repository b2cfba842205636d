"""Judge-gate benchmark: the coverage the guarantee gives, on a synthetic pool of simulated clinicians
(the default, ``--data synthetic``) or on the simulated pool of sampled replies with a real reward-model
judge (``--data simulated``: ``bench/gate_simulated.py`` says how it is built).

A synthetic pool, not real judgments: each comparison has a hidden better reply and a difficulty d
drawn uniformly from [0, 1]; a simulated clinician picks the better reply with probability
1 − 0.45·d (0.775 on average); a simulated judge with probability 1 − ``w``·d (``--judges`` lists
the w's: 0.45 is a judge as good as a clinician, smaller is better) or, for ``coin60``, 0.6 whatever
the difficulty. The judge's confidence is 1 − d/2 plus Gaussian noise (sd ``--noise``), clipped to
[0.5, 1]: it knows, roughly, which comparisons are hard. ``--calibration`` comparisons are judged by
``--clinicians`` clinicians (the overlap), the rest (``--open``) by one; the judge judges all.

Per judge, seed 0 is built as a real SQLite database (``tests.factories.build_judged_pool``) and gated
by ``analytics.judges.apply_gate``, the code ``therapref judge --gate`` runs: its line is printed.
Then ``--seeds`` fresh pools run the same pure steps (``analytics.judges.calibration`` →
``analytics.gate.choose_threshold``) to give coverage as mean ± sd, and check the guarantee: on the
open comparisons the judge would stand in on, its expected agreement with clinicians as the gate
measures it — with the majority of ``--clinicians`` − 1 clinicians, the others beside the one it
stands in for, where that majority is decided — computed exactly from the simulation's
probabilities, is compared with the target the gate used; the share of seeds where it falls below
is the realised error, which the guarantee holds at or below alpha (for the target as measured).

    .venv/bin/python bench/gate.py                     # 3 judges × alpha 0.1 and 0.05, 200 seeds
    .venv/bin/python bench/gate.py --calibration 100 --clinicians 2 --seeds 50
    .venv/bin/python bench/gate.py --data simulated    # the reward judge on the simulated pool, 20 seeds
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlmodel import Session  # noqa: E402

from analytics.gate import choose_threshold  # noqa: E402
from analytics.judges import apply_gate, calibration  # noqa: E402
from db.engine import make_engine  # noqa: E402
from db.judges import VerdictRow  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from tests.factories import build_judged_pool  # noqa: E402

CLINICIAN_SLOPE = 0.45


def simulate(rng: np.random.Generator, judge: str, args: argparse.Namespace) -> dict[str, Any]:
    """One synthetic pool: clinicians' labels (calibration, then open), hidden labels, the judge's verdicts."""
    n = args.calibration + args.open
    truth = rng.choice(["a", "b"], size=n)
    difficulty = rng.random(n)

    def label(i: int, right: float) -> str:
        t = str(truth[i])
        return t if rng.random() < right else ("b" if t == "a" else "a")

    clinicians = [[label(i, 1 - CLINICIAN_SLOPE * difficulty[i])
                   for _ in range(args.clinicians if i < args.calibration else 1)] for i in range(n)]
    verdicts, expected = [], []
    for i in range(n):
        right = 0.6 if judge == "coin60" else 1 - float(judge) * difficulty[i]
        confidence = float(np.clip(1 - difficulty[i] / 2 + rng.normal(0, args.noise), 0.5, 1.0))
        verdicts.append((label(i, right), round(confidence, 3)))
        expected.append(majority_agreement(right, 1 - CLINICIAN_SLOPE * difficulty[i], args.clinicians - 1))
    return {"clinicians": clinicians, "verdicts": verdicts, "expected": expected}


def majority_agreement(judge_right: float, clinician_right: float, k: int) -> tuple[float, float]:
    """(P(the judge agrees with the majority of k clinicians and it is decided), P(it is decided)).

    >>> [round(x, 4) for x in majority_agreement(1.0, 0.9, 3)]   # majority right: 0.9³ + 3·0.9²·0.1
    [0.972, 1.0]
    """
    right = sum(math.comb(k, j) * clinician_right**j * (1 - clinician_right) ** (k - j) for j in range(k + 1)
                if 2 * j > k)
    wrong = sum(math.comb(k, j) * clinician_right**j * (1 - clinician_right) ** (k - j) for j in range(k + 1)
                if 2 * j < k)
    return judge_right * right + (1 - judge_right) * wrong, right + wrong


def gate_pool(pool: dict[str, Any], alpha: float, args: argparse.Namespace) -> dict[str, Any]:
    """The pure steps of the gate on one pool, and the judge's agreement on the open comparisons it took."""
    rows = [VerdictRow(i, i, p, c, False, False) for i, (p, c) in enumerate(pool["verdicts"])]
    labels = {i: labels for i, labels in enumerate(pool["clinicians"])}
    items, (agreeing, n_items) = calibration(rows, (), labels)
    target = agreeing / n_items
    g = choose_threshold(items, target=target, alpha=alpha, min_calibration=args.min_calibration)
    taken = [] if g.threshold is None else [i for i, (_, c) in enumerate(pool["verdicts"]) if c >= g.threshold]
    open_taken = [i for i in taken if i >= args.calibration]
    agree = sum(pool["expected"][i][0] for i in open_taken)
    decided = sum(pool["expected"][i][1] for i in open_taken)
    realised = agree / decided if decided else float("nan")
    return {"threshold": g.threshold, "bound": g.bound, "target": target, "n_calibration": g.n_calibration,
            "coverage": len(taken) / len(rows), "open_coverage": len(open_taken) / args.open,
            "realised": realised, "below_target": bool(open_taken) and realised < target}


def gate_database(pool: dict[str, Any], alpha: float, args: argparse.Namespace) -> str:
    """The same pool in a real SQLite database, gated by apply_gate; its line."""
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/gate.db")
        upgrade(engine)
        with Session(engine, expire_on_commit=False) as session:
            build_judged_pool(session, pool["clinicians"], pool["verdicts"], judgments_required=args.clinicians + 1)
            result = apply_gate("sim", session=session, alpha=alpha, min_calibration=args.min_calibration)
            session.commit()
        engine.dispose()
    return str(result)


def mean_sd(values: Sequence[float]) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "n/a"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("synthetic", "simulated"), default="synthetic",
                        help="synthetic judges of known accuracy, or the reward judge on the simulated pool")
    parser.add_argument("--judges", default="0.15,0.3,0.45,coin60", help="judges' slopes w (comma-separated) or coin60")
    parser.add_argument("--alphas", default="0.1,0.05", help="confidence levels 1 - alpha to run")
    parser.add_argument("--calibration", type=int, default=200, help="comparisons judged by --clinicians clinicians")
    parser.add_argument("--open", type=int, default=600, help="comparisons judged by one clinician")
    parser.add_argument("--clinicians", type=int, default=3, help="clinicians per calibration comparison")
    parser.add_argument("--noise", type=float, default=0.1, help="sd of the noise on the judge's confidence")
    parser.add_argument("--min-calibration", type=int, default=30, help="the gate's --min-calibration")
    parser.add_argument("--seeds", type=int, help="pools per judge (synthetic, default 200) or clinicians' draws "
                        "(simulated, default 20)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    simulated = parser.add_argument_group("--data simulated")
    simulated.add_argument("--questions", type=int, default=100, help="Counsel Chat questions sampled")
    simulated.add_argument("--replies", type=int, default=6, help="replies sampled per question")
    simulated.add_argument("--max-tokens", type=int, default=80, help="tokens per sampled reply")
    simulated.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    simulated.add_argument("--sampler", default="embedded", help="the sampling model: embedded or a GGUF file")
    simulated.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "bench-active",
                           help="where the sampled replies are kept (shared with bench/active.py)")
    simulated.add_argument("--counsel-chat", type=Path, default=ROOT.parent / "shared" / "data" / "counsel_chat.csv",
                           help="Counsel Chat CSV")
    simulated.add_argument("--judge-fraction", type=float, default=0.5,
                           help="share of the questions whose pairs train the judge (the rest are gated)")
    simulated.add_argument("--calibration-share", type=float, default=0.3,
                           help="share of the gated comparisons judged by --clinicians clinicians")
    simulated.add_argument("--base-model", default="embedded", help="the judge's reward base model")
    simulated.add_argument("--judge-epochs", type=float, default=10.0, help="the judge's training epochs")
    simulated.add_argument("--judge-steps", type=int, help="optimizer steps instead of --judge-epochs")
    simulated.add_argument("--judge-lr", type=float, default=3e-4, help="the judge's learning rate")
    simulated.add_argument("--max-length", type=int, default=128, help="tokens per (conversation, reply)")
    simulated.add_argument("--threads", type=int, help="CPU threads for torch")
    simulated.add_argument("--judge", choices=("reward", "rubric"), default="reward",
                           help="reward: the toolkit's reward model trained on the judge's questions; rubric: a "
                                "reference judge that reads replies as one more simulated clinician does")
    simulated.add_argument("--ties", action="store_true",
                           help="the tie-aware judge: an ordered logit on the reward gap (a, tie, b), its scale and "
                                "margin fitted on clinicians' labels of the judge's training questions")
    simulated.add_argument("--scores-cache", type=Path,
                           help="keep the trained judge's scores here (a rerun with the same settings trains nothing)")
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = 200 if args.data == "synthetic" else 20
    return args


def main_simulated(args: argparse.Namespace) -> int:
    """``--data simulated``: train the reward judge once, then gate it over ``--seeds`` draws of clinicians."""
    from bench import gate_simulated as gs
    from bench.simulated_pool import PoolSettings, judged_pairs, load_or_sample

    settings = PoolSettings(questions=args.questions, replies=args.replies, max_tokens=args.max_tokens,
                            temperature=args.temperature, model=args.sampler, threads=args.threads or 1)
    groups = load_or_sample(args.counsel_chat, settings, args.cache_dir)
    train_groups, gated_groups = gs.split_questions(groups, args.judge_fraction)
    pairs = judged_pairs(train_groups, noisy=True, seed=1)
    gated, training = gs.comparisons_of(gated_groups), gs.comparisons_of(train_groups)
    scores = gs.cached_scores(args, settings) if args.judge == "reward" else None
    if args.judge == "rubric":
        scores = {"gated": gs.rubric_scores(gated), "training": gs.rubric_scores(training, seed=4)}
    elif scores is None:
        with tempfile.TemporaryDirectory() as tmp:
            model = gs.train_judge(pairs, args, Path(tmp) / "judge")
            scores = {"gated": gs.reply_scores(model, gated), "training": gs.reply_scores(model, training)}
        gs.keep_scores(args, settings, scores)
    ties = None
    if args.ties:  # the tie rule's two numbers, from one clinician's labels of the judge's training questions
        rng = random.Random(2)
        labels = [gs.votes(c, 1, rng)[0][0] for c in training]
        ties = gs.fit_ties([a - b for a, b in scores["training"]], labels)
        print(f"  tie-aware judge: scale {ties[0]:.3f}, margin {ties[1]:.3f} (fitted on {len(labels)} clinician "
              f"labels of the judge's training questions, {labels.count('tie') / len(labels):.0%} ties)")
    comparisons = gs.with_verdicts(gated, scores["gated"], ties)
    clean = judged_pairs(gated_groups, noisy=False)
    judge = (f"the judge (reward model, {args.base_model}) trained on {len(pairs)} decided clinician pairs of "
             f"{len(train_groups)} questions" if args.judge == "reward" else
             "the reference judge (the rubric with one clinician's noise)")
    print(f"simulated pool: {len(groups)} questions × {args.replies} replies; {judge}; "
          f"{len(comparisons)} comparisons of {len(gated_groups)} other questions gated; "
          f"{args.calibration_share:.0%} judged by {args.clinicians} clinicians, the rest by 1; {args.seeds} seeds")
    truth = {}  # the noise-free rubric's decided pairs: the judge's accuracy, for scale
    for p in clean:
        key = p.prompt_key.removeprefix("simulated/")
        truth[(key, p.chosen, p.rejected)], truth[(key, p.rejected, p.chosen)] = "a", "b"
    on_decided = [c for c in comparisons if (c.prompt_key, c.reply_a, c.reply_b) in truth]
    said = [c for c in on_decided if c.preferred != "tie"]
    right = sum(c.preferred == truth[(c.prompt_key, c.reply_a, c.reply_b)] for c in said)
    print(f"  judge on the noise-free rubric's {len(on_decided)} decided pairs: right on "
          f"{right / max(1, len(said)):.3f} of those it decides "
          f"({1 - len(said) / max(1, len(on_decided)):.0%} called a tie)")
    out: list[dict[str, Any]] = []
    for alpha in (float(a) for a in args.alphas.split(",")):
        pools = [gs.seed_pool(comparisons, seed, args) for seed in range(args.seeds)]
        line = gs.gate_database(pools[0], alpha, args)
        runs = [gs.gate_seed(pool, alpha, args) for pool in pools]
        passed = [r for r in runs if r["threshold"] is not None]
        row = {"alpha": alpha, "seed0": line, "labels": gs.label_shares(pools[0]),
               "passed_share": len(passed) / len(runs),
               "threshold": mean_sd([r["threshold"] for r in passed]),
               "target": mean_sd([r["target"] for r in runs]),
               "coverage": mean_sd([r["coverage"] for r in runs]),
               "judge_agreement": mean_sd([r["judge_agreement"] for r in passed]),
               "clinician_agreement_taken": mean_sd([r["clinician_agreement_taken"] for r in passed]),
               "below_target_share": sum(r["judge_agreement"] < r["target"] for r in passed) / len(runs),
               "runs": runs}
        out.append(row)
        shares = ", ".join(f"{k} {v:.0%}" for k, v in row["labels"].items())
        print(f"\nalpha {alpha:g} (clinicians' votes: {shares})\n  seed 0: {line}\n  over {len(runs)} seeds: a "
              f"threshold in {row['passed_share']:.0%}; threshold {row['threshold']}; target (clinician–clinician "
              f"agreement) {row['target']}; coverage of the open comparisons {row['coverage']}; on those taken, "
              f"agreement with fresh clinicians: judge {row['judge_agreement']}, clinicians "
              f"{row['clinician_agreement_taken']}; judge below the target in {row['below_target_share']:.0%} "
              "of seeds")
    best = max(out, key=lambda r: float(r["coverage"].split(" ")[0]) if r["coverage"] != "n/a" else -1)
    print(f"\ngate on the simulated pool: coverage {best['coverage']} at alpha {best['alpha']:g} "
          f"(target ≥ 30% at agreement ≥ clinician–clinician {best['target']})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.data == "simulated":
        return main_simulated(args)
    print(f"synthetic pool: {args.calibration} calibration comparisons × {args.clinicians} clinicians, "
          f"{args.open} open × 1; clinicians right 1 - {CLINICIAN_SLOPE}·d; {args.seeds} seeds")
    out: list[dict[str, Any]] = []
    for judge in args.judges.split(","):
        for alpha in (float(a) for a in args.alphas.split(",")):
            line = gate_database(simulate(np.random.default_rng(0), judge, args), alpha, args)
            runs = [gate_pool(simulate(np.random.default_rng(seed), judge, args), alpha, args)
                    for seed in range(args.seeds)]
            passed = [r for r in runs if r["threshold"] is not None]
            row = {"judge": judge, "alpha": alpha, "seed0": line,
                   "passed_share": len(passed) / len(runs),
                   "threshold": mean_sd([r["threshold"] for r in passed]),
                   "coverage": mean_sd([r["coverage"] for r in runs]),
                   "open_coverage": mean_sd([r["open_coverage"] for r in runs]),
                   "target": mean_sd([r["target"] for r in runs]),
                   "bound": mean_sd([r["bound"] for r in passed]),
                   "realised": mean_sd([r["realised"] for r in passed]),
                   "below_target_share": sum(r["below_target"] for r in runs) / len(runs)}
            out.append(row)
            judge_name = "coin (right 60%)" if judge == "coin60" else f"w={judge} (right {1 - float(judge) / 2:.0%})"
            print(f"\njudge {judge_name}, alpha {alpha:g}\n  seed 0: {line}\n  over {len(runs)} seeds: a threshold "
                  f"in {row['passed_share']:.0%}; threshold {row['threshold']}; coverage {row['coverage']} "
                  f"(open comparisons {row['open_coverage']}); "
                  f"target {row['target']}; bound {row['bound']}; expected agreement with clinicians "
                  f"on the open comparisons taken {row['realised']}; below the target in "
                  f"{row['below_target_share']:.1%} of seeds")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
