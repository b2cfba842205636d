"""API keys come only from the environment and go nowhere else: a key planted in the env var of an
openai candidate reaches the endpoint (so it was really used) but no table, file, manifest, export,
report, log or error message. OpenAI's cloud is mocked by a local fake server (the only mock)."""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlmodel import Session, select

from candidates.fake_server import FakeOpenAIServer
from db.assignment import next_comparison, submit_judgment
from db.auth import create_annotator
from db.engine import make_engine, session_scope
from db.models import AuditEvent, CandidateModel, GenerationFailure
from tests.conftest import GABY
from tests.reliability_helpers import cli_env, dump_tables, grep_tree, run_cli

pytestmark = pytest.mark.slow
KEY_ENV = "THERAPREF_TEST_OPENAI_KEY"


class EchoingServer:
    """A careless OpenAI-compatible endpoint: every request gets a 401 whose message repeats the
    Authorization header it received (real services print a masked key; this one does not)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # noqa: ANN002
                return None

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                auth = self.headers.get("Authorization") or ""
                outer.seen.append(auth)
                body = json.dumps({"error": {"message": f"Incorrect API key provided: {auth.split()[-1]}",
                                             "type": "invalid_request_error", "code": "invalid_api_key"}}).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST  # noqa: N815

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> EchoingServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.httpd.shutdown()
        self.httpd.server_close()


def _judge_everything(url: str, n_clinicians: int = 2) -> int:
    engine = make_engine(url)
    made = 0
    with session_scope(engine) as session:
        ids = [create_annotator(f"clin{i}", "correct-horse-battery", session=session).id
               for i in range(n_clinicians)]
    for annotator_id in ids:
        while True:
            with session_scope(engine) as session:
                shown = next_comparison(annotator_id, session=session)
                if shown is None:
                    break
                submit_judgment(shown.token, session=session, annotator_id=annotator_id, preferred="left",
                                strength=2, rationale="clearer")
                made += 1
    engine.dispose()
    return made


def test_planted_api_key_never_leaves_the_environment(tmp_path):
    key = f"sk-test-PLANTED-{secrets.token_hex(16)}"
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    env = cli_env(**{KEY_ENV: key})
    outputs: list[str] = []

    def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        result = run_cli(*args, env=env, cwd=tmp_path)
        outputs.append(result.stdout + result.stderr)
        if ok:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    cli("import", "prompts", str(GABY), "--db", url)
    with FakeOpenAIServer() as server, EchoingServer() as echo:
        registry = tmp_path / "candidates.toml"
        registry.write_text(
            '[[candidate]]\nname = "cloud-model"\nprovider = "openai"\nmodel_id = "gpt-fake"\n'
            f'base_url = "{server.url}"\napi_key_env = "{KEY_ENV}"\nmax_retries = 0\n\n'
            '[[candidate]]\nname = "careless-endpoint"\nprovider = "openai"\nmodel_id = "gpt-echo"\n'
            f'base_url = "{echo.url}"\napi_key_env = "{KEY_ENV}"\nmax_retries = 0\n')
        first = cli("generate", "--config", str(registry), "--db", url, "--no-progress", ok=False)
        assert server.calls, "the fake endpoint was never called"
        assert all(call.authorization == f"Bearer {key}" for call in server.calls), "the key was not used"
        assert echo.seen
        assert set(echo.seen) == {f"Bearer {key}"}
        assert first.returncode == 1, "the echoing endpoint's 401s count as failed requests"
    cli("pairs", "--db", url)
    assert _judge_everything(url) > 0
    exports = tmp_path / "exports"
    exports.mkdir()
    cli("export", "sft", "--output", str(exports / "sft.jsonl"), "--db", url)
    cli("export", "dpo", "--output", str(exports / "dpo.jsonl"), "--db", url)
    cli("export", "hf", "--output", str(exports / "hf"), "--db", url)
    cli("report", "--output", str(tmp_path / "report"), "--db", url, "--bootstrap", "20")
    cli("status", "--db", url, "--json")
    cli("backup", str(tmp_path / "backup.db"), "--db", url)

    engine = make_engine(url)
    with Session(engine) as session:
        candidate = session.exec(select(CandidateModel).where(CandidateModel.name == "cloud-model")).one()
        assert candidate.api_key_env == KEY_ENV  # only the variable's NAME is stored
        failures = session.exec(select(GenerationFailure)).all()
        assert failures, [f.error for f in failures]
        assert all("401" in f.error or "API key" in f.error for f in failures), [f.error for f in failures]
        exports_audited = session.exec(select(AuditEvent).where(AuditEvent.action == "export.write")).all()
    # Exports are audited: who (actor), what (target path, kind, rows), when (created_at).
    assert len(exports_audited) == 3
    assert all(e.actor and e.target.startswith(str(exports)) and e.details.get("kind") and e.created_at
               for e in exports_audited)
    assert key not in dump_tables(engine), "the API key reached the database"
    assert grep_tree(tmp_path, key) == [], "the API key reached a file (export, manifest, report, log, backup)"
    leaked = [text for text in outputs if key in text]
    assert leaked == [], f"the API key reached command output: {leaked[0][:300]}"
    # The masked-key hint is fine, the key's tail is not: no 12-character slice of it anywhere.
    tail = key[-12:]
    assert tail not in dump_tables(engine)
    assert all(tail not in text for text in outputs)
