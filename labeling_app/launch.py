"""Start the labeling app as a child process (``therapref app``, ``therapref demo``, browser tests).

The database URL reaches the child through the environment (``THERAPREF_DATABASE_URL``), never
through argv, so that a PostgreSQL password does not show up in ``ps``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from db.errors import TheraPrefError

APP_SCRIPT = Path(__file__).resolve().parent / "app.py"
#: The same app served through ``st.App`` with the OIDC provider in memory (``[auth]`` configured).
SSO_SCRIPT = APP_SCRIPT.with_name("sso_app.py")
ROOT = APP_SCRIPT.parent.parent
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class AppStartError(TheraPrefError):
    """The app did not come up (port taken, bad database URL, crash)."""


def streamlit_command(*, host: str = "127.0.0.1", port: int = 8501, headless: bool = True,
                      sso: bool = False) -> list[str]:
    """The ``streamlit run`` command line (no secrets in it).

    >>> cmd = streamlit_command(port=9000)
    >>> cmd[1:4], "--server.address=127.0.0.1" in cmd, "--server.port=9000" in cmd
    (['-m', 'streamlit', 'run'], True, True)
    >>> streamlit_command(sso=True)[4].endswith("sso_app.py")
    True
    """
    return [
        sys.executable, "-m", "streamlit", "run", str(SSO_SCRIPT if sso else APP_SCRIPT),
        f"--server.address={host}", f"--server.port={port}", f"--server.headless={str(headless).lower()}",
        "--server.fileWatcherType=none", "--server.runOnSave=false", "--browser.gatherUsageStats=false",
        "--global.developmentMode=false", "--client.toolbarMode=minimal", "--server.enableStaticServing=false",
        # Streamlit runs a full gc.collect(2) after every run by default: with torch and SQLAlchemy in
        # the process that is ~40 ms of the ~55 ms between a judgment and the next pair, holding the
        # GIL while the pair waits to be sent. Python's own generational GC still runs as usual.
        "--runner.postScriptGC=false",
    ]


def start_app(database_url: str, *, host: str = "127.0.0.1", port: int = 8501, headless: bool = True,
              env: dict[str, str] | None = None, log_path: str | Path | None = None,
              sso: bool = False) -> subprocess.Popen:
    """Start ``streamlit run labeling_app/app.py`` bound to ``host:port`` on ``database_url``
    (``sso``: ``labeling_app/sso_app.py``, for an ``[auth]`` in ``therapref.toml``; the client secret
    stays in the environment the child inherits).

    Returns the process at once; call ``wait_until_ready(app_url(host, port), timeout)`` next.
    Output goes to ``log_path`` when given (else it is inherited).
    """
    child_env = dict(os.environ if env is None else env)
    child_env["THERAPREF_DATABASE_URL"] = absolute_sqlite(database_url)
    # The app's own settings then know where it listens (the SSO redirect address is built from them).
    child_env["THERAPREF_APP_HOST"], child_env["THERAPREF_APP_PORT"] = host, str(port)
    child_env.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), child_env.get("PYTHONPATH", "")]))
    output = open(log_path, "ab") if log_path else None  # noqa: SIM115 - handed to the child
    try:
        # The child keeps the caller's working directory (therapref.toml, relative paths).
        return subprocess.Popen(streamlit_command(host=host, port=port, headless=headless, sso=sso), env=child_env,
                                stdout=output, stderr=subprocess.STDOUT if output else None,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent(os.getpid()))
    finally:
        if output is not None:
            output.close()


def absolute_sqlite(database_url: str | Path) -> str:
    """A SQLite file path made absolute (the app must open the file the caller meant); other URLs as given.

    >>> absolute_sqlite("sqlite:////tmp/x.db"), absolute_sqlite("postgresql+psycopg://u@h/db")
    ('sqlite:////tmp/x.db', 'postgresql+psycopg://u@h/db')
    >>> absolute_sqlite("data/x.db") == "sqlite:///" + str(Path("data/x.db").resolve())
    True
    """
    from sqlalchemy.engine import make_url

    from db.engine import normalize_url

    url = normalize_url(database_url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return str(database_url) if "://" in str(database_url) else url
    return f"sqlite:///{Path(parsed.database).expanduser().resolve()}"


def app_url(host: str = "127.0.0.1", port: int = 8501) -> str:
    """
    >>> app_url(port=8600)
    'http://127.0.0.1:8600'
    """
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://{shown}:{port}"


def wait_until_ready(url: str, timeout: float = 60, *, process: subprocess.Popen | None = None) -> None:
    """Poll the app's health endpoint until it answers ``ok``; raise ``AppStartError`` otherwise."""
    deadline = time.monotonic() + timeout
    health = url.rstrip("/") + "/_stcore/health"
    last_error = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AppStartError(f"the app exited with status {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(health, timeout=2) as answer:  # noqa: S310 - our own local URL
                if answer.status == 200 and answer.read().strip() == b"ok":
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            last_error = str(exc)
        time.sleep(0.2)
    raise AppStartError(f"the app at {url} was not ready after {timeout:.0f} s ({last_error})")


def stop_app(process: subprocess.Popen, timeout: float = 5) -> None:
    """Stop the app process: SIGTERM, then SIGKILL after ``timeout`` seconds (a Streamlit server
    busy with a session can take longer than that to honour SIGTERM, or never do)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel SIGKILL the app when the process that started it dies,
    however it dies (SIGKILL included, when no clean-up code can run). Linux only; elsewhere None."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the line above took effect
            os._exit(1)

    return arm
