"""``therapref.config_cli``: one config dataclass gives both the TOML loader and the typer flags; flags
override the file; an unknown key is one line with the file, its line and the key. Checked on a small
dataclass through a real typer app, and on the real configs of ``train`` and ``finetune local``."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Optional

import pytest
import typer
from typer.testing import CliRunner

from db.errors import TheraPrefError
from therapref.config_cli import ConfigFlags, Flag, config_command, load_config

runner = CliRunner()


class SettingsError(TheraPrefError):
    pass


@dataclasses.dataclass
class Demo:
    """A TRL-style config: every field has help."""

    rate: float = dataclasses.field(default=0.1, metadata={"help": "Step size [per update]."})
    steps: int = dataclasses.field(default=3, metadata={"help": "How many steps.", "metavar": "N"})
    use_lora: bool = dataclasses.field(default=False, metadata={"help": "Train adapters."})
    names: tuple[str, ...] = dataclasses.field(default=(), metadata={"help": "Some names."})
    label: str | None = dataclasses.field(default=None, metadata={"help": "A label."})

    def __post_init__(self) -> None:
        self.names = tuple(self.names)  # a repeated flag gives a list
        if self.steps < 1:
            raise SettingsError(f"steps must be at least 1, not {self.steps}")


sys.modules[__name__].Demo = Demo  # the flags name their dataclass as "module:attribute"
FLAGS = ConfigFlags(f"{__name__}:Demo", ("rate", "steps", Flag("use_lora", "lora"), Flag("names", "name"), "label"),
                    panel="Demo settings")


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False)

    def run(ctx: typer.Context, config: Annotated[Optional[Path], typer.Option(help="TOML file.")] = None) -> None:
        """Print the settings."""
        try:
            built = load_config(Demo, config, table="demo", overrides=FLAGS.values(ctx), error=SettingsError)
        except SettingsError as exc:
            typer.echo(f"Error: {exc}")
            raise typer.Exit(1) from None
        typer.echo(repr(built))

    app.command(cls=config_command(FLAGS))(run)
    return app


def test_flags_come_from_the_fields_and_override_the_file(tmp_path):
    app = _app()
    shown = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    assert "Demo settings" in shown.output and "Step size [per update]." in shown.output  # not rich markup
    row = next(line for line in shown.output.splitlines() if "--steps" in line)
    assert " N " in row and "How many steps." in row
    assert "--lora" in shown.output and "--no-lora" in shown.output and "--name" in shown.output
    toml = tmp_path / "demo.toml"
    toml.write_text("[demo]\nrate = 0.5\nsteps = 7\n")
    from_file = runner.invoke(app, ["--config", str(toml)])
    assert "Demo(rate=0.5, steps=7, use_lora=False, names=(), label=None)" in from_file.output
    flagged = runner.invoke(app, ["--config", str(toml), "--steps", "2", "--lora", "--name", "a", "--name", "b"])
    assert "Demo(rate=0.5, steps=2, use_lora=True, names=('a', 'b'), label=None)" in flagged.output, flagged.output
    assert "Demo(rate=0.1, steps=3" in runner.invoke(app, []).output  # nothing given: the dataclass's defaults


@pytest.mark.parametrize("text, message", [
    ("[demo]\nrate = 0.5\n\nstpes = 2\n", "demo.toml:4: unknown setting: stpes (not a [demo] setting)"),
    ("[demo\n", "demo.toml: invalid TOML"),
    ("demo = 3\n", "demo.toml: [demo] must be a table of settings"),
    ("[demo]\nsteps = 0\n", "steps must be at least 1, not 0"),
    ("[demo]\nsteps = 'many'\n", "invalid settings: "),
])
def test_a_bad_file_is_one_line(tmp_path, text, message):
    toml = tmp_path / "demo.toml"
    toml.write_text(text)
    result = runner.invoke(_app(), ["--config", str(toml)])
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line and message in line, line


def test_the_real_configs_load_through_it(tmp_path):
    """``train`` and ``finetune local`` read their TOML with the same loader: file, line and key."""
    from policy.config import load_config as load_policy
    from policy.errors import PolicyError
    from reward.config import load_config as load_reward
    from reward.errors import RewardError

    toml = tmp_path / "t.toml"
    toml.write_text("[train]\nseed = 1\nepochs = 3\n")
    with pytest.raises(RewardError, match=r"t\.toml:3: unknown setting: epochs \(not a \[train\] setting\)"):
        load_reward(toml, output_dir=str(tmp_path))
    assert load_reward(toml.write_text("[train]\nseed = 1\n") and toml, output_dir=str(tmp_path), seed=5).seed == 5
    toml.write_text("[finetune]\nbeta = 0.2\n")
    with pytest.raises(PolicyError, match=r"t\.toml:2: unknown setting for sft: beta"):
        load_policy("sft", toml, output_dir=str(tmp_path))
    assert load_policy("dpo", toml, output_dir=str(tmp_path)).beta == 0.2
