"""Crash safety: SIGKILL the real `therapref` process in the middle of import, generation and
pairing (kill point found by polling the process / database, not by a fixed sleep); afterwards the
SQLite file passes integrity_check, foreign_key_check and the unique/counter invariants, and a
re-run finishes with nothing duplicated and nothing missing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from candidates.fake_server import FakeOpenAIServer
from db.engine import make_engine
from db.migrate import upgrade
from tests.reliability_helpers import (
    assert_sound,
    count,
    kill_when,
    read_position,
    run_cli,
    sqlite_count_quiet,
)

pytestmark = pytest.mark.slow


def _write_chat_file(path: Path, n: int) -> None:
    with path.open("w") as handle:
        for i in range(n):
            handle.write(json.dumps({"messages": [
                {"role": "system", "content": "You are Gaby, a supportive assistant."},
                {"role": "user", "content": f"Message {i}: I have been anxious about work and cannot sleep."},
                {"role": "assistant", "content": f"Reply {i}: that sounds exhausting. What keeps you up?"},
            ]}) + "\n")


def _counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        return {t: count(engine, t) for t in ("prompt", "response", "candidatemodel", "comparison", "judgment")}
    finally:
        engine.dispose()


def write_locked(path: Path) -> bool:
    """True while another connection holds the SQLite write lock (a write transaction is open)."""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as exc:
        return "locked" in str(exc) or "busy" in str(exc)
    finally:
        conn.close()


class Sustained:
    """A predicate that must hold on ``n`` consecutive polls (e.g. a long transaction, not a short one)."""

    def __init__(self, predicate, n: int) -> None:  # noqa: ANN001
        self.predicate, self.n, self.streak = predicate, n, 0

    def __call__(self, proc) -> bool:  # noqa: ANN001
        self.streak = self.streak + 1 if self.predicate(proc) else 0
        return self.streak >= self.n


def test_kill_during_import_then_rerun(tmp_path):
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    from tests.conftest import GABY

    assert run_cli("import", "prompts", str(GABY), "--db", url).returncode == 0
    before = _counts(url)
    big = tmp_path / "big.jsonl"
    n = 1500
    _write_chat_file(big, n)
    size = big.stat().st_size

    killed, output = kill_when(["import", "prompts", str(big), "--db", url],
                               lambda proc: read_position(proc.pid, big) >= size * 0.3, log=tmp_path / "k.log")
    assert killed, f"import finished before the kill point:\n{output}"
    # All or nothing: the killed import left no trace, and the file is sound.
    assert_sound(url)
    assert _counts(url) == before

    rerun = run_cli("import", "prompts", str(big), "--db", url)
    assert rerun.returncode == 0, rerun.stderr
    after = _counts(url)
    assert after["prompt"] == before["prompt"] + n
    assert after["response"] == before["response"] + n
    assert_sound(url)
    again = run_cli("import", "prompts", str(big), "--db", url)
    assert again.returncode == 0 and _counts(url) == after


def test_kill_during_generation_then_rerun(tmp_path):
    """OpenAI's cloud is mocked by a local fake server (slow replies) — the only mock here."""
    from tests.conftest import GABY

    url = f"sqlite:///{tmp_path / 'gen.db'}"
    assert run_cli("import", "prompts", str(GABY), "--db", url).returncode == 0
    n_prompts = _counts(url)["prompt"]
    replies = 2
    with FakeOpenAIServer(delay=0.15) as server:
        registry = tmp_path / "candidates.toml"
        registry.write_text(
            '[[candidate]]\nname = "fake-gpt"\nprovider = "openai"\nmodel_id = "fake-gpt"\n'
            f'base_url = "{server.url}"\nreplies_per_prompt = {replies}\nseed = 1\nconcurrency = 4\nmax_retries = 0\n')
        db_file = tmp_path / "gen.db"
        args = ["generate", "--config", str(registry), "--db", url, "--no-progress"]

        def fake_replies() -> int:
            conn = sqlite3.connect(db_file, timeout=5)
            try:
                return conn.execute("SELECT COUNT(*) FROM response r JOIN candidatemodel c "
                                    "ON c.id = r.candidate_model_id WHERE c.name = 'fake-gpt'").fetchone()[0]
            except sqlite3.Error:
                return 0
            finally:
                conn.close()

        killed, output = kill_when(args, lambda proc: fake_replies() >= 12, log=tmp_path / "g.log")
        assert killed, f"generation finished before the kill point:\n{output}"
        saved = fake_replies()
        assert 12 <= saved < n_prompts * replies
        assert_sound(url)
        calls_before = len(server.calls)

        rerun = run_cli(*args)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert fake_replies() == n_prompts * replies, "a re-run must fill in exactly what is missing"
    # Nothing asked for twice: the re-run requested only the missing replies.
    assert len(server.calls) - calls_before == n_prompts * replies - saved
    engine = make_engine(url)
    with engine.connect() as conn:
        per_prompt = conn.execute(text(
            "SELECT r.prompt_id, COUNT(*) FROM response r JOIN candidatemodel c ON c.id = r.candidate_model_id "
            "WHERE c.name = 'fake-gpt' GROUP BY r.prompt_id")).fetchall()
        assert conn.execute(text("SELECT COUNT(*) FROM generationfailure")).scalar() == 0
    assert len(per_prompt) == n_prompts and {c for _, c in per_prompt} == {replies}
    assert_sound(engine)


def _pairing_db(url: str, n_prompts: int, n_candidates: int) -> None:
    from sqlmodel import Session

    from db.models import CandidateModel, Prompt, Response

    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as session:
        candidates = [CandidateModel(name=f"cand{i}", provider="local") for i in range(n_candidates)]
        prompts = [Prompt(messages=[{"role": "user", "content": f"Patient {i}"}], source="crash",
                          content_hash=f"crash-{i}") for i in range(n_prompts)]
        session.add_all(candidates + prompts)
        session.flush()
        session.add_all([Response(prompt_id=p.id, candidate_model_id=c.id, text=f"reply {p.id}/{c.id}",
                                  text_hash=f"{p.id}-{c.id}") for p in prompts for c in candidates])
        session.commit()
    engine.dispose()


def test_kill_during_pairing_then_rerun(tmp_path):
    db_file = tmp_path / "pairs.db"
    url = f"sqlite:///{db_file}"
    n_prompts, n_candidates = 1500, 3
    expected = n_prompts * n_candidates * (n_candidates - 1) // 2
    _pairing_db(url, n_prompts, n_candidates)

    # Kill once the pairing transaction has held the write lock for a while (not the brief
    # migration check at start-up).
    killed, output = kill_when(["pairs", "--db", url], Sustained(lambda proc: write_locked(db_file), 6),
                               poll=0.1, log=tmp_path / "p.log")
    assert killed, f"pairing finished before the kill point:\n{output}"
    assert_sound(url)
    assert sqlite_count_quiet(db_file, "comparison") in (0, expected)  # one transaction: all or nothing

    rerun = run_cli("pairs", "--db", url)
    assert rerun.returncode == 0, rerun.stderr
    assert count(make_engine(url), "comparison") == expected
    assert_sound(url)
    again = run_cli("pairs", "--db", url)
    assert again.returncode == 0 and "Created 0 comparisons" in again.stdout
    assert count(make_engine(url), "comparison") == expected
