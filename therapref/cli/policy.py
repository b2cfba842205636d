"""``therapref finetune local FILE``: train the chatbot itself on an export (library: ``policy``)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from typer.core import TyperCommand

from therapref.cli.common import DbOption, errors, open_engine

#: Options that set a training setting → that setting (a field of ``policy.config``'s classes).
CONFIG_FLAGS = {
    "base_model": "base_model", "lora": "use_lora", "epochs": "num_train_epochs", "seed": "seed",
    "max_length": "max_length", "max_steps": "max_steps", "batch_size": "per_device_train_batch_size",
    "learning_rate": "learning_rate", "lora_r": "lora_r", "beta": "beta", "bf16": "bf16",
    "num_threads": "num_threads",
}


class Method(StrEnum):
    sft = "sft"
    dpo = "dpo"
    kto = "kto"


class FinetuneCommand(TyperCommand):
    """Options for training settings show the help written once on the setting's field
    (``policy.config``), read only when help is shown (it imports TRL)."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from rich.markup import escape

        from policy.config import field_help

        for param in self.params:
            if param.name in CONFIG_FLAGS and not getattr(param, "help", None):
                param.help = escape(field_help(CONFIG_FLAGS[param.name], "dpo"))
        super().format_help(ctx, formatter)


def finetune_local(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A file written by `therapref export sft|dpo|kto`.", show_default=False)],
    method: Annotated[Method, typer.Option("--method", help="sft | dpo | kto (must match the file).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model folder to write (checkpoints go inside).")],
    base_model: Annotated[Optional[str], typer.Option()] = None,
    lora: Annotated[Optional[bool], typer.Option("--lora/--no-lora")] = None,
    epochs: Annotated[Optional[float], typer.Option()] = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="TOML file of training settings (a \\[finetune] table or top level); flags override it.")
    ] = None,
    register: Annotated[Optional[str], typer.Option(
        "--register", metavar="NAME", help="Register the trained policy as this candidate model.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --output.")] = False,
    seed: Annotated[Optional[int], typer.Option()] = None,
    max_length: Annotated[Optional[int], typer.Option()] = None,
    max_steps: Annotated[Optional[int], typer.Option()] = None,
    batch_size: Annotated[Optional[int], typer.Option()] = None,
    learning_rate: Annotated[Optional[float], typer.Option()] = None,
    lora_r: Annotated[Optional[int], typer.Option()] = None,
    beta: Annotated[Optional[float], typer.Option(help="DPO/KTO: deviation from the reference (TRL's beta).")] = None,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16")] = None,
    num_threads: Annotated[Optional[int], typer.Option()] = None,
    db: DbOption = None,
) -> None:
    """Fine-tune a chatbot policy locally with TRL (SFT, DPO or KTO) on an exported file."""
    from policy.config import load_config
    from policy.run import finetune_and_record

    settings = {field: ctx.params[flag] for flag, field in CONFIG_FLAGS.items()}
    settings.update(output_dir=str(output), resume_from_checkpoint=True if resume else None)
    with errors():
        cfg = load_config(method.value, config, **settings)
        engine = open_engine(db)
        result = finetune_and_record(file, config=cfg, engine=engine, register=register)
    if result.run_id is None:  # another process of `accelerate launch`: the main one reports
        return
    m = result.metrics
    loss = (f"loss {m['loss_start']:.4f} → {m['loss_end']:.4f}" if m.get("loss_start") is not None
            else "no loss logged")
    registered = f"; registered as candidate {result.candidate_name!r}" if result.candidate_name else ""
    typer.echo(f"Trained {result.method} policy {result.path}: {m['n_train']} {m['unit']}, {m['global_step']} steps, "
               f"{loss}, {m['seconds']:.1f} s (policy run #{result.run_id}){registered}.")


def register(app: typer.Typer) -> None:
    """Add ``finetune local`` to the ``finetune`` group (defined with the exports' commands)."""
    from therapref.cli.exporting import finetune_app

    finetune_app.command("local", cls=FinetuneCommand)(finetune_local)
