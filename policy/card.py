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
        f"A chatbot policy fine-tuned with {_trained_by(str(meta.get('method')))} by `therapref finetune "
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
    ]
    if prov.get("reward_model"):  # rs / grpo / rloo: the policy's own samples, scored by a reward model
        lines += _online_data(meta)
    else:
        lines.append(f"- file: `{prov.get('file')}` ({prov.get('rows')} rows, sha256 `{prov.get('sha256')}`)")
    if prov.get("reward_model"):
        pass  # no export behind it
    elif manifest:
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
        *_online_figures(meta),
        "",
        "Settings (`therapref_policy.json` holds them all, with the metrics and the full manifest):",
        "",
        "```json",
        json.dumps(config, indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


def _trained_by(method: str) -> str:
    """>>> _trained_by("rs"), _trained_by("grpo")
    ("rejection sampling (the reward model's best samples, TRL's SFT trainer)", "TRL's GRPO trainer")
    """
    if method == "rs":
        return "rejection sampling (the reward model's best samples, TRL's SFT trainer)"
    return f"TRL's {method.upper()} trainer"


def _online_data(meta: dict[str, Any]) -> list[str]:
    """Where an rs/grpo/rloo policy's training signal came from: the reward (and safety) model, the prompts."""
    prov, config = meta.get("provenance", {}), meta.get("config", {})
    where = (f"file `{prov.get('prompts_file')}` (sha256 `{prov.get('prompts_sha256')}`)" if prov.get("prompts_file")
             else f"the database's prompts, `--prompts {prov.get('prompts') or 'all'}`")
    lines = [
        f"- reward model: `{prov.get('reward_model')}`",
        "- safety model: " + (f"`{prov.get('safety_model')}` (unsafe below {prov.get('safety_threshold')}: never kept "
                              "by rs, the lowest reward of its batch in RL)" if prov.get("safety_model") else "none"),
        f"- prompts: {prov.get('n_prompts')} from {where}; {len(prov.get('prompt_ids') or [])} stored prompt ids "
        f"listed in `therapref_policy.json` (A/B tests leave them out)",
        f"- left out: {prov.get('excluded_abtest_prompts', 0)} A/B-test prompts, "
        f"{prov.get('excluded_long_prompts', 0)} longer than {config.get('max_prompt_length')} tokens",
    ]
    if meta.get("method") == "rs":
        lines.append(f"- best of {config.get('best_of')} samples per prompt at temperature "
                     f"{config.get('temperature')}, {config.get('rounds')} round(s)")
    return lines


def _online_figures(meta: dict[str, Any]) -> list[str]:
    """Reward, rollout and speed rows of the training table (rs/grpo/rloo)."""
    metrics = meta.get("metrics", {})
    if "reward_start" not in metrics:
        return []
    rows = [f"| mean reward (first → last) | {_figure(metrics.get('reward_start'))} → "
            f"{_figure(metrics.get('reward_end'))} |",
            f"| unsafe replies | {metrics.get('unsafe_replies')} of {metrics.get('scored_replies')} |"]
    if metrics.get("rollout_engine"):
        rollouts = metrics.get("rollouts") or {}
        rows += [f"| rollouts | {metrics.get('rollout_engine')} ({metrics.get('rollout_engine_reason')}) |",
                 f"| rollout tokens/s | {_figure(rollouts.get('tokens_per_second'))} |",
                 f"| steps/hour | {_figure(metrics.get('steps_per_hour'))} |"]
    for item in metrics.get("rounds") or []:
        rows.append(f"| round {item.get('round')} | kept {item.get('kept')} of {item.get('prompts')} prompts, mean "
                    f"reward {_figure(item.get('reward_mean'))} (kept {_figure(item.get('reward_kept_mean'))}), "
                    f"{item.get('global_step')} SFT steps |")
    return rows
