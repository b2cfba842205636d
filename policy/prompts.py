"""The prompts a policy trains on when it samples its own replies (``rs``, ``grpo``, ``rloo``).

``--prompts`` is a SPEC over the database's prompts (``policy.abtest.parse_prompt_spec``: N at random,
ids and ranges, ``source:NAME``, ``topic:NAME``) or a JSONL FILE of chat rows (``messages`` as an SFT
export writes them, or ``prompt`` as chat or text; ``exports.formats.row_conversation``). A path that
exists is read as a file.

Prompts listed in any ``AbTest.prompt_ids`` are never trained on: they are the held-out prompts on
which clinicians compare policies, so training on them would let a policy win by having seen them.
File rows are matched to stored prompts by content hash (the importers' ``db.hashing.prompt_hash``,
system message aside), so a file cannot smuggle an A/B prompt in either. What is left is recorded as
``prompt_ids`` in the PolicyRun's provenance, which ``policy.abtest.seen_prompts`` reads.

Each prompt carries two conversations: ``messages``, what the policy sees (the system message
resolved as a candidate resolves it: the configured one, else the prompt's own, else the TheraPref
persona), and ``context``, the prompt's own conversation, which the reward model scores replies
against (as it was trained, and as best-of-n candidates score them).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from db.models import AbTest, Prompt
from db.rules import conversation, prompt_conversation
from exports.formats import read_jsonl, row_conversation, row_messages
from policy.abtest import AbTestError, choose_prompts, conversation_key, parse_prompt_spec
from policy.data import PolicyData
from policy.errors import PolicyError


@dataclass
class TrainingPrompt:
    """One prompt to sample replies to: its id (None for a file row not in the database), what the
    policy sees and what the reward model scores against."""

    prompt_id: int | None
    messages: list[dict[str, str]]
    context: list[dict[str, str]]


@dataclass
class TrainingPrompts:
    """The prompts of a training run and how they were chosen (the PolicyRun's provenance)."""

    prompts: list[TrainingPrompt]
    spec: str | None = None
    file: str | None = None
    sha256: str | None = None
    excluded_abtest: int = 0
    excluded_long: int = 0
    notes: list[str] = field(default_factory=list)
    #: Tokens of the longest prompt with the chat template applied (set once the base's tokenizer is known).
    longest_tokens: int | None = None

    @property
    def prompt_ids(self) -> list[int]:
        """The stored prompts trained on, in order (what ``policy.abtest.seen_prompts`` reads)."""
        return sorted({p.prompt_id for p in self.prompts if p.prompt_id is not None})

    def described(self) -> str:
        """>>> TrainingPrompts([], spec="source:gaby").described()
        "prompts 'source:gaby'"
        """
        return f"file {self.file}" if self.file else (f"prompts {self.spec!r}" if self.spec else "every prompt")

    def provenance(self) -> dict[str, Any]:
        return {"prompt_ids": self.prompt_ids, "prompts": self.spec, "prompts_file": self.file,
                "prompts_sha256": self.sha256, "n_prompts": len(self.prompts),
                "n_file_rows_not_stored": sum(p.prompt_id is None for p in self.prompts),
                "excluded_abtest_prompts": self.excluded_abtest, "excluded_long_prompts": self.excluded_long}

    def as_data(self, method: str, **provenance: Any) -> PromptData:
        """The prompts as the rows TRL's online trainers take: ``prompt`` (what the policy sees), ``context``
        (the prompt's own conversation, JSON: what the reward model scores against) and ``prompt_id``
        (-1 for a file row not in the database); ``provenance`` adds the reward model's folder and the like."""
        rows = [{"prompt": p.messages, "context": json.dumps(p.context, ensure_ascii=False),
                 "prompt_id": -1 if p.prompt_id is None else p.prompt_id} for p in self.prompts]
        digest = self.sha256 or hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
        return PromptData(path=Path(self.file or "prompts"), method=method, rows=rows, sha256=digest,
                          notes=self.notes, prompts=self, extra=dict(provenance))

    def drop(self, keep: Sequence[bool]) -> None:
        """Keep only the prompts marked True (too-long ones are dropped once the tokenizer is known)."""
        self.excluded_long += sum(not k for k in keep)
        self.prompts = [p for p, k in zip(self.prompts, keep, strict=True) if k]


def abtest_prompt_ids(*, session: Session) -> set[int]:
    """Every prompt of every A/B test (held out of training for good)."""
    held: set[int] = set()
    for ids in session.exec(select(AbTest.prompt_ids)).all():
        held.update(int(i) for i in ids or [])
    return held


def resolve_system(configured: str | None, own: str | None) -> str | None:
    """The system message the policy sees, as a candidate resolves it (``CandidateSpec.resolve_system``):
    the configured one ('' = none), else the prompt's own, else the TheraPref persona.

    >>> resolve_system("", "Gaby") is None, resolve_system(None, "Gaby"), resolve_system("Be kind.", "Gaby")
    (True, 'Gaby', 'Be kind.')
    """
    from candidates.generate import CandidateSpec

    return CandidateSpec("policy", "llamacpp", system_prompt=configured).resolve_system(own)[0]


def is_file_spec(value: str) -> bool:
    """Whether ``--prompts`` names a file: an existing path, or one that looks like a path.

    >>> is_file_spec("3,7-9"), is_file_spec("source:gaby"), is_file_spec("data/prompts.jsonl")
    (False, False, True)
    """
    text = value.strip()
    if Path(text).expanduser().is_file():
        return True
    return text.endswith((".jsonl", ".json")) or "/" in text or text.startswith(("~", "."))


def select_training_prompts(spec: str | None, *, session: Session, seed: int = 0,
                            system_prompt: str | None = None) -> TrainingPrompts:
    """The training prompts ``spec`` names (a SPEC or a FILE; None = every prompt), A/B prompts left out.
    One clear :class:`PolicyError` when nothing is left, or on a bad spec or file line."""
    held = abtest_prompt_ids(session=session)
    if spec is not None and is_file_spec(spec):
        chosen = _file_prompts(Path(spec.strip()).expanduser(), session=session, held=held, system_prompt=system_prompt)
    else:
        chosen = _stored_prompts(spec, session=session, held=held, seed=seed, system_prompt=system_prompt)
    if not chosen.prompts:
        reason = (f"all {chosen.excluded_abtest} named are A/B-test prompts, which are never trained on"
                  if chosen.excluded_abtest else "it names none")
        raise PolicyError(f"--prompts leave no training prompt outside the A/B tests: {chosen.described()} ({reason})")
    return chosen


def training_prompt_ids(spec: str | None, *, session: Session, seed: int = 0) -> list[int]:
    """The stored prompt ids ``spec`` selects for training (N, a SPEC or a FILE; None = all), A/B-test
    prompts left out; one clear :class:`PolicyError` when none is left (``therapref loop`` reads it)."""
    return select_training_prompts(spec, session=session, seed=seed).prompt_ids


def _stored_prompts(spec: str | None, *, session: Session, held: set[int], seed: int,
                    system_prompt: str | None) -> TrainingPrompts:
    try:
        parsed = parse_prompt_spec(spec)
    except AbTestError as exc:
        raise PolicyError(str(exc)) from None
    rows = {p.id: p for p in session.exec(select(Prompt).order_by(Prompt.id)).all()}
    if parsed.everything or parsed.count is not None:
        named = list(rows)
    else:
        named = _named(parsed, rows.values())
    eligible = [i for i in named if i not in held]
    ids = choose_prompts(eligible, parsed.count, seed)
    prompts = [TrainingPrompt(i, conversation(rows[i].messages, resolve_system(system_prompt, rows[i].system_prompt)),
                              prompt_conversation(rows[i])) for i in ids]
    return TrainingPrompts(prompts, spec=spec, excluded_abtest=len(named) - len(eligible))


def _named(parsed: Any, rows: Iterable[Prompt]) -> list[int]:
    """Ids a SPEC of ids / sources / topics names; each named id, source and topic must exist."""
    rows = list(rows)
    known = {p.id for p in rows}
    missing = [i for i in parsed.ids if i not in known]
    if missing:
        raise PolicyError(f"--prompts: unknown prompt id(s): {', '.join(map(str, missing[:10]))}")
    chosen = set(parsed.ids)
    for attribute, names, label in (("source", parsed.sources, "source"), ("topic", parsed.topics, "topic")):
        for name in names:
            ids = {p.id for p in rows if getattr(p, attribute) == name}
            if not ids:
                raise PolicyError(f"--prompts: no prompts with {label} {name!r}")
            chosen |= ids
    return sorted(i for i in chosen if i is not None)


def _row_system(row: dict[str, Any]) -> str | None:
    """The system message of a chat row, if it has one.

    >>> _row_system({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]})
    'S'
    >>> _row_system({"prompt": "hi"}) is None
    True
    """
    messages = row_messages(row)
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict) and message.get("role") == "system":
                content = message.get("content")
                return content if isinstance(content, str) else None
    return None


def _file_prompts(path: Path, *, session: Session, held: set[int], system_prompt: str | None) -> TrainingPrompts:
    if not path.is_file():
        raise PolicyError(f"--prompts {path}: no such file")
    stored = {conversation_key(p.messages or []): p.id for p in session.exec(select(Prompt)).all()}
    digest = hashlib.sha256()
    prompts: list[TrainingPrompt] = []
    seen: set[str] = set()
    excluded = 0
    for number, row in read_jsonl(path, digest=digest, error=PolicyError):
        turns = row_conversation(row)
        if not turns:
            raise PolicyError(f"{path} line {number}: not a chat row (expected 'messages' or 'prompt' with a "
                              "user turn)")
        key = conversation_key(turns)
        if key in seen:
            continue
        seen.add(key)
        prompt_id = stored.get(key)
        if prompt_id in held:
            excluded += 1
            continue
        own = _row_system(row)
        prompts.append(TrainingPrompt(prompt_id, conversation(turns, resolve_system(system_prompt, own)),
                                      conversation(turns, own)))
    return TrainingPrompts(prompts, file=str(path.resolve()), sha256=digest.hexdigest(), excluded_abtest=excluded)


@dataclass
class PromptData(PolicyData):
    """:class:`TrainingPrompts` as ``policy.train``'s steps take data; the provenance lists the prompt ids."""

    prompts: TrainingPrompts | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        return {**(self.prompts.provenance() if self.prompts else {}), **self.extra, "sha256": self.sha256,
                "rows": len(self.rows), "file": self.prompts.file if self.prompts else None}
