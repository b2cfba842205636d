"""The model card (``README.md``) of a trained policy: method, base, data and its provenance, figures."""

from __future__ import annotations

import json
from typing import Any


def _figure(value: Any, digits: int = 4) -> str:
    """>>> _figure(0.693147), _figure(None), _figure(12)
    ('0.6931', '–', '12')
    """
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def model_card(meta: dict[str, Any]) -> str:
    """Markdown for the model folder, from its ``therapref_policy.json`` content."""
    config, metrics, prov = meta.get("config", {}), meta.get("metrics", {}), meta.get("provenance", {})
    manifest = prov.get("manifest") or {}
    unit = metrics.get("unit", "examples")
    lines = [
        "---",
        "library_name: transformers",
        "tags: [therapref, trl, " + str(meta.get("method")) + "]",
        "---",
        "",
        f"# TheraPref policy ({str(meta.get('method')).upper()})",
        "",
        f"A chatbot policy fine-tuned with TRL's {str(meta.get('method')).upper()} trainer by `therapref finetune "
        "local`. The folder holds a full causal LM (LoRA adapters, if any, merged) and its tokenizer.",
        "",
        "## Base model",
        "",
        f"- base: `{meta.get('base_model')}` (`{meta.get('base_model_path')}`)",
        "- LoRA: " + (f"r {config.get('lora_r')}, alpha {config.get('lora_alpha')} (merged into the saved weights)"
                      if config.get("use_lora") else "no (all weights trained)"),
        "",
        "## Data (provenance)",
        "",
        f"- file: `{prov.get('file')}` ({prov.get('rows')} rows, sha256 `{prov.get('sha256')}`)",
    ]
    if manifest:
        lines += [
            f"- export: `{manifest.get('kind')}` written by {manifest.get('tool', 'therapref')} "
            f"{manifest.get('tool_version', '')} at {manifest.get('finished_at', '?')} "
            f"(export run #{manifest.get('export_run_id')})",
            f"- database fingerprint: `{manifest.get('database_fingerprint')}`",
            f"- the manifest's digest {'matches' if prov.get('manifest_matches') else 'does NOT match'} the file",
            f"- filters: `{json.dumps(manifest.get('filters', {}), sort_keys=True, ensure_ascii=False)}`",
            f"- counts: `{json.dumps(manifest.get('counts', {}), sort_keys=True, ensure_ascii=False)}`",
        ]
    else:
        lines.append("- no export manifest beside the file: its origin is not recorded")
    for note in meta.get("notes") or []:
        lines.append(f"- note: {note}")
    lines += [
        "",
        "## Training",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| method | {meta.get('method')} |",
        f"| {unit} | {metrics.get('n_train')} |",
        f"| optimizer steps | {metrics.get('global_step')} |",
        f"| epochs | {_figure(metrics.get('epochs'))} |",
        f"| loss (first logged) | {_figure(metrics.get('loss_start'))} |",
        f"| loss (last logged) | {_figure(metrics.get('loss_end'))} |",
        f"| time | {_figure(metrics.get('seconds'))} s (training loop {_figure(metrics.get('train_seconds'))} s) |",
        f"| {unit}/s | {_figure(metrics.get('per_second'))} |",
        f"| processes | {metrics.get('world_size')} |",
        f"| seed | {config.get('seed')} |",
        f"| learning rate | {config.get('learning_rate')} |",
        f"| batch size per device | {config.get('per_device_train_batch_size')} |",
        f"| max length | {config.get('max_length')} |",
        f"| bf16 | {config.get('bf16')} |",
        "",
        "Settings (`therapref_policy.json` holds them all, with the metrics and the full manifest):",
        "",
        "```json",
        json.dumps(config, indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)
