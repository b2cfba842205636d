"""The likelihood feature: the base causal LM's mean log-probability of a reply's tokens given its
conversation, one more input of the head-only reward model (``therapref train --head-only --likelihood``).

On held-out domains the instruct model's own likelihood of the reply was the signal that transferred best
(``docs/reward.md``, "Generalisation"). It is read in the same forward pass as the reward head's input:
the decoder's last hidden states at every reply position, times the LM head (the output embedding),
give the next-token log-probabilities. A tied model (SmolLM2) has its LM head inside the saved
sequence-classification folder already (the input embedding); an untied one gets it saved next to the
model as :data:`LM_HEAD_FILE`, so that scoring never needs the base model again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reward.errors import RewardError

LM_HEAD_FILE = "likelihood_lm_head.safetensors"


def ties_embeddings(model: Any) -> bool:
    """Whether the model's LM head is its input embedding (``tie_word_embeddings``)."""
    config = getattr(model, "config", None)
    return bool(getattr(config, "tie_word_embeddings", False))


def base_lm_head(model: Any, base: str | Path) -> Any:
    """The LM head weight (vocab × hidden) of the causal LM ``base`` that ``model`` (its
    sequence-classification form) was loaded from."""
    import torch

    if getattr(model.config, "is_encoder_decoder", False) or not hasattr(model, "score"):
        raise RewardError(f"the likelihood feature needs a decoder base with an LM head; {type(model).__name__} "
                          "is not one (use --base-model smollm2 or another causal LM)")
    if ties_embeddings(model):
        return model.get_input_embeddings().weight.detach().float()
    from reward.resources import load_pretrained

    causal, _ = load_pretrained(base, "causal-lm", dtype=torch.float32)
    return causal.get_output_embeddings().weight.detach().float().clone()


def save_lm_head(model: Any, weight: Any, folder: str | Path) -> None:
    """Keep an untied LM head next to the model (a tied one is part of the model already)."""
    if ties_embeddings(model):
        return
    from safetensors.torch import save_file

    save_file({"weight": weight.contiguous()}, str(Path(folder) / LM_HEAD_FILE))


def load_lm_head(model: Any, folder: str | Path) -> Any:
    """The LM head of a saved likelihood model: the input embedding (tied), else :data:`LM_HEAD_FILE`."""
    if ties_embeddings(model):
        return model.get_input_embeddings().weight.detach().float()
    path = Path(folder) / LM_HEAD_FILE
    if not path.is_file():
        raise RewardError(f"{folder}: the model uses the likelihood feature but {LM_HEAD_FILE} is missing")
    from safetensors.torch import load_file

    return load_file(str(path))["weight"].float()


def mean_reply_logprob(states: Any, input_ids: Any, starts: Sequence[int], lengths: Sequence[int],
                       lm_head: Any) -> Any:
    """Per row: the mean of log P(token t | tokens < t) over the reply's tokens t ∈ [start, length),
    from the last hidden states (batch × width × hidden) and the LM head (vocab × hidden).

    >>> import torch
    >>> head = torch.eye(3)                         # vocab 3, hidden 3: logits = the state itself
    >>> states = torch.tensor([[[0.0, 9.0, 0.0], [0.0, 0.0, 9.0], [0.0, 0.0, 0.0]]])
    >>> ids = torch.tensor([[0, 1, 2]])
    >>> round(float(mean_reply_logprob(states, ids, [1], [3], head)[0]), 4)   # tokens 1, 2 predicted sharply
    -0.0002
    """
    import torch

    out = torch.zeros(len(starts), dtype=torch.float64)
    for row, (start, length) in enumerate(zip(starts, lengths, strict=True)):
        first = max(1, int(start))
        if first >= length:
            continue
        logits = states[row, first - 1:length - 1].float() @ lm_head.T
        targets = input_ids[row, first:length]
        out[row] = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).double().mean()
    return out
