"""Best-of-n sampling speed on a CPU: the toolkit's path against transformers' batched ``generate``.

Both sides draw N samples of at most ``--max-tokens`` tokens for each of ``--prompts`` Counsel Chat
questions from the embedded SmolLM2-135M-Instruct at temperature 1, in the same run:

- **llama.cpp** (what ``candidates.best_of_n.BestOfNProvider`` does for a ``llamacpp`` candidate): one
  context, the N samples of a prompt one after another; llama-cpp-python keeps the KV cache of the tokens
  it has seen and evaluates only the part of a new prompt that differs, so the prompt is read once per
  prompt and every further sample costs only its own tokens;
- **transformers** (the same model in HF format): one ``generate`` call per prompt with the prompt
  repeated N times in the batch (``num_return_sequences = N``), fp32, the same thread count.

Printed: generated tokens/s of each, their ratio, and the seconds per best-of-N reply.

    .venv/bin/python bench/best_of_n.py                 # 6 prompts, N = 8, 64 tokens, 1 thread
    .venv/bin/python bench/best_of_n.py --n 16 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

COUNSEL_CHAT = ROOT.parent / "shared" / "data" / "counsel_chat.csv"


def questions(count: int) -> list[list[dict[str, str]]]:
    """The ``count`` shortest Counsel Chat questions as chat messages (imported by ``db.importers`` into a
    throwaway in-memory database)."""
    from sqlmodel import Session, select

    from db.engine import make_engine
    from db.importers import import_prompts
    from db.migrate import upgrade
    from db.models import Prompt

    engine = make_engine("sqlite://")
    upgrade(engine)
    with Session(engine) as session:
        import_prompts(COUNSEL_CHAT, session=session, format="counselchat")
        session.flush()
        conversations = [p.messages for p in session.exec(select(Prompt)).all()]
    return sorted(conversations, key=lambda m: len(m[-1]["content"]))[:count]


def llama_side(prompts: list, n: int, max_tokens: int, threads: int) -> tuple[int, float]:
    from candidates.best_of_n import sample_seed
    from candidates.embedded import smollm2_gguf_path
    from candidates.llama_compat import load_llama

    llm = load_llama(smollm2_gguf_path(), n_ctx=2048, seed=0, n_threads=threads, n_threads_batch=threads,
                     verbose=False)
    tokens, started = 0, time.perf_counter()
    for p, messages in enumerate(prompts):
        for i in range(n):
            out = llm.create_chat_completion(messages=messages, temperature=1.0, top_p=1.0, max_tokens=max_tokens,
                                             seed=sample_seed(p, i))
            tokens += int(out["usage"]["completion_tokens"])
    return tokens, time.perf_counter() - started


def transformers_side(prompts: list, n: int, max_tokens: int, threads: int) -> tuple[int, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from candidates.embedded import smollm2_hf_path

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf_path(), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(smollm2_hf_path(), dtype=torch.float32).eval()
    eos = tokenizer.eos_token_id
    tokens, started = 0, time.perf_counter()
    for p, messages in enumerate(prompts):
        inputs = tokenizer.apply_chat_template([messages], add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        torch.manual_seed(p)
        with torch.inference_mode():
            output = model.generate(**inputs, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                    max_new_tokens=max_tokens, num_return_sequences=n, pad_token_id=eos)
        for row in output[:, inputs["input_ids"].shape[1]:].tolist():
            stop = next((i for i, t in enumerate(row) if t == eos), None)
            tokens += len(row) if stop is None else stop
    return tokens, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    prompts = questions(args.prompts)
    results = {}
    for name, side in (("llama.cpp, one context, prompt cache", llama_side),
                       ("transformers, batched generate", transformers_side)):
        tokens, seconds = side(prompts, args.n, args.max_tokens, args.threads)
        results[name] = (tokens, seconds)
        print(f"{name}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens/s; "
              f"{seconds / len(prompts):.1f} s per best-of-{args.n} reply", flush=True)
    (lt, ls), (tt, ts) = results.values()
    print(f"llama.cpp / transformers: {(lt / ls) / (tt / ts):.2f}x tokens/s "
          f"({len(prompts)} prompts, N = {args.n}, ≤ {args.max_tokens} tokens, {args.threads} thread(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
