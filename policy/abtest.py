"""``create_abtest``: a blinded head-to-head of a new candidate (a fine-tuned policy) against a base,
on prompts the new one was not trained on, at the front of the clinicians' queues.

Steps:

1. **Held-out prompts.** NEW's PolicyRun (``PolicyRun.candidate_model_id``) carries the export
   manifest it was trained on as ``provenance``; its ``prompt_ids`` (written by every export) are the
   prompts NEW has seen. A manifest without them (an older export) falls back to the training file:
   each row's conversation (system message and final reply left out) is hashed with
   ``db.hashing.prompt_hash``, the hash the importers use, and matched against every prompt's
   conversation. A candidate without a PolicyRun (an external model) has seen nothing we know of:
   every prompt is eligible and the result says so. A best-of-n candidate (``params["best_of_n"]``)
   has seen the prompts its reward model (and safety model) was trained on, the ``train_prompt_keys``
   of the folder's ``therapref_reward.json`` (``therapref_ensemble.json``), and those its base was.
2. **Which prompts.** ``prompts``: ``None`` = every eligible prompt; ``N`` (an int, or a string of
   digits) = N of them drawn at random with ``seed``; a SPEC = a comma list of prompt ids or ranges
   (``3,7-9``, ``id:12``), ``source:NAME`` and ``topic:NAME`` (``parse_prompt_spec``). Prompts NEW was
   trained on are left out of every choice and counted.
3. **Replies.** Both candidates' missing replies for those prompts are generated with the candidates
   generation library (``candidates.generate.run_generation``, as ``therapref generate`` does),
   unless ``generate=False`` or the candidate is a non-model source (its stored replies are used).
   **Same settings.** NEW is generated with BASE's generation settings (temperature, top_p,
   max_tokens, seed, system prompt; ``GenerationSettings``), keeping its own provider and model, so
   that the test measures the model and not the settings. A registry entry for NEW with other values,
   or stored replies (of either side) that were generated with other values than the other side's, is
   refused with one line unless ``allow_different_settings`` (then NEW keeps its own settings); the
   AbTest row's ``details["settings"]`` records both sides' settings either way.
4. **Comparisons.** Per prompt, NEW's first reply against BASE's first reply (``db.crud.add_comparison``:
   canonical order, blinded; the app randomises the screen side), ``judgments_required`` = overlap,
   ``priority`` above every other comparison by default (``db.scores.set_priorities``), an ``AbTest`` row
   and an audit event.

Idempotent: a second run finds the same prompts, comparisons and AbTest row and creates nothing.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from db.audit import audit
from db.crud import add_comparison
from db.engine import read_only_engine, session_scope
from db.errors import TheraPrefError
from db.hashing import prompt_hash
from db.models import AbTest, CandidateModel, Comparison, PolicyRun, Prompt, Response
from db.rules import id_range
from db.scores import set_priorities
from exports.formats import read_jsonl, row_conversation

# Keys under which a PolicyRun may name its training file when the manifest lacks prompt_ids.
TRAINING_FILE_KEYS = ("path", "data", "train_file", "dataset", "file")
# A CandidateModel whose params hold this key is a best-of-n candidate ({"of": BASE}); the same literal
# as candidates.registry.BEST_OF_PARAM (policy may not import the registry module).
BEST_OF_PARAM = "best_of_n"
# How reward.data.load_votes names a stored prompt in a reward model's train_prompt_keys.
PROMPT_KEY = re.compile(r"^prompt:(\d+)$")


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
    # Nothing is known about its training (an external model): every prompt is eligible, and the
    # command's line says why.
    all_eligible: bool = False


def _training_file(run: PolicyRun) -> Path | None:
    for where in (run.provenance or {}, run.config or {}):
        for key in TRAINING_FILE_KEYS:
            value = where.get(key)
            if isinstance(value, str) and value:
                return Path(value)
    return None


def prompts_in_file(path: Path, *, session: Session) -> set[int]:
    """Prompt ids whose conversation (system message aside) appears in the training file ``path``."""
    if path.is_dir():
        raise AbTestError(f"{path}: a dataset folder without prompt_ids in its manifest; re-export it "
                          "(exports now list prompt_ids) or pass the prompts explicitly")
    keys = {conversation_key(c) for _, row in read_jsonl(path, error=AbTestError) if (c := row_conversation(row))}
    seen = set()
    for prompt_id, messages in session.exec(select(Prompt.id, Prompt.messages)):
        if keys and conversation_key(messages or []) in keys:
            seen.add(prompt_id)
    return seen


def trained_prompt_ids(meta: Mapping[str, Any], *, where: str = "reward model") -> set[int] | None:
    """The stored prompts a reward model was trained on: the ids in its metadata's
    ``train_prompt_keys`` (``prompt:<id>``, as ``reward.data.load_votes`` names a prompt of the
    database); ``None`` when the metadata lists none at all.

    >>> sorted(trained_prompt_ids({"train_prompt_keys": ["prompt:12", "prompt:3"]}))
    [3, 12]
    >>> trained_prompt_ids({"format": 1}) is None
    True
    >>> trained_prompt_ids({"train_prompt_keys": ["p1"]}, where="rm/therapref_reward.json")
    Traceback (most recent call last):
    ...
    policy.abtest.AbTestError: rm/therapref_reward.json: train_prompt_keys holds 'p1', not a prompt:<id> key
    """
    keys = meta.get("train_prompt_keys")
    if keys is None:
        return None
    if not isinstance(keys, list):
        raise AbTestError(f"{where}: train_prompt_keys is not a list")
    ids = set()
    for key in keys:
        found = PROMPT_KEY.match(str(key))
        if found is None:  # a key we cannot map to a prompt: guessing would let seen prompts through
            raise AbTestError(f"{where}: train_prompt_keys holds {key!r}, not a prompt:<id> key")
        ids.add(int(found.group(1)))
    return ids


def _reward_folder_prompts(folder: str, *, label: str, candidate: str) -> tuple[set[int], str, bool]:
    """(prompt ids, basis, known) for the reward (or safety) model folder of a best-of-n candidate."""
    from reward.scoring import ENSEMBLE_FILE, META_FILE

    path = Path(folder)
    if not path.is_dir():
        raise AbTestError(f"{path}: the {label} folder of best-of-n candidate {candidate!r} is missing: cannot "
                          "tell which prompts it was trained on")
    meta_file = path / ENSEMBLE_FILE if (path / ENSEMBLE_FILE).is_file() else path / META_FILE
    if not meta_file.is_file():
        return set(), f"its {label} {path} was not trained by `therapref train` (no {META_FILE})", False
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AbTestError(f"{meta_file}: cannot read the {label}'s metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise AbTestError(f"{meta_file}: not a metadata object")
    origin = str((meta.get("data") or {}).get("origin") or "")
    if origin.startswith("preference file"):
        # Keys of a file's pairs name prompts of a throwaway database (reward.data.read_preference_file),
        # not this one's: matching them by id would exclude unrelated prompts.
        return set(), f"its {label} {path} was trained on a {origin}, not on this database's prompts", False
    ids = trained_prompt_ids(meta, where=str(meta_file))
    if ids is None:
        raise AbTestError(f"{meta_file}: records no train_prompt_keys: cannot tell which prompts best-of-n "
                          f"candidate {candidate!r} has seen")
    return ids, f"its {label} {path}: the {len(ids)} prompts of its train_prompt_keys", True


def _best_of_n_seen(candidate: CandidateModel, *, session: Session, visited: set[int]) -> Seen:
    """A best-of-n candidate picks its replies with a reward model, so the prompts that model learnt
    from are as good as seen; the samples come from its base, whose training prompts count too."""
    params = candidate.params or {}
    if not params.get("reward_model"):
        raise AbTestError(f"best-of-n candidate {candidate.name!r} names no reward model: cannot tell which "
                          "prompts it has seen")
    seen, parts, known = set(), [], False
    for label in ("reward_model", "safety_model"):
        if params.get(label):
            ids, basis, found = _reward_folder_prompts(str(params[label]), label=label.replace("_", " "),
                                                       candidate=candidate.name)
            seen |= ids
            parts.append(basis)
            known = known or found
    of = (params.get(BEST_OF_PARAM) or {}).get("of")
    run_id = None
    base = session.exec(select(CandidateModel).where(CandidateModel.name == of)).first() if of else None
    if base is not None and base.id not in visited:
        inner = _seen(base, session=session, visited=visited)
        seen |= inner.prompt_ids
        run_id = inner.policy_run_id
        known = known or not inner.all_eligible
        parts.append(f"its base {base.name}: " + ("no policy run" if inner.all_eligible else inner.basis))
    return Seen(seen, f"best-of-{params.get('best_of', 'n')} candidate {candidate.name}: " + "; ".join(parts),
                run_id, all_eligible=not known)


def _seen(candidate: CandidateModel, *, session: Session, visited: set[int]) -> Seen:
    visited.add(candidate.id)
    if isinstance((candidate.params or {}).get(BEST_OF_PARAM), dict):
        return _best_of_n_seen(candidate, session=session, visited=visited)
    run = session.exec(select(PolicyRun).where(PolicyRun.candidate_model_id == candidate.id)
                       .order_by(PolicyRun.id.desc())).first()
    if run is None:
        return Seen(basis=f"{candidate.name} has no policy run (an external candidate): every prompt is eligible",
                    all_eligible=True)
    listed = (run.provenance or {}).get("prompt_ids")
    if isinstance(listed, list):
        return Seen({int(i) for i in listed}, f"policy run {run.id}: the export manifest's prompt_ids", run.id)
    path = _training_file(run)
    if path is None:
        raise AbTestError(f"policy run {run.id} of {candidate.name!r} records neither prompt_ids nor its training "
                          "file: cannot tell which prompts it was trained on")
    return Seen(prompts_in_file(path, session=session),
                f"policy run {run.id}: conversations of {path} matched by content hash", run.id)


def seen_prompts(candidate: CandidateModel, *, session: Session) -> Seen:
    """What ``candidate`` was trained on: from its newest PolicyRun, or for a best-of-n candidate the
    prompts of its reward (and safety) model's ``train_prompt_keys`` and its base's (module docstring)."""
    return _seen(candidate, session=session, visited=set())


# --- Generation settings ---------------------------------------------------------------------------------

# What shapes a reply besides the model itself, held equal on both sides of a test. candidates/generate.py
# records the same fields in every generated reply's meta["settings"].
SETTING_FIELDS = ("temperature", "top_p", "max_tokens", "seed", "system_prompt")
# The columns run_generation mirrors from a spec into a CandidateModel row (candidates.registry.sync_registry):
# put back after an A/B test generated with BASE's settings, so that the test re-registers nothing.
ROW_COLUMNS = ("provider", "model_id", "endpoint", "api_key_env", "params", "system_prompt", "replies_per_prompt")


def _show(name: str, value: Any) -> str:
    """A setting's value as the command prints it.

    >>> _show("seed", None), _show("system_prompt", None), _show("temperature", 1.0), _show("top_p", 0.95)
    ('provider default', "the prompt's own (else the persona)", '1', '0.95')
    >>> _show("system_prompt", "You are a calm and careful listener who never rushes anyone.")
    "'You are a calm and careful listener…' (60 chars)"
    """
    if name == "seed":
        return "provider default" if value is None else str(value)
    if name == "system_prompt":
        if value is None:
            return "the prompt's own (else the persona)"
        text = " ".join(str(value).split())
        if not text:
            return "none"
        return repr(text) if len(text) <= 40 else f"{text[:36].rstrip() + '…'!r} ({len(value)} chars)"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _label(name: str) -> str:
    return "system prompt" if name == "system_prompt" else name


@dataclass(frozen=True)
class GenerationSettings:
    """What shapes a reply besides the model: sampling temperature, top_p, the token cap, the seed
    policy (``None`` = the provider's default: 0 for local models) and the system prompt (``None`` =
    the prompt's own, else the persona; ``""`` = none)."""

    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None
    system_prompt: str | None

    @classmethod
    def of(cls, spec: Any) -> GenerationSettings:
        """The settings of a generation spec (``CandidateSpec``)."""
        return cls(float(spec.temperature), float(spec.top_p), int(spec.max_tokens), spec.seed, spec.system_prompt)

    @classmethod
    def recorded(cls, meta: Mapping[str, Any] | None) -> GenerationSettings | None:
        """The settings a stored reply was generated with (``meta["settings"]``, written by
        ``candidates.generate``); ``None`` for a reply that records none (an older or imported one).

        >>> GenerationSettings.recorded({"settings": {"temperature": 1, "top_p": 1, "max_tokens": 8, "seed": None,
        ...                                           "system_prompt": None}})
        GenerationSettings(temperature=1.0, top_p=1.0, max_tokens=8, seed=None, system_prompt=None)
        >>> GenerationSettings.recorded({"latency_s": 0.2}) is None
        True
        """
        record = (meta or {}).get("settings")
        if not isinstance(record, Mapping) or any(name not in record for name in SETTING_FIELDS):
            return None
        try:
            return cls(float(record["temperature"]), float(record["top_p"]), int(record["max_tokens"]),
                       None if record["seed"] is None else int(record["seed"]),
                       None if record["system_prompt"] is None else str(record["system_prompt"]))
        except (TypeError, ValueError):
            return None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, other: GenerationSettings) -> list[str]:
        """Each setting that differs, this value first.

        >>> GenerationSettings(0.7, 1.0, 256, None, None).differences(GenerationSettings(1.0, 1.0, 80, None, None))
        ['temperature 0.7 vs 1', 'max_tokens 256 vs 80']
        """
        return [f"{_label(name)} {_show(name, getattr(self, name))} vs {_show(name, getattr(other, name))}"
                for name in SETTING_FIELDS if getattr(self, name) != getattr(other, name)]

    def describe(self) -> str:
        """>>> GenerationSettings(1.0, 0.95, 8, 7, "").describe()
        'temperature 1, top_p 0.95, max_tokens 8, seed 7, system prompt none'
        """
        return ", ".join(f"{_label(name)} {_show(name, getattr(self, name))}" for name in SETTING_FIELDS)


@dataclass
class _Side:
    """One side of the test as generation sees it."""

    row: CandidateModel
    role: str
    own: GenerationSettings | None = None  # its own settings; None: a source we do not generate
    settings: GenerationSettings | None = None  # what its replies generated now use
    source: str = ""
    spec: Any = None  # the CandidateSpec to run; None when nothing is generated for it
    from_file: bool = False  # its spec is an entry of the registry file the user named
    restore: dict[str, Any] | None = None  # its row's columns before run_generation mirrors the spec
    stored: Counter = field(default_factory=Counter)  # recorded settings of its compared stored replies
    generated: int = 0  # compared replies still to generate
    unknown: int = 0  # compared stored replies that record no settings

    def line(self, *, generate: bool) -> str:
        """The settings line the command prints for this side."""
        head = f"settings of {self.role} {self.row.name}: "
        if self.own is None:
            return head + (f"none to match (provider {self.row.provider!r}: its stored replies, not generated "
                           "by therapref)")
        text = head + f"{self.settings.describe()} ({self.source})"
        if not generate:
            text += "; --no-generate: stored replies only"
        if self.unknown:
            text += (f"; {self.unknown} of its stored replies record no settings (generated before they were "
                     "recorded): unknown")
        return text


def _sides(plan: _Plan, *, session: Session, specs: Sequence[Any] | None, specs_source: str | None,
           max_tokens: int | None, allow: bool) -> tuple[_Side, _Side]:
    """Each side's spec and settings: NEW with BASE's settings unless ``allow``; a conflict that would
    compare replies generated with other settings raises one line (nothing has been written)."""
    by_name = {s.name: s for s in specs or ()}
    new, base = _Side(plan.new, "NEW"), _Side(plan.base, "BASE")
    for side in (new, base):
        if not _can_generate(side.row):
            continue
        given = by_name.get(side.row.name)
        spec = given or spec_for(side.row, overrides={"max_tokens": max_tokens} if max_tokens else None)
        side.own = side.settings = GenerationSettings.of(spec)
        # An entry of a file the user named is their explicit word (refused when it differs from BASE's);
        # specs a caller built (the loop's machine overrides) count as the candidate's own, like its row.
        side.from_file = given is not None and specs_source is not None
        if side.from_file:
            side.source = f"its entry in {specs_source}"
        elif given is not None:
            side.source = "as given by the caller"
        else:
            side.source = "as registered in the database" + (", --max-tokens" if max_tokens else "")
        side.spec = spec if side.row.name in plan.generate_for else None
    if new.own is not None and base.own is not None and new.own != base.own:
        differences = ", ".join(new.own.differences(base.own))
        if allow:
            new.source += f"; differs from BASE's in {differences} (--allow-different-settings)"
        elif new.from_file:
            raise AbTestError(f"{new.row.name} (NEW) and {base.row.name} (BASE) would be generated with different "
                              f"settings: NEW's entry in {specs_source} has {differences} (NEW vs BASE); pass "
                              "--allow-different-settings to compare them anyway")
        else:
            # The point of the test is the model: NEW keeps its provider and model, and takes BASE's settings.
            new.settings = base.own
            new.source = f"BASE's; its own has {differences}"
            if new.spec is not None:
                new.spec = replace(new.spec, **base.own.as_dict())
    elif new.own is not None and base.own is not None:
        new.source += "; the same as BASE's"
    _tally_replies(plan, new, base, session=session)
    if not allow:
        _refuse_stored_mismatch(new, base)
    for side in (new, base):
        if side.spec is not None and not side.from_file:
            side.restore = {column: deepcopy(getattr(side.row, column)) for column in ROW_COLUMNS}
    return new, base


def _tally_replies(plan: _Plan, new: _Side, base: _Side, *, session: Session) -> None:
    """Which settings the replies to be compared have: a stored first reply's record, else the
    settings it is about to be generated with (prompts that one side cannot answer are not compared)."""
    firsts = {side.role: _first_replies(side.row.id, plan.prompt_ids, session=session) for side in (new, base)}
    for prompt_id in plan.prompt_ids:
        if not all(prompt_id in firsts[side.role] or side.spec is not None for side in (new, base)):
            continue
        for side in (new, base):
            if side.own is None:
                continue  # a non-model source: its replies are what they are
            reply = firsts[side.role].get(prompt_id)
            if reply is None:
                side.generated += 1
                continue
            recorded = GenerationSettings.recorded(reply.meta)
            if recorded is None:
                side.unknown += 1
            else:
                side.stored[recorded] += 1


def _refuse_stored_mismatch(new: _Side, base: _Side) -> None:
    """Refuse when the replies to be compared are known to come from different settings: stored ones
    (either side's) that record other values than the rest. Replies without a record are unknown and
    do not count either way (the command says how many there are)."""
    groups = [(side, "stored replies", settings, n) for side in (new, base) for settings, n in side.stored.items()]
    groups += [(side, "new replies", side.settings, side.generated) for side in (new, base)
               if side.generated and side.settings is not None]
    if not (any(g[0] is new for g in groups) and any(g[0] is base for g in groups)):
        return  # one side has nothing known to compare with
    if len({g[2] for g in groups}) <= 1:
        return
    # Measure against what BASE's replies mostly have (its configuration when it is being generated).
    reference = max((g for g in groups if g[0] is base), key=lambda g: (g[1] == "new replies", g[3]))[2]
    odd = next(g for g in sorted(groups, key=lambda g: g[0] is base) if g[2] != reference)
    side, kind, settings, count = odd
    verb = "were generated with" if kind == "stored replies" else "would be generated with"
    theirs = "theirs vs BASE's" if side is new else "theirs vs BASE's other replies"
    raise AbTestError(f"{new.row.name} (NEW) and {base.row.name} (BASE) would be compared on replies generated with "
                      f"different settings: {side.role}'s {kind} to {count} of the chosen prompts {verb} "
                      f"{', '.join(settings.differences(reference))} ({theirs}); pass --allow-different-settings "
                      "to compare them anyway, or choose other prompts")


def _settings_details(new: _Side, base: _Side, *, allow: bool) -> dict[str, Any]:
    """What the AbTest row records about the settings (both sides, whichever applied)."""
    def side(s: _Side) -> dict[str, Any] | None:
        if s.own is None:
            return None
        return {"settings": s.settings.as_dict(), "own": s.own.as_dict(), "source": s.source,
                "stored": sum(s.stored.values()), "generated": s.generated, "unknown": s.unknown}

    same = None if new.settings is None or base.settings is None else new.settings == base.settings
    return {"new": side(new), "base": side(base), "same": same, "allow_different_settings": allow}


def _restore_rows(sides: Sequence[_Side], *, engine: Engine) -> None:
    """Put back the candidate rows run_generation re-registered from the specs it was given."""
    with session_scope(engine) as write:
        for side in sides:
            row = write.get(CandidateModel, side.row.id)
            if row is None or side.restore is None:
                continue
            for column, value in side.restore.items():
                if getattr(row, column) != value:
                    setattr(row, column, value)
            write.add(row)


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
    # One line per side: the generation settings its compared replies have (printed by the command).
    settings: list[str] = field(default_factory=list)
    same_settings: bool | None = None

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
                          all_eligible=plan.seen.all_eligible)
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
    specs_source: str | None = None,
    max_tokens: int | None = None,
    allow_different_settings: bool = False,
    secrets: Mapping[str, str] | None = None,
    progress: bool = False,
    say: Callable[[str], None] | None = None,
    actor: str = "cli",
) -> AbTestResult:
    """Create (or find again) the A/B test of ``new`` against ``base``; see the module docstring.

    Give ``engine`` (each step in its own transaction; generation writes reply by reply) or, with
    ``generate=False``, a ``session`` (the caller commits). ``specs`` are specs for the candidates to
    generate with: the entries of the registry file ``specs_source`` (``candidates.toml``), or, without
    a source, specs a caller built; a candidate without one is run as registered in the database,
    ``max_tokens`` overriding its own. NEW is generated with BASE's generation settings unless
    ``allow_different_settings``; a registry-file entry for NEW with other settings, and replies known
    to come from different settings, are refused (``AbTestError``, nothing written). ``say`` receives the
    two settings lines before generation starts (when nothing is generated: once the test stands).
    ``secrets`` maps API-key variable names to values (read at the edge, never here). ``priority``
    None = one above every other comparison.
    """
    if overlap < 1:
        raise AbTestError("--overlap must be at least 1 (judgments per comparison)")
    if (session is None) == (engine is None):
        raise AbTestError("give either session= or engine=")
    if generate and engine is None:
        raise AbTestError("generating replies needs engine= (each reply is written in its own transaction)")
    if max_tokens is not None and max_tokens < 1:
        raise AbTestError(f"--max-tokens must be at least 1, not {max_tokens}")
    spec = parse_prompt_spec(prompts)
    details: dict[str, Any] = {"prompts": prompts if prompts is None or isinstance(prompts, int) else str(prompts),
                               "seed": seed, "generate": generate}

    def settle(plan: _Plan, read: Session) -> tuple[_Side, _Side]:
        sides = _sides(plan, session=read, specs=specs, specs_source=specs_source, max_tokens=max_tokens,
                       allow=allow_different_settings)
        details["settings"] = _settings_details(*sides, allow=allow_different_settings)
        return sides

    def announce(sides: tuple[_Side, _Side]) -> None:
        for line in _lines(sides, generate=generate):
            if say is not None:
                say(line)

    if session is not None:
        plan = _plan(new, base, spec, session=session, seed=seed, generate=False)
        sides = settle(plan, session)
        result = _compare(plan, session=session, overlap=overlap, priority=priority, actor=actor, details=details)
        announce(sides)
        return _with_settings(result, sides, generate=False)
    with session_scope(read_only_engine(engine)) as read:  # reads only: no write lock while planning
        plan = _plan(new, base, spec, session=read, seed=seed, generate=generate)
        sides = settle(plan, read)
        run_specs = [side.spec for side in sides if side.spec is not None]
        read.expunge_all()
    generation = ""
    if run_specs:
        from candidates.generate import preflight, run_generation

        # Bad configuration is one line on its own: checked before the settings lines, which come before
        # the wait for generation (run_generation checks again; that is cheap).
        preflight(run_specs, secrets=secrets)
        announce(sides)
        try:
            summary = run_generation(engine, run_specs, prompt_ids=plan.prompt_ids, progress=progress,
                                     secrets=secrets)
        finally:
            # run_generation mirrors each spec into its candidate's row, as `therapref generate` does for a
            # registry file; a spec rebuilt from the database (with BASE's settings, --max-tokens) must not
            # re-register the candidate, so its row is put back as it was.
            _restore_rows([side for side in sides if side.restore is not None], engine=engine)
        generation = str(summary)
    with session_scope(engine) as write:
        result = _compare(plan, session=write, overlap=overlap, priority=priority, actor=actor, details=details)
    if not run_specs:  # nothing to wait for: the lines come once the test stands (bad input stays one line)
        announce(sides)
    result.generation = generation
    return _with_settings(result, sides, generate=generate)


def _lines(sides: Sequence[_Side], *, generate: bool) -> list[str]:
    """The two settings lines, when at least one side is a model we generate (else there is nothing to say)."""
    if all(side.own is None for side in sides):
        return []
    return [side.line(generate=generate) for side in sides]


def _with_settings(result: AbTestResult, sides: Sequence[_Side], *, generate: bool) -> AbTestResult:
    new, base = sides
    result.settings = _lines(sides, generate=generate)
    result.same_settings = None if new.settings is None or base.settings is None else new.settings == base.settings
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


__all__ = ["AbTestError", "AbTestResult", "GenerationSettings", "PromptSpec", "SETTING_FIELDS", "Seen",
           "parse_prompt_spec", "conversation_key", "choose_prompts", "prompts_in_file",
           "trained_prompt_ids", "seen_prompts", "spec_for", "create_abtest", "key_variables", "abtests_of"]
