"""Static PNG charts for the report (matplotlib, Agg backend, no display needed).

Every chart exists even without data (it then says so), so a report always has the same files.
Labels come from untrusted text (usernames, model names): ``$`` is escaped so mathtext never runs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analytics.summary import AnalyticsSummary  # noqa: E402

COLORS = ("#3b6ea8", "#d08c2e", "#5a9e6f", "#b05a7a", "#7a6bb0", "#8c8c8c")
DPI = 110


def safe_label(text: object, limit: int = 40) -> str:
    r"""Plain text for a matplotlib label: no mathtext, bounded length.

    >>> print(safe_label("$x$ and a very long name that goes on and on and on", 20))
    \$x\$ and a very long…
    """
    text = str(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _figure(width: float = 7.5, height: float = 3.6):  # noqa: ANN202
    fig, ax = plt.subplots(figsize=(width, height), dpi=DPI)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _png(fig) -> bytes:  # noqa: ANN001
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


def _empty(title: str, message: str) -> bytes:
    fig, ax = _figure(height=2.0)
    ax.set_axis_off()
    ax.set_title(title, loc="left")
    ax.text(0.5, 0.45, message, ha="center", va="center", fontsize=11, color="#555555",
            bbox={"boxstyle": "round", "facecolor": "#f1f1f1", "edgecolor": "#cccccc"})
    return _png(fig)


def progress_png(summary: AnalyticsSummary) -> bytes:
    rows = summary.progress
    if not rows:
        return _empty("Progress", "No judgments yet")
    days = sorted({r["date"] for r in rows})
    per_day = [sum(r["judgments"] for r in rows if r["date"] == d) for d in days]
    fig, ax = _figure()
    x = np.arange(len(days))
    ax.bar(x, per_day, color=COLORS[0], alpha=0.6, label="judgments that day")
    ax.set_ylabel("judgments per day")
    twin = ax.twinx()
    twin.plot(x, np.cumsum(per_day), color=COLORS[1], marker="o", label="cumulative")
    twin.set_ylabel("cumulative")
    step = max(1, len(days) // 10)
    ax.set_xticks(x[::step], [days[i] for i in range(0, len(days), step)], rotation=30, ha="right")
    ax.set_title("Judgments over time", loc="left")
    return _png(fig)


def _interval_bars(ax, labels, values, lows, highs, color) -> None:  # noqa: ANN001
    y = np.arange(len(labels))
    values = np.array([v if math.isfinite(v) else np.nan for v in values])
    err = np.array([[v - lo if math.isfinite(lo) else 0 for v, lo in zip(values, lows, strict=True)],
                    [hi - v if math.isfinite(hi) else 0 for v, hi in zip(values, highs, strict=True)]])
    ax.errorbar(values, y, xerr=np.nan_to_num(err), fmt="o", color=color, capsize=4)
    ax.set_yticks(y, [safe_label(label) for label in labels])
    ax.invert_yaxis()


def agreement_png(summary: AnalyticsSummary) -> bytes:
    agreement = summary.agreement
    blocks = [agreement.preference, *[f for f in agreement.flags if math.isfinite(f.alpha.value)]]
    if agreement.n_comparisons == 0 or not math.isfinite(agreement.preference.alpha.value):
        return _empty("Agreement", "Not enough comparisons judged by two or more annotators")
    labels, values, lows, highs = [], [], [], []
    pref = agreement.preference
    for name, est in (("preference, alpha nominal", pref.alpha), ("preference, alpha ordinal", pref.alpha_ordinal)):
        if est is not None:
            labels.append(name)
            values.append(est.value)
            lows.append(est.low)
            highs.append(est.high)
    for block in blocks[1:]:
        labels.append(f"flag {block.name}, alpha")
        values.append(block.alpha.value)
        lows.append(block.alpha.low)
        highs.append(block.alpha.high)
    fig, ax = _figure(height=1.2 + 0.35 * len(labels))
    _interval_bars(ax, labels, values, lows, highs, COLORS[0])
    ax.axvline(0.667, color="#999999", ls="--", lw=1)
    ax.axvline(0.8, color="#555555", ls="--", lw=1)
    ax.set_xlabel("Krippendorff's alpha (95% CI); dashed: 0.667 and 0.8")
    ax.set_title("Agreement between annotators", loc="left")
    return _png(fig)


def annotators_png(summary: AnalyticsSummary) -> bytes:
    rows = summary.quality
    if not rows:
        return _empty("Annotators", "No judgments yet")
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 1.2 + 0.35 * len(rows)), dpi=DPI, sharey=True)
    labels = [q.annotator for q in rows]
    left = [q.position.left_share for q in rows]
    agree = [q.majority_agreement for q in rows]
    y = np.arange(len(rows))
    axes[0].barh(y, [v if math.isfinite(v) else 0 for v in left],
                 color=[COLORS[3] if q.position.biased else COLORS[0] for q in rows])
    axes[0].axvline(0.5, color="#555555", ls="--", lw=1)
    axes[0].set_xlim(0, 1)
    axes[0].set_xlabel("share of left-side choices (red: p < alpha)")
    axes[0].set_yticks(y, [safe_label(label) for label in labels])
    axes[0].invert_yaxis()
    _interval_bars(axes[1], labels, [e.value for e in agree], [e.low for e in agree], [e.high for e in agree],
                   COLORS[2])
    axes[1].set_xlim(0, 1)
    axes[1].set_xlabel("agreement with leave-one-out majority")
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle("Annotator quality", x=0.02, ha="left")
    return _png(fig)


def leaderboard_png(summary: AnalyticsSummary) -> bytes:
    board, controlled = summary.leaderboard.overall, summary.leaderboard.length_controlled
    if not board.ratings:
        return _empty("Leaderboard", board.note or "No battles between candidate models yet")
    models = [r.model for r in board.ratings]
    fig, ax = _figure(height=1.4 + 0.45 * len(models))
    y = np.arange(len(models))
    for offset, (name, b, color) in enumerate((("Bradley–Terry", board, COLORS[0]),
                                               ("length-controlled", controlled, COLORS[1]))):
        by_model = {r.model: r for r in b.ratings}
        values = [by_model[m].rating for m in models]
        err = np.array([[by_model[m].rating - by_model[m].ci_low for m in models],
                        [by_model[m].ci_high - by_model[m].rating for m in models]])
        ax.errorbar(values, y + (offset - 0.5) * 0.25, xerr=np.nan_to_num(err), fmt="o", color=color,
                    capsize=4, label=name)
    ax.set_yticks(y, [safe_label(m) for m in models])
    ax.invert_yaxis()
    ax.set_xlabel("rating (Elo-like scale, 95% bootstrap CI)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Candidate models", loc="left")
    return _png(fig)


def win_matrix_png(summary: AnalyticsSummary) -> bytes:
    matrix = summary.leaderboard.matrix
    if len(matrix.models) < 2:
        return _empty("Win rates", "Needs battles between at least two candidate models")
    values = np.array([[np.nan if v is None else v for v in row] for row in matrix.win_rate])
    n = len(matrix.models)
    fig, ax = _figure(width=2.5 + 0.9 * n, height=1.8 + 0.7 * n)
    image = ax.imshow(values, cmap="RdBu", vmin=0, vmax=1)
    labels = [safe_label(m, 24) for m in matrix.models]
    ax.set_xticks(range(n), labels, rotation=30, ha="right")
    ax.set_yticks(range(n), labels)
    for i in range(n):
        for j in range(n):
            if matrix.battles[i][j]:
                ax.text(j, i, f"{values[i, j]:.2f}\n(n={matrix.battles[i][j]})", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046, label="row's share of points vs column")
    ax.set_title("Win rates (ties count half)", loc="left")
    return _png(fig)


def safety_png(summary: AnalyticsSummary) -> bytes:
    rows = summary.flags
    if not rows or not any(sum(r.counts.values()) for r in rows):
        return _empty("Safety flags", "No safety flags raised" if rows else "No judgments yet")
    flags = list(rows[0].counts)
    fig, ax = _figure(height=3.8)
    width = 0.8 / len(rows)
    x = np.arange(len(flags))
    for i, row in enumerate(rows):
        ax.bar(x + i * width - 0.4 + width / 2, [row.rate(f) for f in flags], width, label=safe_label(row.model, 24),
               color=COLORS[i % len(COLORS)])
    ax.set_xticks(x, flags, rotation=20, ha="right")
    ax.set_ylabel("share of judged replies flagged")
    ax.legend(fontsize=8)
    ax.set_title("Safety flags per candidate model", loc="left")
    return _png(fig)


def reward_png(summary: AnalyticsSummary) -> bytes:
    reward = summary.reward
    if reward is None or reward.n_items == 0:
        return _empty("Reward model", "No comparison with a clear majority to compare against")
    fig, ax = _figure(height=2.0)
    _interval_bars(ax, ["reward model", "longer reply wins"],
                   [reward.agreement.value, reward.length_baseline.value],
                   [reward.agreement.low, reward.length_baseline.low],
                   [reward.agreement.high, reward.length_baseline.high], COLORS[0])
    ax.axvline(0.5, color="#999999", ls="--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"agreement with the judges' majority (n={reward.n_items}, 95% CI)")
    ax.set_title("Reward model vs judges", loc="left")
    return _png(fig)


PNG_CHARTS: dict[str, Callable[[AnalyticsSummary], bytes]] = {
    "progress": progress_png,
    "agreement": agreement_png,
    "annotators": annotators_png,
    "leaderboard": leaderboard_png,
    "win_matrix": win_matrix_png,
    "safety_flags": safety_png,
    "reward_model": reward_png,
}


def render_pngs(summary: AnalyticsSummary) -> dict[str, bytes]:
    """PNG bytes per chart name (the reward chart only when the summary has that section)."""
    return {name: draw(summary) for name, draw in PNG_CHARTS.items() if name != "reward_model" or summary.reward}
