"""``therapref app``: the Streamlit labeling app on 127.0.0.1 (unless ``--host``)."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from therapref.cli.common import DbOption, errors, open_engine, settings_for, sigterm_as_interrupt
from therapref.settings import Settings


def run_app(
    db: DbOption = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default 8501; env THERAPREF_APP_PORT).")] = None,
    host: Annotated[Optional[str], typer.Option(
        help="Address to bind (default 127.0.0.1; 0.0.0.0 exposes the app to the network).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the app to come up.")] = 60,
) -> None:
    """Start the labeling app and keep it running until Ctrl-C."""
    serve(settings_for(db, app_port=port, app_host=host), timeout=timeout)


def serve(settings: Settings, *, timeout: float = 60) -> None:
    """Start the app for ``settings`` and block until it exits or Ctrl-C (also used by ``demo``)."""
    from db.assignment import ensure_guidelines
    from db.auth import list_annotators
    from db.engine import session_scope
    from labeling_app.launch import app_url, start_app, stop_app, wait_until_ready

    if settings.auth is not None:  # a missing client secret stops here, before anything is written
        with errors():
            settings.auth.client_secret(os.environ)
    engine = open_engine(settings.database_url)
    with session_scope(engine) as session:
        ensure_guidelines(session=session)
        has_accounts = bool(list_annotators(session=session))
    engine.dispose()
    url = app_url(settings.app_host, settings.app_port)
    # The handler is in place before the app starts: a SIGTERM that arrived between start and
    # wait (under load, a test terminating as soon as the banner shows) used to kill this process
    # and orphan the app. Every exit path below stops the app (SIGTERM, then SIGKILL).
    with errors(), sigterm_as_interrupt():
        process = start_app(settings.database_url, host=settings.app_host, port=settings.app_port,
                            sso=settings.auth is not None)
        try:
            wait_until_ready(url, timeout, process=process)
            if not has_accounts:
                typer.echo("No accounts yet: add one with `therapref annotators add NAME --role admin`.")
            typer.echo(f"Labeling app running at {url} (database "
                       f"{engine.url.render_as_string(hide_password=True)}). Press Ctrl-C to stop.")
            code = process.wait()
        except KeyboardInterrupt:
            stop_app(process)
            typer.echo("Stopped.")
            return
        finally:
            stop_app(process)  # a no-op once stopped; covers errors and a failed start
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``app`` to the root app."""
    app.command("app")(run_app)
