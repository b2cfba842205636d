"""``therapref report`` (agreement, annotator quality, leaderboard: HTML + Markdown + PNG) and
``therapref gold`` (mark a comparison's expected answer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from therapref.cli.common import DbOption, errors, fail, open_engine


def report(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for report.html, report.md, report.json "
                                         "and charts/*.png (created; existing report files are replaced).")],
    db: DbOption = None,
    reward_model: Annotated[Optional[Path], typer.Option(
        help="A model folder from `therapref train`: adds the reward model vs judges section.")] = None,
    judges: Annotated[str, typer.Option(help="Whose judgments count: clinicians, imported or all.")] = "clinicians",
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples behind each 95% interval.")] = 500,
    seed: Annotated[int, typer.Option(help="Random seed (same data + seed = same report).")] = 0,
    min_shared: Annotated[int, typer.Option(help="Shared comparisons a pair of annotators needs for kappa.")] = 10,
    fast_seconds: Annotated[float, typer.Option(help="Judgments quicker than this count as very fast.")] = 3.0,
    anchor_model: Annotated[Optional[str], typer.Option(
        help="Candidate pinned at rating 1000 (default: the mean rating is 1000).")] = None,
) -> None:
    """Write the analytics report: agreement, annotator quality, leaderboard, safety flags."""
    from analytics.config import AnalyticsConfig
    from analytics.report import generate_report
    from analytics.reward_eval import held_out_comparison_ids, load_reward_model
    from db.engine import read_only_engine, session_scope

    with errors():
        config = AnalyticsConfig(judges=judges, n_bootstrap=bootstrap, seed=seed, min_shared_items=min_shared,
                                 fast_seconds=fast_seconds, bt_anchor_model=anchor_model)
    if output.exists() and not output.is_dir():
        raise fail(f"{output}: exists and is not a folder")
    if reward_model is not None and not (reward_model / "config.json").is_file():
        raise fail(f"{reward_model}: not a model folder (no config.json)")
    engine = open_engine(db)

    def progress(message: str) -> None:
        typer.echo(f"{message}…", err=True)

    with errors(), session_scope(read_only_engine(engine)) as session:
        scorer, label, held_out = None, "", None
        if reward_model is not None:
            progress(f"Loading reward model {reward_model}")
            scorer = load_reward_model(str(reward_model))
            label = str(reward_model)
            held_out = held_out_comparison_ids(getattr(scorer, "meta", {}) or {}, session=session)
        summary, files = generate_report(output, session=session, config=config, scorer=scorer,
                                         scorer_label=label, held_out_ids=held_out, progress=progress)
    typer.echo(f"Report for {summary.n_judgments} judgments written to {files.html}, {files.markdown} "
               f"({len(files.charts)} charts in {files.html.parent / 'charts'}).")


def gold(
    comparison_id: Annotated[int, typer.Argument(help="The comparison's id.")],
    answer: Annotated[Optional[str], typer.Argument(
        help="Expected answer in the comparison's own terms: a, b, tie or both_bad.")] = None,
    clear: Annotated[bool, typer.Option(help="Remove the expected answer.")] = False,
    db: DbOption = None,
) -> None:
    """Mark a comparison as gold (its expected answer) for annotator accuracy checks."""
    from analytics.gold import set_gold
    from db.engine import session_scope

    if (answer is None) == (not clear):
        raise fail("give an ANSWER (a, b, tie or both_bad) or --clear, not both")
    engine = open_engine(db)
    with errors(), session_scope(engine) as session:
        set_gold(comparison_id, None if clear else answer, session=session, actor="cli")
    typer.echo(f"Comparison {comparison_id}: gold answer {'cleared' if clear else repr(answer)}.")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("report")(report)
    app.command("gold")(gold)
