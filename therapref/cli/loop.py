"""``therapref loop round``: one round of the loop (export → fine-tune → register → A/B test) in one
command, kept in one folder and resumable (library: ``policy.loop.run_round``)."""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Optional

import typer

from therapref.cli.common import DbOption, errors, fail, open_engine, sigterm_as_interrupt
from therapref.cli.exporting import EXPORT_FILTERS, export_filters
from therapref.config_cli import config_command

#: ``loop run`` exports each round's pairs between that round's samplers (it sets the candidates itself);
#: no defaults shown, since ``--sources`` defaults to the reward model's judge when there is one.
RUN_FILTERS = dataclasses.replace(EXPORT_FILTERS.without("candidate_models"), show_defaults=False)

loop_app = typer.Typer(help="Close the loop: train the chatbot on clinicians' preferences and A/B test it.",
                       no_args_is_help=True)


class Method(StrEnum):
    sft = "sft"
    dpo = "dpo"
    kto = "kto"
    best_of_n = "best-of-n"
    rs = "rs"
    rloo = "rloo"
    grpo = "grpo"


def round_(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder of the round (created; a second run "
                                                                 "resumes or reports it).", show_default=False)],
    method: Annotated[Method, typer.Option(
        help="sft (on the preferred replies), dpo or kto on an export; best-of-n (the base's best of --best-of "
             "samples), rs (rejection-sampling fine-tuning), rloo or grpo against --reward-model.")] = Method.dpo,
    reward_model: Annotated[Optional[Path], typer.Option(
        help="best-of-n, rs, rloo, grpo: the reward model (a `therapref train` folder or ensemble).")] = None,
    safety_model: Annotated[Optional[Path], typer.Option(
        help="A `therapref train --criterion safety` folder: unsafe replies are never picked / get the lowest "
             "reward.")] = None,
    best_of: Annotated[Optional[int], typer.Option(
        help="best-of-n: samples per reply (default 8); rs: samples per training prompt.")] = None,
    train_prompts: Annotated[Optional[str], typer.Option(
        help="rs, rloo, grpo: training prompts, N or a SPEC (default: every prompt outside the A/B tests).")] = None,
    against: Annotated[Optional[str], typer.Option(
        help="Base candidate of the A/B test (default: the base model itself, registered like the policy).")] = None,
    prompts: Annotated[str, typer.Option(
        help="A/B prompts: N held-out prompts at random, or a SPEC (ids, source:NAME, topic:NAME); never ones "
             "the policy trained on.")] = "50",
    overlap: Annotated[int, typer.Option(help="Judgments required per A/B comparison.")] = 1,
    base_model: Annotated[str, typer.Option(help="Base causal LM: embedded or a folder.")] = "embedded",
    epochs: Annotated[Optional[float], typer.Option(help="Training epochs (default: the method's).")] = None,
    lora: Annotated[bool, typer.Option("--lora", help="Train LoRA adapters (merged into the saved model).")] = False,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="Training settings TOML, as `therapref finetune local --config` takes.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Candidate name of the policy (default: policy-DIR).")] = None,
    system_prompt: Annotated[Optional[str], typer.Option(
        help="System message of the training rows, the policy and the default base ('' = none; default: each "
             "prompt's own, else the persona).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Most tokens per generated A/B reply.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the A/B prompt draw.")] = 0,
    scrub_pii: Annotated[bool, typer.Option(help="Export: replace e-mails, phones, URLs and names.")] = False,
    progress: Annotated[bool, typer.Option(help="Show generation progress on stderr.")] = True,
    db: DbOption = None,
) -> None:
    """Export the judgments, fine-tune a policy on them, register it and A/B test it against a base on
    held-out prompts; each step's artifacts and figures stay in --output (round.json)."""
    from analytics.head_to_head import head_to_head
    from db.engine import read_only_engine, session_scope
    from exports.run import ExportOptions, run_export
    from policy.loop import RoundConfig, run_round

    with errors():
        filters = export_filters(ctx)
        command = ["therapref", "loop", "round", "--output", str(output), "--method", method.value]
        options = ExportOptions(scrub_pii=scrub_pii, system_prompt=system_prompt, actor="loop", command=command)
        settings = RoundConfig(
            method=method.value, against=against, prompts=prompts, overlap=overlap, base_model=base_model,
            epochs=epochs, lora=lora, name=name, training_file=str(config) if config else None,
            system_prompt=system_prompt, seed=seed, max_tokens=max_tokens,
            export={"filters": filters.to_json(), "scrub_pii": scrub_pii},
            reward_model=str(reward_model) if reward_model else None,
            safety_model=str(safety_model) if safety_model else None, best_of=best_of, train_prompts=train_prompts,
        )
        engine = open_engine(db)

        def export(kind: str, path: Path, *, force: bool) -> object:
            options.force = force
            return run_export(kind, path, engine=engine, filters=filters, options=options)

        def results(new: str, base: str) -> str | None:
            with session_scope(read_only_engine(engine)) as session:
                table = head_to_head(new, base, session=session, sources=filters.sources, n_bootstrap=200)
            if not table.n:
                return f"no judgments by {filters.sources} yet: judge the A/B pairs in the app, then `therapref report`"
            return f"{filters.sources} so far: win rate {table.win_rate.fmt()}, {table.n} judgments"

        try:
            with sigterm_as_interrupt():
                result = run_round(output, settings, engine=engine, export=export, log=typer.echo,
                                   progress=progress, head_to_head=results)
        except KeyboardInterrupt:
            typer.secho("Interrupted: finished steps are kept; run the same command again to resume.", err=True)
            raise typer.Exit(130) from None
    typer.echo(result.summary)
    if not result.finished:
        raise fail("the round is not finished")


def run(
    ctx: typer.Context,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder of the loop: round-1 … round-R inside "
                                                                 "(a second run resumes it).", show_default=False)],
    rounds: Annotated[int, typer.Option(help="Rounds of sampling, judging and training.")] = 2,
    method: Annotated[str, typer.Option(help="dpo: iterated (on-policy) DPO.")] = "dpo",
    reward_model: Annotated[Optional[Path], typer.Option(
        help="Judge each round's pairs with this reward model (default: queue them for clinicians).")] = None,
    train_prompts: Annotated[str, typer.Option(
        help="Prompts each round samples on: N at random or a SPEC; never an A/B test's.")] = "100",
    against: Annotated[Optional[str], typer.Option(
        help="Base candidate of every A/B test (default: the base model itself, registered like the policy).")]
        = None,
    prompts: Annotated[str, typer.Option(help="A/B prompts per round: N held-out prompts or a SPEC.")] = "50",
    base_model: Annotated[str, typer.Option(help="Base causal LM of round 1: embedded or a folder.")] = "embedded",
    epochs: Annotated[Optional[float], typer.Option(help="Training epochs per round.")] = None,
    lora: Annotated[bool, typer.Option("--lora", help="Train LoRA adapters (merged into the saved model).")] = False,
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="Training settings TOML, as `therapref finetune local --config` takes.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Name stem of the policies (default: loop-DIR).")] = None,
    system_prompt: Annotated[Optional[str], typer.Option(
        help="System message of the samples, the policies and the default base ('' = none).")] = None,
    sample_temperature: Annotated[float, typer.Option(help="Temperature of the policy's samples.")] = 1.0,
    max_tokens: Annotated[Optional[int], typer.Option(help="Most tokens per sample and A/B reply.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the prompt draws and the samples.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show generation progress on stderr.")] = True,
    db: DbOption = None,
) -> None:
    """Iterated (on-policy) DPO: each round samples pairs from the current policy, has them judged (by
    --reward-model, or by clinicians in the app), trains on them, registers and A/B tests the policy."""
    from db.engine import read_only_engine, session_scope
    from exports.filters import check_filters
    from policy.iterate import run_loop
    from policy.loop import RoundConfig
    from policy.prompts import training_prompt_ids

    with errors():
        given = RUN_FILTERS.values(ctx)
        sources = given["sources"] or judge_source(reward_model)
        filters = export_filters(ctx, RUN_FILTERS, sources=sources)
        others = {k: v for k, v in given.items() if v is not None and k != "sources"}
        settings = RoundConfig(method=method, against=against, prompts=prompts, base_model=base_model, epochs=epochs,
                               lora=lora, name=name, training_file=str(config) if config else None,
                               system_prompt=system_prompt, seed=seed, max_tokens=max_tokens,
                               export={"sources": sources, **({"filters": filters.to_json()} if others else {})})
        engine = open_engine(db)
        with session_scope(read_only_engine(engine)) as session:
            train_ids = training_prompt_ids(train_prompts, session=session, seed=seed)
            # Bad filters fail now, not after a round of sampling (the reward model's judge, the default
            # source, appears with its first verdict).
            check_filters(filters if given["sources"] else dataclasses.replace(filters, sources="clinicians"),
                          session=session)

        pair, judge, make_export = online_steps(engine, reward_model=reward_model, seed=seed, filters=filters,
                                                system_prompt=system_prompt, command=["therapref", "loop", "run",
                                                                                      "--output", str(output)])
        try:
            with sigterm_as_interrupt():
                result = run_loop(output, settings, rounds=rounds, engine=engine, train_prompts=train_ids, pair=pair,
                                  make_export=make_export, judge=judge,
                                  sample_temperature=sample_temperature, log=typer.echo, progress=progress)
        except KeyboardInterrupt:
            typer.secho("Interrupted: finished steps are kept; run the same command again to resume.", err=True)
            raise typer.Exit(130) from None
    typer.echo(result.summary)
    if result.waiting:
        raise typer.Exit(3)


def judge_source(reward_model: Path | None) -> str:
    """Whose judgments a ``loop run`` round exports: the reward model's judge source, else clinicians'."""
    from candidates.judge import resolve_judge

    return f"judge:{resolve_judge(f'reward:{reward_model}').name}" if reward_model else "clinicians"


def online_steps(engine: object, *, reward_model: Path | None, seed: int, system_prompt: str | None,
                 command: list[str], filters: object | None = None) -> tuple:
    """The three steps ``policy.iterate.run_loop`` takes from the edge: pairing the samplers' replies
    (``candidates.pairing``), judging them with the reward model (``candidates.judge``; None without one:
    clinicians judge) and the export restricted to the samplers (``exports.run``) under ``filters`` (the
    ``loop run`` filter flags; default: the judge's or clinicians' judgments, nothing else)."""
    from candidates.judge import resolve_judge, run_judge
    from candidates.pairing import make_pairs
    from db.engine import read_only_engine, session_scope
    from exports.filters import ExportFilters
    from exports.run import ExportOptions, run_export
    from policy.iterate import comparisons_between

    judge_spec = resolve_judge(f"reward:{reward_model}") if reward_model else None
    if filters is None:
        filters = ExportFilters(sources=f"judge:{judge_spec.name}" if judge_spec else "clinicians")  # as judge_source

    def pair(prompt_ids, names) -> list[int]:  # noqa: ANN001
        with session_scope(engine) as session:  # type: ignore[arg-type]
            make_pairs(session=session, overlap=1, overlap_fraction=0.0, seed=seed, prompt_ids=list(prompt_ids),
                       candidates=list(names), actor="loop")
        with session_scope(read_only_engine(engine)) as session:  # type: ignore[arg-type]
            return comparisons_between(names, prompt_ids, session=session)

    def judge(comparison_ids) -> str:  # noqa: ANN001
        return str(run_judge(engine, judge_spec, comparisons=list(comparison_ids), seed=seed))  # type: ignore[arg-type]

    def make_export(names):  # noqa: ANN001, ANN202
        among = dataclasses.replace(filters, candidate_models=tuple(names))  # type: ignore[type-var]
        options = ExportOptions(system_prompt=system_prompt, actor="loop", command=command)

        def export(kind: str, path: Path, *, force: bool) -> object:
            options.force = force
            return run_export(kind, path, engine=engine, filters=among, options=options)  # type: ignore[arg-type]

        return export

    return pair, judge if judge_spec else None, make_export


def register(app: typer.Typer) -> None:
    """Add the ``loop`` group (``loop round``, ``loop run``) to the root app."""
    loop_app.command("round", cls=config_command(EXPORT_FILTERS))(round_)
    loop_app.command("run", cls=config_command(RUN_FILTERS))(run)
    app.add_typer(loop_app, name="loop")
