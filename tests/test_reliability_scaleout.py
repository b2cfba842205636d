"""Scale-out paths: two Streamlit app processes against ONE PostgreSQL database, a real Chromium on
each; and the reward trainer under `accelerate launch` with two CPU processes (the multi-GPU
command, on CPU). See docs/operations.md."""

from __future__ import annotations

import json
import subprocess

import pytest
from playwright.sync_api import sync_playwright
from sqlalchemy import text
from sqlmodel import Session, select

from candidates.fake_server import free_port
from db.engine import make_engine
from db.migrate import upgrade
from db.models import RewardModelRun
from labeling_app.launch import app_url, start_app, stop_app, wait_until_ready
from tests.app_helpers import CHROMIUM, CHROMIUM_ARGS, login
from tests.factories import PASSWORD, build_project
from tests.reliability_helpers import (
    ROOT,
    assert_sound,
    cli_env,
    count,
    wait_until,
)
from tests.tiny_models import tiny_reward_base

pytestmark = pytest.mark.slow


def _judged_by(engine, annotator_id: int) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM judgment WHERE annotator_id = :a"),
                            {"a": annotator_id}).scalar()


@pytest.mark.browser
@pytest.mark.postgres
def test_two_app_processes_share_one_postgres(postgres_url, tmp_path):
    engine = make_engine(postgres_url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        project = build_project(session, n_prompts=5, n_clinicians=2, judgments_required=2)
    ports = [free_port(), free_port()]
    apps = [start_app(postgres_url, port=port, log_path=tmp_path / f"app{i}.log") for i, port in enumerate(ports)]
    try:
        for app, port in zip(apps, ports, strict=True):
            wait_until_ready(app_url(port=port), 120, process=app)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                # One browser context per app process (as a load balancer with sticky sessions would route).
                pages = [browser.new_context().new_page() for _ in apps]
                clinicians = project.clinicians
                for page, port, clinician in zip(pages, ports, clinicians, strict=True):
                    login(page, app_url(port=port), clinician.username, PASSWORD)
                # Interleave: each clinician judges on their own app process, alternating.
                for round_ in range(1, 4):
                    for page, clinician in zip(pages, clinicians, strict=True):
                        page.get_by_role("button", name="Tie (3)").click()
                        wait_until(lambda c=clinician, n=round_: _judged_by(engine, c.id) >= n, timeout=60,
                                   what=f"judgment {round_} of {clinician.username}")
                        page.get_by_text("Saved.").first.wait_for(timeout=30_000)
            finally:
                browser.close()
    finally:
        for app in apps:
            stop_app(app)
    logs = "".join((tmp_path / f"app{i}.log").read_text() for i in range(2))
    assert "Traceback" not in logs, logs[-3000:]
    assert PASSWORD not in logs, "a password reached the app log"
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT comparison_id, annotator_id FROM judgment")).fetchall()
    assert {a for _, a in rows} == {c.id for c in project.clinicians}, "rows from both app processes"
    assert len(rows) == 6
    assert len(set(rows)) == 6
    assert count(engine, "reservation") <= 2  # at most the pair now on each screen
    assert_sound(engine)


TRAIN_TOML = """[train]
num_train_epochs = 1
save_strategy = "no"
per_device_train_batch_size = 2
logging_steps = 1
max_length = 64
num_threads = 1
"""


@pytest.mark.parametrize("bf16", ["false", None], ids=["fp32", "bf16-detected"])
def test_accelerate_launch_two_cpu_processes(tmp_path, bf16):
    """`accelerate launch --multi_gpu --num_processes 2` runs torchrun with two processes (gloo on
    CPU): one epoch over 10 pairs at 2 pairs per process is 3 optimizer steps (5 on one process);
    only the main process writes the model folder and the one RewardModelRun row.

    fp32 is what a CPU without AVX512-BF16/AMX gets: there both processes used to train alone (the
    CPU was only pinned for bf16). The suite runs with an empty HOME (Makefile), so no accelerate
    config in a home folder can make this pass."""
    url = f"sqlite:///{tmp_path / 'acc.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        build_project(session, n_prompts=6, n_clinicians=2, with_judgments=True)  # 12 pairs, 2 held out
    base = tiny_reward_base(tmp_path / "tiny-bert")
    config = tmp_path / "train.toml"
    config.write_text(TRAIN_TOML + (f"bf16 = {bf16}\n" if bf16 is not None else ""))
    output = tmp_path / "rm"
    command = [str(ROOT / ".venv" / "bin" / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--num_cpu_threads_per_process", "1", "--main_process_port", str(free_port()),
               "-m", "therapref.cli", "train", "--output", str(output), "--db", url, "--config", str(config),
               "--base-model", str(base)]
    result = subprocess.run(command, cwd=tmp_path, env=cli_env(CUDA_VISIBLE_DEVICES=""), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count("Model written to") == 1, "only the main process reports"
    meta = json.loads((output / "therapref_reward.json").read_text())
    assert meta["training"]["global_step"] == 3, "two processes share each epoch (5 steps would mean one)"
    assert meta["training"]["packed_batches"], "padding-free batches work under DDP (hooks see the kwargs)"
    assert (output / "config.json").is_file()
    assert any(output.glob("*.safetensors"))
    with Session(engine) as session:
        runs = session.exec(select(RewardModelRun)).all()
    assert len(runs) == 1
    assert runs[0].n_train == 10
    assert_sound(engine)
