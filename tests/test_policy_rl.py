"""``therapref finetune local --method rs|grpo|rloo``: the policy trained on its own replies scored by a
reward model, on a tiny random Llama (SmolLM2's tokenizer) and a tiny reward model (the MiniLM base with a
random head). Behaviour, not quality: the reward moves, the model reloads, registers and generates, the
safety constraint holds, A/B prompts are never trained on, bad input is one line and writes nothing.

The reward model prefers short replies (its score adds −log(1 + words)) and the safety model calls every
reply of 4 words or fewer unsafe (its score is log(1 + words), the threshold log 5.5): the replies the
preference model likes best are exactly the unsafe ones, so the constraint is seen to win."""

from __future__ import annotations

import json
import math

import pytest
from sqlalchemy import func
from sqlmodel import Session, select
from typer.testing import CliRunner

from db.engine import make_engine
from db.migrate import upgrade
from db.models import AbTest, AuditEvent, CandidateModel, PolicyRun, Response
from policy.config import load_config
from policy.errors import PolicyError
from tests.factories import add_prompts
from tests.tiny_models import untrained_reward_model
from therapref.cli import app

runner = CliRunner()
TRAIN = ["I cannot sleep before my exams.", "My boss yells at me every day.", "I feel lonely since I moved.",
         "My mother criticises everything I do."]
HELDOUT = ["I dread Sunday evenings.", "My sister stopped talking to me."]
THRESHOLD = math.log1p(4.5)  # safety = log(1 + words): 4 words or fewer are unsafe


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    """Prefers short replies: reward = network score − log(1 + words)."""
    return untrained_reward_model(tmp_path_factory.mktemp("rm") / "model",
                                  meta={"network_scale": 1.0, "length_weight": -1.0})


@pytest.fixture(scope="module")
def safety_dir(tmp_path_factory):
    """Calls short replies unsafe: safety = log(1 + words)."""
    return untrained_reward_model(tmp_path_factory.mktemp("safety") / "model",
                                  meta={"network_scale": 0.0, "length_weight": 1.0})


def _project(tmp_path):
    """Four training prompts and two prompts held out by an A/B test."""
    url = f"sqlite:///{tmp_path / 'rl.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as session:
        train = [p.id for p in add_prompts(session, 4, texts=TRAIN, system=None, source="train")]
        heldout = [p.id for p in add_prompts(session, 2, texts=HELDOUT, system=None, source="heldout")]
        a, b = CandidateModel(name="ab-new", provider="llamacpp"), CandidateModel(name="ab-base", provider="llamacpp")
        session.add_all([a, b])
        session.flush()
        session.add(AbTest(new_candidate_id=a.id, base_candidate_id=b.id, prompt_ids=heldout))
        session.commit()
    return engine, url, train, heldout


def _counts(engine) -> dict[str, int]:
    with Session(engine) as session:
        return {t.__name__: session.exec(select(func.count()).select_from(t)).one()
                for t in (PolicyRun, CandidateModel, AuditEvent, Response)}


COMMON = ["--max-completion-length", "8", "--num-threads", "1", "--seed", "3"]
METHOD_ARGS = {
    "rs": ["--best-of", "3", "--rounds", "2", "--max-steps", "2", "--batch-size", "4", "--learning-rate", "1e-3",
           "--max-length", "128"],
    "grpo": ["--max-steps", "2", "--learning-rate", "1e-2"],
    "rloo": ["--max-steps", "2", "--learning-rate", "1e-2"],
}


# --- the rollout engine ----------------------------------------------------------------------------------


def test_lora_adapters_in_llama_cpp_give_the_merged_models_greedy_tokens(tiny_llama, tmp_path):
    """The adapter file llama.cpp applies to the base GGUF (q/k rows permuted, PEFT's scaling) draws what the
    merged transformers model draws: greedy tokens equal one by one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from policy.gguf import convert_to_gguf
    from policy.rollouts import LlamaCppRollouts

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)  # a fresh adapter is zero: make it move the output
    gguf = convert_to_gguf(tiny_llama, tmp_path / "base.gguf").path
    rollouts = LlamaCppRollouts(gguf, tmp_path / "work", lora=True, threads=1, n_ctx=256, seed=0)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"] for text in TRAIN[:2]]
    try:
        rollouts.sync(model, step=0)
        drawn = rollouts.generate(prompts, step=0, max_tokens=10, eos_ids=[tokenizer.eos_token_id], temperature=0.0)
    finally:
        rollouts.close()
    merged = model.merge_and_unload().eval()
    with torch.no_grad():
        expected = [merged.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)[0, len(ids):].tolist()
                    for ids in prompts]
    assert drawn == expected
    assert rollouts.stats.syncs == 1 and rollouts.stats.tokens == 20


# --- the reward and its safety constraint ------------------------------------------------------------------


def test_an_unsafe_reply_gets_the_lowest_reward_whatever_the_preference_model_says(reward_dir, safety_dir):
    from policy.rl import RewardFunction, Scorers
    from reward.scoring import load_reward_model

    scorers = Scorers(load_reward_model(reward_dir, device="cpu"), load_reward_model(safety_dir, device="cpu"),
                      THRESHOLD)
    context = json.dumps([{"role": "user", "content": TRAIN[0]}])
    replies = ["Okay.", "That sounds really hard, tell me more.", "I hear how tired you feel tonight.", "Sleep."]
    reward = RewardFunction(scorers)
    logged = {}
    rewards = reward(prompts=[[]] * 4, completions=[[{"role": "assistant", "content": r}] for r in replies],
                     context=[context] * 4, log_metric=logged.__setitem__)
    raw, unsafe = reward.history[-1]["raw"], reward.history[-1]["unsafe"]
    assert unsafe == [True, False, False, True]
    assert max(raw) in (raw[0], raw[3]), "the preference model likes the short (unsafe) replies best"
    assert max(rewards[i] for i in (0, 3)) < min(rewards[i] for i in (1, 2)), rewards
    assert rewards[1:3] == raw[1:3], "safe replies keep the preference model's reward"
    assert logged == {"safety/unsafe_fraction": 0.5}
    without = RewardFunction(Scorers(scorers.reward))([[]], [[{"role": "assistant", "content": "Okay."}]],
                                                      context=[context])
    assert without == pytest.approx(raw[:1], abs=1e-5)


# --- each method end to end ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rs", "grpo", "rloo"])
def test_each_method_trains_records_registers_and_generates(method, tiny_llama, reward_dir, safety_dir, tmp_path,
                                                             monkeypatch):
    """`finetune local --method M --reward-model … --safety-model … --prompts source:train --register NAME`: the
    reward is logged per step (per round for rs) and moves, the PolicyRun lists the trained prompts (the A/B
    test's are left out), the folder reloads and generates, and the registered candidate generates."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from policy.abtest import seen_prompts

    monkeypatch.chdir(tmp_path)  # no candidates.toml: the registered policy alone is generated for
    engine, url, train, heldout = _project(tmp_path)
    out = tmp_path / "policy"
    result = runner.invoke(app, ["finetune", "local", "--method", method, "--output", str(out), "--base-model",
                                 str(tiny_llama), "--reward-model", str(reward_dir), "--safety-model", str(safety_dir),
                                 "--safety-threshold", str(THRESHOLD), "--prompts", "source:train,source:heldout",
                                 *COMMON, *METHOD_ARGS[method], "--register", f"tiny-{method}", "--db", url])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith(f"Trained {method} policy {out}: ") and "mean reward " in line, line
    assert f"registered as candidate 'tiny-{method}'" in line
    meta = json.loads((out / "therapref_policy.json").read_text())
    metrics = meta["metrics"]
    rewards = metrics["rewards"]
    assert len(rewards) == 2 and rewards[0] != rewards[1], rewards  # two steps (two rounds for rs)
    assert metrics["scored_replies"] > 0 and 0 < metrics["unsafe_replies"] < metrics["scored_replies"]
    assert meta["provenance"]["prompt_ids"] == train
    assert meta["provenance"]["excluded_abtest_prompts"] == len(heldout)
    card = (out / "README.md").read_text()
    assert str(reward_dir) in card and str(safety_dir) in card and "A/B-test prompts" in card
    assert not list(tmp_path.glob(".*.partial")) and not (out / "rollouts").exists()
    if method == "rs":
        for number in (1, 2):
            records = [json.loads(x) for x in (out / f"round-{number}" / "samples.jsonl").read_text().splitlines()]
            assert len(records) == len(train)
            for record in records:
                picked = [s for s in record["samples"] if s["picked"]]
                assert len(record["samples"]) == 3 and len(picked) == 1
                if record["kept"]:
                    assert not picked[0]["unsafe"], "an unsafe reply is never trained on"
                else:
                    assert all(s["unsafe"] for s in record["samples"])
    else:
        assert metrics["rollout_engine"] == "llamacpp" and metrics["rollouts"]["tokens"] > 0
        assert metrics["steps_per_hour"] > 0 and meta["config"]["beta"] > 0 and meta["config"]["use_lora"]
    with Session(engine) as session:
        run = session.exec(select(PolicyRun)).one()
        assert (run.method, run.path, run.n_train) == (method, str(out.resolve()), metrics["n_train"])
        assert run.provenance["prompt_ids"] == train
        assert run.provenance["reward_model"] == str(reward_dir.resolve())
        assert run.provenance["safety_model"] == str(safety_dir.resolve())
        candidate = session.get(CandidateModel, run.candidate_model_id)
        assert (candidate.name, candidate.provider) == (f"tiny-{method}", "llamacpp")
        assert seen_prompts(candidate, session=session).prompt_ids == set(train), "A/B tests stay on unseen prompts"
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "policy.train")).one()
        assert event.details["method"] == method and event.details["prompts"] == len(train)
        candidate.params = {**candidate.params, "max_tokens": 4}
        session.add(candidate)
        session.commit()
        candidate_id = candidate.id
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": TRAIN[0]}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 4
    generated = runner.invoke(app, ["generate", "--db", url, "--no-progress"])
    assert generated.exit_code == 0, generated.output
    with Session(engine) as session:
        replies = session.exec(select(Response).where(Response.candidate_model_id == candidate_id)).all()
    assert len(replies) == 6 and {r.meta["provider"] for r in replies} == {"llamacpp"}


def test_rl_keeps_the_safety_constraint_in_every_training_batch(tiny_llama, reward_dir, safety_dir, tmp_path):
    """Inside TRL's loop, every batch's unsafe rollouts get a lower reward than its safe ones."""
    from policy.prompts import TrainingPrompt, TrainingPrompts
    from policy.rl import train_rl

    prompts = TrainingPrompts([TrainingPrompt(i, [{"role": "user", "content": t}], [{"role": "user", "content": t}])
                               for i, t in enumerate(TRAIN, start=1)], spec="test")
    config = load_config("grpo", output_dir=str(tmp_path / "p"), base_model=str(tiny_llama),
                         reward_model=str(reward_dir), safety_model=str(safety_dir), safety_threshold=THRESHOLD,
                         max_steps=2, max_completion_length=8, num_threads=1, save_strategy="no", seed=5)
    runs = []
    train_rl(config, prompts, on_run=runs.append)
    history = runs[0].reward_function.history
    assert len(history) == 2 and sum(sum(batch["unsafe"]) for batch in history) > 0
    for batch in history:
        unsafe = [r for r, bad in zip(batch["rewards"], batch["unsafe"], strict=True) if bad]
        safe = [r for r, bad in zip(batch["rewards"], batch["unsafe"], strict=True) if not bad]
        if unsafe and safe:
            assert max(unsafe) < min(safe), batch


def test_rollout_engines_full_fine_tuning_and_transformers(tiny_llama, reward_dir, tmp_path):
    """Without LoRA, `auto` keeps TRL's generate and `llamacpp` re-exports the whole model each step; both train."""
    from policy.prompts import TrainingPrompt, TrainingPrompts
    from policy.rl import train_rl

    def prompts():
        return TrainingPrompts([TrainingPrompt(i, [{"role": "user", "content": t}], [{"role": "user", "content": t}])
                                for i, t in enumerate(TRAIN[:2], start=1)], spec="test")

    for engine, expected in (("auto", "transformers"), ("llamacpp", "llamacpp")):
        config = load_config("rloo", output_dir=str(tmp_path / engine), base_model=str(tiny_llama),
                             reward_model=str(reward_dir), use_lora=False, rollout_engine=engine, max_steps=2,
                             max_completion_length=6, num_threads=1, save_strategy="no", learning_rate=1e-3)
        metrics = train_rl(config, prompts()).meta["metrics"]
        assert metrics["rollout_engine"] == expected and metrics["global_step"] == 2
        if expected == "llamacpp":
            assert metrics["rollouts"]["syncs"] == 2, "the whole model re-exported after each step"
        assert not (tmp_path / engine / "rollouts").exists()


def test_grpo_resume_continues_from_the_checkpoint(tiny_llama, reward_dir, tmp_path):
    engine, url, train, _ = _project(tmp_path)
    out = tmp_path / "policy"
    toml = tmp_path / "ft.toml"
    toml.write_text('[finetune]\nsave_strategy = "steps"\nsave_steps = 1\n')
    common = ["finetune", "local", "--method", "grpo", "--output", str(out), "--base-model", str(tiny_llama),
              "--reward-model", str(reward_dir), "--prompts", "source:train", "--config", str(toml), *COMMON,
              "--db", url]
    first = runner.invoke(app, [*common, "--max-steps", "1"])
    assert first.exit_code == 0, first.output
    assert (out / "checkpoint-1").is_dir()
    first_rewards = json.loads((out / "therapref_policy.json").read_text())["metrics"]["rewards"]
    second = runner.invoke(app, [*common, "--max-steps", "2", "--resume"])
    assert second.exit_code == 0, second.output
    assert "2 steps" in second.stdout
    metrics = json.loads((out / "therapref_policy.json").read_text())["metrics"]
    assert metrics["global_step"] == 2 and metrics["resumed"] is True
    assert metrics["rewards"][:1] == first_rewards and len(metrics["rewards"]) == 2, "history goes on"
    with Session(engine) as session:
        assert len(session.exec(select(PolicyRun)).all()) == 2


# --- bad input ------------------------------------------------------------------------------------------------


def _bad_cases(tmp_path, tiny_llama, reward_dir):
    from tests.tiny_models import tiny_reward_base

    bert = tiny_reward_base(tmp_path / "tiny-bert")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    broken = tmp_path / "prompts.jsonl"
    broken.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n{not json\n")
    ab_only = tmp_path / "ab.jsonl"
    ab_only.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": t}]}) + "\n" for t in HELDOUT))
    rm = ["--reward-model", str(reward_dir)]
    return [
        (["--method", "grpo", "--reward-model", str(tiny_llama)], "not a reward model (LlamaForCausalLM)"),
        (["--method", "rs", "--reward-model", str(bert)], "not a reward model (BertModel)"),
        (["--method", "rloo", *rm, "--safety-model", str(tmp_path / "nope")], "--safety-model"),
        (["--method", "grpo", *rm, "--base-model", str(bert)], "not a causal language model (BertModel)"),
        (["--method", "rs", *rm, "--prompts", "source:heldout"], "--prompts leave no training prompt outside the A/B"),
        (["--method", "grpo", *rm, str(ab_only)], "--prompts leave no training prompt outside the A/B"),
        (["--method", "rloo", *rm, "--prompts", str(broken)], "prompts.jsonl line 2: not valid JSON"),
        (["--method", "rs", *rm, "--best-of", "0"], "best_of must be at least 1, not 0"),
        (["--method", "rs", *rm, "--rounds", "0"], "rounds must be at least 1"),
        (["--method", "grpo", "--prompts", "source:train"], "--method grpo needs a reward model (--reward-model DIR)"),
        (["--method", "grpo", *rm, "--num-generations", "3"], "must be a multiple of num_generations (3)"),
        (["--method", "grpo", *rm, "--best-of", "4"], "unknown setting(s) for grpo: best_of"),
        (["--method", "grpo", *rm, str(ab_only), "--prompts", "1"], "as FILE or as --prompts, not both"),
        (["--method", "rloo", *rm, "--output", str(occupied)], "is not empty"),
        (["--method", "rs", *rm, "--resume"], "--resume does not apply to rs"),
        (["--method", "grpo", *rm, "--resume"], "nothing to resume"),
        (["--method", "sft"], "--method sft needs FILE"),
        (["--method", "rs", *rm, "--register", " "], "candidate name is empty"),
    ]


def test_bad_input_is_one_line_and_writes_nothing(tiny_llama, reward_dir, tmp_path):
    engine, url, _, _ = _project(tmp_path)
    before = _counts(engine)
    for args, expected in _bad_cases(tmp_path, tiny_llama, reward_dir):
        out = tmp_path / "out"
        if "--output" not in args:
            args = [*args, "--output", str(out)]
        if "--base-model" not in args:
            args = [*args, "--base-model", str(tiny_llama)]
        result = runner.invoke(app, ["finetune", "local", *args, "--max-steps", "1", "--db", url])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1, (args, result.output)
        assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.output)
        assert expected in lines[0], (args, lines[0])
        assert not out.exists() and not list(tmp_path.glob(".*.partial")), args
    assert (tmp_path / "occupied" / "keep.txt").read_text() == "mine"
    assert _counts(engine) == before


# --- settings and prompts ---------------------------------------------------------------------------------------


def test_rl_defaults_suit_a_cpu_and_bad_settings_are_one_line(tmp_path):
    grpo = load_config("grpo", output_dir=str(tmp_path / "o"), reward_model="rm")
    assert (grpo.use_lora, grpo.beta, grpo.num_generations, grpo.per_device_train_batch_size) == (True, 0.04, 4, 8)
    assert grpo.max_completion_length == 96 and not grpo.activation_checkpointing and grpo.rollout_engine == "auto"
    assert grpo.lora_dropout == 0.0, "dropout masks cost more than the adapters on a CPU"
    rloo = load_config("rloo", output_dir=str(tmp_path / "o"), reward_model="rm")
    assert rloo.beta > 0 and rloo.use_lora and rloo.num_train_epochs == 1
    rs = load_config("rs", output_dir=str(tmp_path / "o"), reward_model="rm")
    assert (rs.best_of, rs.rounds, rs.temperature, rs.safety_threshold) == (8, 1, 1.0, 0.0)
    with pytest.raises(PolicyError, match="rollout_engine must be one of auto, llamacpp, transformers"):
        load_config("grpo", output_dir="o", reward_model="rm", rollout_engine="vllm")
    with pytest.raises(PolicyError, match="num_generations must be at least 2"):
        load_config("rloo", output_dir="o", reward_model="rm", num_generations=1, per_device_train_batch_size=2)
    with pytest.raises(PolicyError, match="unknown setting.*for sft: reward_model"):
        load_config("sft", output_dir="o", reward_model="rm")


def test_training_prompts_from_a_spec_or_a_file_leave_ab_prompts_out(tmp_path):
    from policy.prompts import select_training_prompts, training_prompt_ids

    engine, _, train, heldout = _project(tmp_path)
    rows = [{"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": TRAIN[1]},
                          {"role": "assistant", "content": "ok"}]},
            {"prompt": [{"role": "user", "content": HELDOUT[0]}]},
            {"prompt": "A prompt that is not stored."},
            {"prompt": [{"role": "user", "content": TRAIN[1]}]}]  # the same conversation again: once
    file = tmp_path / "prompts.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with Session(engine) as session:
        assert training_prompt_ids(None, session=session) == train
        assert training_prompt_ids("2", session=session, seed=1) == training_prompt_ids("2", session=session, seed=1)
        assert len(training_prompt_ids("2", session=session)) == 2
        chosen = select_training_prompts(f"id:{heldout[0]},source:train", session=session)
        assert (chosen.prompt_ids, chosen.excluded_abtest) == (train, 1)
        from_file = select_training_prompts(str(file), session=session, system_prompt=None)
        assert from_file.prompt_ids == [train[1]] and from_file.excluded_abtest == 1 and len(from_file.prompts) == 2
        first = from_file.prompts[0]
        assert first.messages[0] == {"role": "system", "content": "Be kind."} and first.context == first.messages
        persona = from_file.prompts[1].messages[0]
        assert persona["role"] == "system" and "therapy assistant" in persona["content"], "the persona by default"
        assert from_file.prompts[1].context == [{"role": "user", "content": "A prompt that is not stored."}]
        with pytest.raises(PolicyError, match="unknown prompt id"):
            select_training_prompts("id:999", session=session)
