"""In-process providers on the embedded SmolLM2-135M-Instruct: llama.cpp (GGUF) and transformers (HF)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlmodel import Session, select

from candidates.generate import GenerationConfigError, run_generation
from candidates.registry import CandidateSpec, demo_candidates
from db.engine import make_engine
from db.migrate import upgrade
from db.models import CandidateModel, Response
from tests.factories import add_prompts


def _fresh_engine(path):
    engine = make_engine(path)
    upgrade(engine)
    return engine


def _replies(engine) -> dict[tuple[str, str], Response]:
    with Session(engine) as session:
        rows = session.exec(select(Response, CandidateModel.name)
                            .join(CandidateModel, CandidateModel.id == Response.candidate_model_id)).all()
        prompts = {r.prompt_id: r for r, _ in rows}
        assert prompts  # something was generated
        from db.models import Prompt

        texts = {p.id: p.messages[-1]["content"] for p in session.exec(select(Prompt)).all()}
        return {(texts[r.prompt_id], name): r for r, name in rows}


def _seed_prompts(engine) -> None:
    with Session(engine, expire_on_commit=False) as session:
        add_prompts(session, 1)  # carries its own system message
        add_prompts(session, 1, texts=["Nobody at school talks to me anymore."], system=None)


def test_llamacpp_demo_candidates_are_deterministic_and_differ_in_system_prompt(engine, tmp_path):
    specs = demo_candidates(max_tokens=12)
    assert [s.system_prompt for s in specs] == [None, "You are a helpful assistant."]
    specs = [replace(s, threads=1) for s in specs]  # one thread: fastest on a shared, busy machine
    results = []
    for eng in (engine, _fresh_engine(tmp_path / "second.db")):
        _seed_prompts(eng)
        summary = run_generation(eng, specs, progress=False)
        assert (summary.done, summary.failed) == (4, 0)
        assert 0 < summary.tokens <= 4 * 12
        assert summary.p50 is not None
        results.append(_replies(eng))
    first, second = results
    assert {k: r.text for k, r in first.items()} == {k: r.text for k, r in second.items()}
    for (text, name), response in first.items():
        assert response.text.strip()
        meta = response.meta
        assert meta["provider"] == "llamacpp"
        assert 0 < meta["completion_tokens"] <= 12
        assert meta["finish_reason"] in ("stop", "length")
        assert meta["seed"] == 7
        expected = "candidate" if name == "smollm2-plain" else ("persona" if "school" in text else "prompt")
        assert meta["system"] == expected


def test_transformers_batched_replies_are_deterministic(engine, tmp_path):
    spec = CandidateSpec(name="smollm2-hf", provider="transformers", temperature=0.8, top_p=0.95, seed=3,
                         max_tokens=6, batch_size=4, threads=1)
    results = []
    for eng in (engine, _fresh_engine(tmp_path / "second.db")):
        _seed_prompts(eng)
        summary = run_generation(eng, [spec], progress=False)
        assert (summary.done, summary.failed) == (2, 0)
        results.append(_replies(eng))
    first, second = results
    assert {k: r.text for k, r in first.items()} == {k: r.text for k, r in second.items()}
    assert len(first) == 2
    for response in first.values():
        assert response.text.strip()
        assert response.meta["provider"] == "transformers"
        assert response.meta["batch_size"] == 2
        assert 0 < response.meta["completion_tokens"] <= 6
        assert response.meta["prompt_tokens"] > 5


def test_local_model_paths_are_checked_before_any_work(engine, tmp_path):
    llama = CandidateSpec(name="x", provider="llamacpp", model_id=str(tmp_path / "missing.gguf"))
    with pytest.raises(GenerationConfigError, match="GGUF model file .*missing.gguf not found"):
        run_generation(engine, [llama], progress=False)
    hf = replace(llama, provider="transformers", model_id=str(tmp_path))
    with pytest.raises(GenerationConfigError, match="not a Hugging Face model folder"):
        run_generation(engine, [hf], progress=False)
    with Session(engine) as session:
        assert session.exec(select(CandidateModel)).all() == []


def test_a_reply_to_the_last_turn_of_a_twenty_turn_conversation(engine):
    """The whole conversation goes to the model (its prompt tokens grow with it) and the reply is stored
    against that prompt: long conversations are generated for like one-turn ones."""
    from db.crud import get_or_create_prompt

    turns = []
    for i in range(19):
        role = "user" if i % 2 == 0 else "assistant"
        turns.append({"role": role, "content": f"Turn {i}: I keep going over what happened at work, day {i}."})
    turns.append({"role": "user", "content": "And tonight I cannot sleep at all. What should I do?"})
    with Session(engine, expire_on_commit=False) as session:
        long_prompt, _ = get_or_create_prompt(turns, session=session)
        short_prompt, _ = get_or_create_prompt(turns[-1:], session=session)
        session.commit()
    spec = replace(demo_candidates(max_tokens=6)[0], threads=1)
    summary = run_generation(engine, [spec], progress=False)
    assert (summary.done, summary.failed) == (2, 0)
    with Session(engine) as session:
        by_prompt = {r.prompt_id: r for r in session.exec(select(Response)).all()}
    long_reply, short_reply = by_prompt[long_prompt.id], by_prompt[short_prompt.id]
    assert long_reply.text.strip() and 0 < long_reply.meta["completion_tokens"] <= 6
    assert long_reply.meta["prompt_tokens"] > short_reply.meta["prompt_tokens"] + 19 * 10
