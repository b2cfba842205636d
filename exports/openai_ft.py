"""The OpenAI fine-tuning loop: validate, upload, start the job, follow it, register the model.

The API key is passed in by the caller (the CLI reads it from the environment variable the user
names); it is handed to the OpenAI client only, and redacted from every message this module
produces. The database records the variable's *name*, never its value.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from db.engine import session_scope
from exports.errors import ExportError
from exports.validate import DEFAULT_MAX_TOKENS, ValidationReport, validate_file

TERMINAL = ("succeeded", "failed", "cancelled")
KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_\-*]{6,}")


@dataclass
class FinetuneConfig:
    """Settings of one ``therapref finetune openai`` run."""

    method: str = field(default="sft", metadata={"help": "sft (supervised) or dpo (preference)"})
    model: str = field(default="gpt-4.1-mini-2025-04-14", metadata={"help": "base model to fine-tune"})
    suffix: str | None = field(default=None, metadata={"help": "up to 64 characters added to the model name"})
    n_epochs: int | None = field(default=None, metadata={"help": "epochs (default: OpenAI's auto)"})
    beta: float | None = field(default=None, metadata={"help": "DPO beta (default: OpenAI's auto)"})
    max_tokens: int = field(default=DEFAULT_MAX_TOKENS, metadata={"help": "token limit per example"})
    base_url: str | None = field(default=None, metadata={"help": "API base URL (default: OpenAI's)"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "environment variable holding the key"})
    follow: bool = field(default=False, metadata={"help": "poll until the job finishes, then register the model"})
    poll_seconds: float = field(default=10.0, metadata={"help": "seconds between status polls"})
    timeout_seconds: float | None = field(default=None, metadata={"help": "give up following after this long"})
    actor: str = field(default="cli", metadata={"help": "who started the job (audit trail)"})


@dataclass
class FinetuneResult:
    report: ValidationReport
    file_id: str | None = None
    job_id: str | None = None
    status: str | None = None
    fine_tuned_model: str | None = None
    candidate_id: int | None = None
    error: str = ""


def method_payload(config: FinetuneConfig) -> dict[str, Any]:
    """The ``method`` argument of ``client.fine_tuning.jobs.create``.

    >>> method_payload(FinetuneConfig(method="dpo", beta=0.1))
    {'type': 'dpo', 'dpo': {'hyperparameters': {'beta': 0.1}}}
    >>> method_payload(FinetuneConfig())
    {'type': 'supervised', 'supervised': {'hyperparameters': {}}}
    """
    hyper: dict[str, Any] = {}
    if config.n_epochs is not None:
        hyper["n_epochs"] = config.n_epochs
    if config.method == "dpo":
        if config.beta is not None:
            hyper["beta"] = config.beta
        return {"type": "dpo", "dpo": {"hyperparameters": hyper}}
    return {"type": "supervised", "supervised": {"hyperparameters": hyper}}


def redact(text: str, secret: str | None) -> str:
    """Remove a secret (and anything shaped like an OpenAI key) from a message.

    >>> redact("bad key sk-abc123456789 given", None)
    'bad key [REDACTED] given'
    """
    if secret:
        text = text.replace(secret, "[REDACTED]")
    return KEY_PATTERN.sub("[REDACTED]", text)


def run_finetune(path: str | Path, *, config: FinetuneConfig, api_key: str | None, engine: Engine | None,
                 dry_run: bool = False, log: Callable[[str], None] = print,
                 sleep: Callable[[float], None] = time.sleep) -> FinetuneResult:
    """Validate ``path``; unless ``dry_run``, upload it, start a job and (``follow``) see it through."""
    if config.method not in ("sft", "dpo"):
        raise ExportError(f"--method {config.method!r} is not one of sft, dpo")
    if config.suffix is not None and len(config.suffix) > 64:
        raise ExportError("--suffix must be at most 64 characters")
    report = validate_file(path, config.method, max_tokens=config.max_tokens)
    log(report.summary())
    for warning in report.warnings:
        log(f"warning: {warning}")
    result = FinetuneResult(report=report)
    if dry_run:
        return result
    if not api_key:
        raise ExportError(f"environment variable {config.api_key_env} is not set (it must hold the OpenAI API key)")
    import openai

    client = openai.OpenAI(api_key=api_key, base_url=config.base_url, max_retries=1)
    try:
        _start(client, Path(path), config, result, log)
        _audit(engine, config, "finetune.start", result)
        if config.follow:
            _follow(client, config, result, log, sleep)
    except openai.OpenAIError as exc:
        raise ExportError(redact(f"OpenAI API error: {_api_message(exc)}", api_key)) from None
    if not config.follow:
        return result
    if result.status != "succeeded":
        _audit(engine, config, "finetune.failed", result)
        raise ExportError(redact(f"fine-tuning job {result.job_id} {result.status}: {result.error}", api_key))
    if not result.fine_tuned_model:
        raise ExportError(f"fine-tuning job {result.job_id} succeeded but named no model")
    if engine is not None:
        result.candidate_id = register_model(result, config=config, engine=engine)
    log(f"Registered candidate model {result.fine_tuned_model} (provider openai).")
    return result


def _api_message(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    status = getattr(exc, "status_code", None)
    return f"{status} {message}" if status else message


def _start(client: Any, path: Path, config: FinetuneConfig, result: FinetuneResult, log: Callable[[str], None]) -> None:
    with path.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")
    result.file_id = uploaded.id
    log(f"Uploaded {path.name} as {uploaded.id}.")
    kwargs: dict[str, Any] = {"model": config.model, "training_file": uploaded.id, "method": method_payload(config)}
    if config.suffix:
        kwargs["suffix"] = config.suffix
    job = client.fine_tuning.jobs.create(**kwargs)
    result.job_id, result.status = job.id, job.status
    log(f"Started fine-tuning job {job.id} on {config.model} ({config.method}); status {job.status}.")


def _follow(client: Any, config: FinetuneConfig, result: FinetuneResult, log: Callable[[str], None],
            sleep: Callable[[float], None]) -> None:
    seen: set[str] = set()
    started = time.monotonic()
    while True:
        job = client.fine_tuning.jobs.retrieve(result.job_id)
        events = client.fine_tuning.jobs.list_events(result.job_id, limit=100)
        for event in sorted(events.data, key=lambda e: (e.created_at, e.id)):
            if event.id not in seen:
                seen.add(event.id)
                log(f"  [{event.level}] {event.message}")
        if job.status != result.status:
            log(f"Status: {job.status}")
        result.status = job.status
        if job.status in TERMINAL:
            result.fine_tuned_model = job.fine_tuned_model
            error = getattr(job, "error", None)
            result.error = (getattr(error, "message", None) or "no reason given") if error else "no reason given"
            return
        if config.timeout_seconds is not None and time.monotonic() - started > config.timeout_seconds:
            raise ExportError(f"fine-tuning job {result.job_id} still {job.status} after "
                              f"{config.timeout_seconds:g} s; follow it later with the job id")
        sleep(config.poll_seconds)


def register_model(result: FinetuneResult, *, config: FinetuneConfig, engine: Engine) -> int:
    """Record the fine-tuned model as a candidate (provider openai; the key's variable name only)."""
    from db.audit import audit
    from db.crud import get_or_create_candidate

    with session_scope(engine) as session:
        candidate, _ = get_or_create_candidate(
            result.fine_tuned_model, session=session, provider="openai", model_id=result.fine_tuned_model,
            endpoint=config.base_url, api_key_env=config.api_key_env,
            params={"fine_tuning_job": result.job_id, "base_model": config.model, "method": config.method,
                    "training_file": result.file_id},
        )
        audit(config.actor, "finetune.registered", session=session, target=result.fine_tuned_model,
              details={"job_id": result.job_id, "candidate_id": candidate.id})
        return int(candidate.id)


def _audit(engine: Engine | None, config: FinetuneConfig, action: str, result: FinetuneResult) -> None:
    if engine is None:
        return
    from db.audit import audit

    with session_scope(engine) as session:
        audit(config.actor, action, session=session, target=result.job_id or "",
              details={"file_id": result.file_id, "model": config.model, "method": config.method,
                       "status": result.status, "examples": result.report.examples})
