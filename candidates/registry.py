"""The candidate-model registry: a TOML file of ``[[candidate]]`` tables, mirrored into CandidateModel.

A registry file looks like this (see ``candidates.example.toml`` and ``docs/candidates.md``)::

    [defaults]                  # optional; applies to every candidate below
    max_tokens = 256

    [[candidate]]
    name = "gpt-4o-mini"
    provider = "openai"
    model_id = "gpt-4o-mini"
    api_key_env = "OPENAI_API_KEY"   # the NAME of the variable; the key itself is never stored

API keys never enter this module as environment reads: callers pass a ``secrets`` mapping
``{env_name: value}`` built at the edge (the CLI).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from db.crud import get_or_create_candidate
from db.errors import TheraPrefError
from db.models import CandidateModel

PROVIDERS = ("openai", "llamacpp", "transformers")
EMBEDDED = "embedded"
DEFAULT_PERSONA = (
    "You are a warm, careful therapy assistant supporting a person between sessions with their "
    "clinician. Listen first: reflect back what you heard and name the feeling without judging it. "
    "Ask one open question at a time. Offer small, concrete coping steps only when they fit, and never "
    "diagnose or prescribe. Keep replies short and plain. If the person mentions suicide, self-harm, "
    "harm to others or abuse, say clearly that you are concerned, encourage them to contact emergency "
    "services or a crisis line now, and to tell someone they trust."
)
PLAIN_ASSISTANT = "You are a helpful assistant."
# A CandidateModel whose params hold this key is a fine-tuned policy registered from its folder
# (policy/register.py writes it, same literal: policy may not import this module); `therapref generate`
# includes such rows besides the registry file's candidates (``registered_policy_specs``).
POLICY_PARAM = "policy"
# A CandidateModel whose params hold this key is a best-of-n candidate registered by `therapref candidates
# add NAME --best-of N --of BASE` ({"of": BASE}); `therapref generate` includes it like a policy.
BEST_OF_PARAM = "best_of_n"


class RegistryError(TheraPrefError, ValueError):
    """A problem in the candidate registry (file, entry, field)."""


@dataclass
class CandidateSpec:
    """One candidate model as configured in the registry (TRL-style config: every field has help)."""

    name: str = field(metadata={"help": "unique name shown in reports (never to clinicians)"})
    provider: str = field(metadata={"help": "openai (any OpenAI-compatible endpoint), llamacpp or transformers"})
    model_id: str = field(default=EMBEDDED, metadata={
        "help": "model id for the endpoint (e.g. gpt-4o-mini, ft:gpt-3.5-turbo-…); for local providers a "
                "GGUF file / HF folder, or 'embedded' for SmolLM2-135M-Instruct"})
    base_url: str | None = field(default=None, metadata={
        "help": "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (openai provider; default OpenAI)"})
    api_key_env: str | None = field(default=None, metadata={
        "help": "NAME of the environment variable holding the API key (the key is never stored)"})
    system_prompt: str | None = field(default=None, metadata={
        "help": "system message; unset = the prompt's own system message, else DEFAULT_PERSONA; "
                "empty string = no system message"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (0 = greedy)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass"})
    max_tokens: int = field(default=256, metadata={"help": "most tokens per reply"})
    seed: int | None = field(default=None, metadata={
        "help": "sampling seed; reply k of a prompt uses seed + k (local providers default to 0)"})
    replies_per_prompt: int = field(default=1, metadata={"help": "how many replies to collect per prompt"})
    concurrency: int = field(default=4, metadata={"help": "requests in flight at once (openai provider)"})
    timeout: float = field(default=60.0, metadata={"help": "seconds per request before it counts as timed out"})
    max_retries: int = field(default=4, metadata={"help": "retries on 429, 5xx, timeouts and connection errors"})
    backoff_base: float = field(default=1.0, metadata={"help": "first retry delay in seconds (doubles, jittered)"})
    backoff_max: float = field(default=30.0, metadata={"help": "longest delay between retries in seconds"})
    batch_size: int = field(default=8, metadata={"help": "prompts per generate() call (transformers provider)"})
    n_ctx: int = field(default=2048, metadata={"help": "context window (llamacpp provider)"})
    threads: int | None = field(default=None, metadata={
        "help": "CPU threads for local providers (unset = library default; 1 is fastest on a busy machine)"})
    extra_params: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "extra request-body fields for the endpoint (openai provider), e.g. max_completion_tokens"})
    best_of: int = field(default=1, metadata={
        "help": "sample this many replies per stored reply and keep the reward model's best (needs "
                "reward_model); every sample and its scores are kept"})
    reward_model: str | None = field(default=None, metadata={
        "help": "best-of-n: a `therapref train` folder (or ensemble) that picks the best sample"})
    safety_model: str | None = field(default=None, metadata={
        "help": "best-of-n: a `therapref train --criterion safety` folder; a sample it scores below "
                "safety_threshold is never picked while a safe one exists"})
    safety_threshold: float = field(default=0.0, metadata={
        "help": "best-of-n: safety-model score below which a sample counts as unsafe"})

    def params(self) -> dict[str, Any]:
        """The generation parameters mirrored into ``CandidateModel.params`` (no secrets).

        >>> CandidateSpec("a", "llamacpp", seed=3).params()["seed"]
        3
        """
        skip = {"name", "provider", "model_id", "base_url", "api_key_env", "system_prompt", "replies_per_prompt"}
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def resolve_system(self, prompt_system: str | None) -> tuple[str | None, str]:
        """The system message for one prompt and where it came from.

        >>> CandidateSpec("a", "openai").resolve_system("Gaby persona")
        ('Gaby persona', 'prompt')
        >>> CandidateSpec("a", "openai").resolve_system(None)[1]
        'persona'
        >>> CandidateSpec("a", "openai", system_prompt="").resolve_system("x")
        (None, 'none')
        """
        if self.system_prompt is None:
            if prompt_system and prompt_system.strip():
                return prompt_system, "prompt"
            return DEFAULT_PERSONA, "persona"
        if not self.system_prompt.strip():
            return None, "none"
        return self.system_prompt, "candidate"


_FIELDS = {f.name: f for f in fields(CandidateSpec)}
_INT_FIELDS = {"max_tokens", "replies_per_prompt", "concurrency", "max_retries", "batch_size", "n_ctx", "best_of"}
_FLOAT_FIELDS = {"temperature", "top_p", "timeout", "backoff_base", "backoff_max", "safety_threshold"}
_STR_FIELDS = {"name", "provider", "model_id", "base_url", "api_key_env", "system_prompt", "reward_model",
               "safety_model"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def spec_from_dict(data: Mapping[str, Any], *, where: str = "candidate") -> CandidateSpec:
    """Validate one registry entry and build its spec; errors name the entry and the field.

    >>> spec_from_dict({"name": "m", "provider": "llamacpp", "max_tokens": 32}).max_tokens
    32
    >>> spec_from_dict({"name": "m", "provider": "ollama"})
    Traceback (most recent call last):
    ...
    candidates.registry.RegistryError: candidate: unknown provider 'ollama' (expected openai, llamacpp, transformers)
    """
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise RegistryError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(_FIELDS)})")
    for required in ("name", "provider"):
        if not isinstance(data.get(required), str) or not data[required].strip():
            raise RegistryError(f"{where}: field {required!r} is required (a non-empty string)")
    values = dict(data)
    for key, value in values.items():
        if key in _STR_FIELDS and value is not None and not isinstance(value, str):
            raise RegistryError(f"{where}: field {key!r} must be a string, not {value!r}")
        if key in _INT_FIELDS and (isinstance(value, bool) or not isinstance(value, int)):
            raise RegistryError(f"{where}: field {key!r} must be an integer, not {value!r}")
        if key in ("seed", "threads") and value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise RegistryError(f"{where}: field {key!r} must be an integer, not {value!r}")
        if key in _FLOAT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise RegistryError(f"{where}: field {key!r} must be a number, not {value!r}")
            values[key] = float(value)
        if key == "extra_params" and not isinstance(value, dict):
            raise RegistryError(f"{where}: field 'extra_params' must be a table")
    spec = CandidateSpec(**values)
    spec.name = spec.name.strip()
    _check_ranges(spec, where)
    return spec


def _check_ranges(spec: CandidateSpec, where: str) -> None:
    if spec.provider not in PROVIDERS:
        raise RegistryError(f"{where}: unknown provider {spec.provider!r} (expected {', '.join(PROVIDERS)})")
    checks = [
        (0.0 <= spec.temperature <= 2.0, "temperature must be between 0 and 2"),
        (0.0 < spec.top_p <= 1.0, "top_p must be in (0, 1]"),
        (spec.max_tokens >= 1, "max_tokens must be at least 1"),
        (spec.replies_per_prompt >= 1, "replies_per_prompt must be at least 1"),
        (spec.concurrency >= 1, "concurrency must be at least 1"),
        (spec.timeout > 0, "timeout must be positive"),
        (spec.max_retries >= 0, "max_retries must be 0 or more"),
        (spec.backoff_base >= 0 and spec.backoff_max >= 0, "backoff_base and backoff_max must be 0 or more"),
        (spec.batch_size >= 1, "batch_size must be at least 1"),
        (spec.n_ctx >= 64, "n_ctx must be at least 64"),
        (spec.threads is None or spec.threads >= 1, "threads must be at least 1"),
        (spec.best_of >= 1, f"best_of must be at least 1, not {spec.best_of}"),
        (spec.best_of <= 1000, f"best_of must be at most 1000, not {spec.best_of}"),
        (spec.best_of == 1 or bool(spec.reward_model), "best_of > 1 needs reward_model (the folder that picks)"),
        (spec.best_of > 1 or not (spec.reward_model or spec.safety_model),
         "reward_model/safety_model only apply with best_of > 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise RegistryError(f"{where}: {message}")
    if spec.api_key_env is not None and not _ENV_NAME.match(spec.api_key_env):
        raise RegistryError(f"{where}: api_key_env must be the NAME of an environment variable "
                            "(letters, digits, _), not the key itself")
    if spec.provider == "openai":
        if spec.model_id == EMBEDDED or not spec.model_id.strip():
            raise RegistryError(f"{where}: provider openai needs model_id (the endpoint's model name)")
        if spec.base_url is None and spec.api_key_env is None:
            raise RegistryError(f"{where}: provider openai without base_url talks to OpenAI and needs api_key_env")
        if spec.base_url is not None and not re.match(r"^https?://[^/\s]+", spec.base_url):
            raise RegistryError(f"{where}: base_url must start with http:// or https://, not {spec.base_url!r}")
    elif spec.base_url is not None or spec.api_key_env is not None:
        raise RegistryError(f"{where}: base_url/api_key_env only apply to provider openai")


def _entry_lines(text: str) -> list[int]:
    """Line numbers of each ``[[candidate]]`` header, in order.

    >>> _entry_lines("x = 1\\n[[candidate]]\\nname='a'\\n [[ candidate ]]\\n")
    [2, 4]
    """
    return [i for i, line in enumerate(text.splitlines(), 1)
            if re.match(r"^\s*\[\[\s*candidates?\s*\]\]", line)]


def parse_registry(text: str, *, source: str = "candidates.toml",
                   secrets: Mapping[str, str] | None = None) -> list[CandidateSpec]:
    """Parse registry TOML text. With ``secrets``, every ``api_key_env`` must be present in it.

    >>> specs = parse_registry('[defaults]\\nmax_tokens = 16\\n[[candidate]]\\nname = "a"\\nprovider = "llamacpp"\\n')
    >>> (specs[0].name, specs[0].max_tokens)
    ('a', 16)
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"defaults", "candidate", "candidates"})
    if unknown:
        raise RegistryError(f"{source}: unknown top-level key {unknown[0]!r} (expected [defaults] and [[candidate]])")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise RegistryError(f"{source}: [defaults] must be a table")
    if "name" in defaults:
        raise RegistryError(f"{source}: [defaults] cannot set 'name'")
    entries = data.get("candidate", data.get("candidates", []))
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise RegistryError(f"{source}: candidates must be [[candidate]] tables")
    if not entries:
        raise RegistryError(f"{source}: no [[candidate]] entries")
    lines = _entry_lines(text)
    specs: list[CandidateSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        label = f"candidate {entry.get('name')!r}" if isinstance(entry.get("name"), str) else f"candidate #{index + 1}"
        where = f"{source}:{lines[index]}: {label}" if index < len(lines) else f"{source}: {label}"
        spec = spec_from_dict({**defaults, **entry}, where=where)
        if spec.name in seen:
            raise RegistryError(f"{where}: duplicate name {spec.name!r}")
        seen.add(spec.name)
        specs.append(spec)
    if secrets is not None:
        check_secrets(specs, secrets)
    return specs


def load_registry(path: str | Path, *, secrets: Mapping[str, str] | None = None) -> list[CandidateSpec]:
    """Read and validate a registry file (one clear error naming file, line and problem)."""
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"{path}: registry file not found (start from candidates.example.toml)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: cannot read: {exc}") from None
    return parse_registry(text, source=str(path), secrets=secrets)


def check_secrets(specs: list[CandidateSpec], secrets: Mapping[str, str]) -> None:
    """Every ``api_key_env`` must name a set, non-empty variable.

    >>> check_secrets([CandidateSpec("a", "openai", "m", api_key_env="K")], {})
    Traceback (most recent call last):
    ...
    candidates.registry.RegistryError: candidate 'a': environment variable K (its API key) is not set
    """
    for spec in specs:
        if spec.api_key_env and not (secrets.get(spec.api_key_env) or "").strip():
            raise RegistryError(f"candidate {spec.name!r}: environment variable {spec.api_key_env} "
                                "(its API key) is not set")


def secret_names(specs: list[CandidateSpec]) -> list[str]:
    """The env var names the CLI must read (and nothing else).

    >>> secret_names([CandidateSpec("a", "openai", "m", api_key_env="K"), CandidateSpec("b", "llamacpp")])
    ['K']
    """
    return sorted({s.api_key_env for s in specs if s.api_key_env})


def sync_registry(specs: list[CandidateSpec], *, session: Session) -> dict[str, CandidateModel]:
    """Mirror specs into CandidateModel rows (created or updated; the key's env NAME only)."""
    rows = {}
    for spec in specs:
        params = spec.params()
        previous = session.exec(select(CandidateModel.params).where(CandidateModel.name == spec.name)).first()
        for key in (POLICY_PARAM, BEST_OF_PARAM):
            if isinstance(previous, dict) and key in previous:
                params[key] = previous[key]  # a registered policy (best-of-n candidate) stays one
        row, _ = get_or_create_candidate(
            spec.name, session=session, provider=spec.provider, model_id=spec.model_id,
            endpoint=spec.base_url, api_key_env=spec.api_key_env, params=params,
            system_prompt=spec.system_prompt, replies_per_prompt=spec.replies_per_prompt,
        )
        rows[spec.name] = row
    return rows


def registered_policy_specs(*, session: Session) -> list[CandidateSpec]:
    """Specs of the policies registered in the database (``therapref candidates add``,
    ``therapref finetune local --register``), by name; their params fill the spec's fields."""
    specs = []
    for row in session.exec(select(CandidateModel).order_by(CandidateModel.name)).all():
        if not (isinstance(row.params, dict) and (POLICY_PARAM in row.params or BEST_OF_PARAM in row.params)):
            continue
        data = {key: value for key, value in row.params.items() if key in _FIELDS}
        data.update(name=row.name, provider=row.provider, model_id=row.model_id, system_prompt=row.system_prompt,
                    replies_per_prompt=row.replies_per_prompt)
        specs.append(spec_from_dict(data, where=f"registered candidate {row.name!r}"))
    return specs


def spec_for_row(row: CandidateModel) -> CandidateSpec:
    """The generation spec of one CandidateModel row, whatever put it there (a registry-file candidate
    synced by ``therapref generate``, a registered policy, a best-of-n candidate), validated like a
    registry entry: provider, model, endpoint, API-key variable NAME, system prompt and the params.

    Imported sources (``reference``, ``counselchat``…) are not models: their provider is refused.

    >>> row = CandidateModel(name="m", provider="llamacpp", model_id="embedded", params={"max_tokens": 8})
    >>> (spec_for_row(row).name, spec_for_row(row).max_tokens)
    ('m', 8)
    """
    data = {key: value for key, value in (row.params or {}).items() if key in _FIELDS}
    data.update(name=row.name, provider=row.provider, model_id=row.model_id or EMBEDDED, base_url=row.endpoint,
                api_key_env=row.api_key_env, system_prompt=row.system_prompt,
                replies_per_prompt=row.replies_per_prompt or 1)
    # None means "unset" in a row; only system_prompt gives None a meaning of its own (spec_from_dict
    # checks the rest as given, and an explicit None base_url would still read as unset).
    return spec_from_dict({k: v for k, v in data.items() if v is not None or k == "system_prompt"},
                          where=f"candidate {row.name!r}")


def with_registered(specs: list[CandidateSpec], registered: list[CandidateSpec]) -> list[CandidateSpec]:
    """The file's candidates, then the registered policies it does not name (the file wins a name).

    >>> [s.name for s in with_registered([CandidateSpec("a", "llamacpp")],
    ...                                  [CandidateSpec("a", "llamacpp"), CandidateSpec("p", "llamacpp")])]
    ['a', 'p']
    """
    named = {spec.name for spec in specs}
    return [*specs, *(spec for spec in registered if spec.name not in named)]


def demo_candidates(*, max_tokens: int = 96) -> list[CandidateSpec]:
    """Two embedded SmolLM2 candidates a clinician can tell apart: the therapy persona (the prompt's
    own system message, else DEFAULT_PERSONA) versus a plain "helpful assistant" prompt.

    >>> [(s.name, s.provider) for s in demo_candidates()]
    [('smollm2-persona', 'llamacpp'), ('smollm2-plain', 'llamacpp')]
    """
    common = {"provider": "llamacpp", "model_id": EMBEDDED, "temperature": 0.7, "top_p": 0.95,
              "max_tokens": max_tokens, "seed": 7}
    return [
        CandidateSpec(name="smollm2-persona", system_prompt=None, **common),
        CandidateSpec(name="smollm2-plain", system_prompt=PLAIN_ASSISTANT, **common),
    ]
