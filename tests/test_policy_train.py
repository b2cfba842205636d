"""``therapref finetune local``: SFT, DPO and KTO with TRL on a tiny random Llama (SmolLM2's tokenizer and
chat template), checkpoints and --resume, the model folder and its card, the PolicyRun row, bad input,
and two CPU processes under `accelerate launch` training one model. Tiny model, few steps: behaviour,
not quality."""

from __future__ import annotations

import json
import subprocess

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from db.engine import make_engine
from db.migrate import upgrade
from db.models import AuditEvent, PolicyRun
from exports import formats
from policy.config import load_config
from policy.data import read_export
from policy.errors import PolicyError
from policy.train import train_policy
from tests.factories import build_scenario
from therapref.cli import app

runner = CliRunner()
TOPICS = ["sleep", "work", "my mother", "exams", "my partner", "money", "friends", "moving", "grief", "panic",
          "loneliness", "anger"]
SYSTEM = "You are a warm therapy assistant."


def prompt(i: int) -> list[dict[str, str]]:
    text = f"I am struggling with {TOPICS[i % len(TOPICS)]}."
    return formats.checked_conversation([{"role": "user", "content": text}], SYSTEM)


def good(i: int) -> str:
    return f"That sounds hard. What about {TOPICS[i % len(TOPICS)]} weighs on you most?"


def write_rows(path, rows) -> None:
    path.write_text("".join(formats.jsonl_line(row) for row in rows), encoding="utf-8")


def sft_file(path, n: int = 12):
    write_rows(path, [formats.sft_row(prompt(i), good(i)) for i in range(n)])
    return path


def dpo_file(path, n: int = 12):
    write_rows(path, [formats.dpo_row(prompt(i), good(i), "Whatever.", 1.0) for i in range(n)])
    return path


def kto_file(path, n: int = 12):
    write_rows(path, [formats.kto_row(prompt(i // 2), good(i // 2) if i % 2 == 0 else "Whatever.", i % 2 == 0)
                      for i in range(n)])
    return path


FILES = {"sft": sft_file, "dpo": dpo_file, "kto": kto_file}
#: Learning rates at which the tiny random model's loss falls within a few steps.
RATES = {"sft": 3e-3, "dpo": 1e-3, "kto": 1e-3}


def settings(base, out, method, **extra):
    values = dict(output_dir=str(out), base_model=str(base), per_device_train_batch_size=4, max_length=128,
                  learning_rate=RATES[method], logging_steps=1, save_strategy="no", num_threads=1, seed=3)
    values.update(extra)
    return load_config(method, **values)


@pytest.mark.parametrize("method", ["sft", "dpo", "kto"])
def test_each_method_lowers_loss_and_saves_a_model_that_generates(method, tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = read_export(FILES[method](tmp_path / f"{method}.jsonl"), method)
    out = tmp_path / "policy"
    result = train_policy(settings(tiny_llama, out, method, max_steps=6), data)
    assert result.global_step == 6
    assert len(result.losses) == 6
    assert result.losses[-1] < result.losses[0], result.losses
    assert not (tmp_path / ".policy.partial").exists()
    meta = json.loads((out / "therapref_policy.json").read_text())
    assert meta["method"] == method
    assert meta["metrics"]["global_step"] == 6
    assert meta["provenance"]["sha256"] == data.sha256
    card = (out / "README.md").read_text()
    assert f"TRL's {method.upper()} trainer" in card
    assert data.sha256 in card
    assert "no export manifest" in card
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer.apply_chat_template(prompt(0), add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 5


def test_padding_free_batches_give_the_padded_results(tiny_llama):
    """The backbone on real tokens only (rows laid end to end) gives the padded path's logits and
    gradients at every real position, through the registered attention."""
    import torch
    from transformers import AutoModelForCausalLM

    from policy.train import PACKED_ATTENTION, padding_free

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    ids = torch.randint(0, 5000, (3, 11))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[0, 6:] = 0
    mask[2, 9:] = 0
    keep = mask.bool()

    def run():
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits[keep].float().logsumexp(-1).sum().backward()
        return logits[keep].detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    padded = run()
    with padding_free(model, True) as on:
        assert on and model.config._attn_implementation == PACKED_ATTENTION
        packed = run()
    assert model.config._attn_implementation != PACKED_ATTENTION, "restored after training"
    torch.testing.assert_close(packed[0], padded[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[1], padded[1], atol=1e-5, rtol=1e-4)


def test_lora_is_merged_into_a_full_model(tiny_llama, tmp_path):
    from safetensors.torch import load_file

    path = dpo_file(tmp_path / "dpo.jsonl")
    long_prompt = [{"role": "user", "content": "I cannot sleep. " * 80}]
    path.write_text(path.read_text() + formats.jsonl_line(formats.dpo_row(long_prompt, "Oh no.", "Ok.")))
    data = read_export(path, "dpo")
    out = tmp_path / "lora"
    result = train_policy(settings(tiny_llama, out, "dpo", max_steps=4, use_lora=True, lora_r=4,
                                   learning_rate=5e-3), data)
    assert result.losses[-1] < result.losses[0], result.losses
    meta = json.loads((out / "therapref_policy.json").read_text())
    assert (meta["metrics"]["n_rows"], meta["metrics"]["n_dropped"]) == (13, 1), "TRL's drop is reported"
    assert "1 of 13 rows dropped by TRL" in (out / "README.md").read_text()
    assert not (out / "adapter_config.json").exists()
    trained, base = load_file(out / "model.safetensors"), load_file(tiny_llama / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert trained[key].dtype == base[key].dtype
    assert not (trained[key] == base[key]).all(), "the adapters' update is in the saved weights"


def test_resume_continues_from_the_checkpoint(tiny_llama, tmp_path):
    path = sft_file(tmp_path / "sft.jsonl")
    out = tmp_path / "policy"
    common = ["finetune", "local", path, "--method", "sft", "--output", out, "--base-model", tiny_llama,
              "--batch-size", "4", "--max-length", "128", "--num-threads", "1", "--db", tmp_path / "t.db"]
    toml = tmp_path / "ft.toml"
    toml.write_text('[finetune]\nsave_strategy = "steps"\nsave_steps = 2\nlogging_steps = 1\nlearning_rate = 0.003\n')
    first = runner.invoke(app, [str(a) for a in common + ["--max-steps", "2", "--config", toml]])
    assert first.exit_code == 0, first.output
    assert (out / "checkpoint-2").is_dir()
    first_losses = json.loads((out / "therapref_policy.json").read_text())["metrics"]["losses"]
    assert len(first_losses) == 2
    second = runner.invoke(app, [str(a) for a in common + ["--max-steps", "4", "--config", toml, "--resume"]])
    assert second.exit_code == 0, second.output
    assert "4 steps" in second.output
    meta = json.loads((out / "therapref_policy.json").read_text())
    assert meta["metrics"]["global_step"] == 4
    assert meta["metrics"]["resumed"] is True
    # the history of steps 1-2 comes from the checkpoint; steps 3-4 are new
    assert meta["metrics"]["losses"][:2] == first_losses
    assert len(meta["metrics"]["losses"]) == 4
    assert (out / "checkpoint-4").is_dir()
    with Session(make_engine(f"sqlite:///{tmp_path / 't.db'}")) as session:
        assert len(session.exec(select(PolicyRun)).all()) == 2


def test_cli_records_the_policy_run_with_the_export_manifest(tiny_llama, engine, sqlite_url, tmp_path):
    with Session(engine, expire_on_commit=False) as session:
        build_scenario(session)
    export = tmp_path / "dpo.jsonl"
    assert runner.invoke(app, ["export", "dpo", "--db", sqlite_url, "--output", str(export)]).exit_code == 0
    manifest = json.loads((tmp_path / "dpo.jsonl.manifest.json").read_text())
    out = tmp_path / "policy"
    result = runner.invoke(app, ["finetune", "local", str(export), "--method", "dpo", "--output", str(out),
                                 "--base-model", str(tiny_llama), "--max-steps", "2", "--batch-size", "2",
                                 "--num-threads", "1", "--db", sqlite_url])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    assert f"Trained dpo policy {out}: 2 pairs, 2 steps, loss " in line and "(policy run #1)" in line
    with Session(engine) as session:
        run = session.exec(select(PolicyRun)).one()
        assert run.method == "dpo"
        assert run.path == str(out.resolve())
        assert run.provenance["export_run_id"] == manifest["export_run_id"]
        assert run.provenance["database_fingerprint"] == manifest["database_fingerprint"]
        assert run.data_fingerprint == manifest["sha256"]
        assert run.n_train == manifest["rows"]
        assert run.metrics["global_step"] == 2
        assert run.config["base_model"] == str(tiny_llama)
        assert run.candidate_model_id is None
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "policy.train")).one()
        assert event.details["run_id"] == run.id
    card = (out / "README.md").read_text()
    assert manifest["database_fingerprint"] in card
    assert f"export run #{manifest['export_run_id']}" in card
    assert "matches" in card


def bad_cases(tmp_path, tiny_llama):
    from tests.tiny_models import tiny_reward_base

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    broken = dpo_file(tmp_path / "broken.jsonl", 3)
    broken.write_text(broken.read_text() + "{not json\n")
    bert = tiny_reward_base(tmp_path / "tiny-bert")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    dpo = dpo_file(tmp_path / "dpo.jsonl")
    return [
        (["--method", "sft", dpo], "line 1: a dpo row (prompt/chosen/rejected), but --method sft needs an sft export"),
        (["--method", "dpo", empty], "empty file"),
        (["--method", "dpo", broken], "broken.jsonl line 4: not valid JSON"),
        (["--method", "dpo", dpo, "--base-model", bert], "not a causal language model (BertModel)"),
        (["--method", "dpo", dpo, "--output", occupied], "is not empty"),
        (["--method", "dpo", dpo, "--resume"], "nothing to resume"),
    ]


def test_bad_input_is_one_line_and_writes_nothing(tiny_llama, tmp_path, sqlite_url, engine):
    for args, expected in bad_cases(tmp_path, tiny_llama):
        out = tmp_path / "out"
        if "--output" not in args:
            args = [*args, "--output", out]
        if "--base-model" not in args:
            args = [*args, "--base-model", tiny_llama]
        result = runner.invoke(app, ["finetune", "local", *map(str, args), "--max-steps", "1", "--db", sqlite_url])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1, (args, result.output)
        assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.output)
        assert expected in lines[0], (args, lines[0])
        assert not out.exists()
        assert not list(tmp_path.glob(".*.partial"))
    assert (tmp_path / "occupied" / "keep.txt").read_text() == "mine"
    with Session(engine) as session:
        assert session.exec(select(PolicyRun)).all() == []


def test_a_failure_during_training_leaves_nothing(tiny_llama, tmp_path):
    from transformers import TrainerCallback

    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise RuntimeError("boom")

    data = read_export(dpo_file(tmp_path / "dpo.jsonl"), "dpo")
    with pytest.raises(RuntimeError, match="boom"):
        train_policy(settings(tiny_llama, tmp_path / "p", "dpo", max_steps=3), data, callbacks=[Boom()])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpo.jsonl"]


def test_config_toml_flags_and_wrong_settings(tmp_path):
    toml = tmp_path / "ft.toml"
    toml.write_text("[finetune]\nbeta = 0.3\nlearning_rate = 1e-4\nuse_lora = true\n")
    config = load_config("dpo", toml, output_dir=str(tmp_path / "o"), learning_rate=2e-4, use_lora=None)
    assert (config.beta, config.learning_rate, config.use_lora) == (0.3, 2e-4, True)
    assert config.precompute_ref_log_probs and not config.gradient_checkpointing and not config.activation_checkpointing
    assert config.use_cpu, "without it accelerate launch on a CPU trains each process alone"
    with pytest.raises(PolicyError, match="unknown setting.*for sft: beta"):
        load_config("sft", toml, output_dir=str(tmp_path / "o"))
    with pytest.raises(PolicyError, match="an output folder is required"):
        load_config("kto")
    with pytest.raises(PolicyError, match="lora_r must be at least 1"):
        load_config("dpo", output_dir="x", lora_r=0)


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_train_one_model(tiny_llama, tmp_path):
    """Two processes (gloo on CPU) share each epoch: 12 rows at 2 per process and step are 3 steps (6 on
    one process); only the main process writes the folder, the row and the line."""
    from candidates.fake_server import free_port
    from tests.reliability_helpers import ROOT, cli_env

    url = f"sqlite:///{tmp_path / 'acc.db'}"
    upgrade(make_engine(url))
    path = sft_file(tmp_path / "sft.jsonl")
    out = tmp_path / "policy"
    command = [str(ROOT / ".venv" / "bin" / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--num_cpu_threads_per_process", "1", "--main_process_port", str(free_port()),
               "-m", "therapref.cli", "finetune", "local", str(path), "--method", "sft", "--output", str(out),
               "--base-model", str(tiny_llama), "--epochs", "1", "--batch-size", "2", "--max-length", "128",
               "--no-bf16", "--db", url]
    # PYTHONPATH: the checkout's packages, whatever the editable install lists
    result = subprocess.run(command, cwd=tmp_path, env=cli_env(CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT)),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count("Trained sft policy") == 1, "only the main process reports"
    meta = json.loads((out / "therapref_policy.json").read_text())
    assert meta["metrics"]["world_size"] == 2
    assert meta["metrics"]["global_step"] == 3, "two processes share each epoch (6 steps would mean one)"
    assert (out / "model.safetensors").is_file()
    with Session(make_engine(url)) as session:
        runs = session.exec(select(PolicyRun)).all()
    assert len(runs) == 1 and runs[0].n_train == 12


@pytest.mark.parametrize("method", ["sft", "dpo", "kto"])
def test_register_makes_each_method_a_candidate_that_generates(method, tiny_llama, tmp_path, monkeypatch):
    """`finetune local … --register NAME`: the PolicyRun points at a new llama.cpp candidate (a GGUF of the
    trained weights) and `therapref generate` stores its replies."""
    from db.crud import get_or_create_prompt
    from db.models import CandidateModel, Response

    monkeypatch.chdir(tmp_path)  # no candidates.toml: the registered policy alone is generated for
    url = f"sqlite:///{tmp_path / 'reg.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as session:
        get_or_create_prompt([{"role": "user", "content": "I cannot sleep before exams."}], session=session)
        session.commit()
    out = tmp_path / "policy"
    result = runner.invoke(app, ["finetune", "local", str(FILES[method](tmp_path / f"{method}.jsonl")),
                                 "--method", method, "--output", str(out), "--base-model", str(tiny_llama),
                                 "--max-steps", "1", "--batch-size", "4", "--num-threads", "1",
                                 "--register", f"tiny-{method}", "--db", url])
    assert result.exit_code == 0, result.output
    with Session(engine) as session:
        run = session.exec(select(PolicyRun)).one()
        candidate_id = run.candidate_model_id
        candidate = session.get(CandidateModel, candidate_id)
        assert (candidate.name, candidate.provider) == (f"tiny-{method}", "llamacpp")
        assert candidate.model_id.startswith(str(out.resolve())) and candidate.model_id.endswith(".gguf")
        candidate.params = {**candidate.params, "max_tokens": 4}
        session.add(candidate)
        session.commit()
    generated = runner.invoke(app, ["generate", "--db", url, "--no-progress"])
    assert generated.exit_code == 0, generated.output
    with Session(engine) as session:
        replies = session.exec(select(Response).where(Response.candidate_model_id == candidate_id)).all()
    assert len(replies) == 1 and replies[0].meta["provider"] == "llamacpp"
