"""Judge-gate benchmark: the coverage the guarantee gives, on a synthetic pool of simulated clinicians.

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
"""

from __future__ import annotations

import argparse
import json
import math
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
    parser.add_argument("--judges", default="0.15,0.3,0.45,coin60", help="judges' slopes w (comma-separated) or coin60")
    parser.add_argument("--alphas", default="0.1,0.05", help="confidence levels 1 - alpha to run")
    parser.add_argument("--calibration", type=int, default=200, help="comparisons judged by --clinicians clinicians")
    parser.add_argument("--open", type=int, default=600, help="comparisons judged by one clinician")
    parser.add_argument("--clinicians", type=int, default=3, help="clinicians per calibration comparison")
    parser.add_argument("--noise", type=float, default=0.1, help="sd of the noise on the judge's confidence")
    parser.add_argument("--min-calibration", type=int, default=30, help="the gate's --min-calibration")
    parser.add_argument("--seeds", type=int, default=200, help="pools per judge for coverage and realised error")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
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
