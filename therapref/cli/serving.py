"""``therapref serve NAME``: an OpenAI-compatible endpoint for one candidate (library: ``candidates.serve``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from therapref.cli.common import DbOption, errors, fail, open_engine, settings_for, sigterm_as_interrupt


def serve(
    name: Annotated[str, typer.Argument(help="The candidate to serve (registry file or database; "
                                              "`therapref candidates list`).")],
    port: Annotated[int, typer.Option(help="Port to listen on (0: a free one, printed).")] = 8000,
    host: Annotated[str, typer.Option(
        help="Address to bind (default 127.0.0.1; 0.0.0.0 exposes the model to the network: set --api-key-env).")]
        = "127.0.0.1",
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="Candidate registry TOML (default: candidates_file setting, candidates.toml, when it "
                         "exists); it wins a name the database also has.")] = None,
    api_key_env: Annotated[Optional[str], typer.Option(
        help="NAME of an environment variable holding the key clients must send (Authorization: Bearer); "
             "default: no key.")] = None,
    db: DbOption = None,
) -> None:
    """Serve a candidate as an OpenAI-compatible Chat Completions endpoint (/v1/chat/completions,
    /v1/models) through the same providers, system prompt and sampling as `therapref generate`; a
    best-of-n candidate answers with its reward model's best of N samples. Runs until Ctrl-C."""
    from candidates.generate import preflight
    from candidates.registry import load_registry, secret_names
    from candidates.serve import ServeError, find_candidate, run
    from db.engine import session_scope

    path = config or Path(settings_for(db).candidates_file)
    with errors():
        if not 0 <= port <= 65535:
            raise fail(f"--port must be between 0 and 65535, not {port}")
        file_specs = load_registry(path) if config is not None or path.is_file() else []
        engine = open_engine(db)
        with session_scope(engine) as session:
            spec = find_candidate(name, file_specs=file_specs, session=session,
                                  file_label=str(path) if file_specs else None)
        engine.dispose()  # the server never touches the database
        # The only place keys are read: the candidate's own variable (an openai endpoint) and the server's.
        secrets = {key: os.environ[key] for key in secret_names([spec]) if key in os.environ}
        api_key = None
        if api_key_env is not None:
            api_key = os.environ.get(api_key_env, "").strip()
            if not api_key:
                raise ServeError(f"--api-key-env: environment variable {api_key_env} is not set")
        preflight([spec], secrets=secrets)  # the checks `generate` makes: model files, keys, endpoint

        def ready(url: str) -> None:
            key = f"os.environ[{json.dumps(api_key_env)}]" if api_key_env else '"unused"'
            typer.echo(f"Serving {name!r} at {url}: OpenAI(base_url={json.dumps(url)}, api_key={key})"
                       f".chat.completions.create(model={json.dumps(name)}, messages=[{{\"role\": \"user\", "
                       f"\"content\": \"I want to cry\"}}]). Press Ctrl-C to stop.")

        try:
            with sigterm_as_interrupt():
                run(spec, host=host, port=port, secrets=secrets, api_key=api_key, on_ready=ready,
                    note=lambda line: typer.echo(line, err=True))
        except KeyboardInterrupt:
            typer.echo("Stopped.")
            return


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the root app."""
    app.command("serve")(serve)
