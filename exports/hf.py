"""Hugging Face dataset export: Parquet (streamed in batches), ``save_to_disk`` and a dataset card.

Folder layout::

    PATH/data/train-00000-of-00001.parquet   # the rows, readable without `datasets`
    PATH/dataset/                            # datasets.load_from_disk(PATH / "dataset")
    PATH/README.md                           # dataset card (fields, counts, filters, licence, provenance)
    PATH/manifest.json
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PARQUET_NAME = "data/train-00000-of-00001.parquet"
BATCH_ROWS = 5_000

FIELDS = {
    "prompt": "the conversation before the reply: system message (if any) and user/assistant turns",
    "chosen": "the preferred reply, as a one-message assistant list",
    "rejected": "the other reply, as a one-message assistant list",
    "margin": "share of votes separating chosen and rejected (0..1)",
    "comparison_id": "TheraPref comparison id",
    "prompt_id": "TheraPref prompt id",
    "chosen_model": "candidate model that wrote the chosen reply",
    "rejected_model": "candidate model that wrote the rejected reply",
    "votes": "judgments counted for the comparison (after filters)",
    "votes_chosen": "votes for the chosen reply",
    "votes_rejected": "votes for the rejected reply",
}


def _schema() -> Any:
    import pyarrow as pa

    message = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    return pa.schema([
        ("prompt", message), ("chosen", message), ("rejected", message), ("margin", pa.float64()),
        ("comparison_id", pa.int64()), ("prompt_id", pa.int64()), ("chosen_model", pa.string()),
        ("rejected_model", pa.string()), ("votes", pa.int64()), ("votes_chosen", pa.int64()),
        ("votes_rejected", pa.int64()),
    ])


def write_hf(rows: Iterable[dict[str, Any]], folder: Path) -> tuple[int, str]:
    """Stream rows into Parquet, then build the ``save_to_disk`` copy from it. Returns (rows, sha256)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema()
    parquet = folder / PARQUET_NAME
    parquet.parent.mkdir(parents=True)
    n, batch = 0, []
    with pq.ParquetWriter(parquet, schema) as writer:
        for row in rows:
            batch.append(row)
            if len(batch) >= BATCH_ROWS:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                n, batch = n + len(batch), []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            n += len(batch)
    if n == 0:
        return 0, ""
    from datasets import Dataset
    from datasets.utils import logging as ds_logging

    cache = folder / ".cache"
    bars = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        dataset = Dataset.from_parquet(str(parquet), cache_dir=str(cache), keep_in_memory=False)
        dataset.save_to_disk(str(folder / "dataset"))
        del dataset
    finally:
        if bars:
            ds_logging.enable_progress_bar()
    shutil.rmtree(cache, ignore_errors=True)
    digest = hashlib.sha256()
    with parquet.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return n, digest.hexdigest()


def card_text(manifest: dict[str, Any]) -> str:
    """The dataset card (README.md) for an HF export.

    >>> text = card_text({"rows": 2, "filters": {"sources": "clinicians"}, "counts": {"in": 3, "out": 2,
    ...     "unit": "comparisons", "dropped": {"no_majority": 1}}, "database_fingerprint": "abc",
    ...     "tool_version": "0.1.0", "finished_at": "2026-01-01T00:00:00+00:00", "command": []})
    >>> "no_majority" in text and "| chosen |" in text
    True
    """
    counts = manifest["counts"]
    dropped = "\n".join(f"| {reason} | {n} |" for reason, n in counts.get("dropped", {}).items()) or "| (none) | 0 |"
    fields = "\n".join(f"| {name} | {help_} |" for name, help_ in FIELDS.items())
    filters = json.dumps(manifest["filters"], indent=2, sort_keys=True)
    sources = manifest.get("database_sources") or {}
    prompt_sources = ", ".join(f"`{k}` ({v})" for k, v in sorted(sources.get("prompts", {}).items())) or "none"
    judgment_sources = ", ".join(f"`{k}` ({v})" for k, v in sorted(sources.get("judgments", {}).items())) or "none"
    pii = counts.get("pii_replaced")
    pii_line = (f"PII scrubbing was applied (replacements: {json.dumps(pii, sort_keys=True)})."
                if pii else "PII scrubbing was NOT applied: check the text before sharing this dataset.")
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: {PARQUET_NAME}
task_categories:
- text-generation
tags:
- dpo
- preference
- therapy
- therapref
---

# TheraPref preference dataset

Pairs of therapy-chatbot replies where clinicians (or imported preference data, see the filters)
preferred one reply over the other. Columns `prompt`/`chosen`/`rejected` follow TRL's conversational
preference format, so the dataset trains `trl.DPOTrainer` and `trl.RewardTrainer` as is.

Load it with `datasets.load_from_disk("<this folder>/dataset")` or
`datasets.load_dataset("parquet", data_files="<this folder>/{PARQUET_NAME}")`.

## Fields

| field | meaning |
| --- | --- |
{fields}

## Counts

{manifest['rows']} rows written from {counts['in']} {counts['unit']}.

| dropped because | items |
| --- | --- |
{dropped}

## Filters

```json
{filters}
```

## Licence and safety

The replies and judgments belong to the project that collected them; prompts or preferences imported
from public datasets keep their own licences (for example Counsel Chat is MIT-licensed): check the
sources in your database before publishing. This database holds prompts from {prompt_sources} and
judgments from {judgment_sources}. Replies that any clinician flagged as unsafe are never
used as the chosen reply. {pii_line} This data is about mental health: do not use it to give
clinical advice without clinical oversight.

## Provenance

- tool: therapref {manifest['tool_version']}
- database fingerprint: `{manifest['database_fingerprint']}`
- written: {manifest['finished_at']}
- command: `{' '.join(manifest.get('command') or []) or '(library call)'}`
"""


def write_card(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / "README.md").write_text(card_text(manifest), encoding="utf-8")
