"""The reward area's database writes and reads: RewardModelRun rows, ResponseScore rows, best replies."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from db.json_values import nan_to_none
from db.models import Prompt, Response, ResponseScore, RewardModelRun
from reward.errors import RewardError
from reward.scoring import RewardModel, pick_best
from reward.train import TrainResult


def record_run(result: TrainResult, *, session: Session, data_fingerprint: str = "") -> RewardModelRun:
    """The RewardModelRun row of a finished training (call on the main process only)."""
    meta = result.meta
    metrics = {"eval": nan_to_none(result.report) if result.report else None,
               "train_loss": result.train_loss, "pairs_per_second": nan_to_none(result.pairs_per_second),
               "n_truncated": result.n_truncated, "n_calibration": result.n_calibration,
               "pair_stats": meta.get("data", {}).get("pair_stats", {}),
               "length_weight": meta.get("length_weight", 0.0)}
    run = RewardModelRun(path=str(Path(result.output_dir).resolve()), base_model=meta.get("base_model", ""),
                         config=nan_to_none(meta.get("config", {})), metrics=metrics,
                         data_fingerprint=data_fingerprint, n_train=result.n_train, n_eval=result.n_eval)
    session.add(run)
    session.flush()
    return run


def run_for_path(path: str | Path, *, session: Session, create: bool = True) -> RewardModelRun | None:
    """The newest RewardModelRun of a model folder; one is created for folders trained elsewhere."""
    resolved = str(Path(path).resolve())
    run = session.exec(select(RewardModelRun).where(RewardModelRun.path == resolved)
                       .order_by(RewardModelRun.id.desc())).first()
    if run is None and create:
        import json

        meta_file = Path(path) / "therapref_reward.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        run = RewardModelRun(path=resolved, base_model=meta.get("base_model", ""),
                             config=meta.get("config", {}), metrics={"note": "registered by `therapref score`"})
        session.add(run)
        session.flush()
    return run


def score_responses(
    model: RewardModel,
    *,
    session: Session,
    run: RewardModelRun,
    rescore: bool = False,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Score every stored response (or those without a score from ``run``) and write ResponseScore rows."""
    done = set(session.exec(select(ResponseScore.response_id)
                            .where(ResponseScore.reward_model_run_id == run.id)).all())
    rows = session.exec(select(Response, Prompt).join(Prompt, Response.prompt_id == Prompt.id)
                        .order_by(Response.id)).all()
    from reward.data import prompt_messages

    todo = [(r, p) for r, p in rows if rescore or r.id not in done]
    written = updated = 0
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        scores = model.score_batch([(prompt_messages(p), r.text) for r, p in chunk], batch_size=batch_size)
        for (response, _), value in zip(chunk, scores, strict=True):
            if response.id in done:
                existing = session.exec(select(ResponseScore).where(
                    ResponseScore.response_id == response.id, ResponseScore.reward_model_run_id == run.id)).one()
                existing.score = value
                session.add(existing)
                updated += 1
            else:
                session.add(ResponseScore(response_id=response.id, reward_model_run_id=run.id, score=value))
                written += 1
        session.flush()
        if progress:
            progress(len(chunk))
    return {"responses": len(rows), "scored": written, "rescored": updated, "skipped": len(rows) - len(todo)}


def best_responses(*, session: Session, run_id: int | None = None) -> dict[int, int]:
    """Best-of-n per prompt from stored scores: {prompt_id: response_id} (newest run by default)."""
    if run_id is None:
        run_id = session.exec(select(ResponseScore.reward_model_run_id)
                              .order_by(ResponseScore.reward_model_run_id.desc())).first()
        if run_id is None:
            raise RewardError("no stored reward scores: run `therapref score MODEL_DIR` first")
    rows = session.exec(select(Response.prompt_id, ResponseScore.response_id, ResponseScore.score)
                        .join(Response, Response.id == ResponseScore.response_id)
                        .where(ResponseScore.reward_model_run_id == run_id)
                        .order_by(ResponseScore.response_id)).all()
    grouped: dict[int, list[tuple[Any, float]]] = defaultdict(list)
    for prompt_id, response_id, score in rows:
        grouped[prompt_id].append((response_id, score))
    return pick_best(grouped)
