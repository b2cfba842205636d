"""The loop, online: ``run_loop`` runs R rounds of iterated (on-policy) DPO in one folder.

Each round ``DIR/round-r`` starts from the policy of the round before (round 1 from the base model):

1. **sample**: the current policy is registered (``policy.register.register_policy``: its GGUF, as any
   policy) under two sampler names, ``NAME-rR-a`` and ``NAME-rR-b``, and each writes one reply per
   training prompt at ``sample_temperature`` (seeds differ), through ``candidates.generate`` as
   ``therapref generate`` does; the edge's ``pair`` makes the comparisons between the two (four
   eyes see two samples of the same policy, never which is which);
2. **judge**: the edge's ``judge`` has them judged (a reward model through ``therapref judge --judge
   reward:DIR``'s library call: judgments of a ``judge:`` source), or, without one, they wait in the
   clinicians' queue and the call stops with one line saying how many are left; the next call goes on;
3. **round**: ``policy.loop.run_round`` in the round's folder: export of those judgments (DPO pairs of the
   two samplers' replies only), DPO from the current policy, register, A/B test against the base of
   round 1 on prompts no round trained on.

Resumable at every step: finished rounds are kept (``round.json`` says so), replies and judgments already
stored are not asked for again. The edge hands in ``pair``, ``judge`` and ``make_export`` so that this
module imports no sibling area beyond the shared owners.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from db.engine import read_only_engine, session_scope
from policy.loop import POLICY_DIR, ExportFn, RoundConfig, RoundError, RoundResult, check_config, read_round, run_round

#: (prompt ids, sampler names) → comparison ids between the samplers' replies on those prompts.
PairFn = Callable[[Sequence[int], Sequence[str]], list[int]]
#: comparison ids → one line on what was judged (a reward model's verdicts stored as judgments).
JudgeFn = Callable[[Sequence[int]], str]
#: sampler names → the export function of ``run_round`` restricted to their replies.
MakeExportFn = Callable[[Sequence[str]], ExportFn]


@dataclass
class LoopResult:
    """What ``run_loop`` did: one ``RoundResult`` per finished round, and lines for the log."""

    output: Path
    rounds: list[RoundResult] = field(default_factory=list)
    waiting: str | None = None

    @property
    def summary(self) -> str:
        if self.waiting:
            return self.waiting
        last = self.rounds[-1] if self.rounds else None
        return (f"Loop {self.output}: {len(self.rounds)} rounds finished; last: {last.summary}" if last else
                f"Loop {self.output}: no round finished")


def round_dir(output: Path, number: int) -> Path:
    """>>> round_dir(Path("runs/loop"), 2).as_posix()
    'runs/loop/round-2'
    """
    return output / f"round-{number}"


def sampler_names(name: str, number: int) -> tuple[str, str]:
    """The two names under which round ``number``'s policy samples.

    >>> sampler_names("gaby", 3)
    ('gaby-r3-a', 'gaby-r3-b')
    """
    return f"{name}-r{number}-a", f"{name}-r{number}-b"


def _policy_folder(config: RoundConfig, output: Path, number: int) -> Path:
    """The causal LM that round ``number`` starts from (and samples with)."""
    if number > 1:
        return round_dir(output, number - 1) / POLICY_DIR
    if config.base_model == "embedded":
        from candidates.embedded import smollm2_hf_path

        return Path(smollm2_hf_path())
    return Path(config.base_model)


def _sample(engine: Engine, config: RoundConfig, folder: Path, names: Sequence[str], prompt_ids: Sequence[int], *,
            temperature: float, generation: dict[str, Any], progress: bool) -> str:
    """Register ``folder`` under the sampler names and write one reply per prompt from each."""
    from candidates.generate import run_generation
    from policy.abtest import spec_for
    from policy.register import register_policy

    specs = []
    with session_scope(engine) as session:
        for offset, name in enumerate(names):
            row = register_policy(folder, name, session=session, system_prompt=config.system_prompt,
                                  note=lambda _line: None)
            overrides = {**generation, "temperature": temperature, "replies_per_prompt": 1,
                         "seed": int(generation.get("seed", config.seed)) * 2 + offset}
            if config.max_tokens:
                overrides["max_tokens"] = config.max_tokens
            specs.append(spec_for(row, overrides=overrides))
    summary = run_generation(engine, specs, prompt_ids=list(prompt_ids), progress=progress)
    return str(summary)


def comparisons_between(names: Sequence[str], prompt_ids: Sequence[int], *, session: Any) -> list[int]:
    """Ids of the comparisons between replies of the named candidates on the prompts, in id order."""
    from sqlalchemy import select
    from sqlalchemy.orm import aliased

    from db.models import CandidateModel, Comparison, Response

    ra, rb = aliased(Response), aliased(Response)
    ca, cb = aliased(CandidateModel), aliased(CandidateModel)
    query = (select(Comparison.id)
             .join(ra, ra.id == Comparison.response_a_id).join(rb, rb.id == Comparison.response_b_id)
             .join(ca, ca.id == ra.candidate_model_id).join(cb, cb.id == rb.candidate_model_id)
             .where(ca.name.in_(list(names)), cb.name.in_(list(names)), Comparison.prompt_id.in_(list(prompt_ids)))
             .order_by(Comparison.id))
    return list(session.execute(query).scalars().all())


def _unjudged(comparison_ids: Sequence[int], *, engine: Engine) -> int:
    from sqlmodel import func, select

    from db.models import Judgment

    if not comparison_ids:
        return 0
    with session_scope(read_only_engine(engine)) as session:
        judged = session.exec(select(func.count(func.distinct(Judgment.comparison_id)))
                              .where(Judgment.comparison_id.in_(list(comparison_ids)))).one()
    return len(comparison_ids) - int(judged)


def run_loop(output: str | Path, config: RoundConfig, *, rounds: int, engine: Engine, train_prompts: Sequence[int],
             pair: PairFn, make_export: MakeExportFn, judge: JudgeFn | None = None, base: str | None = None,
             sample_temperature: float = 1.0, generation: dict[str, Any] | None = None,
             log: Callable[[str], None] = print, progress: bool = False) -> LoopResult:
    """Run (or resume) ``rounds`` rounds of iterated DPO in ``output``; see the module docstring.

    ``train_prompts``: the prompts every round samples on (the A/B tests leave them out). ``base``: the
    A/B base of every round (default: the base model, registered as ``run_round`` registers it).
    ``generation`` overrides the sampling and A/B generation settings (threads, seed, max_tokens)."""
    from policy.loop import ensure_default_base

    output = Path(output)
    config = check_config(replace(config))
    if config.method != "dpo":
        raise RoundError(f"loop run iterates dpo (each round's pairs come from the policy); not {config.method}")
    if rounds < 1:
        raise RoundError(f"--rounds must be at least 1, not {rounds}")
    if not train_prompts:
        raise RoundError("no training prompts to sample on (all are in A/B tests, or none match --train-prompts)")
    if not 0.0 < sample_temperature <= 2.0:
        raise RoundError(f"--sample-temperature must be in (0, 2], not {sample_temperature:g}")
    output.mkdir(parents=True, exist_ok=True)
    name = (config.name or f"loop-{output.resolve().name}").strip()
    generation = dict(generation or {})
    if base is None:
        with session_scope(engine) as session:
            base = config.against or ensure_default_base(config.base_model, session=session,
                                                         system_prompt=config.system_prompt)
    result = LoopResult(output=output)
    for number in range(1, rounds + 1):
        folder = round_dir(output, number)
        names = sampler_names(name, number)
        started = time.perf_counter()
        policy = _policy_folder(config, output, number)
        settings = replace(config, name=f"{name}-r{number}", against=base,
                           base_model=str(policy if number > 1 else config.base_model))
        record = read_round(folder)
        if record and all(step.get("status") == "done" for step in record.get("steps", {}).values()):
            outcome = run_round(folder, settings, engine=engine, export=make_export(names), log=lambda _line: None)
            log(f"round {number}: done earlier ({outcome.summary})")
            result.rounds.append(outcome)
            continue
        log(f"round {number}: sampling {len(train_prompts)} prompts × 2 from {policy}: " + _sample(
            engine, config, policy, names, train_prompts, temperature=sample_temperature, generation=generation,
            progress=progress))
        comparisons = pair(train_prompts, names)
        if judge is not None:
            log(f"round {number}: {judge(comparisons)}")
        waiting = _unjudged(comparisons, engine=engine)
        if waiting:
            result.waiting = (f"Round {number} of {output}: {waiting} of {len(comparisons)} comparisons of the "
                              "policy's samples wait for clinicians; judge them in the app, then run again.")
            log(result.waiting)
            return result
        outcome = run_round(folder, settings, engine=engine, export=make_export(names), log=log,
                            generation=generation or None, progress=progress)
        log(f"round {number}: {outcome.summary} ({time.perf_counter() - started:.0f} s)")
        result.rounds.append(outcome)
    return result


__all__ = ["LoopResult", "comparisons_between", "run_loop", "round_dir", "sampler_names"]
