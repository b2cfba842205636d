"""Generation speed of a policy on CPU: why a registered policy runs through llama.cpp.

Same prompts, same number of new tokens, greedy, through the real providers (``candidates.providers``):

(a) ``llamacpp`` on the embedded base GGUF (SmolLM2-135M-Instruct, Q4_1);
(b) ``transformers`` on the same model in Hugging Face format (one prompt at a time, and batched);
(c) ``llamacpp`` on a GGUF converted by ``policy.gguf.convert_to_gguf`` from a Hugging Face folder
    (``--model DIR``, e.g. the output of ``therapref finetune local``; default: the embedded HF copy),
    as Q8_0 and as F16, with the conversion time and how many of the first new tokens agree with (b).

Prints tokens/s and the ratios to (b). Run: ``.venv/bin/python bench/policy_generation.py``
(``--prompts 4 --max-tokens 64 --threads 1``; about a minute on 2 free cores). Timings are
wall-clock: on a machine shared with other jobs, run it twice and keep the faster figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generation import MESSAGES  # noqa: E402  (the same patient messages as the provider benchmark)
from candidates.embedded import smollm2_gguf_path, smollm2_hf_path  # noqa: E402
from candidates.providers import Job, LlamaCppProvider, Reply, TransformersProvider  # noqa: E402
from candidates.registry import CandidateSpec  # noqa: E402
from policy.gguf import convert_to_gguf  # noqa: E402


def _jobs(n: int) -> list[Job]:
    return [Job(i, 1, [{"role": "user", "content": MESSAGES[i % len(MESSAGES)]}], seed=0) for i in range(n)]


def _spec(provider: str, model_id: str, args: argparse.Namespace, **extra: object) -> CandidateSpec:
    return CandidateSpec(name=provider, provider=provider, model_id=model_id, temperature=0.0,
                         max_tokens=args.max_tokens, threads=args.threads or None, **extra)  # type: ignore[arg-type]


def _run(provider, jobs: list[list[Job]]) -> tuple[float, list[str], float]:  # noqa: ANN001
    """(tokens/s, reply texts, load seconds) over ``jobs`` (each inner list is one call)."""
    started = time.perf_counter()
    provider.load()
    load_s = time.perf_counter() - started
    provider.generate_batch(_jobs(1)[:1])  # warm-up (first-call allocations), not timed
    texts, tokens = [], 0
    started = time.perf_counter()
    for batch in jobs:
        for outcome in provider.generate_batch(batch):
            assert isinstance(outcome, Reply), outcome
            tokens += int(outcome.meta["completion_tokens"])
            texts.append(outcome.text)
    rate = tokens / (time.perf_counter() - started)
    if getattr(provider, "llm", None) is not None:
        provider.llm.close()  # free it now, not in a destructor at interpreter exit
        provider.llm = None
    return rate, texts, load_s


def _agreement(texts: list[str], reference: list[str], tokenizer) -> float:  # noqa: ANN001
    """Share of the first 16 reply tokens that equal the reference's, position by position."""
    same = total = 0
    for text, ref in zip(texts, reference, strict=True):
        a, b = tokenizer.encode(text)[:16], tokenizer.encode(ref)[:16]
        total += max(len(a), len(b))
        same += sum(x == y for x, y in zip(a, b, strict=False))
    return same / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="Hugging Face Llama folder to convert (default: embedded HF copy)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per provider")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per reply")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0 = library default)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    model_dir = args.model or smollm2_hf_path()
    single = [[job] for job in _jobs(args.prompts)]
    print(f"{args.prompts} prompts x {args.max_tokens} new tokens, greedy, threads={args.threads or 'default'}")
    rows: list[tuple[str, float, float, str]] = []

    base, _, load = _run(LlamaCppProvider(_spec("llamacpp", str(smollm2_gguf_path()), args)), single)
    rows.append(("(a) llamacpp, base GGUF (Q4_1)", base, load, ""))
    transformers = TransformersProvider(_spec("transformers", str(model_dir), args, batch_size=args.prompts))
    hf, reference, load = _run(transformers, single)
    rows.append(("(b) transformers, one prompt at a time", hf, load, ""))
    batched, _, _ = _run(transformers, [_jobs(args.prompts)])
    rows.append((f"(b) transformers, batch of {args.prompts}", batched, load, ""))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        for outtype in ("q8_0", "f16"):
            result = convert_to_gguf(model_dir, Path(tmp) / f"{outtype}.gguf", outtype=outtype)
            rate, texts, load = _run(LlamaCppProvider(_spec("llamacpp", str(result.path), args)), single)
            note = (f"converted in {result.seconds:.1f} s, {result.size_bytes / 2**20:.0f} MiB; "
                    f"first-16-token agreement with (b) {_agreement(texts, reference, tokenizer):.0%}")
            rows.append((f"(c) llamacpp, converted GGUF ({outtype.upper()})", rate, load, note))
    print(f"    {'':44} {'tokens/s':>9} {'vs (b)':>7} {'load s':>7}")
    for label, rate, load, note in rows:
        print(f"    {label:44} {rate:9.1f} {rate / hf:6.1f}x {load:7.2f}  {note}")


if __name__ == "__main__":
    main()
