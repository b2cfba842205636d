"""One round of the loop in one call: export → fine-tune → register → A/B test, kept in one folder.

``run_round(output, config, engine=…, export=…)`` runs the four steps of issue 15's loop and keeps
each step's artifacts and figures in ``output``:

==========  ===================================================  =======================================
step        does                                                  keeps in DIR
==========  ===================================================  =======================================
export      the edge's export function (``exports.run.run_export``  ``export.jsonl`` + its manifest
            with the usual filters), kind = the method's format
finetune    ``policy.run.finetune_and_record`` from the base      ``policy/`` (an HF causal LM, its card,
                                                                  ``therapref_policy.json``); a PolicyRun
register    ``policy.register.register_policy`` (a GGUF for      the candidate row (GGUF in ``policy/``)
            llama.cpp), and the base candidate when none is
            named (see below)
abtest      ``policy.abtest.create_abtest``: comparisons on       ``abtest.json``
            prompts the policy was not trained on, at the
            front of the clinicians' queue
==========  ===================================================  =======================================

``DIR/round.json`` records the settings and each step's status (``pending``, ``running``, ``done``,
``failed``), time and figures. A call on a finished round does nothing and returns its summary; a call
after a crash in step k skips the finished steps (their artifacts checked: the export's hash, the
policy's card, the candidate row, ``abtest.json``) and resumes at k. Settings that differ from the
recorded ones are refused (one line), so that one folder never mixes two rounds.

Bad input (unknown method or base candidate, a missing base folder, a candidate name that belongs to
another policy, an occupied folder that is not a round) is refused before anything is written; when
the first step fails in a folder this call created, the folder is removed again.

The base of the A/B test is ``against`` when given. Without it the base is the base model itself
(the embedded SmolLM2, or the ``base_model`` folder), registered through the same path as the policy
(``register_policy`` on the base's Hugging Face folder: the same GGUF conversion and precision, the
same generation settings and system prompt), so that the A/B test compares weights and nothing else.

This module imports no sibling area beyond the shared owners (docs/architecture.md): the export is
handed in by the edge (``therapref loop round`` passes ``exports.run.run_export``), as is the optional
head-to-head (``analytics.head_to_head``) that a finished round's summary shows.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.engine import Engine

from db.engine import read_only_engine, session_scope
from db.models import utcnow
from policy.errors import PolicyError

STEPS = ("export", "finetune", "register", "abtest")
EXPORT_KIND = {"sft": "sft", "dpo": "dpo", "kto": "kto"}
#: Methods that use the reward model instead of an export: best-of-n trains nothing (N samples at
#: generation time); rs, rloo and grpo sample their own training data from the policy.
REWARD_METHODS = ("best-of-n", "rs", "rloo", "grpo")
METHODS = (*EXPORT_KIND, *REWARD_METHODS)
UNITS = {"sft": "examples", "dpo": "pairs", "kto": "examples", "rs": "prompts", "rloo": "prompts", "grpo": "prompts"}
ROUND_FILE = "round.json"
EXPORT_FILE = "export.jsonl"
POLICY_DIR = "policy"
ABTEST_FILE = "abtest.json"
POLICY_CARD = "therapref_policy.json"
DEFAULT_BASE = "smollm2-base"
DEFAULT_BEST_OF = 8
FORMAT = 1


class RoundError(PolicyError, ValueError):
    """A round that cannot start or go on (one line)."""


class ExportFn(Protocol):
    """The export the edge hands in: writes ``path`` (atomically) with its manifest and returns an
    object with ``rows``, ``manifest``, ``counts`` and ``export_run_id`` (``exports.run.ExportResult``)."""

    def __call__(self, kind: str, path: Path, *, force: bool) -> Any: ...


@dataclass
class RoundConfig:
    """The settings of one round (recorded in ``round.json``; a later call must repeat them)."""

    method: str = field(default="dpo", metadata={
        "help": "sft (on the preferred replies), dpo, kto; or with reward_model: best-of-n (the base's best of "
                "best_of samples), rs (rejection-sampling fine-tuning), rloo or grpo (RL against it)"})
    against: str | None = field(default=None, metadata={
        "help": "base candidate of the A/B test (default: the embedded SmolLM2, registered like the policy)"})
    prompts: int | str | None = field(default=50, metadata={
        "help": "held-out prompts in the A/B test: N at random, a SPEC (ids, source:NAME, topic:NAME; as "
                "`therapref abtest --prompts`), or None = every prompt the policy was not trained on"})
    overlap: int = field(default=1, metadata={"help": "judgments required per A/B comparison"})
    priority: float | None = field(default=None, metadata={
        "help": "queue priority of the A/B comparisons (None = above every other comparison)"})
    base_model: str = field(default="embedded", metadata={"help": "base causal LM: 'embedded' or a folder"})
    epochs: float | None = field(default=None, metadata={"help": "training epochs (None = the method's default)"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters (merged into the saved model)"})
    name: str | None = field(default=None, metadata={"help": "candidate name of the policy (default policy-DIR)"})
    system_prompt: str | None = field(default=None, metadata={
        "help": "system prompt of the policy and the default base ('' = none; None = the prompt's own, else "
                "the persona)"})
    seed: int = field(default=0, metadata={"help": "seed of the A/B prompt draw"})
    max_tokens: int | None = field(default=None, metadata={
        "help": "most tokens per generated A/B reply (None = each candidate's own setting)"})
    training_file: str | None = field(default=None, metadata={
        "help": "training settings TOML (as `therapref finetune local --config`); the fields above override it"})
    training: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "further training settings by their policy.config names (e.g. max_length, learning_rate)"})
    export: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "the export's filters and options as JSON (recorded; the export itself is the edge's)"})
    reward_model: str | None = field(default=None, metadata={
        "help": "best-of-n, rs, rloo, grpo: a `therapref train` folder (or ensemble) that scores replies"})
    safety_model: str | None = field(default=None, metadata={
        "help": "a `therapref train --criterion safety` folder: an unsafe reply is never picked / gets the "
                "lowest reward"})
    best_of: int | None = field(default=None, metadata={
        "help": "best-of-n: samples per reply (default 8); rs: samples per training prompt (the trainer's default)"})
    train_prompts: int | str | None = field(default=None, metadata={
        "help": "rs, rloo, grpo: training prompts (N, a SPEC or a JSONL file; default every prompt outside the "
                "A/B tests)"})

    def as_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), sort_keys=True, default=str))


def check_config(config: RoundConfig) -> RoundConfig:
    """Check the settings that need no database; return them with the method normalised.

    >>> check_config(RoundConfig(method="SFT")).method
    'sft'
    >>> check_config(RoundConfig(method="ppo"))
    Traceback (most recent call last):
    ...
    policy.loop.RoundError: --method 'ppo' is not one of sft, dpo, kto, best-of-n, rs, rloo, grpo
    >>> check_config(RoundConfig(prompts=0))
    Traceback (most recent call last):
    ...
    policy.loop.RoundError: --prompts must be at least 1, not 0
    """
    method = str(config.method).strip().lower()
    if method not in METHODS:
        raise RoundError(f"--method {config.method!r} is not one of {', '.join(METHODS)}")
    config.method = method
    if method in REWARD_METHODS and not config.reward_model:
        raise RoundError(f"--method {method} needs --reward-model DIR (a `therapref train` folder)")
    if method not in REWARD_METHODS and (config.reward_model or config.safety_model or config.best_of):
        raise RoundError(f"--reward-model/--safety-model/--best-of do not apply to --method {method}")
    if config.best_of is not None and config.best_of < 1:
        raise RoundError(f"--best-of must be at least 1, not {config.best_of}")
    if isinstance(config.prompts, str) and config.prompts.strip().isdigit():
        config.prompts = int(config.prompts)
    if isinstance(config.prompts, int) and config.prompts < 1:
        raise RoundError(f"--prompts must be at least 1, not {config.prompts}")
    if config.overlap < 1:
        raise RoundError(f"--overlap must be at least 1, not {config.overlap}")
    if config.epochs is not None and config.epochs <= 0:
        raise RoundError(f"--epochs must be positive, not {config.epochs:g}")
    if config.max_tokens is not None and config.max_tokens < 1:
        raise RoundError(f"--max-tokens must be at least 1, not {config.max_tokens}")
    if config.name is not None and (not config.name.strip() or any(c in config.name for c in "\r\n\t")):
        raise RoundError("--name must be one non-empty line")
    if config.against is not None and not config.against.strip():
        raise RoundError("--against names no candidate")
    return config


def default_name(output: Path) -> str:
    """The policy's candidate name when none is given: ``policy-`` and the folder's name.

    >>> default_name(Path("runs/Round 3"))
    'policy-round-3'
    """
    slug = re.sub(r"[^a-z0-9._-]+", "-", output.resolve().name.lower()).strip("-") or "round"
    return f"policy-{slug}"


def config_difference(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """The first setting that differs between a recorded round and this call (None when equal).

    >>> config_difference({"method": "dpo", "seed": 0}, {"method": "sft", "seed": 0})
    "method: 'dpo' in the folder, 'sft' now"
    >>> config_difference({"a": 1}, {"a": 1}) is None
    True
    """
    for key in sorted(set(recorded) | set(current)):
        if recorded.get(key) != current.get(key):
            return f"{key}: {recorded.get(key)!r} in the folder, {current.get(key)!r} now"
    return None


# --- the round's record -------------------------------------------------------------------------------


@dataclass
class StepRecord:
    status: str = "pending"
    started_at: str | None = None
    finished_at: str | None = None
    seconds: float | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class RoundResult:
    """What a round holds now; ``lines`` are one per step, ``summary`` the last line."""

    output: Path
    config: RoundConfig
    steps: dict[str, StepRecord]
    lines: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    head_to_head: str | None = None

    @property
    def finished(self) -> bool:
        return all(self.steps[s].status == "done" for s in STEPS)

    @property
    def summary(self) -> str:
        return summary_line(self.output, self.steps, head_to_head=self.head_to_head)


def summary_line(output: Path, steps: Mapping[str, StepRecord], *, head_to_head: str | None = None) -> str:
    """The round's one summary line.

    >>> steps = {s: StepRecord("done") for s in STEPS}
    >>> steps["export"].figures = {"rows": 12, "kind": "dpo"}
    >>> steps["finetune"].figures = {"policy_run_id": 3, "seconds": 61.0}
    >>> steps["register"].figures = {"candidate": "policy-r1", "base": "smollm2-base"}
    >>> steps["abtest"].figures = {"abtest_id": 2, "comparisons": 50, "excluded_seen": 12}
    >>> print(summary_line(Path("r1"), steps))
    Round r1 finished: 12 dpo rows → policy run 3 → candidate policy-r1 → A/B test 2 vs smollm2-base: 50 comparisons on held-out prompts (12 seen in training left out).
    """  # noqa: E501
    done = [s for s in STEPS if steps[s].status == "done"]
    if len(done) < len(STEPS):
        waiting = next(s for s in STEPS if steps[s].status != "done")
        return (f"Round {output} unfinished: {len(done)} of {len(STEPS)} steps done; next: {waiting} "
                f"({steps[waiting].status}{': ' + steps[waiting].error if steps[waiting].error else ''}).")
    e, f, r, a = (steps[s].figures for s in STEPS)
    trained = (f"{e.get('rows')} {e.get('kind')} rows → " if not e.get("skipped") else "") + (
        f"policy run {f.get('policy_run_id')} → " if not f.get("skipped") else "")
    text = (f"Round {output} finished: {trained}"
            f"candidate {r.get('candidate')} → A/B test {a.get('abtest_id')} vs {r.get('base')}: "
            f"{a.get('comparisons')} comparisons on held-out prompts ({a.get('excluded_seen', 0)} seen in training "
            "left out)")
    return text + (f"; {head_to_head}." if head_to_head else ".")


def _read_record(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RoundError(f"{path}: unreadable round record ({exc}); move it away to start over") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("steps"), dict):
        raise RoundError(f"{path}: not a round record of this version; move it away to start over")
    return data


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``path`` whole or not at all (a temporary file in the same folder, then a rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save(output: Path, config: RoundConfig, steps: Mapping[str, StepRecord]) -> None:
    _write_json(output / ROUND_FILE, {"format": FORMAT, "config": config.as_json(),
                                      "steps": {s: asdict(steps[s]) for s in STEPS}})


@contextmanager
def _locked(output: Path) -> Iterator[None]:
    """One round process per folder at a time (a second one is refused, not queued)."""
    with open(output / ".round.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RoundError(f"{output}: another `loop round` is running on this folder") from None
        yield


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- checks before anything is written ------------------------------------------------------------------


def _preflight(output: Path, config: RoundConfig, *, engine: Engine) -> tuple[dict[str, Any] | None, str]:
    """Refuse bad input before writing: returns the recorded round (or None) and the policy's name."""
    from sqlmodel import select

    from db.models import CandidateModel

    if output.exists() and not output.is_dir():
        raise RoundError(f"{output}: exists and is not a folder")
    record = _read_record(output / ROUND_FILE) if output.is_dir() else None
    if record is None and output.is_dir() and any(p.name != ".round.lock" for p in output.iterdir()):
        raise RoundError(f"{output}: folder is not empty and holds no {ROUND_FILE}; choose a new --output")
    if record is not None:
        difference = config_difference(record.get("config") or {}, config.as_json())
        if difference:
            raise RoundError(f"{output} holds a round with other settings ({difference}); use another --output")
    if config.base_model != "embedded" and not Path(config.base_model).is_dir():
        raise RoundError(f"--base-model {config.base_model}: no such folder")
    if config.training_file is not None:
        from policy.config import load_config

        # A bad file is one line now, not after the export.
        load_config(config.method, config.training_file, output_dir=str(output / POLICY_DIR))
    name = config.name.strip() if config.name else default_name(output)
    policy_dir = str((output / POLICY_DIR).resolve())
    with session_scope(read_only_engine(engine)) as session:
        if config.against is not None:
            if session.exec(select(CandidateModel.id).where(CandidateModel.name == config.against)).first() is None:
                known = ", ".join(sorted(session.exec(select(CandidateModel.name)).all())) or "none"
                raise RoundError(f"--against {config.against!r}: unknown candidate (known: {known})")
            if config.against == name:
                raise RoundError("--against names the policy itself; choose another base or --name")
        row = session.exec(select(CandidateModel).where(CandidateModel.name == name)).first()
        if row is not None:
            params = row.params if isinstance(row.params, dict) else {}
            policy = params.get("policy")
            ours = (isinstance(params.get("best_of_n"), dict) and params.get("reward_model") ==
                    str(Path(str(config.reward_model)).expanduser().resolve())) if config.method == "best-of-n" else (
                isinstance(policy, dict) and policy.get("model_dir") == policy_dir)
            if not ours:
                raise RoundError(f"candidate {name!r} already exists for something else; pass --name")
    for label, folder in (("--reward-model", config.reward_model), ("--safety-model", config.safety_model)):
        if folder is not None:
            from reward.scoring import RewardError, check_model_folder

            try:
                check_model_folder(folder)
            except RewardError as exc:
                raise RoundError(f"{label} {exc}") from None
    return record, name


# --- the steps ------------------------------------------------------------------------------------------


def _step_export(output: Path, config: RoundConfig, export: ExportFn, *, redo: bool) -> tuple[dict[str, Any], str]:
    if config.method in REWARD_METHODS:
        why = ("best-of-n samples at generation time" if config.method == "best-of-n" else
               f"{config.method} samples its own training data from the policy")
        return {"skipped": why, "rows": 0, "kind": config.method}, f"not needed ({why})"
    kind = EXPORT_KIND[config.method]
    path = output / EXPORT_FILE
    result = export(kind, path, force=redo)
    manifest = Path(result.manifest)
    figures = {"kind": kind, "rows": int(result.rows), "path": str(path), "manifest": str(manifest),
               "export_run_id": result.export_run_id, "sha256": sha256_of(path),
               "dropped": dict((result.counts or {}).get("dropped", {})),
               "judgments_used": ((result.counts or {}).get("judgments") or {}).get("judgments_used")}
    return figures, f"wrote {figures['rows']} {kind} rows to {path}"


def _export_done(output: Path, figures: Mapping[str, Any]) -> bool:
    if figures.get("skipped"):
        return True
    path = output / EXPORT_FILE
    return path.is_file() and Path(str(figures.get("manifest", ""))).is_file() and sha256_of(path) == figures.get(
        "sha256")


def _training_overrides(config: RoundConfig, policy_dir: Path) -> dict[str, Any]:
    overrides = {**config.training, "output_dir": str(policy_dir), "base_model": config.base_model}
    if config.lora:
        overrides["use_lora"] = True
    if config.epochs is not None:
        overrides["num_train_epochs"] = config.epochs
    return overrides


def _step_finetune(output: Path, config: RoundConfig, *, engine: Engine) -> tuple[dict[str, Any], str]:
    from policy.config import load_config
    from policy.run import finetune_and_record

    if config.method == "best-of-n":
        return {"skipped": "best-of-n trains nothing"}, "not needed (best-of-n trains nothing)"
    policy_dir = output / POLICY_DIR
    started = time.perf_counter()
    # A crash leaves either nothing (the trainer works in a side folder and removes it) or a published
    # folder without its PolicyRun row: resume from its checkpoint where it has one, else start over
    # (the trainer refuses an occupied folder).
    resume = policy_dir.is_dir() and any(policy_dir.glob("checkpoint-*"))
    if policy_dir.is_dir() and not resume:
        shutil.rmtree(policy_dir)
    overrides = _training_overrides(config, policy_dir)
    if resume:
        overrides["resume_from_checkpoint"] = True
    if config.method in REWARD_METHODS:
        # The policy samples as it will be A/B-tested: the round's system prompt and reply length.
        overrides.update({key: value for key, value in (
            ("reward_model", config.reward_model), ("safety_model", config.safety_model),
            ("prompts", config.train_prompts), ("best_of", config.best_of), ("system_prompt", config.system_prompt),
            ("max_completion_length", config.max_tokens)) if value is not None})
        if config.train_prompts is not None:
            overrides["prompts"] = str(config.train_prompts)
    settings = load_config(config.method, config.training_file, **overrides)
    if config.method in REWARD_METHODS:
        from policy.run import finetune_online_and_record

        result = finetune_online_and_record(config=settings, engine=engine, actor="loop")
    else:
        result = finetune_and_record(output / EXPORT_FILE, config=settings, engine=engine, actor="loop")
    metrics = dict(result.metrics or {})
    seconds = time.perf_counter() - started
    figures = {"policy_run_id": result.run_id, "path": str(result.path), "seconds": round(seconds, 1),
               "resumed": resume, "n_train": metrics.get("n_train"), "global_step": metrics.get("global_step"),
               "loss_start": metrics.get("loss_start"), "loss_end": metrics.get("loss_end"),
               "train_seconds": metrics.get("train_seconds")}
    loss = ""
    if isinstance(figures["loss_start"], int | float) and isinstance(figures["loss_end"], int | float):
        loss = f", loss {figures['loss_start']:.3f} → {figures['loss_end']:.3f}"
    return figures, (f"trained {config.method} on {figures['n_train']} {UNITS[config.method]} "
                     f"({figures['global_step']} steps{loss}): policy run {result.run_id} in {policy_dir}")


def _finetune_done(output: Path, figures: Mapping[str, Any]) -> bool:
    if figures.get("skipped"):
        return True
    return (output / POLICY_DIR / POLICY_CARD).is_file() and figures.get("policy_run_id") is not None


def base_candidate_name(base_model: str, system_prompt: str | None) -> str:
    """The default A/B base's candidate name: one per base folder and system prompt.

    >>> base_candidate_name("embedded", None)
    'smollm2-base'
    >>> base_candidate_name("embedded", "") == base_candidate_name("embedded", "")
    True
    >>> base_candidate_name("/runs/tiny", None).startswith("base-tiny-")
    True
    """
    if base_model == "embedded":
        name, key = DEFAULT_BASE, ""
    else:
        folder = Path(base_model).expanduser().resolve()
        slug = re.sub(r"[^a-z0-9._-]+", "-", folder.name.lower()).strip("-") or "model"
        name, key = f"base-{slug}", str(folder)
    if system_prompt is not None or key:
        name += "-" + hashlib.sha256(f"{key}\0{system_prompt}".encode()).hexdigest()[:8]
    return name


def ensure_default_base(base_model: str, *, session: Any, system_prompt: str | None,
                        note: Callable[[str], None] | None = None) -> str:
    """The base model registered as the A/B base exactly as a policy is (same GGUF path and precision,
    generation settings and system prompt); returns its candidate name."""
    from candidates.embedded import smollm2_hf_path
    from policy.register import register_policy

    folder = smollm2_hf_path() if base_model == "embedded" else Path(base_model)
    name = base_candidate_name(base_model, system_prompt)
    register_policy(folder, name, session=session, system_prompt=system_prompt, note=note)
    return name


def _step_register(output: Path, config: RoundConfig, name: str, *, engine: Engine) -> tuple[dict[str, Any], str]:
    from policy.register import register_policy

    notes: list[str] = []
    with session_scope(engine) as session:
        base = config.against or ensure_default_base(config.base_model, session=session,
                                                     system_prompt=config.system_prompt, note=notes.append)
        if config.method == "best-of-n":
            from candidates.best_of_n import register_best_of_n

            row = register_best_of_n(name, of=base, best_of=config.best_of or DEFAULT_BEST_OF,
                                     reward_model=str(config.reward_model), safety_model=config.safety_model,
                                     session=session, actor="loop")
        else:
            row = register_policy(output / POLICY_DIR, name, session=session, system_prompt=config.system_prompt,
                                  note=notes.append)
        figures = {"candidate": row.name, "candidate_id": row.id, "provider": row.provider,
                   "model_id": row.model_id, "base": base, "notes": notes}
    return figures, f"registered candidate {name} ({figures['provider']}); A/B base {base}"


def _register_done(config: RoundConfig, figures: Mapping[str, Any], *, engine: Engine) -> bool:
    from sqlmodel import select

    from db.models import CandidateModel

    names = [figures.get("candidate"), figures.get("base")]
    with session_scope(read_only_engine(engine)) as session:
        found = set(session.exec(select(CandidateModel.name).where(CandidateModel.name.in_(names))).all())
    return None not in names and found == set(names)


def _step_abtest(output: Path, config: RoundConfig, steps: Mapping[str, StepRecord], *, engine: Engine,
                 generation: Mapping[str, Any] | None, progress: bool) -> tuple[dict[str, Any], str]:
    from sqlmodel import select

    from db.models import CandidateModel
    from policy.abtest import create_abtest, spec_for

    names = steps["register"].figures
    specs = None
    if generation:
        # Both sides generate with the same machine settings (threads, max_tokens, …) on top of their own.
        overrides = {**({"max_tokens": config.max_tokens} if config.max_tokens else {}), **generation}
        with session_scope(read_only_engine(engine)) as session:
            rows = session.exec(select(CandidateModel).where(
                CandidateModel.name.in_([names["candidate"], names["base"]]))).all()
            specs = [spec_for(row, overrides=overrides) for row in rows if row.provider in ("llamacpp", "transformers")]
    result = create_abtest(names["candidate"], names["base"], engine=engine, prompts=config.prompts,
                           overlap=config.overlap, priority=config.priority, seed=config.seed, generate=True,
                           specs=specs, max_tokens=config.max_tokens, progress=progress, actor="loop")
    data = {**result.as_dict(), "round": str(output)}
    _write_json(output / ABTEST_FILE, data)
    figures = {"abtest_id": result.abtest_id, "comparisons": result.created + result.existing,
               "created": result.created, "prompts": len(result.prompt_ids), "excluded_seen": result.excluded_seen,
               "missing_replies": result.missing_replies, "priority": result.priority,
               "path": str(output / ABTEST_FILE), "generation": result.generation}
    return figures, str(result)


def _abtest_done(output: Path, figures: Mapping[str, Any]) -> bool:
    return (output / ABTEST_FILE).is_file() and figures.get("abtest_id") is not None


# --- the round ------------------------------------------------------------------------------------------


def run_round(output: str | Path, config: RoundConfig, *, engine: Engine, export: ExportFn,
              log: Callable[[str], None] = print, generation: Mapping[str, Any] | None = None,
              progress: bool = False,
              head_to_head: Callable[[str, str], str | None] | None = None) -> RoundResult:
    """Run (or resume, or just report) the round in ``output``; see the module docstring.

    ``log`` gets one line per step. ``generation`` overrides both local candidates' generation settings
    for the A/B replies (e.g. ``{"threads": 1}`` on a busy machine; default: each candidate as
    registered). ``head_to_head(new, base)`` may return a
    line with the clinicians' results so far, shown in the summary of a finished round.
    """
    output = Path(output)
    config = check_config(config)
    record, name = _preflight(output, config, engine=engine)
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    steps = {s: StepRecord(**(record or {}).get("steps", {}).get(s, {})) for s in STEPS}
    result = RoundResult(output=output, config=config, steps=steps)
    try:
        with _locked(output):
            if record is None:
                _save(output, config, steps)
            rerun = False  # once a step runs again, every later step does too (it used the old output)
            for index, step in enumerate(STEPS, start=1):
                record_ = steps[step]
                prefix = f"[{index}/{len(STEPS)}] {step}:"
                if not rerun and record_.status == "done" and _is_done(step, output, config, record_, engine=engine):
                    result.lines.append(f"{prefix} done earlier ({_brief(step, record_)})")
                    log(result.lines[-1])
                    continue
                redo, rerun = record_.status != "pending", True
                record_.status, record_.error = "running", None
                record_.started_at, record_.finished_at = utcnow().isoformat(), None
                _save(output, config, steps)
                started = time.perf_counter()
                try:
                    figures, line = _run_step(step, output, config, steps, name, engine=engine, export=export,
                                              redo=redo, generation=generation, progress=progress)
                except BaseException as exc:
                    record_.status = "failed"
                    record_.error = (str(exc).splitlines() or [type(exc).__name__])[0] or type(exc).__name__
                    record_.seconds = round(time.perf_counter() - started, 1)
                    _save(output, config, steps)
                    raise
                record_.status, record_.figures = "done", figures
                record_.seconds = round(time.perf_counter() - started, 1)
                record_.finished_at = utcnow().isoformat()
                _save(output, config, steps)
                result.ran.append(step)
                result.lines.append(f"{prefix} {line} ({record_.seconds:.1f} s)")
                log(result.lines[-1])
    except BaseException:
        if created and not any(steps[s].status == "done" for s in STEPS):
            shutil.rmtree(output, ignore_errors=True)  # nothing of this call's making is kept
        raise
    if head_to_head is not None and result.finished:
        figures = steps["register"].figures
        result.head_to_head = head_to_head(figures["candidate"], figures["base"])
    return result


def _is_done(step: str, output: Path, config: RoundConfig, record: StepRecord, *, engine: Engine) -> bool:
    if step == "export":
        return _export_done(output, record.figures)
    if step == "finetune":
        return _finetune_done(output, record.figures)
    if step == "register":
        return _register_done(config, record.figures, engine=engine)
    return _abtest_done(output, record.figures)


def _brief(step: str, record: StepRecord) -> str:
    f = record.figures
    if f.get("skipped"):
        return "not needed"
    if step == "export":
        return f"{f.get('rows')} {f.get('kind')} rows"
    if step == "finetune":
        return f"policy run {f.get('policy_run_id')}"
    if step == "register":
        return f"candidate {f.get('candidate')}, base {f.get('base')}"
    return f"A/B test {f.get('abtest_id')}, {f.get('comparisons')} comparisons"


def _run_step(step: str, output: Path, config: RoundConfig, steps: Mapping[str, StepRecord], name: str, *,
              engine: Engine, export: ExportFn, redo: bool, generation: Mapping[str, Any] | None,
              progress: bool) -> tuple[dict[str, Any], str]:
    if step == "export":
        return _step_export(output, config, export, redo=redo)
    if step == "finetune":
        return _step_finetune(output, config, engine=engine)
    if step == "register":
        return _step_register(output, config, name, engine=engine)
    return _step_abtest(output, config, steps, engine=engine, generation=generation, progress=progress)


def read_round(output: str | Path) -> dict[str, Any] | None:
    """The round record of ``output`` (None when there is none)."""
    return _read_record(Path(output) / ROUND_FILE)


__all__ = ["STEPS", "RoundConfig", "RoundError", "RoundResult", "StepRecord", "check_config", "config_difference",
           "base_candidate_name", "default_name", "ensure_default_base", "read_round", "run_round", "summary_line"]
