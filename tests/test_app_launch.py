"""``therapref app`` and ``labeling_app.launch``: a real ``streamlit run`` on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from labeling_app.launch import app_url, start_app, stop_app, wait_until_ready
from tests.app_helpers import free_port, make_database

ROOT = Path(__file__).resolve().parent.parent


def test_database_url_travels_in_the_environment_not_argv(tmp_path):
    url = f"sqlite:///{tmp_path / 'secret-name.db'}"
    make_database(url, n_prompts=1, n_clinicians=1)[0].dispose()
    port = free_port()
    process = start_app(url, port=port, log_path=tmp_path / "log")
    try:
        wait_until_ready(app_url(port=port), 90, process=process)
        argv = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode()
        environ = Path(f"/proc/{process.pid}/environ").read_bytes().decode()
        assert "secret-name" not in argv and f"THERAPREF_DATABASE_URL={url}" in environ
        assert "--server.address=127.0.0.1" in argv
        with urllib.request.urlopen(app_url(port=port) + "/_stcore/health", timeout=10) as answer:
            assert answer.read() == b"ok"
    finally:
        stop_app(process)
    assert process.returncode is not None


def test_therapref_app_command_starts_and_stops(tmp_path):
    db = tmp_path / "therapref.db"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "THERAPREF_DATABASE_URL"}
    process = subprocess.Popen([sys.executable, "-m", "therapref.cli", "app", "--db", str(db), "--port", str(port)],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "Labeling app running at" in line or not line:
                break
        assert f"Labeling app running at http://127.0.0.1:{port}" in "".join(lines), lines
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=10) as answer:
            assert answer.read() == b"ok"
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=60)[0]
    assert "No accounts yet" in "".join(lines) + output and "Stopped." in output
    assert process.returncode == 0
