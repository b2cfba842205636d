"""Benchmark: DPO export of a database with 1M judgments: rows/s and peak memory.

    .venv/bin/python bench/export.py [--judgments 1000000] [--per-comparison 10] [--keep DIR]

Builds a SQLite database (bulk insert: prompts × 2 replies × 1 comparison, N clinicians judging
every comparison, 1% of judgments flag a reply), then, each in a fresh child process which
reports its own peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``):

- baseline: a raw ``sqlite3`` scan of the judgment table (fetch only: the I/O floor),
- export:   ``exports.run.run_export("dpo", …)`` (aggregation in SQL, streamed writing, manifest).

Targets: ≥ 50,000 judgments/s and < 500 MB peak RSS for the export.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_ROWS_PER_S = 50_000
TARGET_PEAK_MB = 500


def build(db_path: Path, judgments: int, per_comparison: int, seed: int = 0) -> dict:
    from db.engine import make_engine
    from db.migrate import upgrade

    engine = make_engine(db_path)
    upgrade(engine)
    engine.dispose()
    rng = random.Random(seed)
    n_comp = judgments // per_comparison
    now = datetime.now(UTC).replace(tzinfo=None)
    stamp = now.isoformat(sep=" ")
    import sqlite3

    con = sqlite3.connect(db_path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    cur = con.cursor()
    cur.execute("BEGIN")
    cur.execute("INSERT INTO guidelineversion (version, text, created_at) VALUES (1, 'Be safe and kind.', ?)",
                (stamp,))
    cur.executemany("INSERT INTO candidatemodel (id, name, provider, model_id, params, replies_per_prompt, "
                    "created_at) VALUES (?, ?, 'local', ?, '{}', 1, ?)",
                    [(1, "warm", "warm-model", stamp), (2, "terse", "terse-model", stamp)])
    cur.executemany("INSERT INTO annotator (id, username, display_name, role, credential, is_active, "
                    "failed_logins, created_at) VALUES (?, ?, ?, 'clinician', 'LCSW', 1, 0, ?)",
                    [(i, f"clin{i}", f"Clinician {i}", stamp) for i in range(1, per_comparison + 1)])

    def prompts():
        for i in range(1, n_comp + 1):
            text = f"Patient message {i}: I have been feeling anxious about work and sleep lately."
            messages = json.dumps([{"role": "user", "content": text}])
            yield (i, messages, "You are a warm, careful therapy assistant.", "bench", "[]",
                   hashlib.sha256(text.encode()).hexdigest(), stamp)

    cur.executemany("INSERT INTO prompt (id, messages, system_prompt, source, tags, content_hash, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", prompts())

    def responses():
        for i in range(1, n_comp + 1):
            for j, (model, text) in enumerate(((1, f"That sounds hard ({i}). What has helped before?"),
                                               (2, f"Try to relax ({i})."))):
                yield (2 * i - 1 + j, i, model, text, hashlib.sha256(text.encode()).hexdigest(), "{}", stamp)

    cur.executemany("INSERT INTO response (id, prompt_id, candidate_model_id, text, text_hash, meta, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", responses())
    cur.executemany("INSERT INTO comparison (id, prompt_id, response_a_id, response_b_id, judgments_required, "
                    "judgments_count, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    ((i, i, 2 * i - 1, 2 * i, per_comparison, per_comparison, stamp) for i in range(1, n_comp + 1)))

    def judgment_rows():
        prefs = ("a", "a", "a", "a", "b", "b", "b", "tie", "both_bad", "a")
        jid = 0
        for c in range(1, n_comp + 1):
            for annotator in range(1, per_comparison + 1):
                jid += 1
                flag = rng.random() < 0.01
                yield (jid, c, annotator, prefs[rng.randrange(10)], 2, "a", '["dismissive"]' if flag else "[]",
                       "[]", "", 3000, 1, (now - timedelta(seconds=jid)).isoformat(sep=" "))

    cur.executemany("INSERT INTO judgment (id, comparison_id, annotator_id, preferred, strength, shown_left, "
                    "flags_a, flags_b, rationale, ms_spent, guideline_version, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", judgment_rows())
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return {"comparisons": n_comp, "judgments": n_comp * per_comparison}


def child_baseline(db_path: str) -> dict:
    import sqlite3

    start = time.perf_counter()
    con = sqlite3.connect(db_path)
    n = 0
    for _row in con.execute("SELECT comparison_id, annotator_id, preferred, flags_a, flags_b FROM judgment"):
        n += 1
    return {"seconds": time.perf_counter() - start, "rows": n}


def child_export(db_path: str, out: str) -> dict:
    from db.engine import make_engine
    from exports.run import run_export

    engine = make_engine(db_path)
    start = time.perf_counter()
    result = run_export("dpo", out, engine=engine)
    return {"seconds": time.perf_counter() - start, "rows": result.rows,
            "judgments": result.counts["judgments"]["judgments_used"], "dropped": result.counts["dropped"]}


def in_child(*args: str) -> tuple[dict, float]:
    """Run one measurement in a fresh interpreter; it reports its own peak RSS (RUSAGE_SELF)."""
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report, report["peak_kb"] / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judgments", type=int, default=1_000_000)
    parser.add_argument("--per-comparison", type=int, default=10)
    parser.add_argument("--keep", help="folder to keep the database and export in")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, *rest = args.child
        report = child_baseline(*rest) if what == "baseline" else child_export(*rest)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        report["peak_kb"] = usage.ru_maxrss  # KiB on Linux
        report["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # whole child, imports included
        print(json.dumps(report))
        return
    folder = Path(args.keep or tempfile.mkdtemp(prefix="therapref-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    db_path, out = folder / "bench.db", folder / "dpo.jsonl"
    for stale in (db_path, out, Path(str(out) + ".manifest.json")):
        stale.unlink(missing_ok=True)
    start = time.perf_counter()
    sizes = build(db_path, args.judgments, args.per_comparison)
    built = time.perf_counter() - start
    print(f"built {sizes['judgments']:,} judgments on {sizes['comparisons']:,} comparisons in {built:.1f} s "
          f"({db_path.stat().st_size / 1e6:.0f} MB SQLite file)")
    base, base_mb = in_child("baseline", str(db_path))
    exp, exp_mb = in_child("export", str(db_path), str(out))
    base_rate = base["rows"] / base["seconds"]
    rate = exp["judgments"] / exp["seconds"]
    print(f"{'':<30}{'seconds':>9}{'judgments/s':>14}{'peak RSS MB':>13}{'child CPU s':>13}")
    print(f"{'baseline: raw sqlite3 scan':<30}{base['seconds']:>9.2f}{base_rate:>14,.0f}{base_mb:>13.0f}"
          f"{base['cpu_seconds']:>13.2f}")
    print(f"{'export dpo (run_export)':<30}{exp['seconds']:>9.2f}{rate:>14,.0f}{exp_mb:>13.0f}"
          f"{exp['cpu_seconds']:>13.2f}")
    print(f"export / baseline throughput: {rate / base_rate:.2f}x; pairs written: {exp['rows']:,} "
          f"({exp['rows'] / exp['seconds']:,.0f} pairs/s); dropped: {exp['dropped']}")
    ok_rate, ok_mem = rate >= TARGET_ROWS_PER_S, exp_mb < TARGET_PEAK_MB
    print(f"target >= {TARGET_ROWS_PER_S:,} judgments/s: {'met' if ok_rate else 'MISSED'}; "
          f"target < {TARGET_PEAK_MB} MB peak: {'met' if ok_mem else 'MISSED'} "
          f"(cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f})")
    if not args.keep:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


if __name__ == "__main__":
    main()
