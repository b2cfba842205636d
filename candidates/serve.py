"""``therapref serve NAME``: an OpenAI-compatible Chat Completions endpoint for one candidate.

The endpoint answers through the same providers as ``therapref generate`` (``make_provider``: llama.cpp
on a GGUF, transformers on a folder, an OpenAI-compatible endpoint, best-of-n around any of them) with
the candidate's system prompt and sampling parameters, so a served reply is drawn from the same
distribution as the stored ones; client code written for OpenAI runs unchanged::

    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "I want to cry"}])

Routes: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions`` (``stream=true``
sends the finished reply as one chunk: the providers return whole replies), ``GET /health``. Errors
have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, so the ``openai`` client
raises its usual exceptions (``NotFoundError`` for another model, ``BadRequestError``…).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlmodel import Session, select
from starlette.exceptions import HTTPException

from candidates.providers import Failure, Job, OpenAIProvider, Reply, make_provider, one_line, scrub
from candidates.registry import PROVIDERS, CandidateSpec, RegistryError, spec_for_row
from db.errors import TheraPrefError
from db.models import CandidateModel
from db.rules import conversation

# Request fields whose non-default values change the reply in ways the providers cannot honour: refused
# with a 400 rather than silently ignored (a client relying on them would get a different model).
_UNSUPPORTED = {
    "n": lambda v: v not in (None, 1),
    "stop": lambda v: v not in (None, "", []),
    "tools": lambda v: bool(v),
    "functions": lambda v: bool(v),
    "logprobs": lambda v: bool(v),
    "top_logprobs": lambda v: v not in (None, 0),
    "logit_bias": lambda v: bool(v),
    "frequency_penalty": lambda v: v not in (None, 0, 0.0),
    "presence_penalty": lambda v: v not in (None, 0, 0.0),
    "response_format": lambda v: v not in (None, {}) and not (isinstance(v, dict) and v.get("type") == "text"),
    "audio": lambda v: bool(v),
    "modalities": lambda v: v not in (None, ["text"]),
    "prediction": lambda v: bool(v),
}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
SEED_LIMIT = 2 ** 31  # llama.cpp takes a uint32 seed; best-of-n multiplies it by N (best_of_n.sample_seed)


class ServeError(TheraPrefError, ValueError):
    """The candidate cannot be served (unknown name, a non-model source, a busy port): one line."""


class APIError(Exception):
    """A request the server answers with an OpenAI-shaped error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",  # noqa: A002
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        """>>> APIError(404, "no such model", code="model_not_found").body()["error"]["code"]
        'model_not_found'
        """
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# --- Finding the candidate -----------------------------------------------------------------------------


def find_candidate(name: str, *, file_specs: list[CandidateSpec], session: Session,
                   file_label: str | None = None) -> CandidateSpec:
    """The spec of candidate ``name``: the registry file's entry when it has one (the file wins a name,
    as in ``candidates.registry.with_registered``), else its CandidateModel row (a synced registry-file
    candidate, a registered policy, a best-of-n candidate)."""
    for spec in file_specs:
        if spec.name == name:
            return spec
    row = session.exec(select(CandidateModel).where(CandidateModel.name == name)).first()
    if row is None:
        where = f"{file_label} or the database" if file_label else "the database (and no registry file)"
        raise ServeError(f"no candidate named {name!r} in {where}; `therapref candidates list` shows them")
    if row.provider not in PROVIDERS:
        raise ServeError(f"candidate {name!r} is an imported source (provider {row.provider}), not a model: "
                         "there is nothing to serve")
    try:
        return spec_for_row(row)
    except RegistryError as exc:
        raise ServeError(str(exc)) from None


# --- Requests ----------------------------------------------------------------------------------------------


@dataclass
class ChatRequest:
    """A validated Chat Completions request: the conversation as given and the sampling to use."""

    messages: list[dict[str, str]]
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None
    stream: bool = False
    include_usage: bool = False


def _content(value: Any, index: int) -> str:
    """A message's text: a string, or a list of ``{"type": "text", "text": …}`` parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise APIError(400, f"messages[{index}].content: only text parts are supported, not {kind!r}",
                               param=f"messages[{index}].content")
            texts.append(part["text"])
        return "\n".join(texts)
    raise APIError(400, f"messages[{index}].content must be a string or a list of text parts",
                   param=f"messages[{index}].content")


def _number(body: Mapping[str, Any], key: str, default: float, low: float, high: float, *,
            low_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            (low < value if low_open else low <= value) and value <= high):
        bound = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
        raise APIError(400, f"{key} must be a number in {bound}, not {value!r}", param=key)
    return float(value)


def parse_request(body: Any, *, name: str, spec: CandidateSpec) -> ChatRequest:
    """Validate a Chat Completions body for candidate ``name``; the candidate's temperature, top_p and
    max_tokens are the defaults a request may override. Raises :class:`APIError`.

    >>> spec = CandidateSpec("gaby", "llamacpp", max_tokens=64)
    >>> parse_request({"model": "gaby", "messages": [{"role": "user", "content": "hi"}]}, name="gaby",
    ...               spec=spec).max_tokens
    64
    >>> parse_request({"model": "gpt-4o", "messages": []}, name="gaby", spec=spec)
    Traceback (most recent call last):
    ...
    candidates.serve.APIError: The model 'gpt-4o' does not exist: this server serves 'gaby'
    """
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "you must provide a model parameter", param="model")
    if model != name:
        raise APIError(404, f"The model {model!r} does not exist: this server serves {name!r}", param="model",
                       code="model_not_found")
    for key, unsupported in _UNSUPPORTED.items():
        if key in body and unsupported(body[key]):
            raise APIError(400, f"{key}={json.dumps(body[key])[:80]} is not supported by this server "
                           f"(candidate {name!r})", param=key, code="unsupported_parameter")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise APIError(400, "messages must be a non-empty list", param="messages")
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise APIError(400, f"messages[{index}] must be an object", param=f"messages[{index}]")
        role = message.get("role")
        if role not in _ROLES:
            raise APIError(400, f"messages[{index}].role {role!r} is not supported (system, developer, user, "
                           "assistant)", param=f"messages[{index}].role")
        if message.get("tool_calls") or message.get("function_call"):
            raise APIError(400, f"messages[{index}]: tool calls are not supported", param=f"messages[{index}]")
        messages.append({"role": _ROLES[role], "content": _content(message.get("content"), index)})
    if not any(m["role"] == "user" for m in messages):
        raise APIError(400, "messages must contain a user message", param="messages")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = spec.max_tokens
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise APIError(400, f"max_tokens must be a positive integer, not {max_tokens!r}", param="max_tokens")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT):
        raise APIError(400, f"seed must be an integer in [0, {SEED_LIMIT}), not {seed!r}", param="seed")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise APIError(400, "stream must be true or false", param="stream")
    options = body.get("stream_options") or {}
    return ChatRequest(
        messages=messages, temperature=_number(body, "temperature", spec.temperature, 0.0, 2.0),
        top_p=_number(body, "top_p", spec.top_p, 0.0, 1.0, low_open=True), max_tokens=max_tokens, seed=seed,
        stream=stream, include_usage=bool(isinstance(options, dict) and options.get("include_usage")))


def fresh_seed(spec: CandidateSpec) -> int | None:
    """The seed of a request that names none: a fresh one, so that asking again gives another sample as
    OpenAI's endpoints do (``generate`` samples reply k with ``seed + k``: a request with ``seed`` equal to
    the candidate's seed, 0 for local models unless set, asks for its stored reply 0 again). An ``openai``
    candidate gets none, as in ``generate``: its endpoint samples.

    >>> fresh_seed(CandidateSpec("a", "openai", "m", base_url="http://x")) is None
    True
    >>> 0 <= fresh_seed(CandidateSpec("a", "llamacpp")) < SEED_LIMIT
    True
    """
    if spec.provider == "openai":
        return None
    return random.randrange(SEED_LIMIT // max(spec.best_of, 1))  # best-of-n draws seed * N + i


def plan_job(spec: CandidateSpec, request: ChatRequest, *, seed: int | None) -> Job:
    """The provider job of a request, built as ``candidates.generate.plan_jobs`` builds a prompt's.

    A request that carries its own system message keeps it; otherwise the candidate's rule applies
    (``CandidateSpec.resolve_system``: its system prompt, else the TheraPref persona, or none). A
    best-of-n candidate's reward model scores the conversation as the client sent it, as it scores a
    prompt's own conversation in ``generate``.

    >>> job = plan_job(CandidateSpec("a", "llamacpp", system_prompt="Be kind."),
    ...                ChatRequest([{"role": "user", "content": "hi"}], 0.7, 1.0, 16, None), seed=3)
    >>> (job.messages[0], job.system_source, job.seed)
    ({'role': 'system', 'content': 'Be kind.'}, 'candidate', 3)
    """
    if any(m["role"] == "system" for m in request.messages):
        messages, source = [dict(m) for m in request.messages], "request"
    else:
        system, source = spec.resolve_system(None)
        messages = conversation(request.messages, system)
    context = [dict(m) for m in request.messages] if spec.best_of > 1 else None
    return Job(prompt_id=0, candidate_id=0, messages=messages, seed=seed, system_source=source,
               score_context=context)


# --- Generating ------------------------------------------------------------------------------------------


class Generator:
    """The candidate's provider, loaded once; one reply per call.

    In-process models (and best-of-n, whose reward model runs in-process) generate one request at a
    time: the model and its llama.cpp context are not safe to share between threads, and two replies
    at once would only fight over the same cores. A plain ``openai`` candidate is a proxy: requests run
    concurrently (up to the candidate's ``concurrency``) on one shared HTTP client."""

    def __init__(self, spec: CandidateSpec, *, secrets: Mapping[str, str] | None = None) -> None:
        self.spec = spec
        self.secrets = dict(secrets or {})
        self.provider: Any = make_provider(spec, secrets=self.secrets)
        self.concurrent = spec.provider == "openai" and spec.best_of == 1
        self._one_at_a_time = asyncio.Lock()
        self._in_flight = asyncio.Semaphore(spec.concurrency)

    async def start(self) -> None:
        await self.provider.start()

    async def close(self) -> None:
        await self.provider.close()

    def _variant(self, request: ChatRequest) -> CandidateSpec:
        return replace(self.spec, temperature=request.temperature, top_p=request.top_p,
                       max_tokens=request.max_tokens)

    async def generate(self, request: ChatRequest, job: Job) -> Reply | Failure:
        """The reply to one request (a :class:`Failure` when the model or the endpoint failed)."""
        outcome: Reply | Failure | None = None

        async def keep(_job: Job, result: Reply | Failure) -> None:
            nonlocal outcome
            outcome = result

        variant = self._variant(request)
        if self.concurrent:
            # A provider per request (sharing the started client and its connection pool): the sampling
            # parameters are per request, and one request's 401/404 must not fail the next ones fast.
            provider = OpenAIProvider(variant, api_key=self.provider.api_key, secrets=self.secrets)
            provider.client = self.provider.client
            async with self._in_flight:
                await provider.run([job], keep)
        else:
            async with self._one_at_a_time:
                # Providers read their sampling parameters from ``spec`` on every call, so the loaded
                # model serves each request's overrides without reloading; the lock keeps them per request.
                self.provider.spec = variant
                inner = getattr(self.provider, "inner", None)  # best-of-n: the provider drawing the samples
                if inner is not None:
                    from candidates.best_of_n import base_spec

                    inner.spec = base_spec(variant)
                await self.provider.run([job], keep)
        assert outcome is not None
        return outcome


# --- The app ---------------------------------------------------------------------------------------------


def _usage(meta: Mapping[str, Any]) -> dict[str, int]:
    """Token counts of a reply; best-of-n counts every sample's completion tokens (as OpenAI's legacy
    ``best_of`` did), so ``completion_tokens`` is the compute spent, not the length of the one reply.

    >>> _usage({"prompt_tokens": 10, "completion_tokens": 5})
    {'prompt_tokens': 10, 'completion_tokens': 5, 'total_tokens': 15}
    """
    prompt = int(meta.get("prompt_tokens") or 0)
    completion = int(meta.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _extra(name: str, job: Job, reply: Reply) -> dict[str, Any]:
    """The ``therapref`` field of a completion: how the reply was made (never secrets)."""
    meta = reply.meta
    extra: dict[str, Any] = {"candidate": name, "system": job.system_source, "seed": job.seed,
                             "latency_s": meta.get("latency_s")}
    if "best_of" in meta:
        samples = [{"index": s["sample_index"], "text": s["text"], "reward": s["reward"], "safety": s["safety"],
                    "unsafe": s["unsafe"], "picked": s["picked"],
                    "completion_tokens": (s.get("meta") or {}).get("completion_tokens")} for s in reply.samples]
        extra["best_of"] = {**meta["best_of"], "samples": samples}
    return extra


def _finish_reason(meta: Mapping[str, Any]) -> str:
    reason = meta.get("finish_reason")
    return reason if reason in ("stop", "length", "content_filter") else "stop"


def create_app(spec: CandidateSpec, generator: Generator, *, api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving ``spec`` through ``generator`` (started by the caller). With
    ``api_key``, every route but ``/health`` wants ``Authorization: Bearer <api_key>``.

    (FastAPI reads the handlers' annotations at run time, which is why ``Request`` is imported at the
    top of this module: a local import would leave ``request`` looking like a query parameter.)"""
    name = spec.name
    created = int(time.time())
    # No /docs, /redoc or /openapi.json: the server answers JSON only (nothing to render, no HTML).
    app = FastAPI(title=f"TheraPref: {name}", docs_url=None, redoc_url=None, openapi_url=None)

    def error(exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        # Unknown routes and methods get OpenAI's error shape too (404, 405).
        code = "unknown_url" if exc.status_code == 404 else None
        return error(APIError(exc.status_code, str(exc.detail), code=code))

    @app.middleware("http")
    async def check_key(request: Request, call_next: Callable[[Request], Any]) -> Any:
        if api_key is not None and request.url.path != "/health":
            sent = request.headers.get("authorization", "")
            token = sent[7:] if sent[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return error(APIError(401, "Incorrect API key provided (this server's key is set by "
                                      "`therapref serve --api-key-env`)", code="invalid_api_key"))
        return await call_next(request)

    def model_card() -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "therapref"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": name}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Any:
        if model_id != name:
            return error(APIError(404, f"The model {model_id!r} does not exist: this server serves {name!r}",
                                  param="model", code="model_not_found"))
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        try:
            body = json.loads(await request.body() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(APIError(400, "We could not parse the JSON body of your request"))
        try:
            chat = parse_request(body, name=name, spec=spec)
        except APIError as exc:
            return error(exc)
        seed = chat.seed if chat.seed is not None else fresh_seed(spec)
        job = plan_job(spec, chat, seed=seed)
        outcome = await generator.generate(chat, job)
        if isinstance(outcome, Failure):
            return error(_failure(outcome, spec, generator.secrets))
        identifier = f"chatcmpl-{uuid.uuid4().hex}"
        usage, extra, reason = _usage(outcome.meta), _extra(name, job, outcome), _finish_reason(outcome.meta)
        if chat.stream:
            return StreamingResponse(_chunks(identifier, name, outcome.text, reason, usage, extra,
                                             include_usage=chat.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return {"id": identifier, "object": "chat.completion", "created": int(time.time()), "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": outcome.text},
                             "logprobs": None, "finish_reason": reason}],
                "usage": usage, "system_fingerprint": None, "therapref": extra}

    return app


def _failure(outcome: Failure, spec: CandidateSpec, secrets: Mapping[str, str]) -> APIError:
    """The error a failed generation is answered with (keys scrubbed, one line)."""
    message = one_line(scrub(outcome.error, secrets), 500)
    if "exceed context window" in message or "context length" in message.lower():
        return APIError(400, f"the conversation is longer than the model's context window: {message}",
                        param="messages", code="context_length_exceeded")
    if spec.provider == "openai":
        return APIError(502, f"the candidate's endpoint failed: {message}", type="upstream_error")
    return APIError(500, f"the model failed: {message}", type="server_error")


async def _chunks(identifier: str, name: str, text: str, reason: str, usage: dict[str, int],
                  extra: dict[str, Any], *, include_usage: bool) -> AsyncIterator[bytes]:
    """Server-sent events of a finished reply: the whole text in one chunk, then the finish reason
    (and the usage when ``stream_options.include_usage``), then ``[DONE]``."""
    base = {"id": identifier, "object": "chat.completion.chunk", "created": int(time.time()), "model": name,
            "system_fingerprint": None}
    events = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "logprobs": None,
                              "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}],
         "therapref": extra},
    ]
    if include_usage:
        events.append({**base, "choices": [], "usage": usage})
    for event in events:
        yield f"data: {json.dumps(event)}\n\n".encode()
    yield b"data: [DONE]\n\n"


# --- Running ---------------------------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: a free one), before any model loads, so that a busy port
    is one line at once rather than after the load."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ServeError(f"--host {host}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def base_url(host: str, port: int) -> str:
    """The URL clients use (a wildcard bind is reached through 127.0.0.1 on this machine).

    >>> base_url("0.0.0.0", 8000), base_url("::1", 9000)
    ('http://127.0.0.1:8000/v1', 'http://[::1]:9000/v1')
    """
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}/v1" if ":" in host else f"http://{host}:{port}/v1"


def describe(spec: CandidateSpec) -> str:
    """>>> describe(CandidateSpec("a", "llamacpp"))
    'llamacpp, embedded'
    """
    text = f"{spec.provider}, {spec.model_id}"
    if spec.best_of > 1:
        text += f", best of {spec.best_of} by {spec.reward_model}"
    return text


async def serve(spec: CandidateSpec, *, host: str = "127.0.0.1", port: int = 8000,
                secrets: Mapping[str, str] | None = None, api_key: str | None = None,
                on_ready: Callable[[str], None] | None = None, note: Callable[[str], None] | None = None) -> None:
    """Bind, load the candidate, serve until SIGINT/SIGTERM (uvicorn's graceful shutdown), unload.
    ``on_ready(url)`` is called once requests are accepted; ``note`` gets progress lines."""
    import logging

    import uvicorn

    sock = listen(host, port)
    try:
        actual = sock.getsockname()[1]
        generator = Generator(spec, secrets=secrets)
        if note:
            note(f"Loading candidate {spec.name!r} ({describe(spec)})…")
        try:
            await generator.start()
        except TheraPrefError:
            raise
        except Exception as exc:  # noqa: BLE001 - any loader error is one line, as in `generate`
            raise ServeError(f"candidate {spec.name!r}: could not load the model: {type(exc).__name__}: "
                             f"{one_line(scrub(str(exc), secrets), 300)}") from None
        try:
            app = create_app(spec, generator, api_key=api_key)
            config = uvicorn.Config(app, host=host, port=actual, lifespan="off", log_level="info",
                                    timeout_graceful_shutdown=30, server_header=False)
            # Keep the access log (one line per request, no bodies) but not uvicorn's start-up chatter:
            # the caller prints its own ready line.
            logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
            server = uvicorn.Server(config)
            task = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started and not task.done():
                await asyncio.sleep(0.05)
            if server.started and on_ready:
                on_ready(base_url(host, actual))
            await task
        finally:
            await generator.close()
    finally:
        sock.close()


def run(spec: CandidateSpec, **kwargs: Any) -> None:
    """:func:`serve` in a fresh event loop (blocks; Ctrl-C ends it with ``KeyboardInterrupt``)."""
    asyncio.run(serve(spec, **kwargs))


__all__ = ["APIError", "ChatRequest", "Generator", "ServeError", "base_url", "create_app", "find_candidate",
           "fresh_seed", "listen", "parse_request", "plan_job", "run", "serve"]
