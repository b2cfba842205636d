"""The README's command table and the commands' help cover every registered command (in the style of
sqlite-utils' test_docs.py): a new command without a README row or without help fails here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from therapref.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"
ROW = re.compile(r"^\| `therapref ([^`]+)`", re.MULTILINE)


def registered_commands() -> Iterator[tuple[str, ...]]:
    """Every leaf command as its words, e.g. ('annotators', 'add')."""
    def walk(group, prefix: tuple[str, ...]) -> Iterator[tuple[str, ...]]:  # noqa: ANN001
        for name, command in sorted(group.commands.items()):
            if hasattr(command, "commands"):
                yield from walk(command, (*prefix, name))
            else:
                yield (*prefix, name)

    yield from walk(get_command(app), ())


def documented_commands(readme: str) -> set[tuple[str, ...]]:
    """Commands named by the README table's rows: the leading lowercase words of each row, with
    alternatives such as ``export sft\\|dpo`` expanded.

    >>> sorted(documented_commands("| `therapref export sft\\\\|dpo --output PATH` | x |\\n| `therapref init` | y |"))
    [('export',), ('export', 'dpo'), ('export', 'sft'), ('init',)]
    """
    found: set[tuple[str, ...]] = set()
    for usage in ROW.findall(readme):
        words: list[list[str]] = []
        for token in usage.split():
            options = token.replace("\\|", "|").split("|")
            if not all(re.fullmatch(r"[a-z][a-z0-9-]*", option) for option in options):
                break
            words.append(options)
        prefixes: list[tuple[str, ...]] = [()]
        for options in words:
            prefixes = [(*prefix, option) for prefix in prefixes for option in options]
            found.update(prefixes)  # `export sft|dpo` documents `export` (a command with a choice argument) too
    return found


COMMANDS = list(registered_commands())


def test_commands_are_found():
    assert ("init",) in COMMANDS
    assert ("annotators", "add") in COMMANDS
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_command_is_in_the_readme_table(command):
    documented = documented_commands(README.read_text(encoding="utf-8"))
    assert command in documented, f"`therapref {' '.join(command)}` has no row in the README's command table"


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_command_has_help(command):
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    summary = get_command(app)
    for word in command:
        summary = summary.commands[word]
    assert (summary.help or "").strip(), f"`therapref {' '.join(command)}` has no help text"
