"""`therapref demo`: the README's main job, on the embedded model, end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sqlmodel import Session, select
from typer.testing import CliRunner

from candidates.demo_prompts import DEMO_PROMPTS
from db.auth import authenticate
from db.engine import make_engine
from db.models import Comparison
from db.status import table_counts
from tests.app_helpers import app_serving
from tests.pg import free_port
from therapref.cli import app

runner = CliRunner()
THERAPREF = str(Path(sys.executable).with_name("therapref"))


def _credentials(output: str) -> dict[str, str]:
    return dict(re.findall(r"^\s+(demo-\w+)\s+(\S+)$", output, flags=re.M))


def test_demo_builds_project_with_replies_pairs_and_accounts(tmp_path):
    db = str(tmp_path / "demo.db")
    result = runner.invoke(app, ["demo", "--no-app", "--max-tokens", "4", "--db", db])
    assert result.exit_code == 0, result.output
    credentials = _credentials(result.output)
    assert set(credentials) == {"demo-admin", "demo-clinician"}
    engine = make_engine(db)
    with Session(engine) as session:
        counts = table_counts(session=session)
        assert counts["prompt"] == len(DEMO_PROMPTS)
        assert counts["response"] == 2 * len(DEMO_PROMPTS)  # two embedded candidates
        assert counts["comparison"] == len(DEMO_PROMPTS)
        assert counts["guidelineversion"] == 1
        overlap = session.exec(select(Comparison).where(Comparison.judgments_required == 2)).all()
        assert len(overlap) == len(DEMO_PROMPTS) // 4
        admin = authenticate("demo-admin", credentials["demo-admin"], session=session)
        assert admin is not None
        assert admin.role == "admin"
        assert authenticate("demo-clinician", credentials["demo-clinician"], session=session) is not None
        session.commit()
    # A second run tops up nothing and rotates the passwords.
    again = runner.invoke(app, ["demo", "--no-app", "--max-tokens", "4", "--db", db])
    assert again.exit_code == 0, again.output
    assert "0 added" in again.output
    with Session(engine) as session:
        assert table_counts(session=session)["response"] == 2 * len(DEMO_PROMPTS)
        assert authenticate("demo-admin", credentials["demo-admin"], session=session) is None
        assert authenticate("demo-admin", _credentials(again.output)["demo-admin"], session=session) is not None


def test_demo_ends_with_the_app_running(tmp_path):
    port = free_port()
    env = {**os.environ, "THERAPREF_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}"}
    process = subprocess.Popen([THERAPREF, "demo", "--no-generate", "--port", str(port)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "Labeling app running at" in line:
                break
        output = "".join(lines)
        assert f"http://127.0.0.1:{port}" in output, output
        assert set(_credentials(output)) == {"demo-admin", "demo-clinician"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=10) as response:
            assert response.status == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    # SIGTERM stops the app it started too (an orphaned server kept the port and a core busy);
    # stop_app escalates to SIGKILL after 5 s, so the port closes well inside this deadline.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and app_serving(port):
        time.sleep(0.2)
    assert not app_serving(port), "the app outlived `therapref demo`"
