"""``therapref demo``: build the demo project and start the labeling app."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from therapref.cli.common import DbOption, errors, open_engine, settings_for


def demo(
    db: DbOption = None,
    no_app: Annotated[bool, typer.Option("--no-app", help="Build the project only; do not start the app.")] = False,
    no_generate: Annotated[bool, typer.Option("--no-generate", help="Skip generating replies.")] = False,
    port: Annotated[Optional[int], typer.Option(help="Port of the labeling app (default 8501).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest reply the demo candidates write, in tokens.")] = 96,
) -> None:
    """Build the demo project (prompts, two embedded candidates, their replies, pairs, accounts);
    then start the labeling app on 127.0.0.1 unless --no-app."""
    from candidates.demo import build_demo

    settings = settings_for(db, app_port=port)
    engine = open_engine(db)
    typer.echo(f"Building the demo project in {engine.url.render_as_string(hide_password=True)} …")
    with errors():
        result = build_demo(engine, generate=not no_generate, max_tokens=max_tokens)
    for line in result.lines():
        typer.echo(line)
    typer.echo("Demo accounts (passwords are new on every `therapref demo`):")
    for username, password in result.credentials.items():
        typer.echo(f"  {username:<16} {password}")
    if no_app:
        typer.echo("Start the labeling app with: therapref app")
        return
    from therapref.cli.app_server import serve

    serve(settings)


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the root app."""
    app.command("demo")(demo)
