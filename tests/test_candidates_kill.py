"""Interrupting ``therapref generate`` (SIGTERM, then SIGINT) loses at most the request in flight;
a re-run completes with exactly one reply per prompt and candidate. OpenAI's cloud is stood in for by
the local fake server (slow replies), the only mock here; the CLI runs as a real subprocess."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from sqlmodel import Session

from candidates.fake_server import FakeOpenAIServer
from tests.candidates_helpers import ROOT, failures, reply_counts
from tests.factories import add_prompts
from tests.reliability_helpers import interruptible

N_PROMPTS = 8


def _wait_for_replies(engine, at_least: int, process: subprocess.Popen, timeout: float = 120.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, "generate finished before it could be interrupted"
        with Session(engine) as session:
            done = sum(reply_counts(session).values())
        if done >= at_least:
            return done
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {at_least} replies after {timeout:.0f} s")


def test_interrupted_generate_resumes_without_duplicates(engine, tmp_path):
    with Session(engine, expire_on_commit=False) as session:
        prompts = add_prompts(session, N_PROMPTS, texts=[f"Message number {i} about my week." for i in range(8)])
    db = engine.url.database
    with FakeOpenAIServer(delay=0.4) as server:
        config = tmp_path / "candidates.toml"
        config.write_text(f'[[candidate]]\nname = "remote"\nprovider = "openai"\nmodel_id = "fake-model"\n'
                          f'base_url = "{server.url}"\nconcurrency = 1\nseed = 1\n')
        command = [sys.executable, "-m", "therapref.cli", "generate", "--config", str(config), "--db", db,
                   "--no-progress"]
        for sig, at_least in ((signal.SIGTERM, 2), (signal.SIGINT, 4)):
            log = tmp_path / f"run-{sig.name}.log"
            with log.open("w") as out:
                process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                           preexec_fn=interruptible)
                try:
                    _wait_for_replies(engine, at_least, process)
                    process.send_signal(sig)
                    code = process.wait(timeout=60)
                finally:
                    if process.poll() is None:
                        process.kill()
            assert code == 130, log.read_text()
            assert "Interrupted: replies already received are saved" in log.read_text()
            with Session(engine) as session:
                assert at_least <= sum(reply_counts(session).values()) < N_PROMPTS
        calls_before = len(server.calls)
        rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert rerun.stdout.startswith("Generated")
        # Two interruptions lose at most one in-flight request each (concurrency 1).
        assert len(server.calls) <= N_PROMPTS + 2
        assert len(server.calls) - calls_before == int(rerun.stdout.split()[1])
    with Session(engine) as session:
        assert reply_counts(session) == {(p.id, "remote"): 1 for p in prompts}
        assert failures(session) == {}
