"""Shared pieces of the reliability and security tests: integrity checks that work on SQLite and
PostgreSQL, running the real CLI as a subprocess, killing it (SIGKILL) at a point detected by
polling, and dumping every table so that a test can grep for a planted secret."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine

from db.engine import make_engine

ROOT = Path(__file__).resolve().parent.parent
THERAPREF = ROOT / ".venv" / "bin" / "therapref"
PYTHON = ROOT / ".venv" / "bin" / "python"
if not PYTHON.exists():  # pragma: no cover - running from another interpreter
    PYTHON = Path(sys.executable)

# (table, columns) that must never repeat: the unique invariants of the data model, checked by a
# GROUP BY so that a dropped constraint (or a bug that bypasses it) is caught, not only enforced.
UNIQUE_INVARIANTS: list[tuple[str, tuple[str, ...]]] = [
    ("annotator", ("username",)),
    ("prompt", ("content_hash",)),
    ("candidatemodel", ("name",)),
    ("response", ("prompt_id", "candidate_model_id", "text_hash")),
    ("comparison", ("response_a_id", "response_b_id")),
    ("judgment", ("comparison_id", "annotator_id")),
    ("judgment", ("idempotency_key",)),
    ("reservation", ("comparison_id", "annotator_id")),
    ("reservation", ("token",)),
    ("skip", ("comparison_id", "annotator_id")),
    ("generationfailure", ("prompt_id", "candidate_model_id")),
    ("responsescore", ("response_id", "reward_model_run_id")),
]

# Foreign keys checked explicitly (PostgreSQL enforces them, SQLite only when the pragma is on).
FOREIGN_KEYS: list[tuple[str, str, str]] = [
    ("response", "prompt_id", "prompt"),
    ("response", "candidate_model_id", "candidatemodel"),
    ("comparison", "prompt_id", "prompt"),
    ("comparison", "response_a_id", "response"),
    ("comparison", "response_b_id", "response"),
    ("judgment", "comparison_id", "comparison"),
    ("judgment", "annotator_id", "annotator"),
    ("reservation", "comparison_id", "comparison"),
    ("skip", "comparison_id", "comparison"),
    ("responsescore", "response_id", "response"),
    ("responsescore", "reward_model_run_id", "rewardmodelrun"),
]


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (``None`` for other databases).

    >>> str(sqlite_path("sqlite:////tmp/x.db"))
    '/tmp/x.db'
    >>> sqlite_path("postgresql+psycopg://u@h/db") is None
    True
    """
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None


def sqlite_file_checks(path: Path) -> list[str]:
    """``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check`` on a file; [] when clean."""
    problems: list[str] = []
    conn = sqlite3.connect(path, timeout=30)
    try:
        result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            problems.append(f"integrity_check: {result[:5]}")
        fk = conn.execute("PRAGMA foreign_key_check").fetchall()
        if fk:
            problems.append(f"foreign_key_check: {fk[:5]}")
    finally:
        conn.close()
    return problems


def constraint_problems(engine: Engine) -> list[str]:
    """Every broken invariant of the data model, as readable lines ([] when the database is sound).

    SQLite files also get ``PRAGMA integrity_check`` / ``foreign_key_check``.
    """
    problems: list[str] = []
    if engine.dialect.name == "sqlite" and engine.url.database:
        problems += sqlite_file_checks(Path(engine.url.database))
    with engine.connect() as conn:
        for table, columns in UNIQUE_INVARIANTS:
            cols = ", ".join(columns)
            not_null = " AND ".join(f"{c} IS NOT NULL" for c in columns)
            rows = conn.execute(text(
                f"SELECT {cols}, COUNT(*) FROM {table} WHERE {not_null} GROUP BY {cols} HAVING COUNT(*) > 1"
            )).fetchall()
            if rows:
                problems.append(f"duplicate {table}({cols}): {rows[:5]}")
        for table, column, parent in FOREIGN_KEYS:
            orphans = conn.execute(text(
                f"SELECT COUNT(*) FROM {table} t LEFT JOIN {parent} p ON p.id = t.{column} "
                f"WHERE t.{column} IS NOT NULL AND p.id IS NULL"
            )).scalar()
            if orphans:
                problems.append(f"{orphans} orphan {table}.{column}")
        drift = conn.execute(text(
            "SELECT c.id, c.judgments_count, COUNT(j.id) FROM comparison c "
            "LEFT JOIN judgment j ON j.comparison_id = c.id GROUP BY c.id, c.judgments_count "
            "HAVING c.judgments_count <> COUNT(j.id)"
        )).fetchall()
        if drift:
            problems.append(f"judgments_count drift (id, stored, actual): {drift[:5]}")
        bad_pairs = conn.execute(text(
            "SELECT c.id FROM comparison c JOIN response a ON a.id = c.response_a_id "
            "JOIN response b ON b.id = c.response_b_id "
            "WHERE c.response_a_id >= c.response_b_id OR a.prompt_id <> c.prompt_id OR b.prompt_id <> c.prompt_id"
        )).fetchall()
        if bad_pairs:
            problems.append(f"comparisons not canonical or across prompts: {bad_pairs[:5]}")
    return problems


def assert_sound(url_or_engine: str | Engine) -> None:
    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    problems = constraint_problems(engine)
    assert not problems, "database invariants broken:\n" + "\n".join(problems)


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar() or 0)


def dump_tables(engine: Engine) -> str:
    """Every row of every table as text (for grepping planted secrets)."""
    from sqlalchemy import inspect

    lines: list[str] = []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                lines.append(f"{table}: {tuple(row)!r}")
    return "\n".join(lines)


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("THERAPREF_DATABASE_URL", None)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "NO_COLOR": "1",
                "OMP_NUM_THREADS": "1"})
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path | None = None, input: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``therapref ARGS`` to completion, capturing output."""
    return subprocess.run([str(THERAPREF), *args], cwd=cwd, input=input, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def kill_when(
    args: Iterable[str],
    ready: Callable[[subprocess.Popen], bool],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 180,
    poll: float = 0.05,
    log: Path | None = None,
) -> tuple[bool, str]:
    """Start ``therapref ARGS`` in its own process group; SIGKILL the whole group as soon as
    ``ready(process)`` is true (checked every ``poll`` seconds).

    Returns (killed, output). ``killed`` is False when the process finished before ``ready``
    became true (the caller decides whether that defeats the test).
    """
    log = log or Path(os.environ.get("TMPDIR", "/tmp")) / f"kill-{os.getpid()}-{time.monotonic_ns()}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(THERAPREF), *args], cwd=cwd, env=env or cli_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        killed = False
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                try:
                    hit = ready(proc)
                except Exception:  # noqa: BLE001 - the database may not exist yet
                    hit = False
                if hit:
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed = True
                    break
                time.sleep(poll)
            else:
                os.killpg(proc.pid, signal.SIGKILL)
                raise AssertionError(f"therapref {' '.join(args)}: neither finished nor reached the kill point "
                                     f"in {timeout}s:\n{log.read_text()[-3000:]}")
        finally:
            if proc.poll() is None and not killed:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    return killed, log.read_text()


def sqlite_count_quiet(path: Path, table: str) -> int:
    """Row count read with a short timeout while another process writes (0 if not there yet)."""
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def grep_tree(root: Path, needle: str) -> list[str]:
    """Files under ``root`` whose bytes contain ``needle``."""
    hits = []
    data = needle.encode()
    for path in root.rglob("*"):
        if path.is_file():
            try:
                if data in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                continue
    return hits


def read_position(pid: int, path: Path) -> int:
    """How far process ``pid`` has read into ``path`` (from /proc/PID/fdinfo); -1 if not open.

    Used to kill an importer part-way through its input, without a fixed sleep.
    """
    target = str(Path(path).resolve())
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in fd_dir.iterdir():
            try:
                if os.readlink(fd) == target:
                    for line in (Path(f"/proc/{pid}/fdinfo") / fd.name).read_text().splitlines():
                        if line.startswith("pos:"):
                            return int(line.split()[1])
            except OSError:
                continue
    except OSError:
        return -1
    return -1


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def wait_until(predicate: Callable[[], bool], *, timeout: float = 60, poll: float = 0.1, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        time.sleep(poll)


def interruptible() -> None:
    """``preexec_fn`` for a child a test will Ctrl-C (SIGINT): a shell starts background jobs with SIGINT
    ignored, children inherit that, and Python then never raises KeyboardInterrupt; a terminal's Ctrl-C
    reaches a foreground command with the default action, which this restores."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
