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
    assert again.returncode == 0
    assert _counts(url) == after


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
    assert len(per_prompt) == n_prompts
    assert {c for _, c in per_prompt} == {replies}
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
    assert again.returncode == 0
    assert "Created 0 comparisons" in again.stdout
    assert count(make_engine(url), "comparison") == expected


TRAIN_TOML = """[train]
max_steps = 4
save_strategy = "steps"
save_steps = 2
save_total_limit = 10
per_device_train_batch_size = 2
logging_steps = 1
max_length = 64
num_threads = 1
"""
SENTINEL_LOSS = 987.654


def test_kill_during_training_then_resume(tmp_path):
    """Killed after its first checkpoint, `therapref train --resume` continues from that checkpoint
    (a sentinel planted in the checkpoint's log history shows up in the finished run) and records
    one RewardModelRun."""
    from sqlmodel import Session, select

    from db.models import RewardModelRun
    from tests.factories import build_project
    from tests.tiny_models import tiny_reward_base

    url = f"sqlite:///{tmp_path / 'train.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        build_project(session, n_prompts=6, n_clinicians=2, with_judgments=True)
    base = tiny_reward_base(tmp_path / "tiny-bert")
    config = tmp_path / "train.toml"
    config.write_text(TRAIN_TOML)
    output = tmp_path / "rm"
    args = ["train", "--output", str(output), "--db", url, "--config", str(config), "--base-model", str(base)]
    first = output / "checkpoint-2" / "trainer_state.json"

    killed, log = kill_when(args, lambda proc: first.is_file(), poll=0.02, log=tmp_path / "t.log")
    assert killed, f"training finished before its first checkpoint was seen:\n{log[-2000:]}"
    assert_sound(engine)
    assert count(engine, "rewardmodelrun") == 0
    assert not (output / "therapref_reward.json").exists(), "a killed run must not look finished"

    state = json.loads(first.read_text())
    state["log_history"][0]["loss"] = SENTINEL_LOSS
    first.write_text(json.dumps(state))

    resumed = run_cli(*args, "--resume", timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    with Session(engine) as session:
        runs = session.exec(select(RewardModelRun)).all()
    assert len(runs) == 1
    assert SENTINEL_LOSS in runs[0].metrics["train_loss"], "training restarted instead of resuming"
    meta = json.loads((output / "therapref_reward.json").read_text())
    assert meta["training"]["global_step"] == 4
    assert (output / "config.json").is_file()
    assert any(output.glob("*.safetensors"))
    assert_sound(engine)


def _export_db(url: str, n: int) -> None:
    """``n`` prompts, two replies each, one comparison each, judged by an imported source."""
    from sqlalchemy import insert

    from db.models import Annotator, CandidateModel, Comparison, Judgment, Prompt, Response

    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(insert(Annotator), [{"id": 1, "username": "import:crash", "display_name": "import:crash",
                                          "role": "source", "credential": "", "is_active": True, "failed_logins": 0}])
        conn.execute(insert(CandidateModel), [{"id": 1, "name": "x", "provider": "local", "model_id": "",
                                               "params": {}, "replies_per_prompt": 1},
                                              {"id": 2, "name": "y", "provider": "local", "model_id": "",
                                               "params": {}, "replies_per_prompt": 1}])
        conn.execute(insert(Prompt), [{"id": i, "messages": [{"role": "user", "content": f"Patient message {i}"}],
                                       "source": "crash", "tags": [], "content_hash": f"e{i}"}
                                      for i in range(1, n + 1)])
        conn.execute(insert(Response), [{"id": 2 * i - 1 + k, "prompt_id": i, "candidate_model_id": 1 + k,
                                         "text": f"{'Warm, specific' if k == 0 else 'Terse'} reply {i}",
                                         "text_hash": f"h{i}-{k}", "meta": {}}
                                        for i in range(1, n + 1) for k in (0, 1)])
        conn.execute(insert(Comparison), [{"id": i, "prompt_id": i, "response_a_id": 2 * i - 1, "response_b_id": 2 * i,
                                           "judgments_required": 1, "judgments_count": 1} for i in range(1, n + 1)])
        conn.execute(insert(Judgment), [{"comparison_id": i, "annotator_id": 1, "preferred": "a", "strength": 2,
                                         "shown_left": "a", "flags_a": [], "flags_b": [], "rationale": ""}
                                        for i in range(1, n + 1)])
    engine.dispose()


def test_kill_during_export_leaves_no_partial_file(tmp_path):
    db_file = tmp_path / "export.db"
    url = f"sqlite:///{db_file}"
    n = 15000
    _export_db(url, n)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "prefs.jsonl"
    args = ["export", "dpo", "--output", str(target), "--db", url, "--sources", "imported"]

    def writing(proc) -> bool:  # noqa: ANN001
        # Rows are streaming out (into a temporary file, or, if the exporter were careless, the target).
        return any(p.is_file() and p.stat().st_size > 0 for p in out_dir.iterdir())

    killed, log = kill_when(args, writing, poll=0.01, log=tmp_path / "e.log")
    assert killed, f"export finished before it was seen writing:\n{log[-2000:]}"
    assert not target.exists(), "a killed export left a file at the target path"
    assert not list(out_dir.glob("prefs*.json")), "a killed export left a manifest"
    engine = make_engine(url)
    assert count(engine, "exportrun") == 0
    assert_sound(engine)

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    lines = target.read_text().splitlines()
    assert len(lines) == n
    assert len(set(lines)) == n
    assert all(json.loads(line)["chosen"] for line in lines[:50])
    assert count(engine, "exportrun") == 1
    assert_sound(engine)


def test_export_rerun_removes_stale_temporary_files(tmp_path):
    """After a SIGKILL the hidden temporary file of the killed export is a partial export: the next
    export to the same target must not leave it lying next to the finished file."""
    db_file = tmp_path / "export.db"
    url = f"sqlite:///{db_file}"
    _export_db(url, 200)
    target = tmp_path / "prefs.jsonl"
    stale = tmp_path / ".prefs.jsonl.deadbeef.tmp"  # what a killed export leaves (exports.atomic.temp_file)
    stale.write_text('{"prompt": "half a row')
    rerun = run_cli("export", "dpo", "--output", str(target), "--db", url, "--sources", "imported")
    assert rerun.returncode == 0, rerun.stderr
    assert len(target.read_text().splitlines()) == 200
    leftovers = sorted(p.name for p in tmp_path.glob(".prefs.jsonl*"))
    assert leftovers == [], f"partial export files left behind: {leftovers}"
