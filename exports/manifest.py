"""The provenance manifest written beside every export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def manifest_path(path: Path, kind: str) -> Path:
    """``<file>.manifest.json`` beside a file export; ``manifest.json`` inside an HF dataset folder.

    >>> manifest_path(Path("out/dpo.jsonl"), "dpo").as_posix()
    'out/dpo.jsonl.manifest.json'
    >>> manifest_path(Path("out/ds"), "hf").as_posix()
    'out/ds/manifest.json'
    """
    return path / "manifest.json" if kind == "hf" else path.with_name(path.name + ".manifest.json")


def write_manifest(manifest: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
