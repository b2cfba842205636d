"""``therapref serve NAME`` as a real process on 127.0.0.1, called with the real ``openai`` client exactly
as the original Gaby client code calls OpenAI:

    client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "I want to cry"}])

The candidates are the embedded SmolLM2 GGUF (llamacpp provider) and a best-of-2 candidate of it picked
by a tiny reward model; nothing is mocked.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from sqlmodel import Session, select
from typer.testing import CliRunner

from candidates.fake_server import FakeOpenAIServer, canned_reply, free_port
from candidates.registry import load_registry, sync_registry
from db.crud import get_or_create_candidate
from db.engine import make_engine
from db.migrate import upgrade
from db.models import Response
from tests.candidates_helpers import PYTHON, wait_http
from tests.factories import add_prompts
from tests.reliability_helpers import cli_env, interruptible, wait_until
from tests.tiny_models import tiny_reward_base
from therapref.cli import app

NAME = "gaby-smollm2"
PERSONA = ("You are Gaby, a gentle support assistant. Answer in two short sentences, name the feeling you hear "
           "and ask one open question.")
GABY_MESSAGES = [{"role": "user", "content": "I want to cry"}]
CONFIG = f"""[[candidate]]
name = "{NAME}"
provider = "llamacpp"
model_id = "embedded"
max_tokens = 24
threads = 1
system_prompt = "{PERSONA}"
"""
runner = CliRunner()


@dataclass
class Served:
    url: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def serving(name: str, *, db: str, cwd: Path, config: Path | None = None, extra: tuple[str, ...] = (),
            env: dict[str, str] | None = None) -> Iterator[Served]:
    """``python -m therapref.cli serve NAME --port <free port>`` until the block ends (always stopped).

    It runs in ``cwd`` (no stray candidates.toml or therapref.toml); its output goes to a file, since a
    pipe nobody reads would fill up and stall it."""
    port = free_port()
    log = cwd / f"serve-{name}-{port}.log"
    args = [PYTHON, "-m", "therapref.cli", "serve", name, "--port", str(port), "--db", db]
    if config is not None:
        args += ["--config", str(config)]
    with open(log, "wb") as out:
        process = subprocess.Popen([*args, *extra], cwd=cwd, env=cli_env(**(env or {})), stdout=out,
                                   stderr=subprocess.STDOUT,
                                   preexec_fn=interruptible)
    served = Served(f"http://127.0.0.1:{port}/v1", process, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=240, process=process)
        wait_until(lambda: "Serving" in served.output(), timeout=30, what="the ready line")
        yield served
    except BaseException:
        print(served.output())  # shown by pytest when the test fails
        raise
    finally:
        _stop(process)


def _engine_url(folder: Path) -> str:
    url = f"sqlite:///{folder / 'therapref.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, str, Path]:
    """A folder with the registry file and a migrated database holding the Gaby prompt."""
    folder = tmp_path_factory.mktemp("serve")
    config = folder / "candidates.toml"
    config.write_text(CONFIG, encoding="utf-8")
    db = _engine_url(folder)
    engine = make_engine(db)
    with Session(engine) as session:
        add_prompts(session, 1, texts=["I want to cry"])
    engine.dispose()
    return folder, db, config


@pytest.fixture(scope="module")
def gaby(project) -> Iterator[Served]:
    folder, db, config = project
    with serving(NAME, db=db, cwd=folder, config=config) as served:
        yield served


def _client(served: Served) -> OpenAI:
    return OpenAI(base_url=served.url, api_key="unused", max_retries=0, timeout=120)


def test_the_gaby_client_code_runs_unchanged_and_replies_as_generate_does(gaby, project):
    folder, db, config = project
    line = next(line for line in gaby.output().splitlines() if line.startswith("Serving"))
    assert gaby.url in line and f'model="{NAME}"' in line and "I want to cry" in line
    # The reply `therapref generate` stores for this prompt (reply 0 is sampled with seed 0)...
    result = runner.invoke(app, ["generate", "--config", str(config), "--db", db, "--no-progress"])
    assert result.exit_code == 0, result.output
    engine = make_engine(db)
    with Session(engine) as session:
        stored = session.exec(select(Response)).one()
    engine.dispose()
    client = _client(gaby)
    # ...is what the served candidate answers with the same seed: same provider, system prompt, sampling.
    # (This is the server's first request: its llama.cpp context is as fresh as generate's was.)
    same = client.chat.completions.create(model=NAME, messages=GABY_MESSAGES, seed=0)
    assert same.choices[0].message.content == stored.text
    assert same.usage.prompt_tokens == stored.meta["prompt_tokens"]

    completion = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "I want to cry"}])
    reply = completion.choices[0].message
    assert reply.role == "assistant" and reply.content.strip()
    assert completion.model == NAME and completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.choices[0].finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > 20 and 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert completion.model_extra["therapref"]["system"] == "candidate"


def test_the_candidates_system_prompt_applies_unless_the_request_brings_its_own(gaby):
    client = _client(gaby)
    implicit = client.chat.completions.create(model=NAME, messages=GABY_MESSAGES, seed=5)
    explicit = client.chat.completions.create(
        model=NAME, messages=[{"role": "system", "content": PERSONA}, *GABY_MESSAGES], seed=5)
    # No system message in the request: the candidate's is used, exactly as if the client had sent it.
    assert implicit.model_extra["therapref"]["system"] == "candidate"
    assert explicit.model_extra["therapref"]["system"] == "request"
    assert implicit.choices[0].message.content == explicit.choices[0].message.content
    assert implicit.usage.prompt_tokens == explicit.usage.prompt_tokens
    # A request's own system message is kept (a shorter one: fewer prompt tokens).
    own = client.chat.completions.create(
        model=NAME, messages=[{"role": "system", "content": "Be brief."}, *GABY_MESSAGES], max_tokens=4)
    assert own.usage.prompt_tokens < implicit.usage.prompt_tokens - 15
    assert own.usage.completion_tokens <= 4  # the request's max_tokens overrides the candidate's 24


def test_models_errors_and_streaming_speak_openai(gaby):
    client = _client(gaby)
    assert [model.id for model in client.models.list()] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=GABY_MESSAGES)
    assert missing.value.code == "model_not_found" and NAME in missing.value.message
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    for bad in ({"n": 2}, {"temperature": 5}, {"stop": ["\n"]}, {"max_tokens": 0}):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=NAME, messages=GABY_MESSAGES, **bad)
        assert next(iter(bad)) in refused.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=NAME, messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}])
    raw = httpx.get(gaby.url.removesuffix("/v1") + "/v1/nothing-here")
    assert raw.status_code == 404 and raw.json()["error"]["code"] == "unknown_url"
    assert "text/html" not in raw.headers["content-type"]
    assert httpx.get(gaby.url.removesuffix("/v1") + "/docs").status_code == 404  # no HTML pages at all

    chunks = list(client.chat.completions.create(model=NAME, messages=GABY_MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens > 0


def test_bad_input_is_one_line(project, tmp_path, monkeypatch):
    folder, db, config = project
    monkeypatch.chdir(tmp_path)  # no candidates.toml here
    engine = make_engine(db)
    with Session(engine) as session:
        get_or_create_candidate("reference", session=session, provider="reference")
        session.commit()
    engine.dispose()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = [
            (["serve", "nobody", "--db", db], "no candidate named 'nobody'"),
            (["serve", "reference", "--db", db], "imported source"),
            (["serve", NAME, "--db", db, "--config", str(config), "--port", str(port)],
             f"cannot listen on 127.0.0.1:{port}"),
            (["serve", NAME, "--db", db, "--config", str(config), "--api-key-env", "THERAPREF_NO_SUCH_VARIABLE"],
             "THERAPREF_NO_SUCH_VARIABLE is not set"),
        ]
        for args, message in cases:
            result = runner.invoke(app, args)
            lines = [line for line in result.output.splitlines() if line.strip()]
            assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
            assert message in lines[0]


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory) -> Path:
    """A tiny (2-layer, 32-wide) sequence-classification reward model, untrained: it picks, that is all."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    base = tiny_reward_base(tmp_path_factory.mktemp("tiny-base") / "base")
    folder = tmp_path_factory.mktemp("rm") / "model"
    AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(folder)
    return folder


def test_a_best_of_n_candidate_serves_its_reward_models_pick(project, reward_dir, tmp_path):
    from candidates.best_of_n import register_best_of_n

    folder, _, config = project
    db = _engine_url(tmp_path)
    engine = make_engine(db)
    with Session(engine) as session:
        # Registered in the database only (no registry file is given to the server): its row is the spec.
        sync_registry(load_registry(config), session=session)
        register_best_of_n("gaby-best-of-2", of=NAME, best_of=2, reward_model=str(reward_dir), session=session)
        session.commit()
    engine.dispose()
    with serving("gaby-best-of-2", db=db, cwd=tmp_path) as served:
        completion = _client(served).chat.completions.create(model="gaby-best-of-2", messages=GABY_MESSAGES)
        best_of = completion.model_extra["therapref"]["best_of"]
        assert (best_of["n"], best_of["sampled"], len(best_of["samples"])) == (2, 2, 2)
        picked = [s for s in best_of["samples"] if s["picked"]]
        assert len(picked) == 1 and picked[0]["index"] == best_of["picked"]
        assert completion.choices[0].message.content == picked[0]["text"]
        assert picked[0]["reward"] == max(s["reward"] for s in best_of["samples"]) == best_of["reward"]
        assert best_of["reward_model"] == str(reward_dir.resolve())
        # Usage counts the tokens of both samples (what was spent), as OpenAI's legacy best_of did.
        assert completion.usage.completion_tokens == sum(s["completion_tokens"] for s in best_of["samples"])
        # Ctrl-C stops it cleanly: graceful shutdown, a last line, exit status 0.
        served.process.send_signal(signal.SIGINT)
        assert served.process.wait(timeout=60) == 0
        assert served.output().rstrip().endswith("Stopped.")


def test_an_openai_candidate_is_proxied_with_its_system_prompt_and_key(tmp_path):
    upstream_key, server_key = "sk-upstream-5e4d3c2b1a", "therapref-serve-key-0f9e8d"
    with FakeOpenAIServer(delay=1.0, plan={"fail": [("status", 500, {})]}) as upstream:
        config = tmp_path / "candidates.toml"
        config.write_text(f"""[[candidate]]
name = "gaby-remote"
provider = "openai"
model_id = "upstream-model"
base_url = "{upstream.url}"
api_key_env = "THERAPREF_SERVE_UPSTREAM_KEY"
system_prompt = "{PERSONA}"
max_retries = 0
""", encoding="utf-8")
        env = {"THERAPREF_SERVE_UPSTREAM_KEY": upstream_key, "THERAPREF_SERVE_KEY": server_key}
        with serving("gaby-remote", db=_engine_url(tmp_path), cwd=tmp_path, config=config,
                     extra=("--api-key-env", "THERAPREF_SERVE_KEY"), env=env) as served:
            assert 'api_key=os.environ["THERAPREF_SERVE_KEY"]' in served.output()
            with pytest.raises(openai.AuthenticationError):
                _client(served).chat.completions.create(model="gaby-remote", messages=GABY_MESSAGES)
            client = OpenAI(base_url=served.url, api_key=server_key, max_retries=0, timeout=60)
            completion = client.chat.completions.create(model="gaby-remote", messages=GABY_MESSAGES)
            assert completion.choices[0].message.content == canned_reply("I want to cry", None, "upstream-model")
            (call,) = upstream.calls
            assert call.body["model"] == "upstream-model" and "seed" not in call.body
            assert call.body["messages"] == [{"role": "system", "content": PERSONA}, *GABY_MESSAGES]
            assert call.authorization == f"Bearer {upstream_key}"
            # A proxy holds no model: requests run side by side (each takes the upstream's 1 s).
            threads = [threading.Thread(target=client.chat.completions.create,
                                        kwargs={"model": "gaby-remote", "messages": GABY_MESSAGES})
                       for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            arrivals = [c.at for c in upstream.calls[1:]]
            assert len(arrivals) == 4 and max(arrivals) - min(arrivals) < 0.9
            with pytest.raises(openai.APIStatusError) as failed:
                client.chat.completions.create(model="gaby-remote", messages=[{"role": "user", "content": "fail"}])
            assert failed.value.status_code == 502 and "HTTP 500" in failed.value.message
        output = served.output()
    assert upstream_key not in output and server_key not in output
