"""Import throughput and memory: synthetic HH-RLHF (.jsonl.gz) and OpenAI chat JSONL files of
growing size imported into a fresh SQLite file, each in a child process so that peak memory is
measured per run. Memory should stay flat as files grow (streaming + batched ORM release).

Prints one line per run and the ratios of the largest run to the smallest::

    format=hh-rlhf records=5000 seconds=… rate=…/s peak_rss=…MiB
    ratio hh-rlhf: records x4.0 time x… peak_rss x…

Run: ``.venv/bin/python bench/import_speed.py [--sizes 2000 8000] [--formats hh-rlhf openai-jsonl]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _write(fmt: str, n: int, folder: Path) -> Path:
    if fmt == "hh-rlhf":
        path = folder / f"hh-{n}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as out:
            for i in range(n):
                context = (f"\n\nHuman: I keep worrying about thing number {i}."
                           "\n\nAssistant: Tell me more.\n\nHuman: It ")
                context += "wakes me at night and I can't stop the thoughts. " * 4
                out.write(json.dumps({"chosen": context + f"\n\nAssistant: That sounds exhausting ({i}). What helps?",
                                      "rejected": context + f"\n\nAssistant: Just stop worrying ({i})."}) + "\n")
        return path
    path = folder / f"chat-{n}.jsonl"
    with open(path, "w", encoding="utf-8") as out:
        for i in range(n):
            out.write(json.dumps({"messages": [
                {"role": "system", "content": "You are a warm, careful therapy assistant."},
                {"role": "user", "content": f"Message {i}: " + "I feel overwhelmed at work and at home. " * 5},
                {"role": "assistant", "content": f"Reply {i}: that is a lot to carry. What feels heaviest?"}]}) + "\n")
    return path


def _run(fmt: str, path: str, db: str, queue) -> None:  # noqa: ANN001
    from db.engine import make_engine, session_scope
    from db.importers import import_preferences, import_prompts
    from db.migrate import upgrade

    engine = make_engine(db)
    upgrade(engine)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with session_scope(engine) as session:
        function = import_prompts if fmt == "openai-jsonl" else import_preferences
        summary = function(path, session=session, format=fmt)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put((summary.records, seconds, peak / 1024, (peak - base_rss) / 1024))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000], help="records per file")
    parser.add_argument("--formats", nargs="+", default=["hh-rlhf", "openai-jsonl"], help="formats to measure")
    args = parser.parse_args(argv)
    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for fmt in args.formats:
            results = []
            for n in args.sizes:
                path = _write(fmt, n, folder)
                queue = context.Queue()
                child = context.Process(target=_run, args=(fmt, str(path), str(folder / f"{fmt}-{n}.db"), queue))
                child.start()
                records, seconds, peak, grown = queue.get()
                child.join()
                results.append((records, seconds, peak))
                print(f"format={fmt} records={records} seconds={seconds:.2f} rate={records / seconds:.0f}/s "
                      f"peak_rss={peak:.0f}MiB import_growth={grown:.0f}MiB", flush=True)
            (r0, s0, p0), (r1, s1, p1) = results[0], results[-1]
            print(f"ratio {fmt}: records x{r1 / r0:.1f} time x{s1 / s0:.1f} peak_rss x{p1 / p0:.2f}", flush=True)


if __name__ == "__main__":
    main()
