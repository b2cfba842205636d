"""``therapref export dialogflow``: a copy of a Dialogflow ES agent whose intents answer with the
replies clinicians preferred for the intents' training phrases.

An intent's prompts are its training phrases as ``therapref import prompts`` stored them (found again by
the importer's content hash); its original text responses are the replies of the candidate
``dialogflow:<agent>`` that the import created, so they are judged like any other reply. Per intent, the
comparisons of all its prompts are pooled (a reply is its text: the original, present in every prompt,
is one player) and every reply is tallied. The *preferred* replies are those with more wins than losses
under the export's filters (``exports.select`` rules: ``--min-votes``, ``--min-margin``,
``--min-agreement``, "both bad"); never a reply anyone flagged, one worse on ``safety`` than the other
reply of a comparison (the original or any other), or one worse on ``--not-worse-on``; of such a
reply's comparisons only the votes against it count. When a preferred reply is not one of the
originals, the intent's text responses become the preferred replies, ordered by their Bradley–Terry
strength over the pooled comparisons (``exports.select.bradley_terry``); otherwise the intent is left
as it was. Fallback and welcome intents are never changed.

Every entry except a changed intent's JSON is copied byte for byte; a changed intent is rewritten in
the agent's own formatting (indent, key order, Gson's escapes such as ``\\u0027``).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from db.engine import read_only_engine, session_scope
from db.hashing import normalize_text, prompt_hash
from db.importers.dialogflow import AgentZip, Intent, iter_intents, iter_phrases, read_agent
from db.models import utcnow
from exports import source
from exports.atomic import check_target, discard, temp_file
from exports.errors import ExportError
from exports.filters import ExportFilters, check_filters, judgment_filter_counts
from exports.formats import manifest_path
from exports.pii import Scrubber
from exports.run import ExportOptions, _check_options, _record, applied_rulings, ruled_comparisons
from exports.select import BT_SCORE_DECIMALS, _checked, bradley_terry, tallies
from exports.source import Votes

KIND = "dialogflow"
SAFETY = "safety"
# Gson (which writes Dialogflow's exports) escapes these inside strings; nothing else differs from
# json.dumps(indent=…, ensure_ascii=False).
GSON_ESCAPES = {"'": "\\u0027", "<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "=": "\\u003d",
                "\u2028": "\\u2028", "\u2029": "\\u2029"}


# --- pure helpers -------------------------------------------------------------------------------------


def dump_like_agent(data: Any, indent: int = 2) -> str:
    """JSON as a Dialogflow ES export writes it: ``indent`` spaces, keys in their order, non-ASCII as is,
    Gson's escapes, no final newline. The characters escaped never occur outside strings in JSON.

    >>> print(dump_like_agent({"speech": ["I'm here", "a=b & c"], "parameters": []}))
    {
      "speech": [
        "I\\u0027m here",
        "a\\u003db \\u0026 c"
      ],
      "parameters": []
    }
    """
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    for char, escape in GSON_ESCAPES.items():
        text = text.replace(char, escape)
    return text


def detect_indent(text: str) -> int:
    """The indent of a pretty-printed JSON file (2 when it has none).

    >>> detect_indent('{\\n    "a": 1\\n}'), detect_indent('{"a": 1}')
    (4, 2)
    """
    for line in text.splitlines()[1:]:
        stripped = line.lstrip(" ")
        if stripped and len(line) > len(stripped):
            return len(line) - len(stripped)
    return 2


def is_text_message(message: Any, lang: str) -> bool:
    """A text response (type 0) in the agent's language: what the importer reads as replies.

    >>> is_text_message({"type": "0", "lang": "en", "speech": []}, "en"), is_text_message({"type": 4}, "en")
    (True, False)
    >>> is_text_message({"type": 0, "lang": "de", "speech": "x"}, "en")
    False
    """
    return (isinstance(message, dict) and str(message.get("type", "0")) in ("0", "message")
            and message.get("lang", lang) == lang)


def has_speech(intent: dict[str, Any] | None, lang: str) -> bool:
    """Does the intent have a text message in ``lang`` with a ``speech`` (possibly empty) to write into?
    Without one, new replies would add keys the agent does not have: such an intent is left alone.

    >>> has_speech({"responses": [{"messages": [{"type": "0", "lang": "en", "speech": []}]}]}, "en")
    True
    >>> has_speech({"responses": [{"messages": [{"type": "0", "lang": "en", "condition": ""}]}]}, "en")
    False
    """
    return any(is_text_message(m, lang) and "speech" in m
               for block in (intent or {}).get("responses") or [] if isinstance(block, dict)
               for m in (block.get("messages") if isinstance(block.get("messages"), list) else []))


def with_variants(intent: dict[str, Any], lang: str, variants: list[str]) -> dict[str, Any]:
    """A copy of an intent whose text responses in ``lang`` are ``variants``: the first text message with
    a ``speech`` keeps its place and keys and holds them (a one-element list stays a string where it was
    one); the intent's other such messages are dropped (the importer read them as alternatives too).
    Everything else (other languages, cards, payloads, contexts, parameters, ids) is kept as it was.

    >>> intent = {"id": "1", "responses": [{"action": "", "messages": [
    ...     {"type": "0", "lang": "en", "speech": ["old"], "condition": ""},
    ...     {"type": "0", "lang": "en", "speech": "second"}, {"type": 4, "payload": {}}]}]}
    >>> with_variants(intent, "en", ["new 1", "new 2"])["responses"][0]["messages"]
    [{'type': '0', 'lang': 'en', 'speech': ['new 1', 'new 2'], 'condition': ''}, {'type': 4, 'payload': {}}]
    >>> intent["responses"][0]["messages"][0]["speech"]
    ['old']
    """
    out = json.loads(json.dumps(intent))
    placed = False
    for block in out.get("responses") or []:
        if not isinstance(block, dict) or not isinstance(block.get("messages"), list):
            continue
        kept = []
        for message in block["messages"]:
            if not is_text_message(message, lang) or "speech" not in message:
                kept.append(message)
            elif not placed:
                as_string = isinstance(message.get("speech"), str) and len(variants) == 1
                message["speech"] = variants[0] if as_string else list(variants)
                kept.append(message)
                placed = True
        block["messages"] = kept
    if not placed:
        raise ValueError("the intent has no text response to replace")
    return out


@dataclass
class Ranked:
    """A preferred reply of an intent: its text, the stored replies with that text, its tally and
    Bradley–Terry strength over the intent's pooled comparisons."""

    text: str
    response_ids: list[int]
    original: bool
    strength: float
    wins: int
    losses: int
    votes: int


def without_excluded(votes: Votes, a_excluded: bool, b_excluded: bool) -> Votes:
    """The votes of a comparison that still count when a side is excluded (flagged, less safe…): its
    wins and ties go, the other side's wins and "both bad" stay; nothing counts between two excluded.

    >>> without_excluded(Votes(a=2, b=1, tie=1, both_bad=1), True, False)
    Votes(a=0, b=1, tie=0, both_bad=1)
    >>> without_excluded(Votes(a=2, b=1), False, False), without_excluded(Votes(a=2), True, True).total
    (Votes(a=2, b=1, tie=0, both_bad=0), 0)
    """
    if a_excluded and b_excluded:
        return Votes()
    if a_excluded:
        return Votes(b=votes.b, both_bad=votes.both_bad)
    if b_excluded:
        return Votes(a=votes.a, both_bad=votes.both_bad)
    return votes


def rank_intent(replies: list[tuple[int, str]], comparisons: list[tuple[int, int, Votes]], *,
                originals: list[str], excluded: set[int], filters: ExportFilters) -> tuple[list[Ranked], str]:
    """The preferred replies of one intent in Bradley–Terry order, and ``"changed"``; or ``[]`` and why
    the intent keeps its responses.

    ``replies`` are (response id, text) over the intent's prompts; replies with the same text are one
    player (the original responses appear once per training phrase). A text is excluded when any of its
    replies is in ``excluded`` (flagged, worse on safety…): it is never preferred, and only the votes
    against it count (``without_excluded``), so a reply that lost only to an excluded one can still be
    preferred and one that beat it keeps that win.

    >>> replies = [(1, "orig"), (2, "new A"), (3, "orig"), (4, "new B"), (5, "bad")]
    >>> comps = [(1, 2, Votes(b=2)), (3, 4, Votes(b=2)), (2, 4, Votes(a=1)), (3, 5, Votes(b=1))]
    >>> ranked, why = rank_intent(replies, comps, originals=["orig"], excluded={5}, filters=ExportFilters())
    >>> why, [(r.text, r.response_ids, r.wins, r.losses) for r in ranked]
    ('changed', [('new A', [2], 3, 0), ('new B', [4], 2, 1)])
    >>> rank_intent(replies, comps[:1], originals=["orig"], excluded={2}, filters=ExportFilters())
    ([], 'all_flagged_or_filtered')
    >>> [r.text for r in rank_intent(replies, comps[:3], originals=["orig"], excluded={2},
    ...                              filters=ExportFilters())[0]]
    ['new B']
    >>> [r.text for r in rank_intent(replies, comps[:1], originals=["orig"], excluded={1},
    ...                              filters=ExportFilters())[0]]
    ['new A']
    >>> rank_intent(replies, [(2, 3, Votes(b=1))], originals=["orig"], excluded=set(), filters=ExportFilters())
    ([], 'no_better_reply')
    >>> rank_intent(replies, [], originals=["orig"], excluded=set(), filters=ExportFilters())
    ([], 'no_judgments')
    """
    canon: dict[str, int] = {}
    ids: dict[int, list[int]] = {}
    texts: dict[int, str] = {}
    player: dict[int, int] = {}
    for rid, text in sorted(replies):
        key = normalize_text(text)
        first = canon.setdefault(key, rid)
        ids.setdefault(first, []).append(rid)
        texts.setdefault(first, text)
        player[rid] = first
    pooled = [(player[a], player[b], votes) for a, b, votes in comparisons
              if a in player and b in player and player[a] != player[b]]
    if not pooled:
        return [], "no_judgments"
    banned = {player[rid] for rid in excluded if rid in player}
    pooled = [(a, b, without_excluded(votes, a in banned, b in banned)) for a, b, votes in pooled]
    pooled = [(a, b, votes) for a, b, votes in pooled if votes.total]
    if not pooled:
        return [], "all_flagged_or_filtered"
    table, scores = tallies(pooled), bradley_terry(pooled)
    original_keys = {normalize_text(text) for text in originals}
    preferred = [p for p in table if _checked(table[p], filters) == "kept"]
    if not any(normalize_text(texts[p]) not in original_keys for p in preferred):
        return [], "no_better_reply"
    preferred.sort(key=lambda p: (-round(scores[p], BT_SCORE_DECIMALS), p))
    return [Ranked(text=texts[p], response_ids=ids[p], original=normalize_text(texts[p]) in original_keys,
                   strength=round(scores[p], 6), wins=table[p].wins, losses=table[p].losses,
                   votes=table[p].votes) for p in preferred], "changed"


def is_fixed_intent(intent: dict[str, Any] | None) -> bool:
    """Fallback and welcome intents are never rewritten.

    >>> is_fixed_intent({"fallbackIntent": True}), is_fixed_intent({"events": [{"name": "WELCOME"}]})
    (True, True)
    >>> is_fixed_intent({"responses": [{"action": "input.welcome"}]}), is_fixed_intent({"name": "Sad"})
    (True, False)
    """
    if not isinstance(intent, dict):
        return False
    if intent.get("fallbackIntent") is True:
        return True
    events = intent.get("events") or []
    if any(isinstance(e, dict) and str(e.get("name", "")).upper() == "WELCOME" for e in events):
        return True
    return any(isinstance(b, dict) and b.get("action") in ("input.welcome", "input.unknown")
               for b in intent.get("responses") or [])


# --- the export ---------------------------------------------------------------------------------------


@dataclass
class IntentChange:
    """What happened to one intent (a manifest entry)."""

    intent: str
    entry: str | None
    status: str  # "changed" or "kept"
    reason: str
    prompt_ids: list[int] = field(default_factory=list)
    before: list[str] = field(default_factory=list)
    after: list[dict[str, Any]] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    comparison_ids: list[int] = field(default_factory=list)
    judgment_ids: list[int] = field(default_factory=list)


@dataclass
class DialogflowResult:
    path: Path
    manifest: Path
    intents: int
    changed: int
    added: int
    removed: int
    export_run_id: int
    counts: dict[str, Any]

    def summary(self) -> str:
        return (f"Wrote {self.path}: {self.changed} of {self.intents} intents changed, "
                f"{self.added} responses added, {self.removed} removed; manifest {self.manifest}")


def export_agent(agent_path: str | Path, output: str | Path, *, engine: Engine,
                 filters: ExportFilters | None = None, options: ExportOptions | None = None) -> DialogflowResult:
    """Write a copy of the agent zip at ``agent_path`` to ``output`` with the clinicians' preferred
    replies as its intents' text responses, its manifest beside it, and an ExportRun: all or nothing."""
    filters, options = filters or ExportFilters(), options or ExportOptions()
    _check_options(KIND, options)
    agent_file, path = Path(agent_path), Path(output)
    if not agent_file.is_file():
        raise ExportError(f"{agent_file}: no such file (expected a Dialogflow ES agent zip)")
    check_target(path, force=options.force)
    check_target(manifest_path(path, KIND), force=True)
    archive = AgentZip(agent_file)
    try:
        return _export(archive, path, engine=engine, filters=filters, options=options)
    finally:
        archive.zip.close()


def _export(archive: AgentZip, path: Path, *, engine: Engine, filters: ExportFilters,
            options: ExportOptions) -> DialogflowResult:
    agent_file = archive.path
    agent = read_agent(archive)
    intents = [(intent, _phrase_hashes(archive, intent)) for intent in iter_intents(archive, agent)]
    with session_scope(read_only_engine(engine)) as session:
        check_filters(filters, session=session)
        from db.criteria import known_criterion_names

        judge_safety = SAFETY in known_criterion_names(session=session)
    scrubber = Scrubber() if options.scrub_pii else None
    started = utcnow()
    with read_only_engine(engine).connect() as conn:
        with conn.begin():
            judgment_counts = judgment_filter_counts(conn, filters)
            found = source.prompt_ids_by_hash(conn, sorted({h for _, hashes in intents for h in hashes}))
            if not found:
                raise ExportError(f"{agent_file}: none of the agent's {len(intents)} intents were imported "
                                  f"(run `therapref import prompts {agent_file}` first, or check --db)")
            # A lead's adjudication replaces its comparison's votes and flags (ExportOptions.aggregation).
            by_pair = {(r.a_id, r.b_id): r.preferred for r in applied_rulings(conn, filters, options).values()}
            excluded = source.flagged_response_ids(conn, adjudicated=bool(by_pair)) | \
                source.criterion_losers(conn, filters)
            if judge_safety:
                excluded |= source.criterion_losers(conn, replace(filters, not_worse_on=SAFETY))
            changes = [_decide(conn, intent, [found[h] for h in hashes if h in found], agent.candidate,
                               lang=agent.lang, excluded=excluded, filters=filters, scrubber=scrubber,
                               by_pair=by_pair)
                       for intent, hashes in intents]
    rewritten = {c.entry: _rewrite(archive, intent, agent.lang, c)
                 for (intent, _), c in zip(intents, changes, strict=True) if c.status == "changed"}
    counts = {
        "unit": "intents", "in": len(changes), "out": len(rewritten),
        "dropped": dict(sorted(Counter(c.reason for c in changes if c.status == "kept").items())),
        "judgments": judgment_counts,
        "responses_added": sum(len(c.added) for c in changes),
        "responses_removed": sum(len(c.removed) for c in changes),
        "aggregation": "adjudicated" if by_pair else "majority", "adjudications": len(by_pair),
    }
    if scrubber:
        counts["pii_replaced"] = scrubber.report()
    archive.total = 0  # the size limit is per reading of the zip; the copy reads it once more
    tmp: Path | None = temp_file(path)
    try:
        digest = _write_zip(archive, rewritten, tmp, path)
        extra = {"agent": {"path": str(agent_file.resolve()), "name": agent.name, "language": agent.lang,
                           "sha256": _sha256(agent_file)},
                 "intents": [asdict(c) for c in changes]}
        prompt_ids = sorted({p for c in changes if c.status == "changed" for p in c.prompt_ids})
        result = _record(KIND, path, tmp, engine=engine, filters=filters, options=options, counts=counts,
                         digest=digest, started=started, prompt_ids=prompt_ids, extra=extra)
        tmp = None
    finally:
        discard(tmp)
    return DialogflowResult(path=path, manifest=result.manifest, intents=len(changes), changed=len(rewritten),
                            added=counts["responses_added"], removed=counts["responses_removed"],
                            export_run_id=result.export_run_id, counts=counts)


def _phrase_hashes(archive: AgentZip, intent: Intent) -> list[str]:
    """The content hashes the importer gave the intent's training phrases."""
    return [prompt_hash([{"role": "user", "content": text}]) for _, text, _ in iter_phrases(archive, intent) if text]


def _decide(conn: Any, intent: Intent, prompt_ids: list[int], agent_candidate: str, *, lang: str,
            excluded: set[int], filters: ExportFilters, scrubber: Scrubber | None,
            by_pair: dict[tuple[int, int], str] | None = None) -> IntentChange:
    change = IntentChange(intent=intent.name, entry=intent.entry, status="kept", reason="kept",
                          prompt_ids=sorted(set(prompt_ids)), before=list(intent.replies))
    if intent.entry is None or not has_speech(intent.data, lang):
        change.reason = "no_text_responses"
        return change
    if is_fixed_intent(intent.data):
        change.reason = "fallback_or_welcome"
        return change
    if not prompt_ids:
        change.reason = "not_imported"
        return change
    wanted = set(filters.candidate_models)
    replies: list[tuple[int, str]] = []
    models: dict[int, str] = {}
    comparisons: list[tuple[int, int, Votes]] = []
    for prompt_id in change.prompt_ids:
        for rid, text, model in source.prompt_responses(conn, prompt_id):
            replies.append((rid, text))
            models[rid] = model
        comparisons += ruled_comparisons(source.prompt_comparisons(conn, prompt_id, filters), by_pair or {})
    if wanted:  # --candidate: only comparisons between those candidates' replies (and the agent's own)
        allowed = {rid for rid, model in models.items() if model in wanted or model == agent_candidate}
        replies = [(rid, text) for rid, text in replies if rid in allowed]
        comparisons = [c for c in comparisons if c[0] in allowed and c[1] in allowed]
    ranked, reason = rank_intent(replies, comparisons, originals=intent.replies, excluded=excluded,
                                 filters=filters)
    if not ranked:
        change.reason = reason
        return change
    variants = [scrubber(r.text.strip()) if scrubber else r.text.strip() for r in ranked]
    before = {normalize_text(t) for t in intent.replies}
    after = {normalize_text(t) for t in variants}
    change.status, change.reason = "changed", "preferred_replies"
    change.after = [{"text": text, "original": r.original, "strength": r.strength, "wins": r.wins,
                     "losses": r.losses, "votes": r.votes, "response_ids": r.response_ids,
                     "candidates": sorted({models[rid] for rid in r.response_ids})}
                    for text, r in zip(variants, ranked, strict=True)]
    change.added = [t for t in variants if normalize_text(t) not in before]
    change.removed = [t for t in intent.replies if normalize_text(t) not in after]
    pairs = [pair for prompt_id in change.prompt_ids for pair in source.prompt_judgments(conn, prompt_id, filters)]
    change.comparison_ids = sorted({c for c, _ in pairs})
    change.judgment_ids = sorted({j for _, j in pairs})
    return change


def _rewrite(archive: AgentZip, intent: Intent, lang: str, change: IntentChange) -> bytes:
    raw = archive.read_bytes(change.entry).decode("utf-8-sig")
    data = with_variants(intent.data or {}, lang, [v["text"] for v in change.after])
    return dump_like_agent(data, detect_indent(raw)).encode("utf-8")


def _write_zip(archive: AgentZip, rewritten: dict[str | None, bytes], tmp: Path, target: Path) -> str:
    """Every entry in the source's order, with its name, time, compression and attributes; the bytes of
    the source except for the rewritten intents. Returns the new zip's SHA-256."""
    try:
        with zipfile.ZipFile(tmp, "w") as out:
            for info in archive.zip.infolist():
                copy = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                copy.compress_type, copy.external_attr = info.compress_type, info.external_attr
                copy.create_system, copy.comment = info.create_system, info.comment
                if info.is_dir():
                    out.writestr(copy, b"")
                    continue
                data = rewritten.get(info.filename)
                out.writestr(copy, archive.read_bytes(info.filename) if data is None else data)
    except OSError as exc:
        raise ExportError(f"cannot write {target}: {exc.strerror or exc}") from None
    return _sha256(tmp)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
