"""Best-of-n candidates (``candidates.best_of_n``): N samples of the base configuration per reply, the
reward model's best stored, every sample and its scores kept, the safety model's veto; the registry
fields, ``therapref candidates add --best-of`` and the bad input they refuse."""

from __future__ import annotations

import pytest
from sqlmodel import Session, func, select
from typer.testing import CliRunner

from candidates.best_of_n import BestOfNError, register_best_of_n, sample_seed
from candidates.generate import GenerationConfigError, run_generation
from candidates.registry import CandidateSpec, RegistryError, registered_policy_specs, spec_from_dict
from db.models import AuditEvent, BestOfNSample, CandidateModel, Prompt, Response
from db.rules import prompt_conversation
from reward.scoring import load_reward_model
from tests.factories import add_prompts
from tests.tiny_models import untrained_reward_model
from therapref.cli import app

runner = CliRunner()
N = 3


def _minilm_head(folder, *, negate: bool = False):
    """A real (tiny, untrained-head) reward model on the embedded MiniLM base; ``negate`` flips its head,
    so that the copy scores every reply exactly minus the original (a "safety model" that calls the
    preferred reply the least safe)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    untrained_reward_model(folder)
    if negate:
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=1)
        with torch.no_grad():
            model.classifier.weight.neg_()
            model.classifier.bias.neg_()
        model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    return _minilm_head(tmp_path_factory.mktemp("rm") / "model")


@pytest.fixture(scope="module")
def negated_dir(tmp_path_factory):
    return _minilm_head(tmp_path_factory.mktemp("safety") / "model", negate=True)


def _spec(name: str, reward_dir, **fields) -> CandidateSpec:
    return CandidateSpec(name=name, provider="llamacpp", model_id="embedded", temperature=1.0, max_tokens=12,
                         seed=5, threads=1, best_of=N, reward_model=str(reward_dir), **fields)


def _stored(engine, name: str) -> list[tuple[Response, list[BestOfNSample]]]:
    with Session(engine) as session:
        rows = session.exec(select(Response).join(CandidateModel, CandidateModel.id == Response.candidate_model_id)
                            .where(CandidateModel.name == name).order_by(Response.prompt_id)).all()
        return [(r, list(session.exec(select(BestOfNSample).where(BestOfNSample.response_id == r.id)
                                      .order_by(BestOfNSample.sample_index)).all())) for r in rows]


def test_best_of_n_stores_the_reward_models_top_sample_and_every_sample(engine, reward_dir):
    with Session(engine, expire_on_commit=False) as session:
        add_prompts(session, 2)
        prompts = list(session.exec(select(Prompt).order_by(Prompt.id)).all())
    summary = run_generation(engine, [_spec("bon", reward_dir)], progress=False)
    assert (summary.done, summary.failed) == (2, 0)
    stored = _stored(engine, "bon")
    assert len(stored) == 2
    model = load_reward_model(reward_dir, device="cpu")
    for prompt, (response, samples) in zip(prompts, stored, strict=True):
        assert [s.sample_index for s in samples] == list(range(N))
        assert [s.seed for s in samples] == [sample_seed(5, i) for i in range(N)]
        assert len({s.text for s in samples}) > 1  # temperature 1: the samples differ
        # The stored scores are the reward model's, on the prompt's own conversation.
        rescored = model.score_batch([(prompt_conversation(prompt), s.text) for s in samples])
        assert [s.reward for s in samples] == pytest.approx(rescored, abs=1e-4)
        top = max(range(N), key=lambda i: samples[i].reward)
        assert [s.picked for s in samples] == [i == top for i in range(N)]
        assert response.text == samples[top].text.strip()
        assert response.meta["best_of"]["n"] == N and response.meta["best_of"]["picked"] == top
        assert response.meta["best_of"]["reward"] == pytest.approx(samples[top].reward)
        assert all(s.safety is None and not s.unsafe for s in samples)
    # A second run has nothing to do: the reply exists (and its samples are not duplicated).
    again = run_generation(engine, [_spec("bon", reward_dir)], progress=False)
    assert again.planned == 0
    with Session(engine) as session:
        assert session.exec(select(func.count(BestOfNSample.id))).one() == 2 * N


def test_a_sample_the_safety_model_calls_unsafe_is_never_picked(engine, reward_dir, negated_dir):
    with Session(engine, expire_on_commit=False) as session:
        add_prompts(session, 1)
    run_generation(engine, [_spec("plain-bon", reward_dir)], progress=False)
    (_, samples), = _stored(engine, "plain-bon")
    rewards = sorted(s.reward for s in samples)
    assert rewards[-1] > rewards[-2]
    # The negated head scores each sample -reward: a threshold between -top and -second makes exactly
    # the reward model's favourite unsafe. Same seeds, so the same samples are drawn again.
    threshold = -(rewards[-1] + rewards[-2]) / 2
    spec = _spec("safe-bon", reward_dir, safety_model=str(negated_dir), safety_threshold=threshold)
    run_generation(engine, [spec], progress=False)
    (response, guarded), = _stored(engine, "safe-bon")
    assert [s.text for s in guarded] == [s.text for s in samples]
    unsafe = [s for s in guarded if s.unsafe]
    assert len(unsafe) == 1 and unsafe[0].reward == pytest.approx(rewards[-1], abs=1e-4)
    picked = next(s for s in guarded if s.picked)
    assert not picked.unsafe and picked.reward == pytest.approx(rewards[-2], abs=1e-4)
    assert response.text == picked.text.strip()
    assert all(s.safety == pytest.approx(-s.reward, abs=1e-4) for s in guarded)


def test_registry_fields_are_checked():
    with pytest.raises(RegistryError, match="best_of must be at least 1, not 0"):
        spec_from_dict({"name": "m", "provider": "llamacpp", "best_of": 0})
    with pytest.raises(RegistryError, match="best_of > 1 needs reward_model"):
        spec_from_dict({"name": "m", "provider": "llamacpp", "best_of": 4})
    with pytest.raises(RegistryError, match="only apply with best_of > 1"):
        spec_from_dict({"name": "m", "provider": "llamacpp", "reward_model": "rm"})
    spec = spec_from_dict({"name": "m", "provider": "llamacpp", "best_of": 4, "reward_model": "rm"})
    assert spec.params()["best_of"] == 4 and spec.params()["reward_model"] == "rm"


def test_generation_refuses_a_reward_folder_that_is_not_a_reward_model(engine, tmp_path):
    with Session(engine, expire_on_commit=False) as session:
        add_prompts(session, 1)
    (tmp_path / "notes").mkdir()
    with pytest.raises(GenerationConfigError, match="reward_model .*notes: not a reward model folder"):
        run_generation(engine, [_spec("bad", tmp_path / "notes")], progress=False)
    with Session(engine) as session:
        assert session.exec(select(func.count(Response.id))).one() == 0


def _base_row(engine) -> None:
    with Session(engine) as session:
        session.add(CandidateModel(name="smollm2-persona", provider="llamacpp", model_id="embedded",
                                   params={"temperature": 0.9, "max_tokens": 10, "seed": 2, "threads": 1}))
        session.commit()


def test_candidates_add_best_of_registers_the_base_configuration(engine, sqlite_url, reward_dir, tmp_path,
                                                                monkeypatch):
    _base_row(engine)
    out = runner.invoke(app, ["candidates", "add", "persona-bo3", "--best-of", "3", "--of", "smollm2-persona",
                              "--reward-model", str(reward_dir), "--db", sqlite_url])
    assert out.exit_code == 0, out.output
    assert "best of 3 samples of 'smollm2-persona'" in out.output
    with Session(engine) as session:
        (spec,) = registered_policy_specs(session=session)
        audit = session.exec(select(AuditEvent).where(AuditEvent.action == "candidate.best_of_n")).one()
    assert (spec.name, spec.best_of, spec.temperature, spec.max_tokens, spec.seed) == ("persona-bo3", 3, 0.9, 10, 2)
    assert spec.reward_model == str(reward_dir.resolve())
    assert audit.details["of"] == "smollm2-persona"
    # `therapref generate` includes it (no registry file needed) and stores its samples.
    with Session(engine, expire_on_commit=False) as session:
        add_prompts(session, 1)
    monkeypatch.chdir(tmp_path)  # no candidates.toml here: the registered candidates alone
    generated = runner.invoke(app, ["generate", "--db", sqlite_url, "--no-progress"])
    assert generated.exit_code == 0, generated.output
    (response, samples), = _stored(engine, "persona-bo3")
    assert len(samples) == 3 and sum(s.picked for s in samples) == 1


@pytest.mark.parametrize("args, message", [
    (["--best-of", "0", "--of", "smollm2-persona", "--reward-model", "RM"], "--best-of must be at least 1, not 0"),
    (["--best-of", "2", "--of", "nobody", "--reward-model", "RM"], "--of: unknown candidate 'nobody'"),
    (["--best-of", "2", "--of", "smollm2-persona", "--reward-model", "NOTES"], "not a reward model folder"),
    (["--best-of", "2"], "needs --best-of N, --of BASE and --reward-model DIR"),
])
def test_candidates_add_best_of_refuses_bad_input_and_writes_nothing(engine, sqlite_url, reward_dir, tmp_path, args,
                                                                     message):
    _base_row(engine)
    (tmp_path / "notes").mkdir()
    paths = {"RM": str(reward_dir), "NOTES": str(tmp_path / "notes")}
    full = ["candidates", "add", "bo", *(paths.get(a, a) for a in args)]
    out = runner.invoke(app, [*full, "--db", sqlite_url])
    assert out.exit_code == 1
    assert message in out.output and len(out.output.strip().splitlines()) == 1
    with Session(engine) as session:
        assert session.exec(select(CandidateModel.name)).all() == ["smollm2-persona"]


def test_register_best_of_n_refuses_a_folder_that_is_not_a_reward_model(engine, tmp_path):
    _base_row(engine)
    with Session(engine) as session, pytest.raises(BestOfNError, match="not a reward model folder"):
        register_best_of_n("bo", of="smollm2-persona", best_of=2, reward_model=str(tmp_path), session=session)
