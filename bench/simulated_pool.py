"""A preference pool with a learnable signal, for ``bench/active.py --data simulated``.

Replies sampled from the embedded base (SmolLM2-135M-Instruct through llama.cpp, the candidates'
``llamacpp`` provider, no system prompt, temperature about 1, several per question) to Counsel Chat
questions (read by the importers, ``bench.reward_generalisation.load_domains``; the shorter ones), judged
by the simulated clinician of ``bench/loop.py`` (its rubric is imported, not copied):

- the **pool** pairs every two replies of a question and labels each with ``simulated_judgment`` (the
  rubric plus its Gaussian noise, seeded): what a clinician's vote would be; ties are not pairs;
- the **held-out** pairs (other questions) are ordered by the noise-free ``rubric_score`` where the two
  scores differ by at least the rubric's tie margin: the truth the learner should recover.

The sampled replies are kept in ``--cache-dir`` under a name made of the settings (questions, replies per
question, tokens, temperature, seed, model), so a rerun samples nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.loop import TIE_MARGIN, rubric_score, simulated_judgment  # noqa: E402  (the rubric's one owner)
from db.rules import reply_length  # noqa: E402
from reward.pairs import PreferencePair  # noqa: E402

DEFAULT_CACHE = ROOT / ".cache" / "bench-active"


@dataclass(frozen=True)
class PoolSettings:
    questions: int = 100
    replies: int = 6
    max_tokens: int = 80
    temperature: float = 1.0
    seed: int = 0
    max_words: int = 80  # the questions' length at most (short sequences on a CPU)
    model: str = "embedded"
    threads: int = 1

    def key(self) -> str:
        """The cache file's name: every setting that changes the samples.

        >>> PoolSettings().key() == PoolSettings(threads=2).key(), PoolSettings().key() == PoolSettings(seed=1).key()
        (True, False)
        """
        fields = {k: v for k, v in self.__dict__.items() if k != "threads"}
        return "simulated-" + hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def questions(counsel_chat: Path, settings: PoolSettings) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """(prompt key, conversation) of a seeded sample of the shorter Counsel Chat questions."""
    from bench.reward_generalisation import COUNSEL, load_domains

    pairs = load_domains(Path("unused"), counsel_chat, [COUNSEL])[COUNSEL]
    by_key: dict[str, tuple[tuple[str, str], ...]] = {}
    for pair in pairs:
        if reply_length(pair.prompt[-1][1]) <= settings.max_words:
            by_key.setdefault(pair.prompt_key, tuple(pair.prompt))
    keys = sorted(by_key)
    random.Random(settings.seed).shuffle(keys)
    return [(key, by_key[key]) for key in keys[:settings.questions]]


def sample_replies(prompts: Sequence[tuple[str, Any]], settings: PoolSettings) -> list[dict[str, Any]]:
    """``settings.replies`` samples of the base per question, through the ``llamacpp`` provider."""
    from candidates.providers import Job, LlamaCppProvider
    from candidates.registry import CandidateSpec

    spec = CandidateSpec(name="bench-active-sample", provider="llamacpp", model_id=settings.model, system_prompt="",
                         temperature=settings.temperature, max_tokens=settings.max_tokens, seed=settings.seed,
                         threads=settings.threads)
    provider = LlamaCppProvider(spec)
    provider.load()
    out, started = [], time.perf_counter()
    for n, (key, messages) in enumerate(prompts, 1):
        replies = []
        for k in range(settings.replies):
            job = Job(prompt_id=n, candidate_id=0, messages=[{"role": r, "content": c} for r, c in messages],
                      reply_index=k, seed=settings.seed * 100_003 + n * 101 + k)
            (outcome,) = provider.generate_batch([job])
            replies.append(getattr(outcome, "text", "") or "")
        out.append({"prompt_key": key, "messages": [list(m) for m in messages], "replies": replies})
        if n % 10 == 0 or n == len(prompts):
            elapsed = time.perf_counter() - started
            print(f"  sampled {n}/{len(prompts)} questions × {settings.replies} replies "
                  f"({n * settings.replies / elapsed:.1f} replies/s, {elapsed / n * (len(prompts) - n):.0f}s left)",
                  file=sys.stderr, flush=True)
    return out


def load_or_sample(counsel_chat: Path, settings: PoolSettings, cache_dir: Path = DEFAULT_CACHE) -> list[dict[str, Any]]:
    """The sampled questions and replies, from the cache when these settings were sampled before."""
    path = Path(cache_dir) / f"{settings.key()}.json"
    if path.is_file():
        return json.loads(path.read_text())["groups"]
    groups = sample_replies(questions(counsel_chat, settings), settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings.__dict__, "groups": groups}) + "\n")
    tmp.replace(path)
    return groups


def judged_pairs(groups: Sequence[dict[str, Any]], *, noisy: bool, seed: int = 0) -> list[PreferencePair]:
    """Every two distinct replies of a question as a pair, labelled by the simulated clinician
    (``noisy``: ``simulated_judgment``, seeded; else the noise-free rubric with its tie margin); ties
    are not pairs.

    >>> group = {"prompt_key": "q1", "messages": [["user", "I feel alone."]],
    ...          "replies": ["It sounds like you feel lonely. What would help?", "Go outside.", "Go outside."]}
    >>> [(p.chosen[:8], p.rejected) for p in judged_pairs([group], noisy=False)]
    [('It sound', 'Go outside.'), ('It sound', 'Go outside.')]
    """
    rng = random.Random(seed)
    pairs = []
    for group in groups:
        prompt = tuple((role, content) for role, content in group["messages"])
        user = prompt[-1][1]
        replies = [r for r in group["replies"] if r.strip()]
        for a, b in itertools.combinations(range(len(replies)), 2):
            ra, rb = replies[a], replies[b]
            if ra == rb:
                continue
            if noisy:
                preferred, _, _ = simulated_judgment(user, ra, rb, rng)
            else:
                gap = rubric_score(user, ra) - rubric_score(user, rb)
                preferred = "tie" if abs(gap) < TIE_MARGIN else ("a" if gap > 0 else "b")
            if preferred == "tie":
                continue
            chosen, rejected = (ra, rb) if preferred == "a" else (rb, ra)
            pairs.append(PreferencePair(prompt, chosen, rejected, prompt_key=f"simulated/{group['prompt_key']}",
                                        source="simulated-clinician"))
    return pairs
