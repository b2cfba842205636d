"""Generation throughput.

(a) ``openai`` provider end to end (``run_generation`` into a fresh SQLite file) against a local,
    latency-bound OpenAI-compatible endpoint (every reply after a fixed delay): replies/s at
    concurrency 1, 4 and 16, and the speedup over concurrency 1 (target >= 0.8 x the concurrency).
(b) tokens/s of the in-process ``llamacpp`` and ``transformers`` providers on the embedded
    SmolLM2-135M-Instruct, and ``transformers`` batched vs one prompt at a time (target >= 2x).

Run: ``.venv/bin/python bench/generation.py`` (``--quick`` for a shorter run).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from candidates.fake_server import free_port  # noqa: E402
from candidates.generate import run_generation  # noqa: E402
from candidates.providers import Job, LlamaCppProvider, Reply, TransformersProvider  # noqa: E402
from candidates.registry import CandidateSpec  # noqa: E402
from db.crud import get_or_create_prompt  # noqa: E402
from db.engine import make_engine, session_scope  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from tests.factories import PATIENT_MESSAGES  # noqa: E402

# The test factories' patient messages and two more: eight prompts, as the figures in docs were measured on.
MESSAGES = [
    *PATIENT_MESSAGES,
    "My friends all seem to have their lives together except me.",
    "I get a tight chest every time I have to speak in a meeting.",
]


@contextmanager
def fake_endpoint(delay: float) -> Iterator[str]:
    """The fake endpoint in its own process, so that it does not share the client's GIL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "candidates.fake_server", "--port", str(port),
                                "--delay", str(delay)], cwd=ROOT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    raise RuntimeError("fake endpoint did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=10)


def remote(delay: float, waves: int) -> list[tuple[int, int, float, float]]:
    """(concurrency, replies, replies/s, client CPU ms per reply) for each concurrency level."""
    rows = []
    with fake_endpoint(delay) as url, tempfile.TemporaryDirectory() as tmp:
        for concurrency in (0, 1, 4, 16):  # 0: a warm-up run (imports, first connection), not reported
            warmup = concurrency == 0
            concurrency = max(concurrency, 1)
            n = waves * concurrency
            engine = make_engine(Path(tmp) / f"c{concurrency}{'w' if warmup else ''}.db")
            upgrade(engine)
            with session_scope(engine) as session:
                for i in range(n):
                    get_or_create_prompt([{"role": "user", "content": f"{MESSAGES[i % 8]} (#{i})"}], session=session)
            spec = CandidateSpec(name="fake", provider="openai", model_id="fake", base_url=url,
                                 concurrency=concurrency, max_retries=0, seed=1)
            cpu = time.process_time()
            summary = run_generation(engine, [spec], progress=False)
            cpu = time.process_time() - cpu
            assert summary.done == n and summary.failed == 0, summary
            if not warmup:
                rows.append((concurrency, n, n / summary.elapsed_s, 1000 * cpu / n))
            engine.dispose()
    return rows


def _jobs(n: int) -> list[Job]:
    return [Job(i, 1, [{"role": "user", "content": MESSAGES[i % 8]}], seed=0) for i in range(n)]


def _tokens(outcomes) -> int:  # noqa: ANN001
    return sum(o.meta["completion_tokens"] for o in outcomes if isinstance(o, Reply))


def llamacpp_tps(n: int, max_tokens: int, threads: int | None) -> float:
    provider = LlamaCppProvider(CandidateSpec(name="l", provider="llamacpp", max_tokens=max_tokens, temperature=0.0,
                                              threads=threads))
    provider.load()
    provider.generate_batch(_jobs(1))  # warm-up
    started, tokens = time.perf_counter(), 0
    for job in _jobs(n):
        tokens += _tokens(provider.generate_batch([job]))
    return tokens / (time.perf_counter() - started)


def transformers_tps(n: int, max_tokens: int, threads: int | None) -> tuple[float, float]:
    """(one-at-a-time tokens/s, batched tokens/s) on the same prompts, greedy."""
    spec = CandidateSpec(name="t", provider="transformers", max_tokens=max_tokens, temperature=0.0,
                         batch_size=n, threads=threads)
    provider = TransformersProvider(spec)
    provider.load()
    provider.generate_batch(_jobs(1))  # warm-up
    started, tokens = time.perf_counter(), 0
    for job in _jobs(n):
        tokens += _tokens(provider.generate_batch([job]))
    single = tokens / (time.perf_counter() - started)
    started = time.perf_counter()
    tokens = _tokens(provider.generate_batch(_jobs(n)))
    batched = tokens / (time.perf_counter() - started)
    return single, batched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and tokens")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds the fake endpoint takes per reply")
    parser.add_argument("--only", choices=("remote", "local"), help="run one half only")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the local providers (0 = default)")
    args = parser.parse_args()
    waves = 6 if args.quick else 12
    threads = args.threads or None
    n_local, max_tokens = (4, 12) if args.quick else (8, 16)

    if args.only != "local":
        report_remote(args.delay, waves)
    if args.only != "remote":
        report_local(n_local, max_tokens, threads)


def report_remote(delay: float, waves: int) -> None:
    print(f"(a) openai provider vs a latency-bound endpoint ({delay:.2f} s per reply, {waves} waves)")
    rows = remote(delay, waves)
    base = rows[0][2]
    print(f"    {'concurrency':>11} {'replies':>8} {'replies/s':>10} {'speedup':>8} {'target':>7}   client CPU/reply")
    for concurrency, n, rate, cpu_ms in rows:
        speedup = rate / base
        verdict = "ok" if speedup >= 0.8 * concurrency else "MISSED"
        print(f"    {concurrency:>11} {n:>8} {rate:>10.2f} {speedup:>7.2f}x {0.8 * concurrency:>6.1f}x "
              f"{verdict:<6} {cpu_ms:6.1f} ms")


def report_local(n_local: int, max_tokens: int, threads: int | None) -> None:
    print(f"(b) local providers, embedded SmolLM2-135M-Instruct, {n_local} prompts x {max_tokens} new tokens, "
          f"greedy, threads={threads or 'default'}")
    llama = llamacpp_tps(n_local, max_tokens, threads)
    print(f"    llamacpp (GGUF Q4_1)                 {llama:8.1f} tokens/s")
    single, batched = transformers_tps(n_local, max_tokens, threads)
    print(f"    transformers, one prompt at a time   {single:8.1f} tokens/s")
    print(f"    transformers, batch of {n_local:<2}            {batched:8.1f} tokens/s")
    ratio = batched / single
    print(f"    batched / one-at-a-time              {ratio:8.2f}x  (target >= 2x: {'ok' if ratio >= 2 else 'MISSED'})")


if __name__ == "__main__":
    main()
