"""Labeling-queue latency at scale: p50/p95 of ``next_comparison`` and ``submit_judgment``.

Builds a database with 100k comparisons and 1M judgments (bulk: sqlite3 ``executemany`` and
PostgreSQL ``COPY``, never ORM objects one by one) on a SQLite file and on a throwaway PostgreSQL
server, then times the two calls the app makes per judgment, each in its own transaction, for
random clinicians. A 1%-size baseline database runs side by side; the ratio shows how the calls
scale. Target: p95 < 20 ms on both databases.

Layout: 200 clinicians plus one "fast" clinician; 20k prompts × 5 candidates; 10 comparisons per
prompt, 12 judgments required each; the first 80% are complete (12 judgments). Of the open 20%, the
first half has 1 judgment, all by the fast clinician, the second half 3 (1M judgments in all). So
for the fast clinician the front of the queue is 10k pairs they already judged: the worst case for
"never the same pair twice", timed on its own line.

    python bench/app_queries.py [--comparisons 100000] [--calls 400] [--only sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from db.assignment import ComparisonFull, next_comparison, submit_judgment  # noqa: E402
from db.engine import make_engine, session_scope  # noqa: E402
from db.migrate import upgrade  # noqa: E402

CANDIDATES = 5
PAIRS_PER_PROMPT = len(list(combinations(range(CANDIDATES), 2)))  # 10
REQUIRED = 12
CLINICIANS = 200
OPEN_SHARE = 0.2
FAST = CLINICIANS + 1
STAMP_SQLITE = "2026-11-20 10:00:00.000000"
STAMP_PG = "2026-11-20 10:00:00+00"


def layout(n_comparisons: int):
    """Yield the rows of every table (ids explicit), in insert order."""
    n_prompts = max(1, n_comparisons // PAIRS_PER_PROMPT)
    annotators = [(i, f"clin{i}", f"Clinician {i}", "clinician", None, "LCSW", True, 0, None, None)
                  for i in range(1, FAST + 1)]
    candidates = [(i, f"model-{i}", "local", f"model-{i}", None, None, "{}", None, 1) for i in range(1, CANDIDATES + 1)]
    prompts = [(p, f'[{{"role": "user", "content": "Patient message {p}: I feel low and cannot sleep."}}]',
                "You are a careful therapy assistant.", "bench", None, None, "[]", f"{p:064x}")
               for p in range(1, n_prompts + 1)]
    responses, comparisons = [], []
    cid = 0
    total = n_prompts * PAIRS_PER_PROMPT
    open_from = int(total * (1 - OPEN_SHARE))
    half = open_from + (total - open_from) // 2
    for p in range(1, n_prompts + 1):
        ids = []
        for k in range(CANDIDATES):
            rid = (p - 1) * CANDIDATES + k + 1
            ids.append(rid)
            responses.append((rid, p, k + 1, f"Reply {k} to prompt {p}. That sounds hard; tell me more.",
                              f"{rid:064x}", "{}"))
        for a, b in combinations(ids, 2):
            cid += 1
            count = REQUIRED if cid <= open_from else 1 if cid <= half else 3
            comparisons.append((cid, p, a, b, REQUIRED, count))
    return annotators, candidates, prompts, responses, comparisons


def judgments(comparisons):
    jid = 0
    for cid, _p, _a, _b, _req, count in comparisons:
        for k in range(count):
            jid += 1
            # Distinct per comparison; single judgments are the fast clinician's.
            annotator = FAST if count == 1 else (cid * 7 + k) % CLINICIANS + 1
            yield (jid, cid, annotator, "a" if (cid + k) % 3 else "b", 2, "a", 4000 + (jid % 5000))


def build_sqlite(path: Path, n_comparisons: int) -> str:
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    annotators, candidates, prompts, responses, comparisons = layout(n_comparisons)
    con = sqlite3.connect(path)
    con.execute("PRAGMA synchronous=OFF")
    s = STAMP_SQLITE
    with con:
        con.executemany("INSERT INTO annotator (id, username, display_name, role, password_hash, credential, "
                        "is_active, failed_logins, locked_until, last_login_at, created_at) "
                        f"VALUES (?,?,?,?,?,?,?,?,?,?,'{s}')", annotators)
        con.executemany("INSERT INTO candidatemodel (id, name, provider, model_id, endpoint, api_key_env, params, "
                        f"system_prompt, replies_per_prompt, created_at) VALUES (?,?,?,?,?,?,?,?,?,'{s}')", candidates)
        con.executemany("INSERT INTO prompt (id, messages, system_prompt, source, external_id, topic, tags, "
                        f"content_hash, created_at) VALUES (?,?,?,?,?,?,?,?,'{s}')", prompts)
        con.executemany("INSERT INTO response (id, prompt_id, candidate_model_id, text, text_hash, meta, created_at) "
                        f"VALUES (?,?,?,?,?,?,'{s}')", responses)
        con.executemany("INSERT INTO comparison (id, prompt_id, response_a_id, response_b_id, judgments_required, "
                        f"judgments_count, created_at) VALUES (?,?,?,?,?,?,'{s}')", comparisons)
        con.executemany("INSERT INTO judgment (id, comparison_id, annotator_id, preferred, strength, shown_left, "
                        "flags_a, flags_b, rationale, ms_spent, guideline_version, created_at) "
                        f"VALUES (?,?,?,?,?,?,'[]','[]','',?,1,'{s}')", judgments(comparisons))
        con.execute("INSERT INTO guidelineversion (version, text, created_at) "
                    f"VALUES (1, 'Prefer safe, empathic replies.', '{s}')")
    con.execute("ANALYZE")
    con.close()
    return url


def _copy(cursor, table: str, columns: str, rows) -> None:
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def build_postgres(server, name: str, n_comparisons: int) -> str:
    import psycopg

    url = server.create_database(name)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    annotators, candidates, prompts, responses, comparisons = layout(n_comparisons)
    s = STAMP_PG
    with psycopg.connect(f"host=127.0.0.1 port={server.port} user=postgres dbname={name}") as con:
        cur = con.cursor()
        _copy(cur, "annotator", "id, username, display_name, role, password_hash, credential, is_active, "
              "failed_logins, locked_until, last_login_at, created_at", (r + (s,) for r in annotators))
        _copy(cur, "candidatemodel", "id, name, provider, model_id, endpoint, api_key_env, params, system_prompt, "
              "replies_per_prompt, created_at", (r + (s,) for r in candidates))
        _copy(cur, "prompt", "id, messages, system_prompt, source, external_id, topic, tags, content_hash, created_at",
              (r + (s,) for r in prompts))
        _copy(cur, "response", "id, prompt_id, candidate_model_id, text, text_hash, meta, created_at",
              (r + (s,) for r in responses))
        _copy(cur, "comparison", "id, prompt_id, response_a_id, response_b_id, judgments_required, judgments_count, "
              "created_at", (r + (s,) for r in comparisons))
        _copy(cur, "judgment", "id, comparison_id, annotator_id, preferred, strength, shown_left, flags_a, flags_b, "
              "rationale, ms_spent, guideline_version, created_at",
              (r[:6] + ("[]", "[]", "") + r[6:] + (1, s) for r in judgments(comparisons)))
        cur.execute("INSERT INTO guidelineversion (version, text, created_at) VALUES (1, 'Prefer safe replies.', %s)",
                    (s,))
        for table in ("annotator", "candidatemodel", "prompt", "response", "comparison", "judgment",
                      "guidelineversion"):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        con.commit()
        con.autocommit = True
        con.execute("VACUUM ANALYZE")
    return url


def add_criteria_to(url: str) -> str:
    """``--criteria``: the guideline in force gets the five default criteria (safety required)."""
    import dataclasses

    from db.criteria import DEFAULT_CRITERIA, add_criteria
    from db.guidelines import current_guideline

    engine = make_engine(url)
    with session_scope(engine) as session:
        add_criteria(current_guideline(session=session), [
            dataclasses.replace(c, required=c.name == "safety") for c in DEFAULT_CRITERIA], session=session)
    engine.dispose()
    return url


def measure(url: str, calls: int, seed: int = 7, annotator: int | None = None,
            criteria: bool = False) -> dict[str, list[float]]:
    """Time next_comparison + submit_judgment pairs for random clinicians (or one), one transaction each
    (with ``criteria``, each submit carries a verdict on each of the five default criteria)."""
    names = ("empathy", "safety", "helpfulness", "boundaries", "accuracy") if criteria else ()
    engine = make_engine(url)
    rng = random.Random(seed)
    times: dict[str, list[float]] = {"next_comparison": [], "submit_judgment": []}
    for i in range(calls + 20):
        who = annotator or rng.randint(1, CLINICIANS)
        start = time.perf_counter()
        with session_scope(engine) as session:
            assignment = next_comparison(who, session=session, rng=rng)
        mid = time.perf_counter()
        if i >= 20:  # warm-up: connection pool, statement caches
            times["next_comparison"].append((mid - start) * 1000)
        if assignment is None:
            continue
        try:
            with session_scope(engine) as session:
                submit_judgment(assignment.token, session=session, annotator_id=who,
                                preferred=rng.choice(["left", "right", "tie"]), strength=2, ms_spent=3000,
                                criteria={n: rng.choice(["left", "right", "tie"]) for n in names} or None)
        except ComparisonFull:
            pass
        end = time.perf_counter()
        if i >= 20:
            times["submit_judgment"].append((end - mid) * 1000)
    engine.dispose()
    return times


def percentile(values: list[float], q: float) -> float:
    """
    >>> percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0.5)
    5.5
    """
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q * 100) - 1]


def report(label: str, big: dict, small: dict) -> None:
    for name in ("next_comparison", "submit_judgment"):
        p50, p95 = percentile(big[name], 0.5), percentile(big[name], 0.95)
        b50, b95 = percentile(small[name], 0.5), percentile(small[name], 0.95)
        verdict = "OK" if p95 < 20 else "SLOW"
        print(f"{label:<11} {name:<16} p50={p50:6.2f}ms p95={p95:6.2f}ms  "
              f"(1% baseline p50={b50:5.2f}ms p95={b95:5.2f}ms; p95 ratio {p95 / b95:4.2f}x)  "
              f"target p95<20ms: {verdict}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comparisons", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=400, help="timed next+submit pairs per database")
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    parser.add_argument("--criteria", action="store_true",
                        help="five criteria in force (safety required); every submit sends their verdicts")
    args = parser.parse_args()
    crit = add_criteria_to if args.criteria else (lambda url: url)
    c = args.criteria
    small_n = max(PAIRS_PER_PROMPT, args.comparisons // 100)
    n_judgments = sum(c[5] for c in layout(args.comparisons)[4])
    print(f"layout: {args.comparisons:,} comparisons, {n_judgments:,} judgments, {FAST} clinicians; "
          f"baseline {small_n:,} comparisons; {args.calls} timed calls each", flush=True)
    with tempfile.TemporaryDirectory(prefix="therapref-bench-") as tmp:
        if args.only in (None, "postgresql"):
            from tests.pg import PostgresServer

            server = PostgresServer().start()
            try:
                t = time.perf_counter()
                big = crit(build_postgres(server, "bench_big", args.comparisons))
                print(f"postgresql built in {time.perf_counter() - t:.1f}s", flush=True)
                small = crit(build_postgres(server, "bench_small", small_n))
                report("postgresql", measure(big, args.calls, criteria=c), measure(small, args.calls, criteria=c))
                report("pg fast", measure(big, args.calls, annotator=FAST, criteria=c),
                       measure(small, args.calls, annotator=FAST, criteria=c))
            finally:
                server.stop()
        if args.only in (None, "sqlite"):
            t = time.perf_counter()
            big = crit(build_sqlite(Path(tmp) / "big.db", args.comparisons))
            print(f"sqlite built in {time.perf_counter() - t:.1f}s", flush=True)
            small = crit(build_sqlite(Path(tmp) / "small.db", small_n))
            report("sqlite", measure(big, args.calls, criteria=c), measure(small, args.calls, criteria=c))
            report("sqlite fast", measure(big, args.calls, annotator=FAST, criteria=c),
                   measure(small, args.calls, annotator=FAST, criteria=c))


if __name__ == "__main__":
    main()
