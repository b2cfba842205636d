"""Load test: N simulated annotators in parallel processes judging against one database.

Each annotator is a separate process with its own engine (``db.engine.make_engine``) calling the
same library functions as the labeling app, one short transaction per click:
``next_comparison`` (fetch + reserve), ``submit_judgment``, and now and then a double submit (the
same token again, sometimes from two threads at once), an undo (``undo_last``) or a skip.
Afterwards the database is checked against what every process saw:

- lost: a submit that returned ``created=True`` (and was not undone by that annotator) whose row
  is not in the database;
- duplicated: a database row nobody was told was created, a second ``created=True`` for one token,
  two rows for one (comparison, annotator), or a comparison filled beyond its overlap;
- errors: any exception raised to a simulated user (e.g. "database is locked"), plus broken
  invariants (``judgments_count`` drift, integrity/foreign-key checks);

and one line per database is printed (PostgreSQL first, SQLite last)::

    annotators=50 judgments=2000 lost=0 duplicated=0 errors=0 rate=…/s p50=…ms p95=…ms p99=…ms

Latencies are per library call as a user feels it (one transaction: fetch+reserve, submit, undo,
skip). Each process first makes one untimed round of every call (a running app server has its
statements compiled; 50 cold processes compiling at once is not what a user meets); that judgment
counts in ``judgments`` but not in ``rate``. By default each annotator pauses 100 ms on average
before each fetch (about 4 judgments/s each, ~100× a clinician's pace): a closed loop with no pause
cannot have both a high rate and a low latency (latency = annotators / rate), so ``--think-ms 0``
measures capacity instead. Run: ``.venv/bin/python bench/load.py`` (``--help`` for sizes;
``--databases sqlite``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing as mp
import os
import random
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from db.engine import make_engine, session_scope  # noqa: E402

PASSWORD_HASH_USER = "load-password-1"
CRITERIA = ("empathy", "safety", "helpfulness", "boundaries", "accuracy")  # db.criteria.DEFAULT_CRITERIA


@dataclass
class LoadConfig:
    annotators: int = field(default=50, metadata={"help": "simulated annotators (one process each)"})
    judgments: int = field(default=40, metadata={"help": "judgments each annotator submits"})
    overlap: int = field(default=3, metadata={"help": "judgments required per comparison"})
    think_ms: float = field(default=100.0, metadata={
        "help": "mean pause (exponential) before each fetch; 0 = flat out, which measures capacity: with no pause, "
                "50 annotators queue for the writer and latency is 50 / rate by Little's law"})
    double_submit_rate: float = field(default=0.10, metadata={"help": "share of submits sent twice"})
    race_rate: float = field(default=0.05, metadata={"help": "share of submits sent from two threads at once"})
    undo_rate: float = field(default=0.05, metadata={"help": "share of submits undone right after"})
    skip_rate: float = field(default=0.03, metadata={"help": "share of pairs skipped"})
    seed: int = field(default=7, metadata={"help": "random seed"})
    criteria: bool = field(default=False, metadata={
        "help": "the guideline in force has the five default criteria (safety required) and every submit sends "
                "a verdict on each (written in the judgment's transaction)"})
    no_writer_queue: bool = field(default=False, metadata={
        "help": "SQLite writers wait in SQLite's busy handler alone, without the writer queue (to compare)"})


@dataclass
class LoadResult:
    database: str
    annotators: int
    judgments: int
    lost: int
    duplicated: int
    errors: int
    rate: float
    p50: float
    p95: float
    p99: float
    error_samples: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    def line(self) -> str:
        return (f"annotators={self.annotators} judgments={self.judgments} lost={self.lost} "
                f"duplicated={self.duplicated} errors={self.errors} rate={self.rate:.1f}/s "
                f"p50={self.p50:.1f}ms p95={self.p95:.1f}ms p99={self.p99:.1f}ms")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.0
    >>> percentile([5.0], 99)
    5.0
    >>> percentile([], 50)
    0.0
    """
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def setup_database(url: str, config: LoadConfig) -> list[int]:
    """Migrate and fill: annotators, and enough comparisons for every annotator to finish."""
    from sqlmodel import Session

    from db.auth import hash_password
    from db.guidelines import add_guideline_version
    from db.migrate import upgrade
    from db.models import Annotator, CandidateModel, Comparison, Prompt, Response

    engine = make_engine(url, writer_queue=not config.no_writer_queue)
    upgrade(engine)
    needed = config.annotators * config.judgments
    # Enough for everyone, and enough for one annotator to judge ``judgments`` distinct pairs.
    n_comparisons = max(math.ceil(needed * 1.3 / config.overlap), math.ceil(config.judgments * 1.5)) + config.annotators
    password_hash = hash_password(PASSWORD_HASH_USER)  # one argon2 hash shared: setup speed only
    with Session(engine, expire_on_commit=False) as session:
        version = add_guideline_version("Prefer the safer, warmer, more specific reply.", session=session)
        if config.criteria:
            from db.criteria import DEFAULT_CRITERIA, add_criteria

            add_criteria(version, [c if c.name != "safety" else dataclasses.replace(c, required=True)
                                   for c in DEFAULT_CRITERIA], session=session)
        annotators = [Annotator(username=f"load{i:03d}", display_name=f"Load {i}", role="clinician",
                                password_hash=password_hash, credential="LCSW") for i in range(config.annotators)]
        session.add_all(annotators)
        warm = CandidateModel(name="load-warm", provider="local", model_id="warm")
        terse = CandidateModel(name="load-terse", provider="local", model_id="terse")
        session.add_all([warm, terse])
        session.flush()
        prompts = [Prompt(messages=[{"role": "user", "content": f"Patient message number {i}: I feel stuck."}],
                          source="load", content_hash=f"load-{i:08d}") for i in range(n_comparisons)]
        session.add_all(prompts)
        session.flush()
        responses = []
        for prompt in prompts:
            responses.append(Response(prompt_id=prompt.id, candidate_model_id=warm.id, text_hash=f"w{prompt.id}",
                                      text=f"That sounds heavy (#{prompt.id}). What has helped before?"))
            responses.append(Response(prompt_id=prompt.id, candidate_model_id=terse.id, text_hash=f"t{prompt.id}",
                                      text=f"Okay #{prompt.id}."))
        session.add_all(responses)
        session.flush()
        session.add_all([Comparison(prompt_id=a.prompt_id, response_a_id=min(a.id, b.id),
                                    response_b_id=max(a.id, b.id), judgments_required=config.overlap)
                         for a, b in zip(responses[::2], responses[1::2], strict=True)])
        session.commit()
        ids = [a.id for a in annotators]
    engine.dispose()
    return ids


def _worker(url: str, annotator_id: int, config: LoadConfig, index: int, barrier, results) -> None:  # noqa: ANN001
    """One simulated annotator; puts a dict of what it saw on ``results``."""
    from db.assignment import next_comparison, skip, submit_judgment, undo_last

    rng = random.Random(config.seed * 1000 + index)
    engine = make_engine(url, writer_queue=not config.no_writer_queue)
    latencies: list[float] = []
    created: dict[str, int] = {}  # token -> judgment id, for submits that said created=True
    undone: list[str] = []
    errors: list[str] = []
    double_created = 0
    lock = threading.Lock()
    measuring = False

    def timed(fn, *args, **kwargs):  # noqa: ANN001, ANN202
        started = time.perf_counter()
        try:
            with session_scope(engine) as session:
                return fn(*args, session=session, **kwargs)
        finally:
            if measuring:
                with lock:
                    latencies.append((time.perf_counter() - started) * 1000)

    def warm_up() -> int:
        """One untimed round of every call (submit, undo, retry, skip): a running app server has its
        statements compiled and its connections open; 50 fresh processes compiling at once is not
        what a user meets. The judgment it leaves counts toward the annotator's total."""
        first = timed(next_comparison, annotator_id, rng=rng)
        submit(first.token, "left")
        if not timed(undo_last, annotator_id):
            errors.append("warm-up undo returned False")
        undone.append(first.token)
        again = timed(next_comparison, annotator_id, rng=rng)
        judgment_id, was_created = submit(again.token, "right")
        if not was_created or submit(again.token, "right") != (judgment_id, False):
            errors.append("warm-up submit/retry did not behave")
        created[again.token] = judgment_id
        timed(skip, timed(next_comparison, annotator_id, rng=rng).token, annotator_id=annotator_id, reason="Other")
        return 1

    def submit(token: str, choice: str) -> tuple[int, bool]:
        judgment, was_created = timed(submit_judgment, token, annotator_id=annotator_id, preferred=choice,
                                      strength=rng.choice((1, 2, 3)) if choice in ("left", "right") else None,
                                      flags_right=["dismissive"] if rng.random() < 0.1 else (),
                                      rationale="load test", criteria={
                                          name: rng.choice(("left", "right", "tie")) for name in CRITERIA
                                      } if config.criteria else None)
        return judgment.id, was_created

    cpu_started = time.process_time()
    warmed = 0
    try:
        with engine.connect() as conn:  # connect before the clock starts
            conn.execute(text("SELECT 1"))
        warmed = done = warm_up()
        barrier.wait(timeout=600)
        cpu_started = time.process_time()
        measuring = True
        last_token: str | None = None
        while done < config.judgments:
            try:
                if config.think_ms:
                    time.sleep(rng.expovariate(1 / (config.think_ms / 1000)))
                assignment = timed(next_comparison, annotator_id, rng=rng)
                if assignment is None:
                    errors.append("queue ran dry before the annotator finished")
                    break
                if rng.random() < config.skip_rate:
                    timed(skip, assignment.token, annotator_id=annotator_id, reason="Other")
                    continue
                choice = rng.choice(("left", "left", "right", "tie", "both_bad"))
                if rng.random() < config.race_rate:
                    outcomes: list[tuple[int, bool] | BaseException] = []

                    def click(token: str = assignment.token, choice: str = choice,
                              outcomes: list = outcomes) -> None:
                        try:
                            outcomes.append(submit(token, choice))
                        except BaseException as exc:  # noqa: BLE001
                            outcomes.append(exc)

                    threads = [threading.Thread(target=click) for _ in range(2)]
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        thread.join()
                    failures = [o for o in outcomes if isinstance(o, BaseException)]
                    successes = [o for o in outcomes if not isinstance(o, BaseException)]
                    ids = {o[0] for o in successes}
                    n_created = sum(o[1] for o in successes)
                    if len(ids) > 1 or n_created > 1:
                        double_created += max(0, n_created - 1) + max(0, len(ids) - 1)
                    if n_created and failures:
                        # One click stored the judgment, the other surfaced an error: record what was
                        # stored (it is not lost), then count the error.
                        created[assignment.token] = next(o[0] for o in successes if o[1])
                        last_token = assignment.token
                        done += 1
                    if failures:
                        raise failures[0]
                    judgment_id = successes[0][0]
                    was_created = n_created >= 1
                else:
                    judgment_id, was_created = submit(assignment.token, choice)
                    if rng.random() < config.double_submit_rate:
                        again_id, again_created = submit(assignment.token, choice)
                        if again_created or again_id != judgment_id:
                            double_created += 1
                if was_created:
                    if assignment.token in created:
                        double_created += 1
                    created[assignment.token] = judgment_id
                    last_token = assignment.token
                    done += 1
                else:
                    errors.append(f"first submit of a fresh token said created=False (comparison "
                                  f"{assignment.comparison_id})")
                if last_token and rng.random() < config.undo_rate:
                    if timed(undo_last, annotator_id):
                        undone.append(last_token)
                        last_token = None
                        done -= 1
                    else:
                        errors.append("undo right after a submit returned False")
            except Exception as exc:  # noqa: BLE001 - every exception is an error a user would see
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                if len(errors) > 50:
                    break
    except BaseException:  # noqa: BLE001
        errors.append("worker crashed: " + traceback.format_exc(limit=3).replace("\n", " | "))
    finally:
        cpu_seconds = time.process_time() - cpu_started
        engine.dispose()
        results.put({"annotator_id": annotator_id, "latencies": latencies, "cpu_seconds": cpu_seconds,
                     "warm_up_judgments": warmed,
                     "created": created, "undone": undone, "errors": errors, "double_created": double_created,
                     "finished": time.perf_counter()})


def verify(url: str, reports: list[dict]) -> tuple[int, int, int, list[str], int]:
    """(lost, duplicated, invariant errors, problems, judgments in the database)."""
    from tests.reliability_helpers import constraint_problems

    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, idempotency_key, annotator_id, comparison_id FROM judgment")).fetchall()
        overfilled = conn.execute(text(
            "SELECT COUNT(*) FROM comparison WHERE judgments_count > judgments_required")).scalar()
    by_key = {row[1]: row for row in rows}
    expected: dict[str, tuple[int, int]] = {}
    for report in reports:
        for token in report["undone"]:
            report["created"].pop(token, None)
        for token, judgment_id in report["created"].items():
            expected[token] = (judgment_id, report["annotator_id"])
    lost = sum(1 for token, (jid, aid) in expected.items()
               if token not in by_key or by_key[token][0] != jid or by_key[token][2] != aid)
    phantom = sum(1 for key in by_key if key not in expected)
    pairs = len(rows) - len({(r[2], r[3]) for r in rows})
    duplicated = phantom + pairs + int(overfilled or 0) + sum(r["double_created"] for r in reports)
    problems = constraint_problems(engine)
    engine.dispose()
    return lost, duplicated, len(problems), problems, len(rows)


def run_load(url: str, config: LoadConfig, *, label: str = "", start_method: str = "fork") -> LoadResult:
    """Set up ``url``, run the annotators, verify; return the figures."""
    annotator_ids = setup_database(url, config)
    ctx = mp.get_context(start_method)
    barrier = ctx.Barrier(config.annotators + 1)
    results = ctx.Queue()
    processes = [ctx.Process(target=_worker, args=(url, aid, config, i, barrier, results), daemon=True)
                 for i, aid in enumerate(annotator_ids)]
    for process in processes:
        process.start()
    barrier.wait(timeout=600)
    started = time.perf_counter()
    reports = []
    for _ in processes:
        reports.append(results.get(timeout=900))
    elapsed = max(r["finished"] for r in reports) - started
    for process in processes:
        process.join(timeout=60)
    crashed = [p.exitcode for p in processes if p.exitcode not in (0, None)]
    latencies = [x for r in reports for x in r["latencies"]]
    error_samples = [e for r in reports for e in r["errors"]]
    error_samples += [f"process exit code {code}" for code in crashed]
    lost, duplicated, invariant_errors, problems, in_db = verify(url, reports)
    error_samples += problems
    timed_judgments = in_db - sum(r["warm_up_judgments"] for r in reports)
    return LoadResult(
        database=label or url.split(":", 1)[0], annotators=config.annotators, judgments=in_db, lost=lost,
        duplicated=duplicated, errors=len(error_samples),
        rate=timed_judgments / elapsed if elapsed > 0 else 0.0,
        p50=percentile(latencies, 50), p95=percentile(latencies, 95), p99=percentile(latencies, 99),
        error_samples=error_samples[:20],
        details={"calls": len(latencies), "seconds": round(elapsed, 2), "max_ms": max(latencies, default=0.0),
                 "cpu_ms_per_judgment": 1000 * sum(r["cpu_seconds"] for r in reports) / max(1, timed_judgments)},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, spec in LoadConfig.__dataclass_fields__.items():
        if isinstance(spec.default, bool):  # a switch (type=bool would read "False" as true)
            parser.add_argument(f"--{name.replace('_', '-')}", action="store_true", help=spec.metadata.get("help"))
            continue
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(spec.default), default=spec.default,
                            help=spec.metadata.get("help"))
    parser.add_argument("--databases", default="postgresql,sqlite", help="comma list: postgresql, sqlite")
    args = parser.parse_args(argv)
    config = LoadConfig(**{name: getattr(args, name) for name in LoadConfig.__dataclass_fields__})
    wanted = [d.strip() for d in args.databases.split(",") if d.strip()]
    order = [d for d in ("postgresql", "sqlite") if d in wanted]
    failed = False
    print(f"# {config.annotators} annotator processes × {config.judgments} judgments, overlap {config.overlap}; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    for database in order:
        server = None
        tmp = tempfile.TemporaryDirectory(prefix="therapref-load-")
        try:
            if database == "postgresql":
                from tests.pg import PostgresServer

                server = PostgresServer().start()
                url = server.create_database("load")
            else:
                url = f"sqlite:///{Path(tmp.name) / 'load.db'}"
            result = run_load(url, config, label=database)
        finally:
            if server is not None:
                server.stop()
            tmp.cleanup()
        print(f"[{database}] {result.details['calls']} calls in {result.details['seconds']}s, "
              f"max {result.details['max_ms']:.0f}ms; think time {config.think_ms}ms; annotator CPU "
              f"{result.details['cpu_ms_per_judgment']:.2f}ms per judgment", flush=True)
        for sample in result.error_samples:
            print(f"[{database}] error: {sample}", flush=True)
        print(result.line(), flush=True)
        failed = failed or bool(result.lost or result.duplicated or result.errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
