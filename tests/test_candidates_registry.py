"""The candidate registry (TOML → CandidateSpec → CandidateModel) and the CLI's bad-config errors."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from candidates.fake_server import free_port
from candidates.registry import (
    DEFAULT_PERSONA,
    CandidateSpec,
    RegistryError,
    load_registry,
    parse_registry,
    sync_registry,
)
from db.models import CandidateModel
from db.status import table_counts
from tests.candidates_helpers import ROOT
from tests.factories import add_prompts
from therapref.cli import app

runner = CliRunner()
GOOD = """
[defaults]
max_tokens = 64

[[candidate]]
name = "gpt"
provider = "openai"
model_id = "ft:gpt-3.5-turbo-0125:org::abc123"
api_key_env = "OPENAI_API_KEY"
temperature = 0.2

[[candidate]]
name = "local"
provider = "llamacpp"
max_tokens = 32
"""


def test_parse_applies_defaults_and_keeps_fine_tuned_ids():
    gpt, local = parse_registry(GOOD, secrets={"OPENAI_API_KEY": "sk-x"})
    assert (gpt.model_id, gpt.max_tokens, gpt.temperature, gpt.api_key_env) == (
        "ft:gpt-3.5-turbo-0125:org::abc123", 64, 0.2, "OPENAI_API_KEY")
    assert (local.model_id, local.max_tokens, local.base_url) == ("embedded", 32, None)
    assert gpt.resolve_system(None) == (DEFAULT_PERSONA, "persona")


def test_example_registry_in_the_repository_is_valid():
    specs = load_registry(ROOT / "candidates.example.toml", secrets={})
    assert {s.provider for s in specs} == {"llamacpp", "transformers"}


@pytest.mark.parametrize("text, message", [
    ('[[candidate]]\nname = "a"\nprovider = "ollama"\n', r"x\.toml:1: candidate 'a': unknown provider 'ollama'"),
    ('[[candidate]]\nname = "a"\nprovider = "llamacpp"\n\n[[candidate]]\nname = "b"\nprovider = "llamacpp"\n'
     'temperature = "hot"\n', r"x\.toml:5: candidate 'b': field 'temperature' must be a number"),
    ('[[candidate]]\nname = "a"\nprovider = "llamacpp"\ntemprature = 1\n', r"unknown field 'temprature'"),
    ('[[candidate]]\nname = "a"\nprovider = "llamacpp"\n[[candidate]]\nname = "a"\nprovider = "llamacpp"\n',
     r"x\.toml:4: candidate 'a': duplicate name 'a'"),
    ('[[candidate]]\nname = "a"\nprovider = "openai"\napi_key_env = "sk-live-123"\nmodel_id = "m"\n',
     r"api_key_env must be the NAME of an environment variable"),
    ('[[candidate]]\nname = "a"\nprovider = "openai"\nmodel_id = "gpt-4o"\n', r"needs api_key_env"),
    ('[[candidate]]\nname = "a"\nprovider = "openai"\nbase_url = "http://h/v1"\n', r"needs model_id"),
    ('[[candidate]]\nname = "a"\nprovider = "llamacpp"\nmax_tokens = 0\n', r"max_tokens must be at least 1"),
    ('[[candidate]\nname = "a"\n', r"x\.toml: not valid TOML"),
    ('[defaults]\nmax_tokens = 5\n', r"no \[\[candidate\]\] entries"),
])
def test_bad_registry_entries_name_file_line_and_problem(text, message):
    with pytest.raises(RegistryError, match=message):
        parse_registry(text, source="x.toml")


def test_missing_api_key_variable_is_reported_by_name():
    with pytest.raises(RegistryError, match="environment variable OPENAI_API_KEY .* is not set"):
        parse_registry(GOOD, secrets={})


def test_sync_mirrors_specs_and_never_stores_keys(session):
    specs = parse_registry(GOOD)
    rows = sync_registry(specs, session=session)
    session.commit()
    gpt = rows["gpt"]
    assert (gpt.provider, gpt.api_key_env, gpt.endpoint, gpt.replies_per_prompt) == ("openai", "OPENAI_API_KEY",
                                                                                    None, 1)
    assert gpt.params["temperature"] == 0.2
    assert gpt.params["max_tokens"] == 64
    assert "api_key" not in gpt.params
    assert "OPENAI_API_KEY" not in str(gpt.params)
    specs[0].temperature = 0.9
    sync_registry(specs, session=session)
    session.commit()
    assert len(session.exec(select(CandidateModel)).all()) == 2
    assert session.exec(select(CandidateModel).where(CandidateModel.name == "gpt")).one().params["temperature"] == 0.9


def test_spec_params_exclude_identity_fields():
    params = CandidateSpec("a", "openai", "m", base_url="http://x/v1", api_key_env="K").params()
    assert not {"name", "api_key_env", "base_url"} & set(params)


def _cli(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize("registry, env, message", [
    ('[[candidate]]\nname = "a"\nprovider = "llamacpp"\n\n[[candidate]]\nname = "b"\nprovider = "vllm"\n', {},
     "candidates.toml:5: candidate 'b': unknown provider 'vllm'"),
    ('[[candidate]]\nname = "a"\nprovider = "openai"\nmodel_id = "m"\nbase_url = "http://127.0.0.1:{port}/v1"\n'
     'api_key_env = "THERAPREF_TEST_MISSING_KEY"\n', {}, "environment variable THERAPREF_TEST_MISSING_KEY"),
    ('[[candidate]]\nname = "a"\nprovider = "openai"\nmodel_id = "m"\nbase_url = "http://127.0.0.1:{port}/v1"\n',
     {}, "candidate 'a': endpoint http://127.0.0.1:{port}/v1 is unreachable"),
])
def test_generate_rejects_bad_config_before_any_work(engine, tmp_path, monkeypatch, registry, env, message):
    monkeypatch.delenv("THERAPREF_TEST_MISSING_KEY", raising=False)
    port = free_port()
    with Session(engine, expire_on_commit=False) as session:
        add_prompts(session, 2)
        before = table_counts(session=session)
    config = tmp_path / "candidates.toml"
    config.write_text(registry.replace("{port}", str(port)))
    result = _cli("generate", "--config", str(config), "--db", engine.url.database, "--no-progress")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("Error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert message.replace("{port}", str(port)) in result.stderr
    with Session(engine) as session:
        assert table_counts(session=session) == before


def test_generate_cli_argument_errors(engine, tmp_path):
    db = engine.url.database
    missing = _cli("generate", "--config", str(tmp_path / "nope.toml"), "--db", db)
    assert missing.exit_code == 1
    assert "registry file not found" in missing.stderr
    config = tmp_path / "c.toml"
    config.write_text('[[candidate]]\nname = "a"\nprovider = "llamacpp"\n')
    bad_ids = _cli("generate", "--config", str(config), "--prompts", "3-1", "--db", db)
    assert bad_ids.exit_code == 1
    assert "--prompts: bad range '3-1'" in bad_ids.stderr
    unknown = _cli("generate", "--config", str(config), "--prompts", "99", "--db", db, "--no-progress")
    assert unknown.exit_code == 1
    assert "unknown prompt id(s): 99" in unknown.stderr
    name = _cli("generate", "--config", str(config), "--candidate", "zzz", "--db", db)
    assert name.exit_code == 1
    assert "no candidate named 'zzz'" in name.stderr


def test_generate_on_an_empty_database_says_what_to_do(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[[candidate]]\nname = "a"\nprovider = "llamacpp"\n')
    result = _cli("generate", "--config", str(config), "--db", str(tmp_path / "empty.db"), "--no-progress")
    assert result.exit_code == 0, result.output
    assert "No prompts to generate replies for: import some with `therapref import prompts FILE`." in result.stdout
