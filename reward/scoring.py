"""Scoring replies with a trained reward model or an ensemble of them, P(A better) with its
uncertainty for a pair, and best-of-n selection.

A single model and an ensemble (``therapref train --ensemble K``: K member folders and
``therapref_ensemble.json``) load the same way, :func:`load_reward_model` (``RewardModel.load`` too),
and score the same way: ``score_batch`` is the members' mean, ``member_scores`` each member's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db.rules import reply_length
from reward.encoding import padded_batches
from reward.errors import RewardError
from reward.pairs import PreferencePair, messages_key
from reward.resources import load_pretrained

META_FILE = "therapref_reward.json"
#: The manifest of an ensemble folder: its members' sub-folders, in order, and how they were trained.
ENSEMBLE_FILE = "therapref_ensemble.json"


def _device_for(model: Any) -> Any:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model always has parameters
        import torch

        return torch.device("cpu")


@dataclass
class RewardModel:
    """A sequence-classification reward model, its tokenizer and TheraPref's encoding of inputs.

    ``score`` = network output × ``network_scale`` + ``length_weight`` × log(1 + words(reply)); the
    last two are 1 and 0 unless the model was trained with ``length_feature``. A head-only model trained
    with ``likelihood`` has the reply's mean log-probability under the base (``lm_head``, the base's LM
    head) times ``likelihood_weight`` in its network output (``reward/likelihood.py``).
    """

    model: Any
    tokenizer: Any
    encoder: Any
    network_scale: float = 1.0
    length_weight: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    lm_head: Any = None
    likelihood_weight: float | None = None

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None, dtype: Any = None) -> RewardModel | RewardEnsemble:
        """Load a model folder written by ``therapref train`` (or any HF sequence-classification folder
        with ``num_labels=1``); an ensemble folder (``--ensemble K``) loads as a :class:`RewardEnsemble`,
        which scores like a model (the members' mean)."""
        import torch

        from reward.encoding import Encoder

        path = Path(path)
        if is_ensemble(path):
            return RewardEnsemble.load(path, device=device, dtype=dtype)
        if not (path / "config.json").is_file():
            raise RewardError(f"{path}: not a model folder (no config.json)")
        meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).is_file() else {}
        model, tokenizer = load_pretrained(path, "sequence-classification", what="reward model", dtype=dtype)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device).eval()
        enc = meta.get("encoder", {})
        encoder = Encoder(tokenizer, max_length=int(enc.get("max_length", 512)),
                          min_context_tokens=int(enc.get("min_context_tokens", 64)), layout=enc.get("layout", ""))
        likelihood_weight = meta.get("likelihood_weight")
        lm_head = None
        if likelihood_weight is not None:
            from reward.likelihood import load_lm_head

            lm_head = load_lm_head(model, path)
        return cls(model=model, tokenizer=tokenizer, encoder=encoder,
                   network_scale=float(meta.get("network_scale", 1.0)),
                   length_weight=float(meta.get("length_weight", 0.0)), meta=meta, path=str(path),
                   lm_head=lm_head, likelihood_weight=None if likelihood_weight is None else float(likelihood_weight))

    def network_scores(self, items: Sequence[tuple[Any, str]], *, batch_size: int = 32,
                       progress: Callable[[int], None] | None = None) -> list[float]:
        """Raw network outputs for (messages, reply) items, batched by length; ``progress`` is called with
        the number of items scored after every batch."""
        import torch

        frozen = [(messages_key(m) if m and isinstance(m[0], Mapping) else tuple(m or ()), r) for m, r in items]
        if self.lm_head is not None:
            return self._likelihood_scores(frozen, batch_size=batch_size, progress=progress)
        ids, _ = self.encoder.encode(frozen)
        scores = [0.0] * len(ids)
        device = _device_for(self.model)
        with torch.inference_mode():
            for chunk, input_ids, mask in padded_batches(ids, pad_token_id=self.tokenizer.pad_token_id or 0,
                                                         batch_size=batch_size):
                logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
                for row, i in enumerate(chunk):
                    scores[i] = float(logits[row, 0].float())
                if progress is not None:
                    progress(len(chunk))
        return scores

    def _likelihood_scores(self, items: Sequence[tuple[Any, str]], *, batch_size: int,
                           progress: Callable[[int], None] | None) -> list[float]:
        """The reward head on the head's input plus ``likelihood_weight`` × the reply's mean log-probability,
        both read by ``reward.probe.reply_features`` (the features the head was fitted on)."""
        from reward.probe import head_module, reply_features

        features, _ = reply_features(self.model, self.encoder, items, pad_token_id=self.tokenizer.pad_token_id or 0,
                                     lm_head=self.lm_head, batch_size=batch_size, progress=progress)
        head = head_module(self.model)
        weights = head.weight.detach().double().cpu()[0]
        raw = features[:, :-1] @ weights + float(self.likelihood_weight) * features[:, -1]
        if head.bias is not None:
            raw = raw + float(head.bias.detach()[0])
        return [float(v) for v in raw]

    def score_batch(self, items: Sequence[tuple[Any, str]], *, batch_size: int = 32,
                    progress: Callable[[int], None] | None = None) -> list[float]:
        """Rewards for many (messages, reply) items; messages are role/content dicts or (role, content)."""
        if not items:
            return []
        raw = self.network_scores(items, batch_size=batch_size, progress=progress)
        return [self.network_scale * r + self.length_weight * math.log1p(reply_length(reply))
                for r, (_, reply) in zip(raw, items, strict=True)]

    def score(self, messages: Any, reply: str) -> float:
        """The reward of one reply to a conversation."""
        return self.score_batch([(messages, reply)])[0]

    def score_pairs(self, pairs: Sequence[PreferencePair], *, batch_size: int = 32,
                    progress: Callable[[int], None] | None = None) -> tuple[list[float], list[float]]:
        scores = self.score_batch([(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs],
                                  batch_size=batch_size, progress=progress)
        return scores[:len(pairs)], scores[len(pairs):]

    @property
    def n_members(self) -> int:
        return 1

    def member_scores(self, items: Sequence[tuple[Any, str]], *, batch_size: int = 32) -> list[list[float]]:
        """Rewards per member: one list for a single model (an ensemble has one per member)."""
        return [self.score_batch(items, batch_size=batch_size)]


def progress_bar(total: int, what: str = "Scoring replies") -> Any:
    """The progress bar of a long read of replies (replies read, per second, time left), shown as TRL's
    training bar is, also when the output is not a terminal (a log file)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="reply", disable=False, mininterval=2.0, dynamic_ncols=True)


def check_model_folder(path: str | Path) -> Path:
    """``path`` if it is a model or an ensemble folder (cheap: nothing is loaded), else one clear error."""
    path = Path(path)
    if not ((path / "config.json").is_file() or is_ensemble(path)):
        raise RewardError(f"{path}: not a reward model folder (no config.json or {ENSEMBLE_FILE})")
    return path


def is_ensemble(path: str | Path) -> bool:
    """Whether ``path`` is an ensemble folder (it holds ``therapref_ensemble.json``)."""
    return (Path(path) / ENSEMBLE_FILE).is_file()


@dataclass
class RewardEnsemble:
    """K reward models trained alike with different seeds (``therapref train --ensemble K``).

    It scores like one model, the members' mean reward (so best-of-n and ``therapref evaluate`` take
    an ensemble folder as they take a model folder); ``member_scores`` gives each member's rewards,
    from which :func:`pair_scores` measures how much the members disagree on a pair.
    """

    members: list[RewardModel]
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None, dtype: Any = None) -> RewardEnsemble:
        """Load every member listed in the folder's ``therapref_ensemble.json``."""
        path = Path(path)
        try:
            meta = json.loads((path / ENSEMBLE_FILE).read_text())
            names = [str(name) for name in meta["members"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RewardError(f"{path / ENSEMBLE_FILE}: not an ensemble manifest ({exc})") from None
        if not names:
            raise RewardError(f"{path / ENSEMBLE_FILE}: lists no members")
        members = []
        for name in names:
            member = RewardModel.load(path / name, device=device, dtype=dtype)
            if not isinstance(member, RewardModel):
                raise RewardError(f"{path / name}: an ensemble member cannot itself be an ensemble")
            members.append(member)
        return cls(members=members, meta=meta, path=str(path))

    @property
    def n_members(self) -> int:
        return len(self.members)

    def member_scores(self, items: Sequence[tuple[Any, str]], *, batch_size: int = 32,
                      progress: Callable[[int], None] | None = None) -> list[list[float]]:
        """Rewards per member: ``[member][item]`` (``progress`` counts every member's items)."""
        return [member.score_batch(items, batch_size=batch_size, progress=progress) for member in self.members]

    def score_batch(self, items: Sequence[tuple[Any, str]], *, batch_size: int = 32,
                    progress: Callable[[int], None] | None = None) -> list[float]:
        """The members' mean reward per item."""
        if not items:
            return []
        per_member = self.member_scores(items, batch_size=batch_size, progress=progress)
        return [sum(column) / len(column) for column in zip(*per_member, strict=True)]

    def score(self, messages: Any, reply: str) -> float:
        return self.score_batch([(messages, reply)])[0]

    def score_pairs(self, pairs: Sequence[PreferencePair], *, batch_size: int = 32,
                    progress: Callable[[int], None] | None = None) -> tuple[list[float], list[float]]:
        scores = self.score_batch([(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs],
                                  batch_size=batch_size, progress=progress)
        return scores[:len(pairs)], scores[len(pairs):]


def load_reward_model(path: str | Path, *, device: str | None = None,
                      dtype: Any = None) -> RewardModel | RewardEnsemble:
    """A model folder or an ensemble folder, whichever ``path`` is."""
    return RewardModel.load(path, device=device, dtype=dtype)


def sigmoid(x: float) -> float:
    """σ(x) without overflow.

    >>> sigmoid(0.0), round(sigmoid(800.0), 3), round(sigmoid(-800.0), 3)
    (0.5, 1.0, 0.0)
    """
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


@dataclass(frozen=True)
class PairScore:
    """A model's view of one pair: P(A better), how unsure it is, from how many members."""

    p_a: float
    uncertainty: float
    n_members: int


def pair_probability(member_diffs: Sequence[float]) -> PairScore:
    """P(A better) and its uncertainty from each member's reward difference (A − B).

    P is the mean of the members' σ(difference) (each member's Bradley–Terry probability, averaged:
    the ensemble's predictive probability). Uncertainty is the members' disagreement, the population
    std of their P, for an ensemble; for one model, closeness to a coin flip, 1 − |2P − 1|.

    >>> pair_probability([0.0])
    PairScore(p_a=0.5, uncertainty=1.0, n_members=1)
    >>> s = pair_probability([3.0, -3.0]); round(s.p_a, 3), round(s.uncertainty, 3)
    (0.5, 0.453)
    >>> pair_probability([2.0, 2.0]).uncertainty
    0.0
    """
    if not member_diffs:
        raise RewardError("a pair score needs at least one member")
    probabilities = [sigmoid(d) for d in member_diffs]
    p = sum(probabilities) / len(probabilities)
    if len(probabilities) == 1:
        return PairScore(p_a=p, uncertainty=1.0 - abs(2.0 * p - 1.0), n_members=1)
    spread = math.sqrt(sum((q - p) ** 2 for q in probabilities) / len(probabilities))
    return PairScore(p_a=p, uncertainty=spread, n_members=len(probabilities))


def pair_scores(model: RewardModel | RewardEnsemble, pairs: Sequence[tuple[Any, str, str]], *,
                batch_size: int = 32) -> list[PairScore]:
    """:func:`pair_probability` for many (messages, reply A, reply B) triples, in one scoring pass."""
    if not pairs:
        return []
    items = [(m, a) for m, a, _ in pairs] + [(m, b) for m, _, b in pairs]
    per_member = model.member_scores(items, batch_size=batch_size)
    n = len(pairs)
    return [pair_probability([scores[i] - scores[n + i] for scores in per_member]) for i in range(n)]


@dataclass(frozen=True)
class BestOfN:
    index: int
    reply: str
    scores: list[float]


def best_index(scores: Sequence[float]) -> int:
    """Where the highest score is; the first of equal scores, so that a stable order of the replies
    (e.g. by response id) decides ties.

    >>> best_index([0.1, 0.7, 0.7]), best_index([-2.0])
    (1, 0)
    """
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def best_of_n(model: RewardModel | RewardEnsemble, messages: Any, replies: Sequence[str]) -> BestOfN:
    """Pick the highest-reward reply for one conversation (ties: the first).

    Pass ``RewardModel`` scores for many prompts at once with :func:`best_of_n_many`.
    """
    if not replies:
        raise RewardError("best-of-n needs at least one reply")
    return best_of_n_many(model, [(messages, replies)])[0]


def best_of_n_many(model: RewardModel | RewardEnsemble, groups: Sequence[tuple[Any, Sequence[str]]]) -> list[BestOfN]:
    """Best-of-n for many prompts in one batched scoring pass."""
    if any(not replies for _messages, replies in groups):
        raise RewardError("best-of-n needs at least one reply per prompt")
    scores = model.score_batch([(messages, reply) for messages, replies in groups for reply in replies])
    out, at = [], 0
    for _messages, replies in groups:
        chunk = scores[at:at + len(replies)]
        at += len(replies)
        index = best_index(chunk)
        out.append(BestOfN(index=index, reply=replies[index], scores=chunk))
    return out


def pick_best(scored: Mapping[Any, Sequence[tuple[Any, float]]]) -> dict[Any, Any]:
    """Best item per group from stored scores: {group: [(item, score), ...]} → {group: item}.

    >>> pick_best({1: [(10, 0.2), (11, 0.9)], 2: [(12, -1.0)]})
    {1: 11, 2: 12}
    """
    return {group: items[best_index([score for _, score in items])][0] for group, items in scored.items() if items}


def pick_safe_best(rewards: Sequence[float], unsafe: Sequence[bool] | None = None) -> int:
    """Where the highest reward is among the samples not judged unsafe; among all of them only when
    every sample is unsafe (ties: the first, as :func:`best_index`).

    >>> pick_safe_best([0.9, 0.2, 0.5], [True, False, False])
    2
    >>> pick_safe_best([0.9, 0.2], [True, True]), pick_safe_best([0.1, 0.3])
    (0, 1)
    """
    if not rewards:
        raise RewardError("best-of-n needs at least one sample")
    flags = list(unsafe) if unsafe is not None else [False] * len(rewards)
    safe = [i for i, bad in enumerate(flags) if not bad]
    if not safe:
        return best_index(rewards)
    return safe[best_index([rewards[i] for i in safe])]


def constrained_rewards(rewards: Sequence[float], unsafe: Sequence[bool], *, floor: float | None = None) -> list[float]:
    """Rewards with the safety constraint applied: an unsafe sample gets the lowest reward of the
    batch (``floor`` when given, else one below the lowest), whatever the preference model says.

    >>> constrained_rewards([2.0, 0.5, -1.0], [True, False, False])
    [-2.0, 0.5, -1.0]
    >>> constrained_rewards([2.0], [True], floor=-10.0)
    [-10.0]
    """
    low = floor if floor is not None else min(rewards, default=0.0) - 1.0
    return [low if bad else float(r) for r, bad in zip(rewards, unsafe, strict=True)]
