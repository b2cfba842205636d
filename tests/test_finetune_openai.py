"""``therapref finetune openai`` against a MOCKED OpenAI API.

The mock: a small fake of OpenAI's REST API (``/v1/files``, ``/v1/fine_tuning/jobs``, job retrieval
and events) served by ``http.server`` on 127.0.0.1 in a thread started and stopped by the test; the
real ``openai`` SDK talks to it over HTTP through ``--base-url``. Only OpenAI's cloud is mocked.
The fake checks the bearer key, records every request, and plays a job from queued to succeeded
or failed. A planted API key is then searched for in the output, the manifest and the database.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from db.crud import add_comparison, add_judgment, add_response, get_or_create_candidate, get_or_create_prompt
from db.models import Annotator, AuditEvent, CandidateModel
from exports.errors import ExportError
from exports.validate import validate_file
from tests.conftest import GABY
from therapref.cli import app

KEY = "sk-test-PLANTED-9f8e7d6c5b4a"
runner = CliRunner()


class FakeOpenAI:
    """State of the fake API: requests seen and how the job ends."""

    def __init__(self, outcome: str = "succeeded") -> None:
        self.outcome, self.requests, self.polls = outcome, [], 0
        self.job: dict | None = None
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization", "")
                fake.requests.append({"method": method, "path": self.path, "auth": auth, "body": body})
                if auth != f"Bearer {KEY}":
                    # Like the real API, the error message echoes (part of) the key it got.
                    return self._send(401, {"error": {"message": f"Incorrect API key provided: {auth[7:]}",
                                                      "type": "invalid_request_error", "code": "invalid_api_key"}})
                return fake.route(self, method, body)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        return Handler

    def route(self, h, method: str, body: bytes) -> None:
        path = h.path.split("?")[0]
        if method == "POST" and path == "/v1/files":
            return h._send(200, {"id": "file-abc123", "object": "file", "bytes": len(body), "created_at": 1,
                                 "filename": "train.jsonl", "purpose": "fine-tune", "status": "processed"})
        if method == "POST" and path == "/v1/fine_tuning/jobs":
            request = json.loads(body)
            self.job = {"id": "ftjob-xyz", "object": "fine_tuning.job", "created_at": 2, "model": request["model"],
                        "training_file": request["training_file"], "status": "validating_files",
                        "fine_tuned_model": None, "error": None, "finished_at": None, "organization_id": "org-1",
                        "result_files": [], "seed": 1, "trained_tokens": None, "validation_file": None,
                        "hyperparameters": {"n_epochs": "auto"}, "method": request.get("method")}
            return h._send(200, self.job)
        if method == "GET" and path == "/v1/fine_tuning/jobs/ftjob-xyz":
            self.polls += 1
            steps = ["queued", "running", self.outcome]
            self.job["status"] = steps[min(self.polls - 1, 2)]
            if self.job["status"] == "succeeded":
                self.job["fine_tuned_model"] = "ft:gpt-4.1-mini-2025-04-14:org:gaby:AbC123"
            if self.job["status"] == "failed":
                self.job["error"] = {"code": "invalid_training_file", "message": "Training file has too few "
                                     "distinct examples", "param": "training_file"}
            return h._send(200, self.job)
        if method == "GET" and path == "/v1/fine_tuning/jobs/ftjob-xyz/events":
            events = [{"id": f"ev-{i}", "object": "fine_tuning.job.event", "created_at": 10 + i, "level": "info",
                       "message": f"Step {i}: {self.job['status']}", "type": "message"} for i in range(self.polls)]
            return h._send(200, {"object": "list", "data": list(reversed(events)), "has_more": False})
        return h._send(404, {"error": {"message": f"no route {method} {path}"}})


@pytest.fixture
def sft_file(engine, sqlite_url, tmp_path):
    from db.importers import import_prompts

    with Session(engine) as session:
        import_prompts(GABY, session=session)
        session.commit()
    out = tmp_path / "gaby.jsonl"
    result = runner.invoke(app, ["export", "sft", "--db", sqlite_url, "-o", str(out), "--select", "reference"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def dpo_file(engine, sqlite_url, tmp_path):
    with Session(engine) as session:
        warm, _ = get_or_create_candidate("warm", session=session, provider="local")
        terse, _ = get_or_create_candidate("terse", session=session, provider="local")
        clin = Annotator(username="clin", role="clinician")
        session.add(clin)
        session.flush()
        for i in range(12):
            prompt, _ = get_or_create_prompt([{"role": "user", "content": f"Worry number {i} keeps me up."}],
                                             session=session, system_prompt="Be kind.")
            a, _ = add_response(prompt, warm, f"That sounds heavy ({i}). What helps a little?", session=session)
            b, _ = add_response(prompt, terse, f"Sleep more ({i}).", session=session)
            comp, _ = add_comparison(a, b, session=session)
            add_judgment(comp, clin, "a" if comp.response_a_id == a.id else "b", session=session)
        session.commit()
    out = tmp_path / "pref.jsonl"
    result = runner.invoke(app, ["export", "openai-dpo", "--db", sqlite_url, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def finetune(fake, db, path, *args, env=True):
    if "--model" not in args:
        args = (*args, "--model", "gpt-4.1-mini-2025-04-14")
    return runner.invoke(app, ["finetune", "openai", str(path), "--db", db, "--base-url", fake.url,
                               "--api-key-env", "TP_TEST_OPENAI_KEY", "--poll-seconds", "0", *args],
                         env={"TP_TEST_OPENAI_KEY": KEY} if env else {"TP_TEST_OPENAI_KEY": ""})


def assert_key_nowhere(result, db_path, *files):
    assert KEY not in result.output
    assert KEY.encode() not in db_path.read_bytes()
    for wal in db_path.parent.glob(db_path.name + "-*"):
        assert KEY.encode() not in wal.read_bytes()
    for f in files:
        assert KEY not in f.read_text()


def test_sft_upload_job_follow_success_registers_model(engine, sqlite_url, sft_file, tmp_path):
    with FakeOpenAI("succeeded") as fake:
        result = finetune(fake, sqlite_url, sft_file, "--model", "gpt-4.1-mini-2025-04-14", "--follow",
                          "--suffix", "gaby")
    assert result.exit_code == 0, result.output
    upload, create = fake.requests[0], fake.requests[1]
    assert upload["path"] == "/v1/files"
    assert sft_file.read_bytes() in upload["body"]
    assert b'name="purpose"' in upload["body"]
    assert b"fine-tune" in upload["body"]
    job = json.loads(create["body"])
    assert job == {"model": "gpt-4.1-mini-2025-04-14", "training_file": "file-abc123", "suffix": "gaby",
                   "method": {"type": "supervised", "supervised": {"hyperparameters": {}}}}
    assert all(r["auth"] == f"Bearer {KEY}" for r in fake.requests)
    assert "40 valid sft examples" in result.output
    assert "Step 2: succeeded" in result.output
    assert "Status: succeeded" in result.output
    assert "Registered candidate model ft:gpt-4.1-mini-2025-04-14:org:gaby:AbC123" in result.output
    with Session(engine) as session:
        model = session.exec(select(CandidateModel).where(CandidateModel.provider == "openai")).one()
        actions = [e.action for e in session.exec(select(AuditEvent)).all()]
    assert model.name == model.model_id == "ft:gpt-4.1-mini-2025-04-14:org:gaby:AbC123"
    assert model.api_key_env == "TP_TEST_OPENAI_KEY"
    assert model.params["fine_tuning_job"] == "ftjob-xyz"
    assert {"finetune.start", "finetune.registered"} <= set(actions)
    assert_key_nowhere(result, tmp_path / "therapref.db", sft_file.with_name("gaby.jsonl.manifest.json"))


def test_dpo_follow_to_failure(engine, sqlite_url, dpo_file, tmp_path):
    with FakeOpenAI("failed") as fake:
        result = finetune(fake, sqlite_url, dpo_file, "--method", "dpo", "--beta", "0.2", "--follow")
    assert result.exit_code == 1
    assert json.loads(fake.requests[1]["body"])["method"] == {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}}
    last = result.output.strip().splitlines()[-1]
    assert last == "Error: fine-tuning job ftjob-xyz failed: Training file has too few distinct examples"
    with Session(engine) as session:
        assert session.exec(select(CandidateModel).where(CandidateModel.provider == "openai")).all() == []
        assert session.exec(select(AuditEvent).where(AuditEvent.action == "finetune.failed")).one()
    assert_key_nowhere(result, tmp_path / "therapref.db", dpo_file.with_name("pref.jsonl.manifest.json"))


def test_without_follow_starts_job_only(sqlite_url, sft_file):
    with FakeOpenAI() as fake:
        result = finetune(fake, sqlite_url, sft_file)
    assert result.exit_code == 0
    assert "Job ftjob-xyz started" in result.output
    assert [r["path"] for r in fake.requests] == ["/v1/files", "/v1/fine_tuning/jobs"]


def test_dry_run_uploads_nothing_and_needs_no_key(sqlite_url, sft_file):
    with FakeOpenAI() as fake:
        result = finetune(fake, sqlite_url, sft_file, "--dry-run", env=False)
    assert result.exit_code == 0, result.output
    assert "Dry run: the file is valid" in result.output
    assert fake.requests == []


def test_bad_key_error_is_redacted(engine, sqlite_url, sft_file, tmp_path, monkeypatch):
    with FakeOpenAI() as fake:
        result = runner.invoke(app, ["finetune", "openai", str(sft_file), "--db", sqlite_url, "--base-url", fake.url,
                                     "--api-key-env", "TP_TEST_OPENAI_KEY", "--model", "gpt-4.1-mini-2025-04-14"],
                               env={"TP_TEST_OPENAI_KEY": KEY + "-wrong"})
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Error: OpenAI API error: 401")
    assert "[REDACTED]" in line
    assert "PLANTED" not in line


def test_missing_key_and_invalid_file(sqlite_url, sft_file, tmp_path):
    with FakeOpenAI() as fake:
        result = finetune(fake, sqlite_url, sft_file, env=False)
        assert result.exit_code == 1
        assert result.output.strip() == ("Error: environment variable TP_TEST_OPENAI_KEY is not set "
                                         "(it must hold the OpenAI API key)")
        bad = tmp_path / "bad.jsonl"
        bad.write_text(sft_file.read_text().replace('"role": "assistant"', '"role": "bot"', 1))
        result = finetune(fake, sqlite_url, bad)
        assert fake.requests == []
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {bad} line 1: message 3 has unrecognised role 'bot'"


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


SYS = {"role": "system", "content": "Be kind."}
USER = {"role": "user", "content": "I feel low."}
ASSISTANT = {"role": "assistant", "content": "I'm here. What happened today?"}


@pytest.mark.parametrize(("rows", "method", "message"), [
    ([{"messages": [SYS, USER]}] * 10, "sft", "line 1: example has no assistant message"),
    ([{"messages": [SYS, USER, ASSISTANT], "extra": 1}] * 10, "sft", "line 1: unrecognised key 'extra'"),
    ([{"messages": [USER, {**ASSISTANT, "weight": 2}]}] * 10, "sft", "message 2 weight must be 0 or 1"),
    ([{"messages": [{"role": "user"}, ASSISTANT]}] * 10, "sft", "message 1 (user) has no content"),
    ([{"messages": [USER, ASSISTANT]}] * 9, "sft", "9 examples; OpenAI fine-tuning needs at least 10"),
    ([{"messages": [USER, {"role": "assistant", "content": "x" * 300_000}]}] * 10, "sft",
     "line 1: about 75,014 tokens, over the limit of 65,536 per example (and 9 more problems)"),
    ([{"input": {"messages": [USER]}, "preferred_output": [ASSISTANT, ASSISTANT],
       "non_preferred_output": [ASSISTANT]}] * 10, "dpo", "preferred_output must be a list of exactly one"),
    ([{"input": {"messages": [USER, ASSISTANT]}, "preferred_output": [ASSISTANT],
       "non_preferred_output": [ASSISTANT]}] * 10, "dpo", "input.messages must end with a user message"),
])
def test_validator_rejects(tmp_path, rows, method, message):
    with pytest.raises(ExportError) as info:
        validate_file(_write(tmp_path / "f.jsonl", rows), method)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_validator_counts_tokens_and_warns(tmp_path):
    rows = [{"messages": [SYS, USER, ASSISTANT]}] * 10
    report = validate_file(_write(tmp_path / "ok.jsonl", rows), "sft")
    assert report.examples == 10
    assert report.estimated_tokens < report.upper_bound_tokens
    near = [{"messages": [USER, {"role": "assistant", "content": "é" * 40_000}]}] * 10  # 80,000 bytes
    report = validate_file(_write(tmp_path / "near.jsonl", near), "sft")
    assert report.warnings
    assert "may exceed 65,536 tokens" in report.warnings[0]
