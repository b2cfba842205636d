"""``therapref export …`` and ``therapref finetune openai …``: parse, call one library function, print."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer

from therapref.cli.common import DbOption, errors, fail, open_engine
from therapref.config_cli import ConfigFlags, Flag, config_command

finetune_app = typer.Typer(help="Fine-tune a chatbot policy on exported or sampled data: locally with TRL (local: "
                                "SFT, DPO, KTO, rejection sampling, GRPO, RLOO) or as a hosted OpenAI job (openai).",
                           no_args_is_help=True)

#: The export filters (``exports.filters.ExportFilters``'s fields and help), declared once: every command
#: that exports (``export …``, ``loop round``, ``loop run``) takes them.
EXPORT_FILTERS = ConfigFlags(
    "exports.filters:ExportFilters",
    ("sources", "min_votes", "min_margin", "min_agreement", "guideline_version", Flag("candidate_models", "candidate"),
     "since", "until", "exclude_flagged", "not_worse_on"),
    panel="Export filters", show_defaults=True)


def export_filters(ctx: typer.Context, flags: ConfigFlags = EXPORT_FILTERS, **fixed: object) -> object:
    """The ``ExportFilters`` the command's filter flags say (``fixed`` values on top)."""
    from exports.filters import ExportFilters

    return flags.build(ctx, ExportFilters, **fixed)


class Kind(StrEnum):
    sft = "sft"
    dpo = "dpo"
    openai_dpo = "openai-dpo"
    kto = "kto"
    hf = "hf"
    dialogflow = "dialogflow"
    spans = "spans"


class Selection(StrEnum):
    majority = "majority"
    bt = "bt"
    reference = "reference"
    reward = "reward"


class Method(StrEnum):
    sft = "sft"
    dpo = "dpo"


def command_line(ctx: typer.Context) -> list[str]:
    """The command as run (from the parsed parameters; values that equal the default left out)."""
    words = ctx.command_path.split()
    defaults = {p.name: p.default for p in ctx.command.params}
    for name, value in ctx.params.items():
        if name == "kind":
            words.insert(len(ctx.command_path.split()), str(getattr(value, "value", value)))
            continue
        if value == defaults.get(name) or value in (None, [], ()):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, list | tuple):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, str(getattr(value, "value", value))]
    return words


def export(
    ctx: typer.Context,
    kind: Annotated[Kind, typer.Argument(help="sft | dpo | openai-dpo | kto | hf | dialogflow | spans")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write (a folder for hf).")],
    db: DbOption = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing output.")] = False,
    scrub_pii: Annotated[bool, typer.Option(help="Replace e-mails, phones, URLs and names with placeholders.")] = False,
    system_prompt: Annotated[Optional[str], typer.Option(
        help="System message for every row (default: each prompt's own).")] = None,
    select: Annotated[Selection, typer.Option(
        "--select", help="SFT preferred reply: majority, bt, reference (every reply of --reference-candidate), reward.")
    ] = Selection.majority,
    reference_candidate: Annotated[str, typer.Option(help="Candidate whose replies are references.")] = "reference",
    prefer_source: Annotated[Optional[str], typer.Option(
        help="SFT: use this candidate's reply for a prompt whenever it has one.")] = None,
    rewrites: Annotated[str, typer.Option(help="Clinician rewrites: prefer or skip.")] = "prefer",
    reward_model: Annotated[Optional[Path], typer.Option(help="Reward model folder (--select reward).")] = None,
    margin: Annotated[bool, typer.Option(help="DPO: write the optional margin column.")] = True,
    agent: Annotated[Optional[Path], typer.Option(
        help="dialogflow: the Dialogflow ES agent zip to copy with the preferred replies.")] = None,
    aggregation: Annotated[str, typer.Option(
        help="adjudicated: a lead's final label replaces the votes and flags of an adjudicated comparison; "
             "majority: the votes alone; auto (default): adjudicated when any adjudication exists.")] = "auto",
) -> None:
    """Export training data: SFT, DPO (TRL), OpenAI preference, KTO, an HF dataset folder, a copy of a
    Dialogflow ES agent whose intents answer with the preferred replies (dialogflow --agent ZIP), or the
    unsafe spans clinicians marked (spans: JSONL with text, character offsets, flag kinds, annotator ids)."""
    from exports.run import ExportOptions, run_export

    with errors():
        filters = export_filters(ctx)
        options = ExportOptions(
            force=force, scrub_pii=scrub_pii, system_prompt=system_prompt, selection=select.value,
            reference_candidate=reference_candidate, prefer_source=prefer_source, rewrites=rewrites,
            reward_model=str(reward_model) if reward_model else None, margin=margin, aggregation=aggregation,
            command=command_line(ctx),
        )
        if (kind is Kind.dialogflow) != (agent is not None):
            raise fail("dialogflow exports need --agent ZIP" if agent is None
                       else "--agent applies to dialogflow exports only")
        engine = open_engine(db)
        if kind is Kind.dialogflow:
            from exports.dialogflow import export_agent

            typer.echo(export_agent(agent, output, engine=engine, filters=filters, options=options).summary())
            return

        def progress(n: int) -> None:
            typer.echo(f"  … {n:,} read", err=True)

        if kind is Kind.spans:
            from exports.spans import export_spans

            result = export_spans(output, engine=engine, filters=filters, options=options, progress=progress)
        else:
            result = run_export(kind.value, output, engine=engine, filters=filters, options=options,
                                progress=progress)
    counts = result.counts
    dropped = ", ".join(f"{reason} {n:,}" for reason, n in counts["dropped"].items()) or "none"
    typer.echo(f"Wrote {result.rows:,} {kind.value} rows to {result.path} "
               f"({counts['in']:,} {counts['unit']} read; dropped: {dropped}).")
    if "spans" in counts:
        per_flag = ", ".join(f"{k} {v:,}" for k, v in counts["spans_per_flag"].items())
        typer.echo(f"Spans: {counts['spans']:,} ({per_flag}).")
    if counts.get("aggregation") == "adjudicated":
        typer.echo(f"Aggregation: adjudicated ({counts['adjudicated']:,} adjudicated comparisons: the lead's label "
                   "replaces the votes).")
    if "pii_replaced" in counts:
        pii = ", ".join(f"{k} {v:,}" for k, v in counts["pii_replaced"].items())
        typer.echo(f"PII replaced: {pii}.")
    typer.echo(f"Manifest: {result.manifest}")


def finetune_openai(
    file: Annotated[Path, typer.Argument(
        help="SFT JSONL (export sft) or OpenAI preference JSONL (export openai-dpo).")],
    model: Annotated[str, typer.Option(help="Base model id to fine-tune, e.g. gpt-4.1-mini-2025-04-14.")],
    method: Annotated[Method, typer.Option(help="sft (supervised) or dpo (preference).")] = Method.sft,
    db: DbOption = None,
    dry_run: Annotated[bool, typer.Option(help="Validate the file only; upload nothing.")] = False,
    follow: Annotated[bool, typer.Option(help="Poll until done, then register the ft: model as a candidate.")] = False,
    suffix: Annotated[Optional[str], typer.Option(help="Up to 64 characters added to the model name.")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key.")] = "OPENAI_API_KEY",
    base_url: Annotated[Optional[str], typer.Option(help="API base URL (default: OpenAI).")] = None,
    n_epochs: Annotated[Optional[int], typer.Option(help="Epochs (default: auto).")] = None,
    beta: Annotated[Optional[float], typer.Option(help="DPO beta (default: auto).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Token limit per example.")] = 65_536,
    poll_seconds: Annotated[float, typer.Option(help="Seconds between status polls.")] = 10.0,
    timeout: Annotated[Optional[float], typer.Option(help="Stop following after this many seconds.")] = None,
) -> None:
    """Validate a training file, upload it and start (and optionally follow) an OpenAI fine-tuning job."""
    from exports.openai_ft import FinetuneConfig, run_finetune

    config = FinetuneConfig(method=method.value, model=model, suffix=suffix, n_epochs=n_epochs, beta=beta,
                            max_tokens=max_tokens, base_url=base_url, api_key_env=api_key_env, follow=follow,
                            poll_seconds=poll_seconds, timeout_seconds=timeout)
    api_key = None if dry_run else os.environ.get(api_key_env)
    if not dry_run and not api_key:
        raise fail(f"environment variable {api_key_env} is not set (it must hold the OpenAI API key)")
    with errors():
        engine = None if dry_run else open_engine(db)
        result = run_finetune(file, config=config, api_key=api_key, engine=engine, dry_run=dry_run,
                              log=typer.echo)
    if dry_run:
        typer.echo("Dry run: the file is valid; nothing was uploaded.")
    elif not follow:
        typer.echo(f"Job {result.job_id} started; rerun with --follow or check the OpenAI dashboard.")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("export", cls=config_command(EXPORT_FILTERS))(export)
    finetune_app.command("openai")(finetune_openai)
    app.add_typer(finetune_app, name="finetune")
