"""``therapref abtest NEW --against BASE``: a blinded A/B test of a new candidate against a base on
prompts the new one was not trained on, NEW generated with BASE's generation settings unless
``--allow-different-settings`` (library: ``policy.abtest``), its clinicians' results (``--results``) and
a reward model's proxy verdict (``--judge reward:DIR``; ``analytics.head_to_head``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from therapref.cli.common import DbOption, errors, fail, open_engine, settings_for, sigterm_as_interrupt


def parse_judge(text: str) -> Path:
    """``reward:DIR`` → the reward model folder.

    >>> parse_judge("reward:runs/rm1").as_posix()
    'runs/rm1'
    >>> parse_judge("gpt-4o")
    Traceback (most recent call last):
    ...
    ValueError: --judge: expected reward:DIR (a folder from `therapref train`), not 'gpt-4o'
    """
    kind, colon, rest = text.partition(":")
    if kind != "reward" or not colon or not rest.strip():
        raise ValueError(f"--judge: expected reward:DIR (a folder from `therapref train`), not {text!r}")
    return Path(rest.strip())


def abtest(
    new: Annotated[str, typer.Argument(help="The new candidate (e.g. a policy registered by `therapref finetune "
                                       "local --register NAME`).", metavar="NEW", show_default=False)],
    against: Annotated[str, typer.Option("--against", help="The base candidate it is compared with.",
                                         show_default=False)],
    prompts: Annotated[Optional[str], typer.Option(
        help="N (that many held-out prompts at random) or a SPEC: ids and ranges (3,7-9, id:12), source:NAME, "
             "topic:NAME (default: every held-out prompt).")] = None,
    overlap: Annotated[int, typer.Option(help="Judgments required per A/B comparison.")] = 1,
    priority: Annotated[Optional[float], typer.Option(
        help="Queue priority of the A/B comparisons (default: above every other comparison).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for drawing N prompts.")] = 0,
    judge: Annotated[Optional[str], typer.Option(
        help="reward:DIR: also print the head-to-head as judged by this reward model (a proxy, not clinicians).")]
    = None,
    results: Annotated[bool, typer.Option(
        "--results", help="Print the clinicians' head-to-head of NEW vs BASE on their A/B prompts; create nothing.")]
    = False,
    sources: Annotated[str, typer.Option(
        help="--results: whose judgments count: clinicians, imported, both, judges, all, or names judge:NAME, "
             "import:DATASET (model judges count only under judges, all or by name).")] = "clinicians",
    config: Annotated[Optional[Path], typer.Option(
        "--config", help="Candidate registry TOML for generation (default: the candidates_file setting when it "
                         "exists, else each candidate as registered in the database).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(
        help="Most tokens per generated reply (candidates run as registered in the database).")] = None,
    allow_different_settings: Annotated[bool, typer.Option(
        "--allow-different-settings",
        help="Let NEW keep its own generation settings (temperature, top_p, max_tokens, seed, system prompt) "
             "instead of BASE's, and compare replies generated with different settings.")] = False,
    generate: Annotated[bool, typer.Option(help="Generate missing replies of both candidates first.")] = True,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples behind the intervals.")] = 500,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr while generating.")] = True,
    db: DbOption = None,
) -> None:
    """A/B test NEW against BASE: blinded comparisons on held-out prompts at the front of the queue."""
    from analytics.head_to_head import format_table, head_to_head, head_to_head_from_scores
    from db.engine import read_only_engine, session_scope
    from policy.abtest import abtests_of, create_abtest, key_variables

    try:
        model_dir = parse_judge(judge) if judge else None
    except ValueError as exc:
        raise fail(str(exc)) from None
    if model_dir is not None and not (model_dir / "config.json").is_file():
        raise fail(f"{model_dir}: not a reward model folder (no config.json)")
    if bootstrap < 0:
        raise fail("--bootstrap must be 0 or more")
    engine = open_engine(db)
    prompt_ids = None
    with errors():
        if not results:
            specs, specs_source = _registry(config, db)
            with session_scope(read_only_engine(engine)) as session:
                names = key_variables(new, against, session=session, specs=specs)
            # The only place API keys are read: by the variable names the candidates list.
            secrets = {name: os.environ[name] for name in names if name in os.environ}
            try:
                with sigterm_as_interrupt():
                    # The two settings lines go to stderr before generating, with the other progress output.
                    result = create_abtest(new, against, engine=engine, prompts=prompts, overlap=overlap,
                                           priority=priority, seed=seed, generate=generate, specs=specs,
                                           specs_source=specs_source, max_tokens=max_tokens,
                                           allow_different_settings=allow_different_settings, secrets=secrets,
                                           progress=progress, say=lambda line: typer.echo(line, err=True))
            except KeyboardInterrupt:
                typer.secho("Interrupted: replies already received are saved; run the command again to finish.",
                            err=True)
                raise typer.Exit(130) from None
            if result.generation:
                typer.echo(result.generation, err=True)
            typer.echo(str(result))
            prompt_ids = result.prompt_ids
        with session_scope(read_only_engine(engine)) as session:
            if prompt_ids is None:
                tests = abtests_of(new, against, session=session)
                prompt_ids = sorted({p for t in tests for p in t.prompt_ids or []}) if tests else None
                where = (f"{len(prompt_ids)} prompts of {len(tests)} A/B test(s)" if tests else
                         "every comparison between them (no A/B test recorded)")
            if results:
                typer.echo(f"Head-to-head on {where}:")
                typer.echo(format_table(head_to_head(new, against, session=session, sources=sources,
                                                     prompt_ids=prompt_ids, n_bootstrap=bootstrap, seed=seed)))
            if model_dir is not None:
                scorer = _reward_model(model_dir)
                table = head_to_head_from_scores(new, against, scorer, session=session, prompt_ids=prompt_ids,
                                                 label=f"reward model {model_dir}, not clinicians",
                                                 n_bootstrap=bootstrap, seed=seed)
                typer.echo(format_table(table))


def _registry(config: Path | None, db: str | None) -> tuple[list | None, str]:
    """The registry's specs when a file is named or the default one exists, else None (the database's),
    and the file's name for messages."""
    from candidates.registry import load_registry

    path = config or Path(settings_for(db).candidates_file)
    if config is None and not path.is_file():
        return None, str(path)
    return load_registry(path), str(path)


def _reward_model(path: Path) -> object:
    from analytics.reward_eval import load_reward_model

    return load_reward_model(str(path))


def register(app: typer.Typer) -> None:
    """Add ``abtest`` to the root app."""
    app.command("abtest")(abtest)
