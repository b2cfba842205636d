"""Commands of this area are registered here."""

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
