"""``therapref finetune local [FILE]``: train the chatbot itself on an export (sft, dpo, kto), or on its
own replies scored by a reward model (rs, grpo, rloo) (library: ``policy``)."""

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
    "num_threads": "num_threads", "reward_model": "reward_model", "safety_model": "safety_model",
    "safety_threshold": "safety_threshold", "prompts": "prompts", "best_of": "best_of", "rounds": "rounds",
    "num_generations": "num_generations", "max_completion_length": "max_completion_length",
    "system_prompt": "system_prompt",
}
#: The methods that sample their own replies (policy.config.ONLINE_METHODS; the CLI reads no TRL at import).
ONLINE = ("rs", "grpo", "rloo")


class Method(StrEnum):
    sft = "sft"
    dpo = "dpo"
    kto = "kto"
    rs = "rs"
    grpo = "grpo"
    rloo = "rloo"


class FinetuneCommand(TyperCommand):
    """Options for training settings show the help written once on the setting's field
    (``policy.config``), read only when help is shown (it imports TRL)."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from rich.markup import escape

        from policy.config import field_help

        for param in self.params:
            if param.name in CONFIG_FLAGS and not getattr(param, "help", None):
                param.help = escape(field_help(CONFIG_FLAGS[param.name], None))
        super().format_help(ctx, formatter)


def finetune_local(
    ctx: typer.Context,
    file: Annotated[Optional[Path], typer.Argument(
        help="sft/dpo/kto: a file written by `therapref export sft|dpo|kto`. rs/grpo/rloo sample their own replies: "
             "no file (or a JSONL file of prompts, as --prompts FILE).", show_default=False)] = None,
    method: Annotated[Optional[Method], typer.Option("--method", help=(
        "sft | dpo | kto (must match the file) | rs (rejection sampling: the reward model's best of --best-of "
        "samples, SFT) | grpo | rloo (TRL's RL trainers against --reward-model)."), show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Model folder to write (checkpoints go "
                                                                             "inside).", show_default=False)] = None,
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
    beta: Annotated[Optional[float], typer.Option(
        help="DPO/KTO: deviation from the reference; GRPO/RLOO: the KL coefficient to the base (TRL's beta).")] = None,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16")] = None,
    num_threads: Annotated[Optional[int], typer.Option()] = None,
    reward_model: Annotated[Optional[Path], typer.Option(metavar="DIR")] = None,
    safety_model: Annotated[Optional[Path], typer.Option(metavar="DIR")] = None,
    safety_threshold: Annotated[Optional[float], typer.Option()] = None,
    prompts: Annotated[Optional[str], typer.Option(metavar="SPEC|FILE")] = None,
    best_of: Annotated[Optional[int], typer.Option(metavar="N")] = None,
    rounds: Annotated[Optional[int], typer.Option(metavar="R")] = None,
    num_generations: Annotated[Optional[int], typer.Option()] = None,
    max_completion_length: Annotated[Optional[int], typer.Option()] = None,
    system_prompt: Annotated[Optional[str], typer.Option()] = None,
    db: DbOption = None,
) -> None:
    """Fine-tune a chatbot policy locally with TRL: SFT, DPO or KTO on an exported file, or rejection sampling,
    GRPO or RLOO on its own replies to the database's prompts, scored by a reward model."""
    from policy.config import load_config
    from policy.errors import PolicyError

    settings = {field: ctx.params[flag] for flag, field in CONFIG_FLAGS.items()}
    for name in ("reward_model", "safety_model"):
        settings[name] = str(settings[name]) if settings[name] is not None else None
    settings.update(output_dir=str(output) if output is not None else None,
                    resume_from_checkpoint=True if resume else None)
    with errors():
        if method is None:
            raise PolicyError(f"--method is required ({', '.join(m.value for m in Method)})")
        online = method.value in ONLINE
        if online and file is not None:
            if prompts is not None:
                raise PolicyError(f"--method {method.value}: give the prompts as FILE or as --prompts, not both")
            settings["prompts"] = str(file)  # a JSONL file of prompts
        elif not online and file is None:
            raise PolicyError(f"--method {method.value} needs FILE (a file `therapref export {method.value}` wrote)")
        cfg = load_config(method.value, config, **settings)
        engine = open_engine(db)
        if online:
            from policy.run import finetune_online_and_record

            result = finetune_online_and_record(cfg, engine=engine, register=register,
                                                note=lambda line: typer.echo(line, err=True))
        else:
            from policy.run import finetune_and_record

            result = finetune_and_record(file, config=cfg, engine=engine, register=register)
    if result.run_id is None:  # another process of `accelerate launch`: the main one reports
        return
    m = result.metrics
    loss = (f"loss {m['loss_start']:.4f} → {m['loss_end']:.4f}" if m.get("loss_start") is not None
            else "no loss logged")
    if m.get("reward_start") is not None:
        loss = f"mean reward {m['reward_start']:.4f} → {m['reward_end']:.4f}, {loss}"
    registered = f"; registered as candidate {result.candidate_name!r}" if result.candidate_name else ""
    typer.echo(f"Trained {result.method} policy {result.path}: {m['n_train']} {m['unit']}, {m['global_step']} steps, "
               f"{loss}, {m['seconds']:.1f} s (policy run #{result.run_id}){registered}.")


def register(app: typer.Typer) -> None:
    """Add ``finetune local`` to the ``finetune`` group (defined with the exports' commands)."""
    from therapref.cli.exporting import finetune_app

    finetune_app.command("local", cls=FinetuneCommand)(finetune_local)
