"""Values for the database's JSON columns (run configs, metrics, provenance) and JSON output."""

from __future__ import annotations

from typing import Any


def nan_to_none(value: Any) -> Any:
    """JSON-safe copy (NaN and infinities → None): neither is JSON, and PostgreSQL's JSON columns refuse them.

    >>> nan_to_none({"a": float("nan"), "b": [1.0, float("inf")]})
    {'a': None, 'b': [1.0, None]}
    """
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_none(v) for v in value]
    return value
