"""Best-of-n candidates: sample N replies from a base configuration, keep the reward model's best.

A ``[[candidate]]`` with ``best_of = N`` and ``reward_model = "DIR"`` (or ``therapref candidates add
NAME --best-of N --of BASE --reward-model DIR``) runs its own provider N times per stored reply, with
seeds ``seed * 1000 + i`` (so a re-run asks for the same samples), scores every sample with the reward
model (``reward.scoring``) and stores the best as the candidate's reply; all N samples and their scores
go to ``BestOfNSample`` beside it. With ``safety_model``, a sample whose safety score is below
``safety_threshold`` is never picked while a safe one exists (``reward.scoring.pick_safe_best``).

Speed on a CPU: the N samples of a prompt run one after another in one llama.cpp context, and
llama-cpp-python keeps the prompt's KV cache between calls that share it, so the prompt is read once
per prompt rather than once per sample; ``bench/best_of_n.py`` measures this against transformers'
batched ``generate`` (``num_return_sequences``-style rows of one prompt).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from candidates.providers import Emit, Failure, Job, Reply, make_provider
from candidates.registry import CandidateSpec
from db.errors import TheraPrefError


class BestOfNError(TheraPrefError, ValueError):
    """A best-of-n configuration that cannot run (shown as one line)."""


#: Samples per reply are numbered below this (``registry`` caps ``best_of`` at it).
SEED_STRIDE = 1000


def sample_seed(seed: int | None, index: int) -> int | None:
    """Seed of sample ``index`` of a reply sampled with ``seed``: distinct across replies and samples,
    and independent of N, so that best-of-4's samples are the first four of best-of-16's (the same
    draws: a larger N can only find a better reply).

    >>> [sample_seed(3, i) for i in range(3)], sample_seed(None, 1)
    ([3000, 3001, 3002], None)
    """
    return None if seed is None else seed * SEED_STRIDE + index


@dataclass
class SampleScore:
    """One sample's reward, its safety score (None without a safety model) and verdict."""

    reward: float
    safety: float | None = None
    unsafe: bool = False


@dataclass
class Scorers:
    """The reward model (and safety model) of a best-of-n candidate, loaded once per run."""

    reward: Any
    safety: Any = None
    safety_threshold: float = 0.0
    reward_path: str = ""
    safety_path: str | None = None

    def score(self, context: Sequence[Any], texts: Sequence[str]) -> list[SampleScore]:
        """Reward (and safety) of each reply to the conversation ``context`` (role/content dicts)."""
        return self.score_items([(list(context), text) for text in texts])

    def score_items(self, items: Sequence[tuple[Any, str]]) -> list[SampleScore]:
        """Reward (and safety) of (conversation, reply) items, in one batch per model."""
        items = list(items)
        rewards = self.reward.score_batch(items)
        if self.safety is None:
            return [SampleScore(float(r)) for r in rewards]
        safety = self.safety.score_batch(items)
        return [SampleScore(float(r), float(s), float(s) < self.safety_threshold)
                for r, s in zip(rewards, safety, strict=True)]


def check_folders(spec: CandidateSpec) -> None:
    """The reward (and safety) folder of a best-of-n spec exist and are reward models (nothing loaded)."""
    from reward.scoring import RewardError, check_model_folder

    for label, path in (("reward_model", spec.reward_model), ("safety_model", spec.safety_model)):
        if path is None:
            continue
        try:
            check_model_folder(path)
        except RewardError as exc:
            raise BestOfNError(f"candidate {spec.name!r}: {label} {exc}") from None


def load_scorers(settings: Any, *, where: str | None = None) -> Scorers:
    """Load the reward (and safety) model that ``settings`` names (``reward_model``, ``safety_model``,
    ``safety_threshold``: a best-of-n spec, or the config of rs/grpo/rloo), on the CPU; a model that will
    not load is one line starting with ``where`` (default: the candidate's name)."""
    from reward.scoring import RewardError, load_reward_model

    where = where or f"candidate {settings.name!r}"
    try:
        reward = load_reward_model(str(settings.reward_model), device="cpu")
        safety = load_reward_model(str(settings.safety_model), device="cpu") if settings.safety_model else None
    except (RewardError, OSError, ValueError) as exc:
        raise BestOfNError(f"{where}: cannot load its reward model: {str(exc).splitlines()[0]}") from None
    return Scorers(reward, safety, float(settings.safety_threshold), str(settings.reward_model),
                   settings.safety_model)


def pick(scores: Sequence[SampleScore]) -> int:
    """The sample to keep: the highest reward among the safe ones (``reward.scoring.pick_safe_best``)."""
    from reward.scoring import pick_safe_best

    return pick_safe_best([s.reward for s in scores], [s.unsafe for s in scores])


def base_spec(spec: CandidateSpec) -> CandidateSpec:
    """The configuration that draws the samples: the same candidate without best-of-n."""
    return replace(spec, best_of=1, reward_model=None, safety_model=None)


@dataclass
class Picked:
    """The outcome of best-of-n for one reply: the kept sample and every sample's record."""

    reply: Reply
    samples: list[dict[str, Any]] = field(default_factory=list)


def assemble(texts: Sequence[str], metas: Sequence[dict[str, Any]], seeds: Sequence[int | None],
             scores: Sequence[SampleScore], *, n: int, scorers: Scorers, seconds: float) -> Picked:
    """The stored reply (the picked sample, its meta saying how it was chosen) and the samples' rows."""
    index = pick(scores)
    samples = [{"sample_index": i, "text": text, "reward": s.reward, "safety": s.safety, "unsafe": s.unsafe,
                "picked": i == index, "seed": seed, "meta": meta}
               for i, (text, meta, seed, s) in enumerate(zip(texts, metas, seeds, scores, strict=True))]
    meta = dict(metas[index])
    tokens = sum(int(m.get("completion_tokens") or 0) for m in metas)
    meta.update(completion_tokens=tokens, best_of={
        "n": n, "sampled": len(texts), "picked": index, "reward": scores[index].reward,
        "safety": scores[index].safety, "unsafe": scores[index].unsafe,
        "all_unsafe": all(s.unsafe for s in scores), "reward_model": scorers.reward_path,
        "safety_model": scorers.safety_path, "seconds": round(seconds, 4)})
    return Picked(Reply(texts[index], meta), samples)


class BestOfNProvider:
    """Wraps the provider of the base configuration: N sub-jobs per job, scored and picked as they
    complete. Emits ``Reply`` objects whose ``samples`` hold the rows for ``BestOfNSample``."""

    def __init__(self, spec: CandidateSpec, *, secrets: Any = None, local_lock: asyncio.Lock | None = None) -> None:
        self.spec = spec
        self.inner = make_provider(base_spec(spec), secrets=secrets, local_lock=local_lock)
        self.scorers: Scorers | None = None

    async def start(self) -> None:
        check_folders(self.spec)
        self.scorers = await asyncio.to_thread(load_scorers, self.spec)
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def run(self, jobs: list[Job], emit: Emit) -> None:
        n = self.spec.best_of
        pending: dict[int, dict[str, Any]] = {}
        sub_jobs: list[Job] = []
        owner: dict[int, tuple[int, int]] = {}
        for number, job in enumerate(jobs):
            subs = [replace(job, seed=sample_seed(job.seed, i)) for i in range(n)]
            pending[number] = {"job": job, "subs": subs, "outcomes": {}, "started": time.perf_counter()}
            for i, sub in enumerate(subs):
                owner[id(sub)] = (number, i)
            sub_jobs.extend(subs)

        async def collect(sub: Job, outcome: Reply | Failure) -> None:
            number, index = owner[id(sub)]
            state = pending[number]
            state["outcomes"][index] = outcome
            if len(state["outcomes"]) < n:
                return
            await emit(state["job"], await asyncio.to_thread(self._finish, state))
            del pending[number]

        await self.inner.run(sub_jobs, collect)

    def _finish(self, state: dict[str, Any]) -> Reply | Failure:
        job, outcomes = state["job"], state["outcomes"]
        ok = [(i, o) for i, o in sorted(outcomes.items()) if isinstance(o, Reply)]
        if not ok:
            first = next(iter(outcomes.values()))
            return Failure(f"every one of {self.spec.best_of} samples failed: {first.error}")
        context = job.score_context if job.score_context is not None else job.messages
        assert self.scorers is not None
        texts = [o.text for _, o in ok]
        scores = self.scorers.score(context, texts)
        seeds = [state["subs"][i].seed for i, _ in ok]
        picked = assemble(texts, [dict(o.meta) for _, o in ok], seeds, scores, n=self.spec.best_of,
                          scorers=self.scorers, seconds=time.perf_counter() - state["started"])
        picked.reply.samples = picked.samples
        return picked.reply


def register_best_of_n(name: str, *, of: str, best_of: int, reward_model: str, session: Any,
                       safety_model: str | None = None, safety_threshold: float = 0.0,
                       actor: str = "cli") -> Any:
    """Register (or refresh) the best-of-n candidate ``name``: ``of``'s configuration (provider, model,
    endpoint, system prompt, generation parameters) sampled ``best_of`` times, the reward model's best
    kept. The caller commits; bad input raises before anything is written."""
    from pathlib import Path

    from sqlmodel import select

    from candidates.registry import BEST_OF_PARAM, POLICY_PARAM, RegistryError, spec_from_dict
    from db.audit import audit
    from db.models import CandidateModel

    name = name.strip()
    if not name:
        raise BestOfNError("candidate name must not be empty")
    if name == of:
        raise BestOfNError("a best-of-n candidate needs a name of its own (not its base's)")
    base = session.exec(select(CandidateModel).where(CandidateModel.name == of)).first()
    if base is None:
        raise BestOfNError(f"--of: unknown candidate {of!r} (register it first: `therapref generate` with it in "
                           "candidates.toml, or `therapref candidates add`)")
    params = {k: v for k, v in (base.params or {}).items() if k not in (BEST_OF_PARAM, POLICY_PARAM)}
    values = {**params, "name": name, "provider": base.provider, "model_id": base.model_id or "embedded",
              "base_url": base.endpoint, "api_key_env": base.api_key_env, "system_prompt": base.system_prompt,
              "best_of": best_of, "reward_model": str(Path(reward_model).expanduser().resolve()),
              "safety_model": str(Path(safety_model).expanduser().resolve()) if safety_model else None,
              "safety_threshold": float(safety_threshold)}
    try:
        spec = spec_from_dict({k: v for k, v in values.items() if v is not None or k == "system_prompt"},
                              where=f"candidate {name!r}")
    except RegistryError as exc:
        raise BestOfNError(str(exc)) from None
    check_folders(spec)
    row = session.exec(select(CandidateModel).where(CandidateModel.name == name)).first()
    if row is not None and BEST_OF_PARAM not in (row.params or {}):
        raise BestOfNError(f"candidate {name!r} already exists and is not a best-of-n candidate; choose another name")
    if row is not None and (row.params or {}).get(BEST_OF_PARAM, {}).get("of") != of:
        raise BestOfNError(f"candidate {name!r} is best-of-n of {row.params[BEST_OF_PARAM].get('of')!r}, not of "
                           f"{of!r}: its replies would mix; choose another name")
    stored = {**spec.params(), "reward_model": spec.reward_model, "safety_model": spec.safety_model,
              BEST_OF_PARAM: {"of": of}}
    if row is None:
        row = CandidateModel(name=name)
    row.provider, row.model_id, row.endpoint = spec.provider, spec.model_id, spec.base_url
    row.api_key_env, row.system_prompt, row.params = spec.api_key_env, spec.system_prompt, stored
    row.replies_per_prompt = base.replies_per_prompt or 1
    session.add(row)
    session.flush()
    audit(actor, "candidate.best_of_n", session=session, target=f"candidate:{row.id}",
          details={"name": name, "of": of, "best_of": best_of, "reward_model": spec.reward_model,
                   "safety_model": spec.safety_model})
    return row


__all__ = ["BestOfNError", "BestOfNProvider", "Picked", "SampleScore", "Scorers", "assemble", "base_spec",
           "check_folders", "load_scorers", "pick", "register_best_of_n", "sample_seed"]
