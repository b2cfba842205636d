"""``therapref finetune local [FILE]``: train the chatbot itself on an export (sft, dpo, kto), or on its
own replies scored by a reward model (rs, grpo, rloo) (library: ``policy``)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer

from therapref.cli.common import DbOption, errors, open_engine
from therapref.config_cli import ConfigFlags, Flag, config_command

#: ``finetune local``'s training settings: fields of ``policy.config``'s classes (type and help from the first
#: method that has the field), the same names as in a ``--config`` file's ``[finetune]`` table but the short
#: flags named here.
FINETUNE_FLAGS = ConfigFlags(
    "policy.config:CONFIG_CLASSES",
    ("base_model", Flag("use_lora", "lora"), Flag("num_train_epochs", "epochs"), "seed", "max_length", "max_steps",
     Flag("per_device_train_batch_size", "batch_size"), "learning_rate", "lora_r",
     Flag("beta", help="DPO/KTO: deviation from the reference; GRPO/RLOO: the KL coefficient to the base (TRL's "
                       "beta)."),
     "bf16", "num_threads", "reward_model", "safety_model", "safety_threshold", "prompts", "best_of", "rounds",
     "num_generations", "max_completion_length", "system_prompt"),
    panel="Training settings (also in --config FILE)")
#: The methods that sample their own replies (policy.config.ONLINE_METHODS; the CLI reads no TRL at import).
ONLINE = ("rs", "grpo", "rloo")


class Method(StrEnum):
    sft = "sft"
    dpo = "dpo"
    kto = "kto"
    rs = "rs"
    grpo = "grpo"
    rloo = "rloo"


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
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="TOML file of training settings (a \\[finetune] table or top level); flags override it.")
    ] = None,
    register: Annotated[Optional[str], typer.Option(
        "--register", metavar="NAME", help="Register the trained policy as this candidate model.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --output.")] = False,
    db: DbOption = None,
) -> None:
    """Fine-tune a chatbot policy locally with TRL: SFT, DPO or KTO on an exported file, or rejection sampling,
    GRPO or RLOO on its own replies to the database's prompts, scored by a reward model."""
    from policy.config import load_config
    from policy.errors import PolicyError

    settings = FINETUNE_FLAGS.values(ctx)
    settings.update(output_dir=str(output) if output is not None else None,
                    resume_from_checkpoint=True if resume else None)
    with errors():
        if method is None:
            raise PolicyError(f"--method is required ({', '.join(m.value for m in Method)})")
        online = method.value in ONLINE
        if online and file is not None:
            if settings["prompts"] is not None:
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

    finetune_app.command("local", cls=config_command(FINETUNE_FLAGS))(finetune_local)
