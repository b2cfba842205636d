"""Helpers for the candidates tests: a real llama.cpp OpenAI-compatible server, DB reads.

The prompts they seed come from ``tests.factories.add_prompts``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, select

from candidates.embedded import smollm2_gguf_path
from candidates.fake_server import free_port
from db.models import CandidateModel, GenerationFailure, Response

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def reply_counts(session: Session) -> dict[tuple[int, str], int]:
    """Responses per (prompt id, candidate name)."""
    rows = session.exec(select(Response.prompt_id, CandidateModel.name, func.count(Response.id))
                        .join(CandidateModel, CandidateModel.id == Response.candidate_model_id)
                        .group_by(Response.prompt_id, CandidateModel.name)).all()
    return {(p, n): c for p, n, c in rows}


def failures(session: Session) -> dict[int, GenerationFailure]:
    session.expire_all()
    return {f.prompt_id: f for f in session.exec(select(GenerationFailure)).all()}


def wait_http(url: str, *, timeout: float = 90.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited early with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@contextmanager
def llama_server(alias: str = "smollm2-test", *, log: Path | None = None) -> Iterator[str]:
    """A real llama-cpp-python OpenAI-compatible server on the embedded GGUF; yields its base URL (…/v1).

    It is ``python -m llama_cpp.server`` run through ``candidates.llama_server``, which only turns
    off llama.cpp's AMX buffers on CPUs where they crash (this machine's, inside its VM).

    Its (verbose) output goes to a file: a pipe nobody reads would fill up and stall the server."""
    port = free_port()
    log_file = open(log or os.devnull, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [PYTHON, "-m", "candidates.llama_server", "--model", str(smollm2_gguf_path()), "--host", "127.0.0.1",
         "--port", str(port), "--model_alias", alias, "--n_ctx", "2048"],
        stdout=log_file, stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", process=process)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_file.close()
