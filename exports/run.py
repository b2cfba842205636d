"""One entry point for every export kind: stream, decide, write atomically, record provenance."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from db.engine import read_only_engine, session_scope
from db.models import utcnow
from exports import formats, source
from exports.atomic import check_target, discard, publish, temp_dir, temp_file
from exports.errors import ExportError
from exports.filters import ExportFilters, check_filters, judgment_filter_counts
from exports.pii import Scrubber
from exports.select import (
    bt_choice,
    kto_label,
    majority_choice,
    pair_margin,
    pair_winner,
    ruled_votes,
    tallies,
    worse_on_criterion,
)

KINDS = ("sft", "dpo", "openai-dpo", "kto", "hf")
SELECTIONS = ("majority", "bt", "reference", "reward")
#: ``adjudicated``: a lead's final label replaces the votes of an adjudicated comparison (and its flags
#: the clinicians' flags); ``majority``: the votes alone; ``auto``: adjudicated when any adjudication
#: exists and clinicians' judgments are selected.
AGGREGATIONS = ("auto", "adjudicated", "majority")
PROGRESS_EVERY = 10_000


@dataclass
class ExportOptions:
    """How an export chooses and writes its rows (filters live in :class:`ExportFilters`)."""

    force: bool = field(default=False, metadata={"help": "overwrite an existing output"})
    scrub_pii: bool = field(default=False, metadata={
        "help": "replace e-mails, phones, URLs and names with placeholders"})
    system_prompt: str | None = field(default=None, metadata={
        "help": "system message for every row (default: the prompt's own; none when it has none)"})
    selection: str = field(default="majority", metadata={
        "help": "SFT/KTO preferred reply: majority, bt (Bradley–Terry), reference (every reply of "
                "--reference-candidate) or reward (reward model best-of-n)"})
    reference_candidate: str = field(default="reference", metadata={
        "help": "candidate whose replies count as references (selection reference, --prefer-source)"})
    prefer_source: str | None = field(default=None, metadata={
        "help": "SFT: use this candidate's reply for a prompt whenever it has one (before judgments)"})
    rewrites: str = field(default="prefer", metadata={"help": "SFT/KTO clinician rewrites: prefer or skip"})
    reward_model: str | None = field(default=None, metadata={"help": "reward model folder (selection reward)"})
    margin: bool = field(default=True, metadata={"help": "DPO: write the optional margin column"})
    aggregation: str = field(default="auto", metadata={
        "help": "adjudicated (a lead's final label replaces the votes and flags of an adjudicated comparison), "
                "majority (the votes alone) or auto (adjudicated when any adjudication exists)"})
    actor: str = field(default="cli", metadata={"help": "who ran the export (audit trail)"})
    command: list[str] = field(default_factory=list, metadata={"help": "the command line, for the manifest"})


@dataclass
class ExportResult:
    kind: str
    path: Path
    manifest: Path
    rows: int
    counts: dict[str, Any]
    export_run_id: int


class Tracker:
    """Counts in/out and the reason for every dropped item; reports progress."""

    def __init__(self, unit: str, progress: Callable[[int], None] | None) -> None:
        self.unit, self.dropped, self.seen, self.rows = unit, Counter(), 0, 0
        self.progress = progress
        self.aggregation, self.adjudicated = "majority", 0  # set by _rows; comparisons a ruling decided
        # Prompts with a row in the file: the manifest lists them, so that an A/B test of a policy
        # trained on this file can leave them out (policy/abtest.py). Ids only, one per prompt.
        self.prompt_ids: set[int] = set()

    def kept(self, prompt_id: int) -> None:
        self.prompt_ids.add(int(prompt_id))

    def drop(self, reason: str, n: int = 1) -> None:
        if n > 0:
            self.dropped[reason] += n

    def step(self) -> None:
        self.seen += 1
        if self.progress and self.seen % PROGRESS_EVERY == 0:
            self.progress(self.seen)


def run_export(kind: str, output: str | Path, *, engine: Engine, filters: ExportFilters | None = None,
               options: ExportOptions | None = None,
               progress: Callable[[int], None] | None = None) -> ExportResult:
    """Write one export of ``kind`` to ``output`` (file, or folder for ``hf``) and its manifest."""
    filters, options = filters or ExportFilters(), options or ExportOptions()
    if kind not in KINDS:
        raise ExportError(f"unknown export kind {kind!r} (expected one of {', '.join(KINDS)})")
    _check_options(kind, options)
    path = Path(output)
    check_target(path, force=options.force, is_dir=(kind == "hf"))
    if kind != "hf":
        check_target(formats.manifest_path(path, kind), force=True)
    with session_scope(read_only_engine(engine)) as session:
        check_filters(filters, session=session)
        if options.selection == "reference" or options.prefer_source:
            names = {options.reference_candidate if options.selection == "reference" else options.prefer_source}
            _check_candidates(names, session=session)
    scrubber = Scrubber() if options.scrub_pii else None
    started = utcnow()
    tmp: Path | None = None
    try:
        with read_only_engine(engine).connect() as conn:
            with conn.begin():
                judgment_counts = judgment_filter_counts(conn, filters)
                rows, tracker = _rows(kind, conn, filters, options, progress)
                if scrubber:
                    rows = (_scrub_row(row, scrubber) for row in rows)
                if kind == "hf":
                    from exports.hf import write_hf

                    tmp = temp_dir(path)
                    n_rows, digest = write_hf(rows, tmp)
                else:
                    tmp = temp_file(path)
                    n_rows, digest = _write_jsonl(rows, tmp, path)
                tracker.rows = n_rows
        if n_rows == 0:
            raise ExportError(_empty_message(kind, tracker, judgment_counts))
        counts = {
            "unit": tracker.unit, "in": tracker.seen, "out": n_rows,
            "dropped": dict(sorted(tracker.dropped.items())), "judgments": judgment_counts,
            "aggregation": tracker.aggregation, "adjudicated": tracker.adjudicated,
        }
        if scrubber:
            counts["pii_replaced"] = scrubber.report()
        result = _record(kind, path, tmp, engine=engine, filters=filters, options=options, counts=counts,
                         digest=digest, started=started, prompt_ids=sorted(tracker.prompt_ids))
        tmp = None
        return result
    finally:
        discard(tmp)


def _check_options(kind: str, options: ExportOptions) -> None:
    if options.selection not in SELECTIONS:
        raise ExportError(f"--select {options.selection!r} is not one of {', '.join(SELECTIONS)}")
    if options.aggregation not in AGGREGATIONS:
        raise ExportError(f"--aggregation {options.aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
    if options.rewrites not in ("prefer", "skip"):
        raise ExportError(f"--rewrites {options.rewrites!r} is not one of prefer, skip")
    if options.selection != "majority" and kind != "sft":
        raise ExportError(f"--select {options.selection} applies to sft exports only")
    if options.prefer_source and kind != "sft":
        raise ExportError("--prefer-source applies to sft exports only")
    if options.selection == "reward" and not options.reward_model:
        raise ExportError("--select reward needs --reward-model DIR")
    if options.reward_model and not Path(options.reward_model).is_dir():
        raise ExportError(f"reward model folder {options.reward_model} does not exist")


def _check_candidates(names: set[str | None], *, session: Any) -> None:
    from sqlmodel import select

    from db.models import CandidateModel

    known = set(session.exec(select(CandidateModel.name)).all())
    for name in names:
        if name not in known:
            raise ExportError(f"unknown candidate model {name!r} (known: {', '.join(sorted(known)) or 'none'})")


def applied_rulings(conn: Any, filters: ExportFilters, options: ExportOptions) -> dict[int, source.Ruling]:
    """The adjudications the export applies: none under ``majority`` or when no clinician's judgment
    is selected (a lead's label replaces clinicians' votes, not an imported dataset's)."""
    if options.aggregation == "majority" or not filters.parsed_sources.clinicians:
        return {}
    return source.rulings(conn)


def ruled_comparisons(comparisons: list[tuple[int, int, Any]], by_pair: dict[tuple[int, int], str],
                      tracker: Tracker | None = None) -> list[tuple[int, int, Any]]:
    """A prompt's (a id, b id, votes) with each adjudicated comparison's votes replaced by the ruling
    (``by_pair``: (a id, b id) → the lead's label)."""
    out = []
    for a_id, b_id, votes in comparisons:
        preferred = by_pair.get((a_id, b_id))
        if preferred is not None:
            if tracker is not None:
                tracker.adjudicated += 1
            votes = ruled_votes(votes, preferred)
        out.append((a_id, b_id, votes))
    return out


def _rows(kind: str, conn: Any, filters: ExportFilters, options: ExportOptions,
          progress: Callable[[int], None] | None) -> tuple[Iterator[dict[str, Any]], Tracker]:
    rulings = applied_rulings(conn, filters, options)
    by_pair = {(r.a_id, r.b_id): r.preferred for r in rulings.values()}
    flagged = source.flagged_response_ids(conn, adjudicated=bool(rulings))
    # --not-worse-on: replies worse on the criterion in some comparison are never SFT/KTO targets
    # (pairs check their own comparison's verdicts instead, in _pair_rows).
    losers = source.criterion_losers(conn, filters) if kind in ("sft", "kto") else set()
    unit = "replies" if kind == "kto" or (kind == "sft" and options.selection == "reference") else (
        "prompts" if kind == "sft" else "comparisons")
    tracker = Tracker(unit, progress)
    tracker.aggregation = "adjudicated" if rulings else "majority"
    if kind == "sft":
        if options.selection == "reference":
            return _reference_rows(conn, filters, options, flagged, tracker, losers), tracker
        return _sft_rows(conn, filters, options, flagged, tracker, losers, by_pair), tracker
    if kind == "kto":
        return _kto_rows(conn, filters, options, flagged, tracker, losers, by_pair), tracker
    return _pair_rows(kind, conn, filters, options, flagged, tracker, by_pair), tracker


def _system(options: ExportOptions, own: str | None) -> str | None:
    return options.system_prompt if options.system_prompt is not None else own


def _pair_rows(kind: str, conn: Any, filters: ExportFilters, options: ExportOptions, flagged: set[int],
               tracker: Tracker, by_pair: dict[tuple[int, int], str] | None = None) -> Iterator[dict[str, Any]]:
    by_pair = by_pair or {}
    wanted = set(filters.candidate_models)
    total = source.count_comparisons(conn)
    judged = 0
    for pair in source.iter_pairs(conn, filters):
        judged += 1
        tracker.step()
        if wanted and (pair.a_model not in wanted or pair.b_model not in wanted):
            tracker.drop("candidate_filtered")
            continue
        ruling = by_pair.get((pair.a_id, pair.b_id))
        if ruling is not None:
            tracker.adjudicated += 1
            pair = replace(pair, votes=ruled_votes(pair.votes, ruling))
        winner, reason = pair_winner(pair.votes, filters)
        if winner is None:
            tracker.drop(reason)
            continue
        chosen_id, rejected_id = (pair.a_id, pair.b_id) if winner == "a" else (pair.b_id, pair.a_id)
        if chosen_id in flagged:
            tracker.drop("chosen_flagged")
            continue
        if filters.exclude_flagged and rejected_id in flagged:
            tracker.drop("flagged")
            continue
        if filters.not_worse_on and worse_on_criterion(pair.criterion_votes, winner):
            tracker.drop("worse_on_criterion")
            continue
        chosen, rejected = (pair.a_text, pair.b_text) if winner == "a" else (pair.b_text, pair.a_text)
        prompt = formats.checked_conversation(pair.messages, _system(options, pair.system_prompt))
        tracker.kept(pair.prompt_id)
        if kind == "openai-dpo":
            yield formats.openai_dpo_row(prompt, chosen, rejected)
        elif kind == "dpo":
            yield formats.dpo_row(prompt, chosen, rejected, pair_margin(pair.votes) if options.margin else None)
        else:  # hf: the TRL columns plus provenance columns
            row = formats.dpo_row(prompt, chosen, rejected, pair_margin(pair.votes))
            row.update(comparison_id=pair.comparison_id, prompt_id=pair.prompt_id,
                       chosen_model=pair.a_model if winner == "a" else pair.b_model,
                       rejected_model=pair.b_model if winner == "a" else pair.a_model,
                       votes=pair.votes.total, votes_chosen=max(pair.votes.a, pair.votes.b),
                       votes_rejected=min(pair.votes.a, pair.votes.b))
            yield row
    # Comparisons that no judgment passing the filters speaks about.
    tracker.seen += total - judged
    tracker.drop("no_judgments", total - judged)


def _sft_rows(conn: Any, filters: ExportFilters, options: ExportOptions, flagged: set[int],
              tracker: Tracker, losers: set[int] = frozenset(),
              by_pair: dict[tuple[int, int], str] | None = None) -> Iterator[dict[str, Any]]:
    wanted = set(filters.candidate_models)
    scorer = _reward_scorer(options.reward_model) if options.selection == "reward" else None
    for prompt_id, messages, system in source.iter_prompts(conn):
        tracker.step()
        prompt = formats.checked_conversation(messages, _system(options, system))
        if options.rewrites == "prefer":
            rewrite = source.prompt_rewrite(conn, prompt_id, filters)
            if rewrite:
                tracker.kept(prompt_id)
                yield formats.sft_row(prompt, rewrite)
                continue
        replies = source.prompt_responses(conn, prompt_id)
        texts = {rid: text for rid, text, _ in replies}
        eligible = {rid for rid, _, model in replies
                    if rid not in flagged and rid not in losers and (not wanted or model in wanted)}
        if options.prefer_source:
            preferred = [rid for rid, _, model in replies if model == options.prefer_source and rid in eligible]
            if preferred:
                tracker.kept(prompt_id)
                yield formats.sft_row(prompt, texts[preferred[0]])
                continue
        if scorer is not None:
            choice, reason = _best_of_n(scorer, prompt, [(rid, texts[rid]) for rid in sorted(eligible)])
        else:
            models = {rid: model for rid, _, model in replies}
            comparisons = [c for c in ruled_comparisons(source.prompt_comparisons(conn, prompt_id, filters),
                                                        by_pair or {}, tracker)
                           if not wanted or (models.get(c[0]) in wanted and models.get(c[1]) in wanted)]
            if not replies:
                choice, reason = None, "no_replies"
            elif options.selection == "bt":
                choice, reason = bt_choice(comparisons, filters, eligible=eligible)
            else:
                choice, reason = majority_choice(tallies(comparisons), filters, eligible=eligible)
        if choice is None or reason != "kept":
            tracker.drop(reason)
            continue
        tracker.kept(prompt_id)
        yield formats.sft_row(prompt, texts[choice])


def _reference_rows(conn: Any, filters: ExportFilters, options: ExportOptions, flagged: set[int],
                    tracker: Tracker, losers: set[int] = frozenset()) -> Iterator[dict[str, Any]]:
    """Every reply of the reference candidate (not flagged), in stored order: one line each."""
    for response_id, prompt_id, messages, system, text in source.iter_candidate_replies(
            conn, options.reference_candidate):
        tracker.step()
        if response_id in flagged:
            tracker.drop("flagged")
            continue
        if response_id in losers:
            tracker.drop("worse_on_criterion")
            continue
        tracker.kept(prompt_id)
        yield formats.sft_row(formats.checked_conversation(messages, _system(options, system)), text)


def _kto_rows(conn: Any, filters: ExportFilters, options: ExportOptions, flagged: set[int],
              tracker: Tracker, losers: set[int] = frozenset(),
              by_pair: dict[tuple[int, int], str] | None = None) -> Iterator[dict[str, Any]]:
    wanted = set(filters.candidate_models)
    for prompt_id, messages, system in source.iter_prompts(conn):
        prompt = formats.checked_conversation(messages, _system(options, system))
        replies = source.prompt_responses(conn, prompt_id)
        comparisons = ruled_comparisons(source.prompt_comparisons(conn, prompt_id, filters), by_pair or {}, tracker)
        table = tallies(comparisons)
        for rid, text, model in replies:
            tracker.step()
            if wanted and model not in wanted:
                tracker.drop("candidate_filtered")
                continue
            if rid in flagged and filters.exclude_flagged:
                tracker.drop("flagged")
                continue
            if rid not in table and rid not in flagged:
                tracker.drop("no_judgments")
                continue
            label, reason = kto_label(table.get(rid) or _empty_tally(), filters, flagged=rid in flagged)
            if label is None:
                tracker.drop(reason)
                continue
            if label and rid in losers:  # never desirable when worse on the --not-worse-on criterion
                tracker.drop("worse_on_criterion")
                continue
            tracker.kept(prompt_id)
            yield formats.kto_row(prompt, text, label)
        if options.rewrites == "prefer":
            rewrite = source.prompt_rewrite(conn, prompt_id, filters)
            if rewrite:
                tracker.step()
                tracker.kept(prompt_id)
                yield formats.kto_row(prompt, rewrite, True)


def _empty_tally() -> Any:
    from exports.select import Tally

    return Tally()


def _reward_scorer(path: str | None) -> Any:
    """The reward model (a ``reward.scoring.RewardModel``) of ``--reward-model``, imported lazily:
    torch loads only for this option."""
    from reward.scoring import RewardModel

    return RewardModel.load(path)


def _best_of_n(scorer: Any, prompt: list[dict[str, str]],
               candidates: list[tuple[int, str]]) -> tuple[int | None, str]:
    """The reward model's pick among (response id, text) candidates, through the one best-of-n of
    ``reward.scoring``; candidates come sorted by id, so a tie goes to the lowest id."""
    if not candidates:
        return None, "no_eligible_replies"
    from reward.scoring import best_of_n

    best = best_of_n(scorer, prompt, [text for _, text in candidates])
    return candidates[best.index][0], "kept"


def _scrub_row(row: dict[str, Any], scrubber: Scrubber) -> dict[str, Any]:
    out = dict(row)
    for key in ("messages", "prompt", "chosen", "rejected", "completion", "preferred_output",
                "non_preferred_output"):
        if key in out:
            out[key] = scrubber.messages(out[key])
    if "input" in out:
        out["input"] = {**out["input"], "messages": scrubber.messages(out["input"]["messages"])}
    return out


def _write_jsonl(rows: Iterator[dict[str, Any]], tmp: Path, target: Path) -> tuple[int, str]:
    digest, n = hashlib.sha256(), 0
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as handle:
            for row in rows:
                line = formats.jsonl_line(row)
                handle.write(line)
                digest.update(line.encode("utf-8"))
                n += 1
            handle.flush()
    except OSError as exc:
        raise ExportError(f"cannot write {target}: {exc.strerror or exc}") from None
    return n, digest.hexdigest()


def _empty_message(kind: str, tracker: Tracker, judgment_counts: dict[str, int]) -> str:
    reasons = ", ".join(f"{reason} {n}" for reason, n in tracker.dropped.most_common() if n) or "nothing to read"
    return (f"nothing to export: 0 of {tracker.seen} {tracker.unit} passed the filters ({reasons}; "
            f"{judgment_counts['judgments_used']} of {judgment_counts['judgments_total']} judgments used); "
            f"no {kind} file written")


def _record(kind: str, path: Path, tmp: Path, *, engine: Engine, filters: ExportFilters, options: ExportOptions,
            counts: dict[str, Any], digest: str, started: Any, prompt_ids: list[int] | None = None,
            extra: dict[str, Any] | None = None) -> ExportResult:
    """Write the manifest (plus ``extra``, a kind's own keys), move the export into place and record
    an ExportRun and audit event, all or nothing."""
    from db.audit import audit
    from db.models import ExportRun
    from db.status import counts_by_source, database_fingerprint
    from therapref import __version__

    mpath = formats.manifest_path(path, kind)
    with session_scope(engine) as session:
        fingerprint = database_fingerprint(session=session)
        run = ExportRun(kind=kind, path=str(path.resolve()), filters=filters.to_json(), counts=counts,
                        data_fingerprint=fingerprint, actor=options.actor)
        session.add(run)
        session.flush()
        manifest = {
            "kind": kind, "path": str(path.resolve()), "sha256": digest, "rows": counts["out"],
            "command": options.command, "filters": filters.to_json(),
            "options": {k: v for k, v in asdict(options).items() if k not in ("command", "actor", "force")},
            "counts": counts, "database_fingerprint": fingerprint, "tool": "therapref",
            "tool_version": __version__, "started_at": started.isoformat(), "finished_at": utcnow().isoformat(),
            "export_run_id": run.id, "database_sources": counts_by_source(session=session),
            # The prompts of the rows written (policy A/B tests hold these out).
            "prompt_ids": list(prompt_ids or []),
            **(extra or {}),
        }
        audit(options.actor, "export.write", session=session, target=str(path.resolve()),
              details={"kind": kind, "rows": counts["out"], "export_run_id": run.id, "sha256": digest})
        if kind == "hf":
            formats.write_manifest(manifest, tmp / "manifest.json")
            from exports.hf import write_card

            write_card(tmp, manifest)
            publish(tmp, path, force=options.force)
        else:
            mtmp = temp_file(mpath)
            try:
                formats.write_manifest(manifest, mtmp)
                publish(tmp, path, force=options.force)
                publish(mtmp, mpath, force=True)
            finally:
                discard(mtmp if mtmp.exists() else None)
        run_id = run.id
    return ExportResult(kind=kind, path=path, manifest=mpath, rows=counts["out"], counts=counts,
                        export_run_id=run_id)
