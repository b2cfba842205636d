"""``create_abtest``: a blinded head-to-head of a new candidate (a fine-tuned policy) against a base,
on prompts the new one was not trained on, at the front of the clinicians' queues.

Steps:

1. **Held-out prompts.** NEW's PolicyRun (``PolicyRun.candidate_model_id``) carries the export
   manifest it was trained on as ``provenance``; its ``prompt_ids`` (written by every export) are the
   prompts NEW has seen. A manifest without them (an older export) falls back to the training file:
   each row's conversation (system message and final reply left out) is hashed with
   ``db.hashing.prompt_hash``, the hash the importers use, and matched against every prompt's
   conversation. A candidate without a PolicyRun (an external model) has seen nothing we know of:
   every prompt is eligible and the result says so.
2. **Which prompts.** ``prompts``: ``None`` = every eligible prompt; ``N`` (an int, or a string of
   digits) = N of them drawn at random with ``seed``; a SPEC = a comma list of prompt ids or ranges
   (``3,7-9``, ``id:12``), ``source:NAME`` and ``topic:NAME`` (``parse_prompt_spec``). Prompts NEW was
   trained on are left out of every choice and counted.
3. **Replies.** Both candidates' missing replies for those prompts are generated with the candidates
   generation library (``candidates.generate.run_generation``, as ``therapref generate`` does),
   unless ``generate=False`` or the candidate is a non-model source (its stored replies are used).
4. **Comparisons.** Per prompt, NEW's first reply against BASE's first reply (``db.crud.add_comparison``:
   canonical order, blinded; the app randomises the screen side), ``judgments_required`` = overlap,
   ``priority`` above every other comparison by default (``db.crud.set_priorities``), an ``AbTest`` row
   and an audit event.

Idempotent: a second run finds the same prompts, comparisons and AbTest row and creates nothing.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from db.crud import add_comparison, audit, set_priorities
from db.engine import read_only_engine, session_scope
from db.errors import TheraPrefError
from db.hashing import prompt_hash
from db.models import AbTest, CandidateModel, Comparison, PolicyRun, Prompt, Response
from db.rules import id_range

# Keys under which a PolicyRun may name its training file when the manifest lacks prompt_ids.
TRAINING_FILE_KEYS = ("path", "data", "train_file", "dataset", "file")


class AbTestError(TheraPrefError, ValueError):
    """A problem with an A/B test request, shown as one line."""


# --- Pure rules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptSpec:
    """Which prompts an A/B test asks for: all, a random count, or named ids/sources/topics."""

    count: int | None = None
    ids: tuple[int, ...] = ()
    sources: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()

    @property
    def everything(self) -> bool:
        return self.count is None and not (self.ids or self.sources or self.topics)


def parse_prompt_spec(spec: int | str | None) -> PromptSpec:
    """``--prompts``: N (random eligible prompts), or a comma list of ids / ranges / ``id:N`` /
    ``source:NAME`` / ``topic:NAME``; ``None`` or ``all`` = every eligible prompt. A bare number is a
    count; name one prompt as ``id:7`` (or ``7,``).

    >>> parse_prompt_spec("20")
    PromptSpec(count=20, ids=(), sources=(), topics=())
    >>> parse_prompt_spec("1, 3,7-9,id:12,source:gaby,topic:sleep")
    PromptSpec(count=None, ids=(1, 3, 7, 8, 9, 12), sources=('gaby',), topics=('sleep',))
    >>> parse_prompt_spec(None).everything, parse_prompt_spec("7,").ids
    (True, (7,))
    >>> parse_prompt_spec("0")
    Traceback (most recent call last):
    ...
    policy.abtest.AbTestError: --prompts: N must be at least 1, not 0
    >>> parse_prompt_spec("3-1,x")
    Traceback (most recent call last):
    ...
    policy.abtest.AbTestError: --prompts: bad range '3-1'
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return PromptSpec()
    if isinstance(spec, bool):
        raise AbTestError(f"--prompts: {spec!r} is not a count or a list")
    if isinstance(spec, int) or re.fullmatch(r"\s*\d+\s*", spec):
        count = int(spec)
        if count < 1:
            raise AbTestError(f"--prompts: N must be at least 1, not {count}")
        return PromptSpec(count=count)
    ids: list[int] = []
    sources: list[str] = []
    topics: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, colon, value = part.partition(":")
        if colon and kind.strip() in ("source", "topic"):
            if not value.strip():
                raise AbTestError(f"--prompts: {part!r} names no {kind.strip()}")
            (sources if kind.strip() == "source" else topics).append(value.strip())
            continue
        if colon and kind.strip() == "id":
            part = value.strip()
        elif colon:
            raise AbTestError(f"--prompts: unknown selector {kind.strip()!r} in {part!r} "
                              "(expected ids, id:N, source:NAME or topic:NAME)")
        try:
            ids.extend(id_range(part, "--prompts"))
        except ValueError as exc:
            if "bad range" in str(exc):
                raise AbTestError(str(exc)) from None
            raise AbTestError(f"--prompts: {part!r} is not an id, a range like 3-9, source:NAME or "
                              "topic:NAME") from None
    if not (ids or sources or topics):
        raise AbTestError("--prompts: nothing selected")
    return PromptSpec(ids=tuple(dict.fromkeys(ids)), sources=tuple(dict.fromkeys(sources)),
                      topics=tuple(dict.fromkeys(topics)))


def row_conversation(row: Any) -> list[dict[str, str]] | None:
    """The prompt conversation of one training-file row (SFT ``messages``, TRL ``prompt`` as chat or
    text, OpenAI-DPO ``input.messages``): user/assistant turns up to the last user turn, the system
    message left out (exports may replace it). ``None`` for a row of another shape.

    >>> row_conversation({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"},
    ...                                {"role": "assistant", "content": "hello"}]})
    [{'role': 'user', 'content': 'hi'}]
    >>> row_conversation({"prompt": "hi", "completion": "x", "label": True})
    [{'role': 'user', 'content': 'hi'}]
    >>> row_conversation({"input": {"messages": [{"role": "user", "content": "hi"}]}})
    [{'role': 'user', 'content': 'hi'}]
    >>> row_conversation({"text": "plain"}) is None
    True
    """
    if not isinstance(row, dict):
        return None
    messages: Any = row.get("messages")
    if messages is None and isinstance(row.get("input"), dict):
        messages = row["input"].get("messages")
    if messages is None:
        messages = row.get("prompt")
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return None
    turns = [{"role": str(m.get("role")), "content": str(m.get("content", ""))} for m in messages
             if m.get("role") in ("user", "assistant")]
    last_user = max((i for i, m in enumerate(turns) if m["role"] == "user"), default=None)
    return None if last_user is None else turns[:last_user + 1]


def conversation_key(messages: Sequence[Mapping[str, Any]]) -> str:
    """The content hash of a conversation without its system message (``db.hashing.prompt_hash``).

    >>> conversation_key([{"role": "user", "content": "hi "}]) == conversation_key([{"role": "user", "content": "hi"}])
    True
    """
    turns = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages
             if m.get("role") in ("user", "assistant")]
    return prompt_hash(turns, None)


def choose_prompts(eligible: Sequence[int], count: int | None, seed: int) -> list[int]:
    """``count`` of the eligible prompt ids drawn at random with ``seed`` (all when ``None`` or when
    fewer are eligible), in id order; the same ids and seed give the same draw.

    >>> choose_prompts([5, 1, 9, 3], 2, 0) == choose_prompts([1, 3, 5, 9], 2, 0)
    True
    >>> choose_prompts([5, 1], None, 0), choose_prompts([5, 1], 9, 0)
    ([1, 5], [1, 5])
    """
    pool = sorted(set(eligible))
    if count is None or count >= len(pool):
        return pool
    return sorted(random.Random(f"abtest:{seed}").sample(pool, count))


# --- Reading what a policy was trained on -------------------------------------------------------------


@dataclass
class Seen:
    """Prompts a candidate was trained on and how that was found out."""

    prompt_ids: set[int] = field(default_factory=set)
    basis: str = ""
    policy_run_id: int | None = None


def _training_file(run: PolicyRun) -> Path | None:
    for where in (run.provenance or {}, run.config or {}):
        for key in TRAINING_FILE_KEYS:
            value = where.get(key)
            if isinstance(value, str) and value:
                return Path(value)
    return None


def _file_rows(path: Path) -> Iterator[Any]:
    """The JSON rows of a JSONL training file (one clear error naming file and line)."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise AbTestError(f"{path}: cannot read the policy's training file ({exc.strerror or exc})") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise AbTestError(f"{path}:{number}: not a JSON line ({exc.msg})") from None


def prompts_in_file(path: Path, *, session: Session) -> set[int]:
    """Prompt ids whose conversation (system message aside) appears in the training file ``path``."""
    if path.is_dir():
        raise AbTestError(f"{path}: a dataset folder without prompt_ids in its manifest; re-export it "
                          "(exports now list prompt_ids) or pass the prompts explicitly")
    keys = {conversation_key(c) for row in _file_rows(path) if (c := row_conversation(row))}
    seen = set()
    for prompt_id, messages in session.exec(select(Prompt.id, Prompt.messages)):
        if keys and conversation_key(messages or []) in keys:
            seen.add(prompt_id)
    return seen


def seen_prompts(candidate: CandidateModel, *, session: Session) -> Seen:
    """What ``candidate`` was trained on, from its newest PolicyRun (see the module docstring)."""
    run = session.exec(select(PolicyRun).where(PolicyRun.candidate_model_id == candidate.id)
                       .order_by(PolicyRun.id.desc())).first()
    if run is None:
        return Seen(basis=f"{candidate.name} has no policy run (an external candidate): every prompt is eligible")
    listed = (run.provenance or {}).get("prompt_ids")
    if isinstance(listed, list):
        return Seen({int(i) for i in listed}, f"policy run {run.id}: the export manifest's prompt_ids", run.id)
    path = _training_file(run)
    if path is None:
        raise AbTestError(f"policy run {run.id} of {candidate.name!r} records neither prompt_ids nor its training "
                          "file: cannot tell which prompts it was trained on")
    return Seen(prompts_in_file(path, session=session),
                f"policy run {run.id}: conversations of {path} matched by content hash", run.id)


# --- Creating the test ----------------------------------------------------------------------------------


@dataclass
class AbTestResult:
    """What ``create_abtest`` did; ``str()`` is the command's one line."""

    abtest_id: int
    new: str
    base: str
    prompt_ids: list[int]
    created: int = 0
    existing: int = 0
    excluded_seen: int = 0
    missing_replies: int = 0
    overlap: int = 1
    priority: float = 0.0
    policy_run_id: int | None = None
    basis: str = ""
    all_eligible: bool = False
    generation: str = ""

    def __str__(self) -> str:
        """>>> print(AbTestResult(3, "new", "base", [1, 2], created=2, excluded_seen=4, overlap=2, priority=1.0))
        A/B test 3: new vs base on 2 prompts: 2 comparisons created (0 already existed), overlap 2, priority 1; 4 prompts excluded as seen in training.
        """  # noqa: E501
        text = (f"A/B test {self.abtest_id}: {self.new} vs {self.base} on {len(self.prompt_ids)} prompts: "
                f"{self.created} comparisons created ({self.existing} already existed), overlap {self.overlap}, "
                f"priority {self.priority:g}; {self.excluded_seen} prompts excluded as seen in training")
        if self.all_eligible:
            text += f" ({self.basis})"
        if self.missing_replies:
            text += f"; {self.missing_replies} prompts left out for want of a reply from both candidates"
        return text + "."

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _candidate(name: str, *, session: Session) -> CandidateModel:
    row = session.exec(select(CandidateModel).where(CandidateModel.name == name)).first()
    if row is None:
        known = ", ".join(sorted(session.exec(select(CandidateModel.name)).all())) or "none"
        raise AbTestError(f"unknown candidate {name!r} (known: {known})")
    return row


def _requested(spec: PromptSpec, *, session: Session) -> list[int]:
    """Every prompt id the spec names, after checking that each id, source and topic exists."""
    if spec.everything or spec.count is not None:
        return list(session.exec(select(Prompt.id).order_by(Prompt.id)).all())
    chosen: set[int] = set()
    if spec.ids:
        found = set(session.exec(select(Prompt.id).where(Prompt.id.in_(spec.ids))).all())
        missing = [i for i in spec.ids if i not in found]
        if missing:
            raise AbTestError(f"--prompts: unknown prompt id(s): {', '.join(map(str, missing[:10]))}")
        chosen |= found
    for column, names, label in ((Prompt.source, spec.sources, "source"), (Prompt.topic, spec.topics, "topic")):
        for name in names:
            ids = set(session.exec(select(Prompt.id).where(column == name)).all())
            if not ids:
                raise AbTestError(f"--prompts: no prompts with {label} {name!r}")
            chosen |= ids
    return sorted(chosen)


def _replied(candidate_id: int, prompt_ids: Sequence[int], *, session: Session) -> set[int]:
    if not prompt_ids:
        return set()
    return set(session.exec(select(Response.prompt_id).where(
        Response.candidate_model_id == candidate_id, Response.prompt_id.in_(list(prompt_ids)))).all())


def _can_generate(candidate: CandidateModel) -> bool:
    from candidates.generate import PROVIDERS  # the providers run_generation knows

    return candidate.provider in PROVIDERS


def spec_for(candidate: CandidateModel, *, overrides: Mapping[str, Any] | None = None) -> Any:
    """A generation spec (``CandidateSpec``, as ``candidates.generate`` takes it) rebuilt from a
    registered candidate: provider, model, endpoint, API-key variable NAME, system prompt, params."""
    from candidates.generate import CandidateSpec

    known = {f.name for f in fields(CandidateSpec)}
    params = {k: v for k, v in (candidate.params or {}).items() if k in known}
    values = {**params, "name": candidate.name, "provider": candidate.provider,
              "model_id": candidate.model_id or "embedded", "base_url": candidate.endpoint,
              "api_key_env": candidate.api_key_env, "system_prompt": candidate.system_prompt,
              "replies_per_prompt": candidate.replies_per_prompt or 1, **dict(overrides or {})}
    return CandidateSpec(**{k: v for k, v in values.items() if k in known})


@dataclass
class _Plan:
    new: CandidateModel
    base: CandidateModel
    seen: Seen
    prompt_ids: list[int]
    excluded: int
    generate_for: list[str]


def _plan(new: str, base: str, spec: PromptSpec, *, session: Session, seed: int, generate: bool) -> _Plan:
    if new == base:
        raise AbTestError("NEW and BASE must be two different candidates")
    new_row, base_row = _candidate(new, session=session), _candidate(base, session=session)
    seen = seen_prompts(new_row, session=session)
    requested = _requested(spec, session=session)
    eligible = [p for p in requested if p not in seen.prompt_ids]
    excluded = len(requested) - len(eligible)
    if spec.count is not None:
        # Draw only among prompts that can end up compared: a side that cannot generate needs a reply.
        for row in (new_row, base_row):
            if not (generate and _can_generate(row)):
                have = _replied(row.id, eligible, session=session)
                eligible = [p for p in eligible if p in have]
    chosen = choose_prompts(eligible, spec.count, seed)
    if not chosen:
        raise AbTestError(f"no eligible prompts for {new} vs {base}: {excluded} of {len(requested)} requested were "
                          "in its training data" + ("" if generate else " (and generate is off: both need replies)"))
    generating = [row.name for row in (new_row, base_row) if generate and _can_generate(row)]
    return _Plan(new_row, base_row, seen, chosen, excluded, generating)


def _first_replies(candidate_id: int, prompt_ids: Sequence[int], *, session: Session) -> dict[int, Response]:
    """Each prompt's earliest reply from the candidate (the one a re-run pairs again)."""
    out: dict[int, Response] = {}
    for start in range(0, len(prompt_ids), 500):
        chunk = list(prompt_ids[start:start + 500])
        for reply in session.exec(select(Response).where(
                Response.candidate_model_id == candidate_id, Response.prompt_id.in_(chunk))
                .order_by(Response.prompt_id, Response.id)):
            out.setdefault(reply.prompt_id, reply)
    return out


def _front_priority(exclude: set[int], *, session: Session) -> float:
    """One above the highest priority of any other comparison (at least 1): the front of every queue."""
    query = select(func.max(Comparison.priority))
    if exclude:
        query = query.where(Comparison.id.notin_(sorted(exclude)))
    top = session.exec(query).first()
    return max(1.0, float(top or 0.0) + 1.0)


def _compare(plan: _Plan, *, session: Session, overlap: int, priority: float | None, actor: str,
             details: Mapping[str, Any]) -> AbTestResult:
    new_replies = _first_replies(plan.new.id, plan.prompt_ids, session=session)
    base_replies = _first_replies(plan.base.id, plan.prompt_ids, session=session)
    compared = [p for p in plan.prompt_ids if p in new_replies and p in base_replies]
    if not compared:
        raise AbTestError(f"none of the {len(plan.prompt_ids)} chosen prompts has replies from both "
                          f"{plan.new.name} and {plan.base.name}")
    comparisons, created = [], 0
    for prompt_id in compared:
        comparison, new = add_comparison(new_replies[prompt_id], base_replies[prompt_id], session=session,
                                         judgments_required=overlap)
        created += new
        if comparison.judgments_required < overlap:  # an existing pair now belongs to the test too
            comparison.judgments_required = overlap
            session.add(comparison)
        comparisons.append(comparison.id)
    session.flush()
    test = session.exec(select(AbTest).where(AbTest.new_candidate_id == plan.new.id,
                                             AbTest.base_candidate_id == plan.base.id)
                        .order_by(AbTest.id)).all()
    same = next((t for t in test if sorted(t.prompt_ids or []) == compared), None)
    if priority is None:
        priority = same.priority if same is not None else _front_priority(set(comparisons), session=session)
    set_priorities({cid: priority for cid in comparisons}, session=session)
    is_new = same is None
    if same is None:
        same = AbTest(new_candidate_id=plan.new.id, base_candidate_id=plan.base.id,
                      policy_run_id=plan.seen.policy_run_id, prompt_ids=compared)
    same.overlap, same.priority = overlap, float(priority)
    same.details = {**dict(details), "comparison_ids": comparisons, "excluded_seen": plan.excluded,
                    "basis": plan.seen.basis}
    session.add(same)
    session.flush()
    result = AbTestResult(same.id, plan.new.name, plan.base.name, compared, created=created,
                          existing=len(comparisons) - created, excluded_seen=plan.excluded,
                          missing_replies=len(plan.prompt_ids) - len(compared), overlap=overlap,
                          priority=float(priority), policy_run_id=plan.seen.policy_run_id, basis=plan.seen.basis,
                          all_eligible=plan.seen.policy_run_id is None)
    if created or is_new:
        audit(actor, "abtest.create", session=session, target=f"abtest:{same.id}",
              details={"new": plan.new.name, "base": plan.base.name, "prompts": len(compared), "created": created,
                       "existing": result.existing, "excluded_seen": plan.excluded, "overlap": overlap,
                       "priority": float(priority), "policy_run_id": plan.seen.policy_run_id})
    return result


def create_abtest(
    new: str,
    base: str,
    *,
    session: Session | None = None,
    engine: Engine | None = None,
    prompts: int | str | None = None,
    overlap: int = 1,
    priority: float | None = None,
    seed: int = 0,
    generate: bool = True,
    specs: Sequence[Any] | None = None,
    max_tokens: int | None = None,
    secrets: Mapping[str, str] | None = None,
    progress: bool = False,
    actor: str = "cli",
) -> AbTestResult:
    """Create (or find again) the A/B test of ``new`` against ``base``; see the module docstring.

    Give ``engine`` (each step in its own transaction; generation writes reply by reply) or, with
    ``generate=False``, a ``session`` (the caller commits). ``specs`` are registry entries for the
    candidates to generate with (``candidates.toml``); a candidate without one is run as registered
    in the database, ``max_tokens`` overriding its own. ``secrets`` maps API-key variable names to
    values (read at the edge, never here). ``priority`` None = one above every other comparison.
    """
    if overlap < 1:
        raise AbTestError("--overlap must be at least 1 (judgments per comparison)")
    if (session is None) == (engine is None):
        raise AbTestError("give either session= or engine=")
    if generate and engine is None:
        raise AbTestError("generating replies needs engine= (each reply is written in its own transaction)")
    spec = parse_prompt_spec(prompts)
    details = {"prompts": prompts if prompts is None or isinstance(prompts, int) else str(prompts), "seed": seed,
               "generate": generate}
    if session is not None:
        plan = _plan(new, base, spec, session=session, seed=seed, generate=False)
        return _compare(plan, session=session, overlap=overlap, priority=priority, actor=actor, details=details)
    with session_scope(read_only_engine(engine)) as read:  # reads only: no write lock while planning
        plan = _plan(new, base, spec, session=read, seed=seed, generate=generate)
        by_name = {s.name: s for s in specs or ()}
        overrides = {"max_tokens": max_tokens} if max_tokens else {}
        run_specs = [by_name.get(name) or spec_for(row, overrides=overrides)
                     for name, row in ((plan.new.name, plan.new), (plan.base.name, plan.base))
                     if name in plan.generate_for]
        read.expunge_all()
    generation = ""
    if run_specs:
        from candidates.generate import run_generation

        summary = run_generation(engine, run_specs, prompt_ids=plan.prompt_ids, progress=progress, secrets=secrets)
        generation = str(summary)
    with session_scope(engine) as write:
        result = _compare(plan, session=write, overlap=overlap, priority=priority, actor=actor, details=details)
    result.generation = generation
    return result


def key_variables(new: str, base: str, *, session: Session, specs: Sequence[Any] | None = None) -> list[str]:
    """The NAMES of the API-key variables that generating for ``new`` and ``base`` needs (the edge reads
    them and passes ``secrets``); a registry spec wins over the candidate's database row."""
    by_name = {s.name: s for s in specs or ()}
    names = set()
    for name in (new, base):
        if name in by_name:
            variable = by_name[name].api_key_env
        else:
            variable = session.exec(select(CandidateModel.api_key_env).where(CandidateModel.name == name)).first()
        if variable:
            names.add(variable)
    return sorted(names)


def abtests_of(new: str, base: str, *, session: Session) -> list[AbTest]:
    """The recorded A/B tests of ``new`` against ``base``, oldest first."""
    new_row, base_row = _candidate(new, session=session), _candidate(base, session=session)
    return list(session.exec(select(AbTest).where(AbTest.new_candidate_id == new_row.id,
                                                  AbTest.base_candidate_id == base_row.id).order_by(AbTest.id)))


__all__ = ["AbTestError", "AbTestResult", "PromptSpec", "Seen", "parse_prompt_spec", "row_conversation",
           "conversation_key", "choose_prompts", "prompts_in_file", "seen_prompts", "spec_for", "create_abtest",
           "key_variables", "abtests_of"]
