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
from tests.app_helpers import app_serving, free_port
from tests.factories import make_database
from tests.reliability_helpers import interruptible

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
        assert "secret-name" not in argv
        assert f"THERAPREF_DATABASE_URL={url}" in environ
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
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=interruptible)
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
    assert "No accounts yet" in "".join(lines) + output
    assert "Stopped." in output
    assert process.returncode == 0


def _app_pid_serving(port: int, parent: int, deadline: float) -> int | None:
    """The pid of the app (a child of ``parent``) once its health endpoint answers."""
    while time.monotonic() < deadline:
        children = Path(f"/proc/{parent}/task/{parent}/children")
        pids = [int(p) for p in children.read_text().split()] if children.exists() else []
        if pids and app_serving(port):
            return pids[0]
        time.sleep(0.2)
    return None


def _start_app_command(folder: Path, port: int) -> subprocess.Popen:
    """``therapref app`` on a new database in ``folder``, output discarded."""
    env = {k: v for k, v in os.environ.items() if k != "THERAPREF_DATABASE_URL"}
    return subprocess.Popen([sys.executable, "-m", "therapref.cli", "app", "--db", str(folder / "t.db"),
                             "--port", str(port)], cwd=folder, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _wait_gone(pid: int, port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() and not app_serving(port):
            return True
        time.sleep(0.2)
    return False


def test_app_dies_with_therapref_app_even_on_sigkill(tmp_path):
    """SIGKILL leaves no clean-up code to run: the kernel's parent-death signal ends the app."""
    port = free_port()
    process = _start_app_command(tmp_path, port)
    try:
        app_pid = _app_pid_serving(port, process.pid, time.monotonic() + 120)
        assert app_pid is not None, "the app did not come up"
    finally:
        process.kill()
        process.wait(timeout=30)
    assert _wait_gone(app_pid, port, 20), "the app outlived a killed `therapref app`"


def test_sigterm_during_start_up_stops_the_app(tmp_path):
    """SIGTERM before the app is ready (the old gap between start and the signal handler)."""
    port = free_port()
    process = _start_app_command(tmp_path, port)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    deadline = time.monotonic() + 120
    app_pid = None
    while time.monotonic() < deadline and app_pid is None:  # the app process exists, not yet serving
        pids = children.read_text().split() if children.exists() else []
        app_pid = int(pids[0]) if pids else None
        time.sleep(0.01)
    assert app_pid is not None
    process.terminate()
    process.wait(timeout=30)
    assert _wait_gone(app_pid, port, 20), "the app outlived a terminated `therapref app`"


def test_stop_app_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path):
    """A server that ignores SIGTERM (seen in the field) is killed after the grace period."""
    process = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                "signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    started = time.monotonic()
    stop_app(process, timeout=1)
    assert process.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 10
