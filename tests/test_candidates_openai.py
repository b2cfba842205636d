"""The ``openai`` provider against real servers on 127.0.0.1.

- A real OpenAI-compatible server: ``python -m llama_cpp.server`` on the embedded SmolLM2 GGUF.
- Faults: ``candidates.fake_server.FakeOpenAIServer`` stands in for OpenAI's cloud (the only thing
  mocked here) and scripts 429 + Retry-After, 5xx, timeouts, malformed JSON and dropped connections.
"""

from __future__ import annotations

import threading

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from candidates.fake_server import FakeOpenAIServer, free_port
from candidates.generate import GenerationConfigError, run_generation
from candidates.registry import CandidateSpec
from db.models import CandidateModel, Response
from tests.candidates_helpers import failures, llama_server, reply_counts
from tests.factories import add_prompts
from therapref.cli import app

KEY = "sk-test-9f8e7d6c5b4a"
runner = CliRunner()


def _spec(url: str, **overrides) -> CandidateSpec:
    values = {"name": "remote", "provider": "openai", "model_id": "fake-model", "base_url": url, "timeout": 0.6,
              "max_retries": 1, "backoff_base": 0.01, "backoff_max": 0.05, "concurrency": 4}
    return CandidateSpec(**{**values, **overrides})


def test_generate_cli_against_real_llama_cpp_server(tmp_path, engine, monkeypatch):
    db = engine.url.database
    with Session(engine, expire_on_commit=False) as session:
        prompts = add_prompts(session, 3)
    monkeypatch.setenv("THERAPREF_TEST_KEY", KEY)
    with llama_server("smollm2-test", log=tmp_path / "llama-server.log") as url:
        config = tmp_path / "candidates.toml"
        config.write_text(f'[[candidate]]\nname = "smollm2-server"\nprovider = "openai"\nmodel_id = "smollm2-test"\n'
                          f'base_url = "{url}"\napi_key_env = "THERAPREF_TEST_KEY"\nmax_tokens = 24\n'
                          f'temperature = 0.0\nseed = 1\n')
        result = runner.invoke(app, ["generate", "--config", str(config), "--db", db, "--no-progress"])
        assert result.exit_code == 0, result.output
        assert "Generated 3 replies (0 failed, 0 duplicates)" in result.stdout
        again = runner.invoke(app, ["generate", "--config", str(config), "--db", db, "--no-progress"])
        assert again.exit_code == 0
        assert "Nothing to generate" in again.stdout
    with Session(engine, expire_on_commit=False) as session:
        responses = session.exec(select(Response)).all()
        assert sorted(r.prompt_id for r in responses) == sorted(p.id for p in prompts)
        for response in responses:
            assert response.text.strip()
            meta = response.meta
            assert meta["provider"] == "openai"
            assert meta["model"] == "smollm2-test"
            assert 0 < meta["completion_tokens"] <= 24
            assert meta["prompt_tokens"] > 10
            assert meta["total_tokens"] == meta["prompt_tokens"] + meta["completion_tokens"]
            assert meta["finish_reason"] in ("stop", "length")
            assert meta["latency_s"] > 0
            assert meta["system"] == "prompt"  # the prompt's own system message was used
        candidate = session.exec(select(CandidateModel)).one()
        assert (candidate.endpoint, candidate.api_key_env, candidate.params["max_tokens"]) == (
            url, "THERAPREF_TEST_KEY", 24)
    for path in tmp_path.iterdir():  # the key itself never reaches the database files
        if path.name.startswith("therapref.db"):
            assert KEY.encode() not in path.read_bytes()


def test_faults_are_retried_recorded_and_refilled(any_engine):
    texts = ["rate limited please", "server error once", "too slow always", "malformed body", "gateway down",
             "dropped connection", "bad request", "all fine here"]
    plan = {
        "rate limited": [("status", 429, {"Retry-After": "1"})],
        "server error": [("status", 500, {})],
        "too slow": [("sleep", 2.0), ("sleep", 2.0)],
        "malformed": [("raw", '{"choices": [ not json')],
        "gateway": [("status", 503, {}), ("status", 502, {})],
        "dropped": [("drop",)],
        "bad request": [("status", 400, {})],
    }
    with Session(any_engine, expire_on_commit=False) as session:
        prompts = {p.messages[0]["content"]: p.id for p in add_prompts(session, len(texts), texts=texts)}
    with FakeOpenAIServer(plan=plan) as server:
        spec = _spec(server.url)
        summary = run_generation(any_engine, [spec], progress=False)
        assert (summary.done, summary.failed, summary.duplicates) == (4, 4, 0)
        # Retry-After honoured: the retry came at least ~1 s after the 429.
        first, second = server.calls_for("rate limited")
        assert second.at - first.at >= 0.95
        assert [len(server.calls_for(t)) for t in texts] == [2, 2, 2, 1, 2, 2, 1, 1]
        with Session(any_engine, expire_on_commit=False) as session:
            failed = failures(session)
            assert set(failed) == {prompts[t] for t in ("too slow always", "malformed body", "gateway down",
                                                        "bad request")}
            assert "timed out" in failed[prompts["too slow always"]].error
            assert "malformed response" in failed[prompts["malformed body"]].error
            assert failed[prompts["gateway down"]].error.startswith("HTTP 502")
            assert ("2 attempts" in failed[
                prompts["gateway down"]].error)
            assert failed[prompts["bad request"]].error.startswith("HTTP 400")
            counts = reply_counts(session)
            assert counts == {(prompts[t], "remote"): 1 for t in ("rate limited please", "server error once",
                                                                  "dropped connection", "all fine here")}
            dropped = session.exec(select(Response).where(Response.prompt_id == prompts["dropped connection"])).one()
            assert dropped.meta["attempts"] == 2
        # The next run retries exactly the failed prompts, clears their failures, duplicates nothing.
        calls_before = len(server.calls)
        summary = run_generation(any_engine, [spec], progress=False)
        assert (summary.done, summary.failed) == (4, 0)
        assert len(server.calls) - calls_before == 4
        with Session(any_engine, expire_on_commit=False) as session:
            assert failures(session) == {}
            assert reply_counts(session) == {(pid, "remote"): 1 for pid in prompts.values()}
        assert run_generation(any_engine, [spec], progress=False).planned == 0


def test_failures_accumulate_attempts_across_runs(engine):
    with Session(engine, expire_on_commit=False) as session:
        (prompt,) = add_prompts(session, 1, texts=["always broken"])
    with FakeOpenAIServer(plan={"always broken": [("status", 500, {})] * 4}) as server:
        for _ in range(2):
            assert run_generation(engine, [_spec(server.url)], progress=False).failed == 1
        with Session(engine, expire_on_commit=False) as session:
            assert failures(session)[prompt.id].attempts == 2
        assert run_generation(engine, [_spec(server.url)], progress=False).done == 1
        with Session(engine, expire_on_commit=False) as session:
            assert failures(session) == {}


def test_connection_refused_is_retried_and_other_candidates_unaffected(engine):
    with Session(engine, expire_on_commit=False) as session:
        prompts = add_prompts(session, 3)
    dead = _spec(f"http://127.0.0.1:{free_port()}/v1", name="dead", max_retries=2)
    with FakeOpenAIServer() as server:
        summary = run_generation(engine, [dead, _spec(server.url, name="alive")], progress=False,
                                 check_endpoints=False)
    assert (summary.done, summary.failed) == (3, 3)
    with Session(engine, expire_on_commit=False) as session:
        failed = failures(session)
        assert set(failed) == {p.id for p in prompts}
        assert all("connection error" in f.error and "(3 attempts)" in f.error for f in failed.values())
        assert reply_counts(session) == {(p.id, "alive"): 1 for p in prompts}


def test_unreachable_endpoint_fails_before_any_work(engine):
    with Session(engine, expire_on_commit=False) as session:
        add_prompts(session, 2)
    dead = _spec(f"http://127.0.0.1:{free_port()}/v1", name="dead")
    with pytest.raises(GenerationConfigError, match=r"candidate 'dead': endpoint http://127\.0\.0\.1:\d+/v1 is "
                                                    r"unreachable"):
        run_generation(engine, [dead], progress=False)
    with Session(engine, expire_on_commit=False) as session:
        assert session.exec(select(CandidateModel)).all() == []


def test_key_is_sent_as_bearer_and_several_replies_per_prompt(any_engine):
    with Session(any_engine, expire_on_commit=False) as session:
        prompts = add_prompts(session, 2)
    spec = _spec("", api_key_env="REMOTE_KEY", replies_per_prompt=2, seed=10)
    with FakeOpenAIServer() as server:
        spec.base_url = server.url
        summary = run_generation(any_engine, [spec], progress=False, secrets={"REMOTE_KEY": KEY})
        assert summary.done == 4
        assert {c.authorization for c in server.calls} == {f"Bearer {KEY}"}
        assert sorted(c.body["seed"] for c in server.calls) == [10, 10, 11, 11]
    with Session(any_engine, expire_on_commit=False) as session:
        assert reply_counts(session) == {(p.id, "remote"): 2 for p in prompts}
        assert sorted(r.meta["reply_index"] for r in session.exec(select(Response)).all()) == [0, 0, 1, 1]
    with pytest.raises(GenerationConfigError, match="REMOTE_KEY"):
        run_generation(any_engine, [spec], progress=False, secrets={})


def test_two_concurrent_runs_never_duplicate(engine):
    with Session(engine, expire_on_commit=False) as session:
        prompts = add_prompts(session, 6)
    with FakeOpenAIServer(delay=0.2) as server:
        spec = _spec(server.url, concurrency=2, seed=1)
        results = []
        threads = [threading.Thread(target=lambda: results.append(run_generation(engine, [spec], progress=False)))
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sum(r.done for r in results) == 6
    assert sum(r.done + r.duplicates for r in results) == sum(r.planned for r in results)
    with Session(engine, expire_on_commit=False) as session:
        assert reply_counts(session) == {(p.id, "remote"): 1 for p in prompts}


def test_bad_key_fails_fast_without_hammering_the_endpoint(engine):
    with Session(engine, expire_on_commit=False) as session:
        prompts = add_prompts(session, 4)
    with FakeOpenAIServer(plan={"": [("status", 401, {})]}) as server:
        summary = run_generation(engine, [_spec(server.url, concurrency=1)], progress=False)
        assert (summary.done, summary.failed) == (0, 4)
        assert len(server.calls) == 1  # the other prompts were not sent
    with Session(engine) as session:
        failed = failures(session)
        assert set(failed) == {p.id for p in prompts}
        assert all("HTTP 401" in f.error for f in failed.values())


def test_run_generation_works_inside_a_running_event_loop(engine):
    import asyncio

    with Session(engine, expire_on_commit=False) as session:
        add_prompts(session, 2)
    with FakeOpenAIServer() as server:
        async def notebook_cell():
            return run_generation(engine, [_spec(server.url)], progress=False)

        assert asyncio.run(notebook_cell()).done == 2
