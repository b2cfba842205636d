"""Candidate models: registry, generation (OpenAI-compatible endpoints, embedded local model), pairing.

- ``candidates.registry``: ``CandidateSpec``, ``load_registry``, ``sync_registry``, ``demo_candidates``
- ``candidates.generate``: ``run_generation`` (resumable, retried, summarised)
- ``candidates.pairing``: ``make_pairs`` (cross-source comparisons, budget, overlap)
- ``candidates.embedded``: the embedded SmolLM2-135M-Instruct (GGUF and HF format)
"""

from __future__ import annotations

from typing import Any


def demo_specs(**kwargs: Any) -> list:
    """The two embedded demo candidates (see ``candidates.registry.demo_candidates``)."""
    from candidates.registry import demo_candidates

    return demo_candidates(**kwargs)
