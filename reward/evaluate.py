"""``therapref evaluate``: score held-out pairs (database) or any preference file, write the report."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlmodel import Session

from reward.errors import RewardError
from reward.metrics import evaluation_report
from reward.pairs import parse_margin_mapping
from reward.scoring import RewardModel


def held_out_db_pairs(model: RewardModel, *, session: Session) -> tuple[list, str]:
    """Pairs from the database whose prompts the model did not train on, built as it was trained."""
    from db.guidelines import current_guideline
    from reward.config import parse_guideline_versions
    from reward.data import pairs_from_db

    cfg = model.meta.get("config", {})
    latest = current_guideline(session=session)
    pairs, _ = pairs_from_db(session=session, aggregation=cfg.get("aggregation", "judgment"),
                             margin_mapping=parse_margin_mapping(cfg.get("margin_mapping")),
                             sources=cfg.get("sources", "both"),
                             guideline_versions=parse_guideline_versions(cfg.get("guideline_versions"),
                                                                         latest.version if latest else None))
    trained = set(model.meta.get("train_prompt_keys", []))
    held = [p for p in pairs if p.prompt_key not in trained]
    what = f"database pairs on prompts the model did not train on ({len(held)} of {len(pairs)} pairs)"
    return held, what


def evaluate_model(
    model_dir: str | Path,
    *,
    data: str,
    session: Session | None = None,
    output: str | Path | None = None,
    format: str | None = None,
    batch_size: int = 32,
    model: RewardModel | None = None,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a model folder on ``data`` ('db' or a preference file); write JSON/Markdown/PNG.

    ``progress``, when given, is a factory ``progress(total)`` of a context-managed counter (a tqdm bar)
    that is advanced by the replies scored. Returns the report with ``files`` (where it was written) added.
    """
    from reward.data import read_preference_file
    from reward.report import write_report

    model_dir = Path(model_dir)
    if data != "db" and not Path(data).is_file():
        raise RewardError(f"{data}: no such file (pass a preference file or 'db')")
    model = model or RewardModel.load(model_dir)
    if data == "db":
        if session is None:
            raise RewardError("evaluating on the database needs a database session")
        pairs, what = held_out_db_pairs(model, session=session)
        name = "db"
    else:
        pairs = read_preference_file(data, format=format)
        what, name = f"file {Path(data).name}", Path(data).name
    if not pairs:
        raise RewardError(f"no preference pairs to evaluate in {'the database' if data == 'db' else data}"
                          + (" (every prompt was used for training)" if data == "db" else ""))
    if progress is None:
        chosen, rejected = model.score_pairs(pairs, batch_size=batch_size)
    else:
        with progress(2 * len(pairs) * model.n_members) as bar:
            chosen, rejected = model.score_pairs(pairs, batch_size=batch_size, progress=bar.update)
    report = evaluation_report(pairs, chosen, rejected)
    report["data"] = what
    report["model"] = str(model_dir)
    folder = Path(output) if output else model_dir / f"eval-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}"
    report["files"] = write_report(report, folder, title=f"Reward model evaluation: {what}")
    return report
