"""Writing the evaluation report (JSON + Markdown + reliability PNG) and the model card."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def report_markdown(report: dict[str, Any], *, title: str = "Reward model evaluation") -> str:
    """The report as Markdown (numbers only; no text from the data is included).

    >>> md = report_markdown({"n_pairs": 2, "accuracy": 0.5, "accuracy_ci": [0.1, 0.9], "length_baseline": 0.5,
    ...     "shorter_wins_accuracy": 0.0, "n_shorter_wins": 1, "ece": 0.2, "per_source": {}})
    >>> "| accuracy | 0.500 (95% CI 0.100–0.900) |" in md
    True
    """
    low, high = report.get("accuracy_ci", [float("nan")] * 2)
    lines = [
        f"# {title}", "",
        f"Data: {report.get('data', 'held-out pairs')}", "",
        *([f"**{report['verdict']}**", ""] if report.get("verdict") else []),
        "| metric | value |", "| --- | --- |",
        f"| pairs | {report['n_pairs']} |",
        f"| accuracy | {_fmt(report['accuracy'])} (95% CI {_fmt(low)}–{_fmt(high)}) |",
        f"| length baseline (longer reply chosen) | {_fmt(report['length_baseline'])} |",
        f"| accuracy where the shorter reply won ({report.get('n_shorter_wins', 0)} pairs) "
        f"| {_fmt(report['shorter_wins_accuracy'])} |",
        f"| expected calibration error | {_fmt(report['ece'])} |",
    ]
    if report.get("n_truncated") is not None:
        lines.append(f"| pairs truncated to max_length | {report['n_truncated']} |")
    if report.get("per_source"):
        lines += ["", "## Per source", "", "| source | pairs | accuracy |", "| --- | --- | --- |"]
        for source, row in report["per_source"].items():
            lines.append(f"| {source} | {row['n_pairs']} | {_fmt(row['accuracy'])} |")
    if report.get("reliability"):
        lines += ["", "## Reliability (confidence of sigmoid(r_chosen − r_rejected))", "",
                  "![reliability](reliability.png)", "",
                  "| confidence bin | pairs | mean confidence | accuracy |", "| --- | --- | --- | --- |"]
        for b in report["reliability"]:
            if b["count"]:
                lines.append(f"| {b['lower']:.2f}–{b['upper']:.2f} | {b['count']} | {b['confidence']:.3f} "
                             f"| {b['accuracy']:.3f} |")
    return "\n".join(lines) + "\n"


def reliability_plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = [b for b in report.get("reliability", []) if b["count"]]
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot([0.5, 1.0], [0.5, 1.0], linestyle="--", color="grey", label="perfect calibration")
    if bins:
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label="model")
        for b in bins:
            ax.annotate(str(b["count"]), (b["confidence"], b["accuracy"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("confidence max(p, 1−p)")
    ax.set_ylabel("share ranked correctly")
    ax.set_title(f"Reliability (ECE {report.get('ece', float('nan')):.3f})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], folder: str | Path, *,
                 title: str = "Reward model evaluation") -> dict[str, str]:
    """Write ``eval_report.json``, ``eval_report.md`` and ``reliability.png`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "eval_report.json", "markdown": folder / "eval_report.md",
             "plot": folder / "reliability.png"}
    paths["json"].write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    paths["markdown"].write_text(report_markdown(report, title=title))
    reliability_plot(report, paths["plot"])
    return {k: str(v) for k, v in paths.items()}


def model_card(meta: dict[str, Any], report: dict[str, Any] | None) -> str:
    """README.md of a trained model: what it is, the data it saw (provenance) and how it scores."""
    data = meta.get("data", {})
    cfg = meta.get("config", {})
    lines = [
        "---", "library_name: transformers", "tags: [reward-model, trl, therapref]", "---", "",
        "# TheraPref reward model", "",
        f"Base model: `{meta.get('base_model', '')}` (layout `{meta.get('encoder', {}).get('layout', '')}`, "
        f"max_length {meta.get('encoder', {}).get('max_length', '')}). Trained with TRL's `RewardTrainer` "
        "(Bradley–Terry loss on pairs of replies).", "",
        "## Data provenance", "",
        f"- database fingerprint: `{data.get('database_fingerprint', 'n/a')}`",
        f"- data: {data.get('origin', 'n/a')}",
        f"- pairs: {data.get('n_pairs', 0)} (train {data.get('n_train', 0)}, held out {data.get('n_eval', 0)}, "
        f"calibration {data.get('n_calibration', 0)}); truncated to max_length: {data.get('n_truncated', 0)}",
        f"- split: by prompt, eval fraction {cfg.get('eval_fraction')}, seed {cfg.get('seed')} "
        f"({data.get('n_train_prompts', 0)} train prompts, {data.get('n_eval_prompts', 0)} held-out prompts)",
        f"- sources: {cfg.get('sources')}; aggregation: {cfg.get('aggregation')}; margins: "
        f"{cfg.get('margin_mapping') or 'off'}; guideline versions: {cfg.get('guideline_versions') or 'all'}",
        f"- pair building: {json.dumps(data.get('pair_stats', {}), sort_keys=True)}", "",
        "## Scoring", "",
        "```python", "from reward import RewardModel", f"rm = RewardModel.load({meta.get('path', '.')!r})",
        'rm.score([{"role": "user", "content": "I feel low"}], "That sounds hard. What happened?")', "```", "",
    ]
    if meta.get("likelihood_weight") is not None:
        lines += [f"Likelihood feature: the network's output includes {meta['likelihood_weight']:.3f} × the reply's "
                  "mean log-probability under the base model (head-only, `--likelihood`).", ""]
    if meta.get("length_weight"):
        lines += [f"Hybrid score: network × {meta.get('network_scale', 1.0):.3f} + "
                  f"{meta['length_weight']:.3f} × log(1 + words(reply)).", ""]
    if report:
        lines += ["## Held-out evaluation", "", report_markdown(report, title="Evaluation").split("\n", 2)[2]]
    lines += ["## Training configuration", "", "```json", json.dumps(cfg, indent=2, sort_keys=True, default=str),
              "```", ""]
    return "\n".join(lines)
