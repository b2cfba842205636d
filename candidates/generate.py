"""``run_generation``: fill in missing replies for every (prompt, candidate), resumably.

- Work = for each candidate, each prompt with fewer than ``replies_per_prompt`` replies; reply ``k``
  of a prompt is sampled with ``seed + k`` so a re-run asks for the same thing again.
- Each reply is written in its own short transaction as it arrives (a crash loses at most the
  requests in flight); the unique (prompt, model, text hash) constraint makes a concurrent or
  repeated write a no-op, never a duplicate.
- A (prompt, candidate) whose request fails after retries is recorded in GenerationFailure and retried
  by the next run; the row is deleted once the pair has all its replies.
- Preflight (unknown provider, missing API key variable, unreachable endpoint, missing model file)
  raises one clear :class:`GenerationConfigError` before any work starts.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

from sqlalchemy import delete, func
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from candidates.providers import Failure, Job, Reply, gguf_path, make_provider, scrub
from candidates.registry import EMBEDDED, PROVIDERS, CandidateSpec, check_secrets, sync_registry
from db.crud import DataError, add_response
from db.engine import session_scope
from db.errors import TheraPrefError
from db.models import BestOfNSample, CandidateModel, GenerationFailure, Prompt, Response, utcnow
from db.rules import conversation, prompt_conversation

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"


class GenerationConfigError(TheraPrefError, ValueError):
    """Configuration that would make generation fail; raised before any request is sent."""


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank-interpolated percentile; ``None`` for no values.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    >>> percentile([5.0], 95)
    5.0
    >>> percentile([], 50) is None
    True
    """
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1])


@dataclass
class GenerationSummary:
    """What a run did; ``str()`` is the final summary line."""

    planned: int = 0
    prompts: int = 0
    done: int = 0
    failed: int = 0
    duplicates: int = 0
    tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    candidates: int = 0
    elapsed_s: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def p50(self) -> float | None:
        return percentile(self.latencies, 50)

    @property
    def p95(self) -> float | None:
        return percentile(self.latencies, 95)

    def __str__(self) -> str:
        """>>> print(GenerationSummary(planned=2, done=2, tokens=40, latencies=[0.5, 1.5], candidates=1))
        Generated 2 replies (0 failed, 0 duplicates) for 1 candidate in 0.0 s: 40 tokens,
        latency p50 1.00 s, p95 1.45 s.
        """
        if self.planned == 0 and self.prompts == 0:
            return "No prompts to generate replies for: import some with `therapref import prompts FILE`."
        if self.planned == 0:
            return (f"Nothing to generate: all {self.prompts:,} prompts already have their replies from "
                    f"{self.candidates} candidate(s).")
        latency = (f"latency p50 {self.p50:.2f} s, p95 {self.p95:.2f} s" if self.latencies else "no latency data")
        plural = "candidate" if self.candidates == 1 else "candidates"
        text = (f"Generated {self.done:,} replies ({self.failed:,} failed, {self.duplicates:,} duplicates) for "
                f"{self.candidates} {plural} in {self.elapsed_s:.1f} s: {self.tokens:,} tokens, {latency}.")
        if self.failed:
            text += " Failures are recorded and retried by the next run."
        return text


def _endpoint_address(url: str) -> tuple[str, int]:
    """>>> _endpoint_address("http://127.0.0.1:8000/v1")
    ('127.0.0.1', 8000)
    >>> _endpoint_address("https://api.openai.com/v1")
    ('api.openai.com', 443)
    """
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def preflight(specs: list[CandidateSpec], *, secrets: Mapping[str, str] | None = None,
              check_endpoints: bool = True, connect_timeout: float = 3.0) -> None:
    """Everything that can be checked before sending a request: one clear error or nothing."""
    if not specs:
        raise GenerationConfigError("no candidates to generate for")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise GenerationConfigError("candidate names must be unique")
    for spec in specs:
        if spec.provider not in PROVIDERS:
            raise GenerationConfigError(f"candidate {spec.name!r}: unknown provider {spec.provider!r} "
                                        f"(expected {', '.join(PROVIDERS)})")
    try:
        check_secrets(specs, secrets or {})
    except TheraPrefError as exc:
        raise GenerationConfigError(str(exc)) from None
    for spec in specs:
        if spec.best_of > 1:
            from candidates.best_of_n import BestOfNError, check_folders

            try:
                check_folders(spec)
            except BestOfNError as exc:
                raise GenerationConfigError(str(exc)) from None
        if spec.provider == "llamacpp":
            try:
                path = gguf_path(spec)
            except FileNotFoundError as exc:
                raise GenerationConfigError(f"candidate {spec.name!r}: {exc}") from None
            if not path.is_file():
                raise GenerationConfigError(f"candidate {spec.name!r}: GGUF model file {path} not found")
        elif spec.provider == "transformers" and spec.model_id not in ("", EMBEDDED):
            if not (Path(spec.model_id).expanduser() / "config.json").is_file():
                raise GenerationConfigError(f"candidate {spec.name!r}: {spec.model_id} is not a Hugging Face "
                                            "model folder (no config.json)")
        elif spec.provider == "openai" and check_endpoints:
            url = spec.base_url or OPENAI_DEFAULT_URL
            host, port = _endpoint_address(url)
            try:
                socket.create_connection((host, port), timeout=connect_timeout).close()
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise GenerationConfigError(f"candidate {spec.name!r}: endpoint {url} is unreachable "
                                            f"({reason})") from None


def plan_jobs(specs: list[CandidateSpec], rows: Mapping[str, CandidateModel], *, session: Session,
              prompt_ids: list[int] | None = None) -> tuple[list[tuple[CandidateSpec, Job]], int]:
    """The replies still missing, per candidate and prompt (reply index continues the count), and
    the number of prompts considered."""
    query = select(Prompt).order_by(Prompt.id)
    if prompt_ids is not None:
        wanted = sorted(set(prompt_ids))
        query = query.where(Prompt.id.in_(wanted))  # type: ignore[union-attr]
    prompts = list(session.exec(query).all())
    if prompt_ids is not None:
        missing = sorted(set(prompt_ids) - {p.id for p in prompts})
        if missing:
            raise GenerationConfigError(f"unknown prompt id(s): {', '.join(map(str, missing[:10]))}")
    ids = [row.id for row in rows.values()]
    counts = {
        (p, c): n for p, c, n in session.exec(
            select(Response.prompt_id, Response.candidate_model_id, func.count(Response.id))
            .where(Response.candidate_model_id.in_(ids))  # type: ignore[union-attr]
            .group_by(Response.prompt_id, Response.candidate_model_id)
        ).all()
    }
    jobs = []
    for spec in specs:
        row = rows[spec.name]
        base_seed = spec.seed if spec.seed is not None else (None if spec.provider == "openai" else 0)
        for prompt in prompts:
            system, source = spec.resolve_system(prompt.system_prompt)
            messages = conversation(prompt.messages, system)
            context = prompt_conversation(prompt) if spec.best_of > 1 else None
            for k in range(counts.get((prompt.id, row.id), 0), spec.replies_per_prompt):
                jobs.append((spec, Job(prompt.id, row.id, messages, reply_index=k,
                                       seed=None if base_seed is None else base_seed + k, system_source=source,
                                       score_context=context)))
    return jobs, len(prompts)


def write_reply(engine: Engine, job: Job, reply: Reply, *, replies_required: int,
                clear_failure: bool = True) -> bool:
    """Store one reply in its own transaction; True when a new row was written.

    With ``clear_failure`` the pair's GenerationFailure row is deleted once it has all its replies
    (callers that know the pair never failed skip that query)."""
    # add_response only needs the two ids: stand-ins save two SELECTs per reply.
    prompt, candidate = SimpleNamespace(id=job.prompt_id), SimpleNamespace(id=job.candidate_id)
    try:
        with session_scope(engine) as session:
            response, created = add_response(prompt, candidate, reply.text, session=session,  # type: ignore[arg-type]
                                             meta=reply.meta)
            if created and reply.samples:
                session.flush()
                session.add_all(BestOfNSample(response_id=response.id, **sample) for sample in reply.samples)
            if clear_failure:
                have = session.exec(select(func.count(Response.id)).where(
                    Response.prompt_id == job.prompt_id, Response.candidate_model_id == job.candidate_id)).one()
                if have >= replies_required:
                    session.exec(delete(GenerationFailure).where(
                        GenerationFailure.prompt_id == job.prompt_id,
                        GenerationFailure.candidate_model_id == job.candidate_id))
            return created
    except IntegrityError:
        return False  # another process stored the same reply first: no duplicate


def write_failure(engine: Engine, job: Job, error: str) -> None:
    """Record (or update) the failure of one (prompt, candidate); retried by the next run."""
    for _ in range(2):
        try:
            with session_scope(engine) as session:
                row = session.exec(select(GenerationFailure).where(
                    GenerationFailure.prompt_id == job.prompt_id,
                    GenerationFailure.candidate_model_id == job.candidate_id)).first()
                if row is None:
                    row = GenerationFailure(prompt_id=job.prompt_id, candidate_model_id=job.candidate_id,
                                            error=error[:2000], attempts=1)
                else:
                    row.error, row.attempts, row.updated_at = error[:2000], row.attempts + 1, utcnow()
                session.add(row)
            return
        except IntegrityError:
            continue  # a concurrent run inserted it first: update theirs


def run_generation(engine: Engine, specs: list[CandidateSpec], *, prompt_ids: list[int] | None = None,
                   progress: bool = True, secrets: Mapping[str, str] | None = None,
                   check_endpoints: bool = True) -> GenerationSummary:
    """Generate every missing reply for ``specs`` (all prompts, or ``prompt_ids``).

    ``secrets`` maps API-key environment variable names to their values (built by the caller;
    this library never reads the environment). Returns the run's summary.
    """
    preflight(specs, secrets=secrets, check_endpoints=check_endpoints)
    with session_scope(engine) as session:
        rows = sync_registry(specs, session=session)
        planned, n_prompts = plan_jobs(specs, rows, session=session, prompt_ids=prompt_ids)
        failed_pairs = {(f.prompt_id, f.candidate_model_id) for f in session.exec(
            select(GenerationFailure).where(GenerationFailure.candidate_model_id.in_(  # type: ignore[union-attr]
                [row.id for row in rows.values()]))).all()}
    summary = GenerationSummary(planned=len(planned), prompts=n_prompts, candidates=len(specs))
    if planned:
        started = time.perf_counter()
        work = _execute(engine, specs, planned, summary, secrets=secrets, progress=progress,
                        failed_pairs=failed_pairs)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(work)
        else:  # called from inside an event loop (a notebook, an async app): run in a worker thread
            with ThreadPoolExecutor(max_workers=1) as pool:
                pool.submit(asyncio.run, work).result()
        summary.elapsed_s = time.perf_counter() - started
    return summary


async def _execute(engine: Engine, specs: list[CandidateSpec], planned: list[tuple[CandidateSpec, Job]],
                   summary: GenerationSummary, *, secrets: Mapping[str, str] | None, progress: bool,
                   failed_pairs: set[tuple[int, int]]) -> None:
    from tqdm import tqdm

    loop = asyncio.get_running_loop()
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="therapref-writer")
    local_lock = asyncio.Lock()
    bar = tqdm(total=len(planned), desc="generate", unit="reply", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    by_spec: dict[str, list[Job]] = {}
    for spec, job in planned:
        by_spec.setdefault(spec.name, []).append(job)

    async def run_spec(spec: CandidateSpec) -> None:
        async def emit(job: Job, outcome: Reply | Failure) -> None:
            if isinstance(outcome, Reply):
                outcome.meta.update(system=job.system_source, reply_index=job.reply_index, seed=job.seed)
                keys = ("temperature", "top_p", "max_tokens", "seed", "system_prompt")  # what policy/abtest.py compares
                outcome.meta["settings"] = {k: getattr(spec, k) for k in keys}
                pair = (job.prompt_id, job.candidate_id)
                try:
                    created = await loop.run_in_executor(writer, lambda: write_reply(
                        engine, job, outcome, replies_required=spec.replies_per_prompt,
                        clear_failure=pair in failed_pairs))
                except DataError as exc:
                    outcome = Failure(str(exc))
                else:
                    if created:
                        summary.done += 1
                        summary.tokens += int(outcome.meta.get("completion_tokens") or 0)
                        if outcome.meta.get("latency_s") is not None:
                            summary.latencies.append(float(outcome.meta["latency_s"]))
                    else:
                        summary.duplicates += 1
            if isinstance(outcome, Failure):
                error = scrub(outcome.error, secrets)
                await loop.run_in_executor(writer, lambda: write_failure(engine, job, error))
                failed_pairs.add((job.prompt_id, job.candidate_id))
                summary.failed += 1
                summary.errors.setdefault(spec.name, error)
            bar.update(1)
            bar.set_postfix(failed=summary.failed, refresh=False)

        provider = make_provider(spec, secrets=secrets, local_lock=local_lock)
        try:
            try:
                await provider.start()
            except Exception as exc:  # noqa: BLE001 - a model that will not load fails its jobs only
                for job in by_spec[spec.name]:
                    await emit(job, Failure(f"could not load model: {type(exc).__name__}: {exc}"))
                return
            await provider.run(by_spec[spec.name], emit)
        finally:
            await provider.close()

    try:
        await asyncio.gather(*(run_spec(spec) for spec in specs if spec.name in by_spec))
    finally:
        bar.close()
        writer.shutdown(wait=True)
