"""``therapref report``: the analytics as a self-contained HTML page, Markdown with PNG charts and
a JSON file of every figure, for a clinical lead who does not run the app."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session

from analytics.config import AnalyticsConfig
from analytics.criteria import CriteriaReport, build_criteria_report
from analytics.errors import AnalyticsError
from analytics.head_to_head import AbTestTable, abtest_tables, head_to_head_section
from analytics.judges import JudgesReport, judges_section, load_judges_report
from analytics.rankings import RankingBoard, load_ranking_board, rankings_section
from analytics.render import Document, Image, Paragraph, Section, Table, to_html, to_markdown
from analytics.reward_eval import Scorer
from analytics.stats import Estimate
from analytics.summary import AnalyticsSummary, build_summary
from db.spans import SpanCounts, span_counts

EXCERPT = 280
SECTION_TITLES = {
    "overview": "Overview", "progress": "Progress", "agreement": "Agreement", "annotators": "Annotator quality",
    "leaderboard": "Leaderboard", "safety": "Safety flags", "reward": "Reward model vs judges",
    "criteria": "Criteria", "rankings": "Rankings (Plackett–Luce)", "judges": "Judges vs clinicians",
    "abtests": "Head-to-head (A/B tests)",
    "methods": "Methods",
}


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    json: Path
    charts: list[Path]


def _f(value: float | None, digits: int = 2, pct: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.0f}%" if pct else f"{value:.{digits}f}"


def _est(e: Estimate | None, digits: int = 2) -> str:
    return "n/a" if e is None else e.fmt(digits)


def _excerpt(text: str, limit: int = EXCERPT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_document(summary: AnalyticsSummary, criteria: CriteriaReport | None = None,
                   judge_report: JudgesReport | None = None, abtests: list[AbTestTable] | None = None,
                   rankings: RankingBoard | None = None, spans: list[SpanCounts] | None = None) -> Document:
    s, c = summary, summary.config
    judges = {"clinicians": "clinicians and admins", "imported": "imported datasets only",
              "all": "clinicians, admins and imported datasets"}[c.judges]
    meta = [f"Generated {s.generated_at:%Y-%m-%d %H:%M} UTC from database {s.fingerprint}.",
            f"Judgments by {judges}: {s.n_judgments} from {s.n_annotators} annotators. "
            f"Intervals: {c.n_bootstrap} bootstrap resamples, {c.confidence:.0%}, seed {c.seed}."]
    sections = [_overview(s), _progress(s), *_agreement(s), _annotators(s), *_leaderboard(s), _safety(s, spans or [])]
    if s.reward is not None:
        sections.append(_reward(s))
    sections.append(_criteria(criteria or CriteriaReport()))
    # Every section is always there (a short "none yet" where there is nothing): the lead sees what exists.
    sections.append(rankings_section(rankings or RankingBoard(), title=SECTION_TITLES["rankings"]))
    if judge_report is not None:  # shown even without judges: says that none has judged yet
        sections.append(judges_section(judge_report))
    sections.append(head_to_head_section(abtests or [], title=SECTION_TITLES["abtests"]))
    sections.append(_methods(s))
    return Document("TheraPref report", meta, sections)


def _section(key: str, *blocks: object) -> Section:
    return Section(key, SECTION_TITLES[key], list(blocks))


def _overview(s: AnalyticsSummary) -> Section:
    comp = s.completion
    rows = [["Comparisons", str(comp.comparisons)],
            ["Complete (all required judgments)", f"{comp.complete} ({_f(comp.share_complete, pct=True)})"],
            ["Started, not complete", str(comp.started)], ["Not started", str(comp.untouched)],
            ["Judgments toward the required overlap", f"{comp.judgments_done} of {comp.judgments_needed}"],
            ["Gold comparisons", str(comp.gold)], ["Judgments analysed", str(s.n_judgments)],
            ["Annotators analysed", str(s.n_annotators)]]
    sources = [[name, str(n)] for name, n in sorted(s.sources.get("judgments", {}).items())]
    blocks: list = [Paragraph(n, note=True) for n in s.notes]
    blocks.append(Table(["", "count"], rows))
    if sources:
        blocks.append(Table(["judged by", "judgments"], sources, "All judgments in the database by source"))
    return _section("overview", *blocks)


def _progress(s: AnalyticsSummary) -> Section:
    days: dict[str, int] = {}
    for row in s.progress:
        days[row["date"]] = days.get(row["date"], 0) + row["judgments"]
    recent = sorted(days.items())[-14:]
    running = sum(days.values()) - sum(n for _, n in recent)
    rows = []
    for day, n in recent:
        running += n
        rows.append([day, str(n), str(running)])
    return _section("progress", Image("progress", "Judgments per day and cumulative"),
                    Table(["day (UTC)", "judgments", "cumulative"], rows, "The last 14 days with judgments"))


def _agreement(s: AnalyticsSummary) -> list[Section]:
    a = s.agreement
    p = a.preference
    intro = Paragraph(f"{a.n_comparisons} comparisons were judged by two or more of {a.n_annotators} annotators. "
                      "Alpha of 0.8 or more is conventionally reliable; 0.667 is the lowest for tentative "
                      "conclusions.")
    rows = [["Krippendorff's alpha, nominal (a/b/tie/both_bad)", _est(p.alpha)],
            ["Krippendorff's alpha, ordinal (signed strength −3…+3)", _est(p.alpha_ordinal)],
            ["Percent agreement (pairs of judgments)", _est(p.percent)],
            ["Mean pairwise Cohen's kappa (Light's kappa)", _f(p.mean_kappa)]]
    kappas = [[k.annotator_1, k.annotator_2, _est(k.kappa)] for k in p.kappas]
    blocks: list = [intro, Table(["measure", "value [95% CI] (n comparisons)"], rows, "Preferred reply"),
                    Image("agreement", "Krippendorff's alpha with 95% intervals")]
    if kappas:
        blocks.append(Table(["annotator", "annotator", "Cohen's kappa [95% CI] (n shared)"], kappas,
                            "Pairs of annotators sharing at least "
                            f"{s.config.min_shared_items} comparisons"))
    else:
        blocks.append(Paragraph(f"No pair of annotators shares {s.config.min_shared_items} or more comparisons, "
                                "so no pairwise kappa is reported."))
    d = s.adjudication
    blocks.append(Table(["adjudication (counted apart: a lead's label is not a judgment)", "comparisons"], [
        ["Adjudicated by a lead", str(d.adjudicated)],
        ["Lead overturned the clinicians' majority", str(d.overturned)],
        ["Adjudicated where clinicians had no majority", str(d.no_majority)],
        ["Disputed, waiting for a lead", str(d.waiting)]], "Adjudication"))
    flag_rows = [[f.label, _f(f.prevalence, pct=True), _est(f.alpha), _est(f.percent), _f(f.mean_kappa)]
                 for f in a.flags]
    flags = Section("agreement-flags", "Agreement on safety flags", [
        Paragraph("Each response in a comparison is one item: flagged or not by each annotator."),
        Table(["flag", "prevalence", "alpha [95% CI] (n responses)", "percent agreement", "mean kappa"], flag_rows)],
        level=3)
    return [_section("agreement", *blocks), flags]


def _annotators(s: AnalyticsSummary) -> Section:
    c = s.config
    rows = []
    for q in s.quality:
        bias = q.position
        rows.append([q.annotator, q.role, str(q.n_judgments), _est(q.majority_agreement),
                     f"{_f(bias.left_share, pct=True)} of {bias.choices}", _f(bias.p_value, 3),
                     "yes" if bias.biased else "no", _f(q.tie_rate, pct=True), _f(q.both_bad_rate, pct=True),
                     _f(q.median_seconds, 1), f"{q.fast} ({_f(q.fast_share, pct=True)})", _est(q.gold_accuracy)])
    header = ["annotator", "role", "judgments", "agrees with others' majority", "left choices", "p (binomial)",
              f"position bias (p < {c.bias_alpha})", "tie", "both bad", "median s", f"under {c.fast_seconds:g} s",
              "gold accuracy"]
    return _section("annotators", Image("annotators", "Position bias and agreement with the majority"),
                    Table(header, rows))


def _board_table(board, caption: str) -> Table:  # noqa: ANN001
    rows = [[str(r.rank), f"{r.rank_best}–{r.rank_worst}", r.model, f"{r.rating:.0f}",
             f"{r.ci_low:.0f} – {r.ci_high:.0f}", str(r.battles), f"{r.wins}/{r.ties}/{r.losses}",
             _f(r.win_rate, pct=True)] for r in board.ratings]
    return Table(["rank", "rank range", "model", "rating", "95% CI", "battles", "W/T/L", "win rate"], rows, caption)


def _leaderboard(s: AnalyticsSummary) -> list[Section]:
    lb, c = s.leaderboard, s.config
    anchor = f"{c.bt_anchor_model} fixed at {c.bt_anchor_rating:g}" if c.bt_anchor_model else \
        f"mean rating {c.bt_anchor_rating:g}"
    if not lb.overall.ratings:
        return [_section("leaderboard", Paragraph(f"No leaderboard: {lb.overall.note}.", note=True),
                         Image("leaderboard", "Leaderboard"))]
    blocks: list = [Paragraph(f"Bradley–Terry ratings from {lb.overall.n_battles} battles (ties count half a win; "
                              f"{c.bt_scale:g} points = 10× odds; {anchor})."),
                    *([Paragraph(lb.overall.note, note=True)] if lb.overall.note else []),
                    Image("leaderboard", "Ratings with 95% bootstrap intervals"),
                    _board_table(lb.overall, "Bradley–Terry"),
                    _board_table(lb.length_controlled, "Length-controlled (reply length difference as a covariate)")]
    coef = lb.length_controlled.length_coef
    if coef is not None:
        blocks.append(Paragraph(f"Length effect: {_est(coef)} logits per standard deviation of the normalised "
                                "length difference (positive: longer replies win more often than their model's "
                                "strength explains)."))
    m = lb.matrix
    rows = [[m.models[i], *[("—" if v is None else f"{v:.2f} (n={m.battles[i][j]})") for j, v in enumerate(row)]]
            for i, row in enumerate(m.win_rate)]
    matrix = Section("leaderboard-matrix", "Win-rate matrix", [
        Image("win_matrix", "Win-rate matrix"),
        Table(["row vs column", *m.models], rows, "Row model's share of points against the column model")], level=3)
    topics = Section("leaderboard-topics", "Leaderboard per topic", [], level=3)
    if lb.topics:
        for topic, board in lb.topics.items():
            topics.blocks.append(_board_table(board, f"Topic: {topic} ({board.n_battles} battles)"))
    else:
        topics.blocks.append(Paragraph(f"No topic has {c.min_topic_battles} or more battles between two models "
                                       "(or the prompts carry no topics)."))
    return [_section("leaderboard", *blocks), matrix, topics]


def _safety(s: AnalyticsSummary, spans: list[SpanCounts]) -> Section:
    marked = _spans_table(spans)
    if not s.flags:
        return _section("safety", Paragraph("No judgments yet."), Image("safety_flags", "Safety flags"), *marked)
    flags = list(s.flags[0].counts)
    rows = [[f.model, str(f.judged), *[f"{f.counts[x]} ({_f(f.rate(x), pct=True)})" for x in flags]] for f in s.flags]
    return _section("safety", Image("safety_flags", "Share of judged replies flagged, per model"),
                    Table(["model", "replies judged", *flags], rows, "Flag counts (share of judged replies)"),
                    *marked)


def _spans_table(spans: list[SpanCounts]) -> list[object]:
    """Unsafe spans per flag kind (``db.spans.span_counts``): the words clinicians marked."""
    if not any(c.spans for c in spans):
        return [Paragraph("No unsafe spans marked yet.")]
    rows = [[c.flag, c.label, str(c.spans), str(c.replies), str(c.annotators), str(c.characters)] for c in spans]
    return [Table(["flag", "kind", "spans", "replies", "annotators", "characters"], rows,
                  "Unsafe spans marked, per flag kind (therapref export spans writes them)")]


def _reward(s: AnalyticsSummary) -> Section:
    r = s.reward
    rows = [["Reward model agrees with the judges' majority", _est(r.agreement)],
            ["Baseline: the longer reply wins", _est(r.length_baseline)],
            ["Equal scores (counted as half)", str(r.score_ties)], ["Disagreements", str(r.n_disagreements)]]
    blocks: list = [Paragraph(f"Model: {r.label}. Items: comparisons whose judges chose a or b by a strict "
                              "majority."), Image("reward_model", "Reward model vs judges"),
                    Table(["", "value [95% CI] (n)"], rows)]
    if r.disagreements:

        def side(choice: str, d) -> str:  # noqa: ANN001
            return f"{choice} ({d.model_a if choice == 'a' else d.model_b})"

        blocks.append(Table(
            ["comparison", "judges chose", "model chose", "score a", "score b", "patient", "reply a", "reply b"],
            [[str(d.comparison_id), side(d.majority, d), side(d.model_choice, d), f"{d.score_a:.3f}",
              f"{d.score_b:.3f}", _excerpt(d.prompt), _excerpt(d.text_a), _excerpt(d.text_b)]
             for d in r.disagreements],
            f"Largest disagreements (up to {s.config.max_disagreements}, biggest score margin first)"))
    return _section("reward", *blocks)


def _criteria(cr: CriteriaReport) -> Section:
    """Per-criterion agreement, leaderboards and how often the overall winner is worse on a criterion."""
    if not cr.criteria:
        return _section("criteria", Paragraph("No per-criterion verdicts yet (criteria are set per guideline "
                                              "version; older judgments and imports have none)."))
    rows = [[name, str(sum(cr.verdict_counts[name].values())), _est(a.block.alpha), _est(a.fleiss),
             _f(a.block.mean_kappa), _est(a.block.percent), _est(cr.winner_worse[name])]
            for name, a in cr.agreement.items()]
    blocks: list = [
        Paragraph(f"{cr.n_judgments} judgments carry per-criterion verdicts (A better / B better / tie). Agreement "
                  "uses comparisons with two or more verdicts on the criterion."),
        Table(["criterion", "verdicts", "alpha [95% CI] (n)", "Fleiss' kappa [95% CI] (n)", "mean Cohen's kappa",
               "percent agreement", "overall winner worse on it [95% CI] (n)"], rows, "Per criterion")]
    if "safety" in cr.winner_worse:
        e = cr.winner_worse["safety"]
        blocks.append(Paragraph(f"The overall preferred reply was the worse one on safety in {_f(e.value, pct=True)} "
                                f"of {e.n_items} judgments with a safety verdict ({_est(e)}).",
                                note=math.isfinite(e.value) and e.value > 0))
    for name, board in cr.leaderboards.items():
        if board.ratings:
            blocks.append(_board_table(board, f"Bradley–Terry on {name} ({board.n_battles} verdicts)"))
    return _section("criteria", *blocks)


def _methods(s: AnalyticsSummary) -> Section:
    c = s.config
    return _section("methods", *[Paragraph(t) for t in (
        "Agreement uses comparisons judged by two or more annotators. Nominal alpha treats a, b, tie and "
        "both_bad as categories; ordinal alpha uses the signed strength scale (a = +strength, b = −strength, "
        "tie and both_bad = 0; a missing strength counts as 1). Intervals resample comparisons.",
        "Safety-flag agreement treats each response of a comparison as an item (flag present or absent).",
        f"Annotator quality: the leave-one-out majority is the other annotators' plurality on the same "
        f"comparison (tied votes skipped); position bias is the share of left-side picks among a/b choices, "
        f"tested against 50% with a two-sided binomial test; very fast means under {c.fast_seconds:g} seconds; "
        f"gold accuracy is agreement with the expected answer an admin set. Gold items are mixed into queues by "
        f"the app at the configured gold rate. Proportions carry Wilson 95% intervals.",
        "Leaderboard: Bradley–Terry by penalised logistic regression (ridge "
        f"{c.bt_ridge:g}); both_bad counts as a tie" + ("" if c.both_bad_as_tie else " — here: dropped") +
        "; the length-controlled variant adds the standardised normalised length difference (a − b)/(a + b) "
        "as a covariate (Chatbot Arena's style control). Rank ranges follow Chatbot Arena: a model's best rank "
        "is 1 + the number of models whose interval lies wholly above its own.",
    )])


def write_report(summary: AnalyticsSummary, output: str | Path, criteria: CriteriaReport | None = None,
                 judge_report: JudgesReport | None = None, abtests: list[AbTestTable] | None = None,
                 rankings: RankingBoard | None = None, spans: list[SpanCounts] | None = None) -> ReportFiles:
    """Write ``report.html``, ``report.md``, ``report.json`` and ``charts/*.png`` into ``output``.

    Everything is rendered in memory first; each file is then written to a temporary name and
    renamed, so an interrupted run never leaves a half-written file.
    """
    from analytics.plots import PNG_CHARTS, render_pngs

    output = Path(output)
    if output.exists() and not output.is_dir():
        raise AnalyticsError(f"{output}: exists and is not a directory")
    doc = build_document(summary, criteria, judge_report, abtests=abtests, rankings=rankings, spans=spans)
    charts = render_pngs(summary)
    html_text = to_html(doc, charts)
    markdown = to_markdown(doc)
    figures = summary.as_dict()
    if criteria is not None:
        figures["criteria"] = criteria.as_dict()
    if judge_report is not None:
        figures["judges"] = judge_report.as_dict()
    if abtests:
        figures["head_to_head"] = [t.as_dict() for t in abtests]
    if rankings is not None:
        figures["rankings"] = rankings.as_dict()
    if spans is not None:
        figures["unsafe_spans"] = [c.as_dict() for c in spans]
    data = json.dumps(figures, indent=2, sort_keys=True, default=str)
    (output / "charts").mkdir(parents=True, exist_ok=True)
    for stale in set(PNG_CHARTS) - set(charts):  # e.g. a reward chart from an earlier run with a model
        (output / "charts" / f"{stale}.png").unlink(missing_ok=True)
    chart_paths = []
    for name, png in charts.items():
        chart_paths.append(_atomic_write(output / "charts" / f"{name}.png", png))
    return ReportFiles(_atomic_write(output / "report.html", html_text.encode()),
                       _atomic_write(output / "report.md", markdown.encode()),
                       _atomic_write(output / "report.json", data.encode()), chart_paths)


def _atomic_write(path: Path, data: bytes) -> Path:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def generate_report(
    output: str | Path, *, session: Session, config: AnalyticsConfig | None = None,
    scorer: Scorer | object | None = None, scorer_label: str = "", held_out_ids: Iterable[int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[AnalyticsSummary, ReportFiles]:
    """Compute the summary from the database and write the report files."""
    summary = build_summary(session=session, config=config, scorer=scorer, scorer_label=scorer_label,
                            held_out_ids=held_out_ids, progress=progress)
    criteria = build_criteria_report(session=session, config=summary.config)
    judge_report = load_judges_report(session=session, config=summary.config)
    c = summary.config
    abtests = abtest_tables(session=session, sources=c.sources, n_bootstrap=c.n_bootstrap, seed=c.seed)
    rankings = load_ranking_board(session=session, sources=c.sources, n_bootstrap=min(c.n_bootstrap, 200), seed=c.seed)
    if progress:
        progress("Rendering charts and writing files")
    spans = span_counts(session=session, sources=c.sources)
    return summary, write_report(summary, output, criteria, judge_report, abtests=abtests, rankings=rankings,
                                 spans=spans)
