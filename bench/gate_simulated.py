"""The judge gate on the simulated pool (``bench/gate.py --data simulated``): a real reward-model judge
against simulated clinicians who judge real sampled replies.

- **Replies**: ``bench/simulated_pool.py``'s samples of the embedded base to Counsel Chat questions (the
  pool ``bench/active.py --data simulated`` reads; cached, so a rerun samples nothing).
- **The judge**: the toolkit's reward model (``reward.train.train_reward_model``; MiniLM fine-tuned at
  the setting that learns the rubric, docs/policy.md: 10 epochs, lr 3e-4, all layers) trained on the
  simulated clinician's decided pairs of half the questions (``--judge-fraction``), then judging every
  pair of two distinct replies of the other questions as ``therapref judge reward:DIR`` does
  (``candidates.judge.reward_verdict``: P = σ(score gap), confidence |2P − 1|). ``--judge rubric`` puts a
  reference judge in its place (the rubric read with one clinician's noise: as good as a clinician), and
  ``--ties`` a verdict that can say tie (an ordered logit on the gap, fitted on the judge's own questions).
- **Clinicians**: the simulated clinician of ``bench/loop.py`` (``simulated_judgment``: the rubric plus
  its noise, so a/b/tie, and its safety flags), each vote an independent draw. Per seed, a
  ``--calibration-share`` of the judged comparisons gets ``--clinicians`` votes (the overlap the gate
  calibrates on), the rest (the open comparisons, the ones the judge would save work on) one vote.
- **The check**: the gate's own steps (``analytics.judges.calibration`` → ``analytics.gate.choose_threshold``;
  flagged comparisons never delegated), then, on the open comparisons it lets the judge take, the
  judge's agreement with fresh clinicians measured exactly as the gate measures it (against the
  majority of the clinicians less the one it stands in for) next to the clinicians' own agreement
  measured the same way on the same comparisons. Seed 0 also runs through a real SQLite database and
  ``analytics.judges.apply_gate`` (the code of ``therapref judge --gate``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import math
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analytics.gate import calibration_item, choose_threshold, clinician_agreement, left_out
from analytics.judges import calibration
from bench.loop import simulated_judgment
from db.judges import VerdictRow
from reward.metrics import sigmoid


@dataclass(frozen=True)
class GateComparison:
    """Two distinct sampled replies of one question, and the judge's verdict on them."""

    prompt_key: str
    messages: tuple[tuple[str, str], ...]
    reply_a: str
    reply_b: str
    preferred: str = "tie"
    confidence: float = 0.0


def split_questions(groups: Sequence[dict[str, Any]], judge_fraction: float, seed: int = 0
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the judge's training questions, the gated questions): a seeded split by question.

    >>> train, gated = split_questions([{"prompt_key": str(i)} for i in range(10)], 0.5)
    >>> len(train), len(gated), {g["prompt_key"] for g in train} & {g["prompt_key"] for g in gated}
    (5, 5, set())
    """
    keys = sorted(g["prompt_key"] for g in groups)
    random.Random(seed).shuffle(keys)
    chosen = set(keys[:round(len(keys) * judge_fraction)])
    return [g for g in groups if g["prompt_key"] in chosen], [g for g in groups if g["prompt_key"] not in chosen]


def comparisons_of(groups: Sequence[dict[str, Any]]) -> list[GateComparison]:
    """Every two distinct non-empty replies of a question, as a comparison (a before b, in sampling order).

    >>> [c.reply_b for c in comparisons_of([{"prompt_key": "q", "messages": [["user", "Hi"]],
    ...                                      "replies": ["x", "y", "x", " "]}])]
    ['y']
    """
    out = []
    for group in groups:
        messages = tuple((role, content) for role, content in group["messages"])
        replies = list(dict.fromkeys(r for r in group["replies"] if r.strip()))
        for a, b in itertools.combinations(replies, 2):
            out.append(GateComparison(group["prompt_key"], messages, a, b))
    return out


def train_judge(pairs: Sequence[Any], args: argparse.Namespace, output: Path) -> Any:
    """The judge: the toolkit's reward model trained on the clinician-labelled ``pairs``."""
    from reward.config import load_config
    from reward.scoring import RewardModel
    from reward.train import train_reward_model

    steps = {"max_steps": args.judge_steps} if args.judge_steps else {"num_train_epochs": args.judge_epochs}
    config = load_config(output_dir=str(output), base_model=args.base_model, seed=0, eval_fraction=0.0,
                         max_length=args.max_length, min_context_tokens=min(32, args.max_length // 4),
                         learning_rate=args.judge_lr, per_device_train_batch_size=8, freeze_layers=0,
                         save_strategy="no", logging_steps=10, disable_tqdm=True, report_to="none",
                         num_threads=args.threads, **steps)
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer prints every log row when tqdm is off
        train_reward_model(config, list(pairs), eval_pairs=[], overwrite=True)
    return RewardModel.load(output, device="cpu")


def reply_scores(model: Any, comparisons: Sequence[GateComparison]) -> list[tuple[float, float]]:
    """The reward model's (score a, score b) per comparison (each distinct reply scored once)."""
    items = list(dict.fromkeys((c.messages, r) for c in comparisons for r in (c.reply_a, c.reply_b)))
    scores = dict(zip(items, model.score_batch(items), strict=True))
    return [(scores[(c.messages, c.reply_a)], scores[(c.messages, c.reply_b)]) for c in comparisons]


def rubric_scores(comparisons: Sequence[GateComparison], seed: int = 3) -> list[tuple[float, float]]:
    """A reference judge, not a model: the rubric's scores with one draw of the clinician's own noise
    (``bench.loop.rubric_score`` + N(0, ``NOISE_SD``)), i.e. a judge that reads replies exactly as one more
    simulated clinician does. With ``--ties`` it says tie like one; it shows what coverage the gate gives
    on this pool to a judge as good as a clinician.

    >>> good = GateComparison("q", (("user", "I feel alone."),), "It sounds like you feel alone. What helps?", "Ok.")
    >>> a, b = rubric_scores([good])[0]; a > b
    True
    """
    from bench.loop import NOISE_SD, rubric_score

    rng = random.Random(seed)
    return [(rubric_score(c.messages[-1][1], c.reply_a) + rng.gauss(0.0, NOISE_SD),
             rubric_score(c.messages[-1][1], c.reply_b) + rng.gauss(0.0, NOISE_SD)) for c in comparisons]


def with_verdicts(comparisons: Sequence[GateComparison], scores: Sequence[tuple[float, float]],
                  ties: tuple[float, float] | None = None) -> list[GateComparison]:
    """The comparisons with the judge's verdicts: ``therapref judge reward:DIR``'s rule
    (``candidates.judge.reward_verdict``), or with ``ties`` = (scale, margin) the ordered-logit rule
    that can say tie (:func:`tie_aware_verdict`)."""
    from candidates.judge import reward_verdict

    out = []
    for c, (a, b) in zip(comparisons, scores, strict=True):
        if ties is None:
            v = reward_verdict(a, b)
            preferred, confidence = v.preferred, v.confidence
        else:
            preferred, confidence = tie_aware_verdict(a - b, *ties)
        out.append(GateComparison(c.prompt_key, c.messages, c.reply_a, c.reply_b, preferred, confidence))
    return out


def tie_probabilities(gap: float, scale: float, margin: float) -> dict[str, float]:
    """An ordered logit over b < tie < a on the reward gap: P(a) = σ(s·gap − m), P(b) = σ(−s·gap − m),
    the rest a tie (Rao–Kupper's idea: a gap inside ±m/s reads as equal).

    >>> {k: round(v, 3) for k, v in tie_probabilities(0.0, 1.0, 1.0).items()}
    {'a': 0.269, 'b': 0.269, 'tie': 0.462}
    """
    pa, pb = sigmoid(scale * gap - margin), sigmoid(-scale * gap - margin)
    return {"a": pa, "b": pb, "tie": max(0.0, 1.0 - pa - pb)}


def tie_aware_verdict(gap: float, scale: float, margin: float) -> tuple[str, float]:
    """The most probable label and its probability, the verdict's confidence.

    >>> tie_aware_verdict(0.0, 1.0, 1.0)[0], tie_aware_verdict(5.0, 1.0, 1.0)[0]
    ('tie', 'a')
    """
    probs = tie_probabilities(gap, scale, margin)
    label = max(probs, key=probs.get)
    return label, probs[label]


def fit_ties(gaps: Sequence[float], labels: Sequence[str]) -> tuple[float, float]:
    """(scale, margin) of :func:`tie_probabilities` by maximum likelihood on clinicians' labels (a, b,
    tie) of comparisons the gate never sees (the judge's own training questions).

    >>> scale, margin = fit_ties([2.0, 1.5, 0.1, -0.1, 0.0, -2.0, -1.8, 0.2], list("aattttbb"))
    >>> scale > 0 and margin > 0
    True
    """
    import numpy as np
    from scipy.optimize import minimize
    from scipy.special import expit

    g = np.asarray(gaps, dtype=float)
    y = np.asarray(labels)

    def loss(theta: Any) -> float:
        scale, margin = math.exp(theta[0]), math.exp(theta[1])
        pa, pb = expit(scale * g - margin), expit(-scale * g - margin)
        p = np.where(y == "a", pa, np.where(y == "b", pb, 1 - pa - pb))
        return float(-np.log(np.clip(p, 1e-12, 1)).sum())

    best = minimize(loss, np.zeros(2), method="Nelder-Mead")
    return math.exp(best.x[0]), math.exp(best.x[1])


def votes(comparison: GateComparison, k: int, rng: random.Random) -> tuple[list[str], bool]:
    """``k`` independent simulated clinicians' labels, and whether the rubric flags either reply (a
    clinician would: such comparisons are never delegated)."""
    user = comparison.messages[-1][1]
    labels, flagged = [], False
    for _ in range(k):
        preferred, _strength, (flags_a, flags_b) = simulated_judgment(user, comparison.reply_a, comparison.reply_b,
                                                                      rng)
        labels.append(preferred)
        flagged = flagged or bool(flags_a or flags_b)
    return labels, flagged


def seed_pool(comparisons: Sequence[GateComparison], seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One seed: which comparisons are calibration ones, the clinicians' votes, and fresh votes on every
    comparison (``--clinicians`` of them) for the check."""
    rng = random.Random(10_007 * seed + 1)
    order = list(range(len(comparisons)))
    rng.shuffle(order)
    n_cal = round(len(order) * args.calibration_share)
    is_calibration = [False] * len(comparisons)
    for i in order[:n_cal]:
        is_calibration[i] = True
    clinicians, flagged, fresh = [], set(), []
    for i, c in enumerate(comparisons):
        labels, unsafe = votes(c, args.clinicians if is_calibration[i] else 1, rng)
        clinicians.append(labels)
        if unsafe:
            flagged.add(i)
        fresh.append(votes(c, args.clinicians, rng)[0])
    return {"clinicians": clinicians, "flagged": flagged, "fresh": fresh, "is_calibration": is_calibration,
            "verdicts": [(c.preferred, round(c.confidence, 4)) for c in comparisons]}


def gate_seed(pool: dict[str, Any], alpha: float, args: argparse.Namespace) -> dict[str, Any]:
    """The gate's threshold from the calibration comparisons; on the open ones it takes, the judge's and
    the clinicians' agreement with fresh clinicians (the gate's own measure)."""
    rows = [VerdictRow(i, i, p, conf, False, False) for i, (p, conf) in enumerate(pool["verdicts"])]
    labels = {i: votes for i, votes in enumerate(pool["clinicians"])}
    items, (agreeing, n_items) = calibration(rows, pool["flagged"], labels)
    target = agreeing / n_items if n_items else float("nan")
    g = choose_threshold(items, target=target, alpha=alpha, min_calibration=args.min_calibration)
    open_ids = [i for i, cal in enumerate(pool["is_calibration"]) if not cal]
    taken = [] if g.threshold is None else [i for i in open_ids if i not in pool["flagged"]
                                            and pool["verdicts"][i][1] >= g.threshold]
    checks = [calibration_item(pool["verdicts"][i][0], pool["fresh"][i], left_out(i, args.clinicians))
              for i in taken]
    checks = [c for c in checks if c is not None]
    theirs = clinician_agreement([pool["fresh"][i] for i in taken])
    return {"threshold": g.threshold, "bound": g.bound, "target": target, "reason": g.reason,
            "n_calibration": g.n_calibration, "open": len(open_ids),
            "coverage": len(taken) / len(open_ids) if open_ids else 0.0,
            "judge_agreement": sum(checks) / len(checks) if checks else float("nan"),
            "clinician_agreement_taken": theirs[0] / theirs[1] if theirs[1] else float("nan"),
            "flagged_share": len(pool["flagged"]) / len(rows)}


def gate_database(pool: dict[str, Any], alpha: float, args: argparse.Namespace) -> str:
    """Seed 0's pool in a real SQLite database, gated by ``apply_gate`` (``therapref judge --gate``); its line."""
    from sqlmodel import Session

    from analytics.judges import apply_gate
    from db.engine import make_engine
    from db.migrate import upgrade
    from tests.factories import build_judged_pool

    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/gate.db")
        upgrade(engine)
        with Session(engine, expire_on_commit=False) as session:
            build_judged_pool(session, pool["clinicians"], pool["verdicts"], judge="reward-judge",
                              judgments_required=args.clinicians + 1,
                              flagged=pool["flagged"])
            result = apply_gate("reward-judge", session=session, alpha=alpha, min_calibration=args.min_calibration)
            session.commit()
        engine.dispose()
    return str(result)


def label_shares(pool: dict[str, Any]) -> dict[str, float]:
    """The share of each label among the fresh clinicians' votes (how often the clinician says tie)."""
    from collections import Counter

    counts = Counter(label for labels in pool["fresh"] for label in labels)
    total = sum(counts.values()) or 1
    return {label: counts[label] / total for label in sorted(counts)}


def _scores_key(args: argparse.Namespace, settings: Any) -> str:
    """Every setting that changes the judge's scores."""
    import hashlib
    import json

    fields = {"pool": settings.key(), "judge_fraction": args.judge_fraction, "base_model": args.base_model,
              "epochs": args.judge_epochs, "steps": args.judge_steps, "lr": args.judge_lr,
              "max_length": args.max_length}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def cached_scores(args: argparse.Namespace, settings: Any) -> dict[str, list[tuple[float, float]]] | None:
    """The judge's scores from ``--scores-cache``, when they were made with these settings."""
    import json

    path = args.scores_cache
    if path is None or not Path(path).is_file():
        return None
    data = json.loads(Path(path).read_text())
    if data.get("key") != _scores_key(args, settings):
        return None
    return {name: [tuple(pair) for pair in data[name]] for name in ("gated", "training")}


def keep_scores(args: argparse.Namespace, settings: Any, scores: dict[str, list[tuple[float, float]]]) -> None:
    import json

    if args.scores_cache is not None:
        Path(args.scores_cache).write_text(json.dumps({"key": _scores_key(args, settings), **scores}) + "\n")
