"""Padding-free ("packed") training batches for BERT-family reward models on a CPU.

TRL pads the chosen and rejected sequences of a batch to the longest one, and on a CPU PyTorch's
fused attention kernel is slow in the backward pass for BERT's 32-wide heads (about half of a
MiniLM training step, bench/reward_counselchat.py). Here the sequences of a batch are laid end to end
in one row of tokens: the linear layers see only real tokens, and attention runs sequence by
sequence (two batched matmuls and a softmax per sequence, no mask), which is 2-3× faster than the
padded fused kernel at these sizes. The weights, the loss and TRL's training loop are unchanged:
only the layout of a batch and the attention kernel differ, and the rewards match the padded
path's to bf16 precision (tests/test_reward_packing.py).

Used for BERT-style sequence classifiers (``BertForSequenceClassification``: the reward is read
from the first token of each sequence); other models keep TRL's padded batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PACKED_ATTENTION = "therapref_packed"
SUPPORTED_MODEL_TYPES = ("bert",)


def packed_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
                     dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """Attention of packed sequences: ``query``/``key``/``value`` are ``[1, heads, tokens, head_dim]``
    and ``packed_lengths`` (passed through the model's keyword arguments) holds the length of each
    sequence; each sequence attends only to itself. Returns ``[1, tokens, heads, head_dim]``."""
    lengths = kwargs["packed_lengths"]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    # [tokens, heads, head_dim]: the projections' own memory layout, so no copy here
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))
    if dropout and module.training:
        return _attention_with_dropout(q, k, v, lengths, scale, dropout).unsqueeze(0), None
    return _PackedAttention.apply(q, k, v, lengths, scale).unsqueeze(0), None


def _blocks(x: Any, lengths: list[int], scale: float | None = None) -> list[Any]:
    """Per-sequence ``[heads, n, head_dim]`` blocks, each contiguous (CPU bf16 matmuls copy strided
    operands on every call otherwise)."""
    parts = [part.transpose(0, 1) for part in x.split(lengths, 0)]
    return [part * scale for part in parts] if scale is not None else [part.contiguous() for part in parts]


def _unblock(blocks: list[Any]) -> Any:
    """Inverse of ``_blocks``: back to ``[tokens, heads, head_dim]``."""
    import torch

    return torch.cat([block.transpose(0, 1) for block in blocks], dim=0)


def _attention_with_dropout(q: Any, k: Any, v: Any, lengths: list[int], scale: float, dropout: float) -> Any:
    import torch

    outs = []
    for qs, ks, vs in zip(_blocks(q, lengths, scale), _blocks(k, lengths), _blocks(v, lengths), strict=True):
        probs = torch.nn.functional.dropout(torch.softmax(torch.bmm(qs, ks.transpose(1, 2)), dim=-1), p=dropout)
        outs.append(torch.bmm(probs, vs))
    return _unblock(outs)


def _packed_attention_function() -> Any:
    import torch

    class PackedAttention(torch.autograd.Function):
        """softmax(scale · q kᵀ) v per sequence, with a hand-written backward: one autograd node per
        layer instead of a dozen per sequence, and every matmul on contiguous blocks."""

        @staticmethod
        def forward(ctx: Any, q: Any, k: Any, v: Any, lengths: list[int], scale: float) -> Any:
            qs, ks, vs = _blocks(q, lengths, scale), _blocks(k, lengths), _blocks(v, lengths)
            probs = [torch.softmax(torch.bmm(a, b.transpose(1, 2)), dim=-1) for a, b in zip(qs, ks, strict=True)]
            ctx.save_for_backward(*qs, *ks, *vs, *probs)
            ctx.lengths, ctx.scale = lengths, scale
            return _unblock([torch.bmm(p, b) for p, b in zip(probs, vs, strict=True)])

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> tuple[Any, Any, Any, None, None]:
            n = len(ctx.lengths)
            saved = ctx.saved_tensors
            qs, ks, vs, probs = saved[:n], saved[n:2 * n], saved[2 * n:3 * n], saved[3 * n:]
            dq, dk, dv = [], [], []
            for p, a, b, c, do in zip(probs, qs, ks, vs, _blocks(grad_out, ctx.lengths), strict=True):
                dv.append(torch.bmm(p.transpose(1, 2), do))
                ds = torch._softmax_backward_data(torch.bmm(do, c.transpose(1, 2)), p, -1, p.dtype)
                dq.append(torch.bmm(ds, b).mul_(ctx.scale))
                dk.append(torch.bmm(ds.transpose(1, 2), a))
            return _unblock(dq), _unblock(dk), _unblock(dv), None, None

    return PackedAttention


class _LazyFunction:
    """Builds the autograd Function on first use (torch is imported lazily in this package)."""

    def __init__(self) -> None:
        self.function: Any = None

    def apply(self, *args: Any) -> Any:
        if self.function is None:
            self.function = _packed_attention_function()
        return self.function.apply(*args)


_PackedAttention = _LazyFunction()


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None  # packed sequences need no mask: packed_attention keeps each sequence to itself


def register_packed_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_ATTENTION, _no_mask)


def supports_packing(model: Any) -> bool:
    """True for BERT-style sequence classifiers whose reward is pooled from the first token."""
    config = getattr(model, "config", None)
    base = getattr(model, "bert", None)
    return (getattr(config, "model_type", None) in SUPPORTED_MODEL_TYPES and base is not None
            and getattr(base, "pooler", None) is not None and hasattr(model, "classifier"))


def pack_rows(rows: Sequence[Sequence[int]]) -> dict[str, Any]:
    """One row of tokens for several sequences, with restarting positions and the sequence lengths.

    >>> packed = pack_rows([[101, 7, 102], [101, 102]])
    >>> packed["input_ids"].tolist(), packed["position_ids"].tolist(), packed["packed_lengths"]
    ([[101, 7, 102, 101, 102]], [[0, 1, 2, 0, 1]], [3, 2])
    """
    import torch

    lengths = [len(row) for row in rows]
    if not all(lengths):
        raise ValueError("cannot pack an empty sequence")
    input_ids = torch.tensor([token for row in rows for token in row], dtype=torch.long).unsqueeze(0)
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    return {"input_ids": input_ids, "position_ids": position_ids,
            "attention_mask": torch.ones_like(input_ids),  # all real tokens (TRL counts them)
            "token_type_ids": torch.zeros_like(input_ids), "packed_lengths": lengths}


@dataclass
class PackedPreferenceCollator:
    """TRL's preference batch (chosen rows, then rejected rows) laid end to end without padding."""

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = pack_rows([e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples])
        if "margin" in examples[0]:
            batch["margin"] = torch.tensor([e["margin"] for e in examples], dtype=torch.float)
        return batch


class PackedPooling:
    """Makes a BERT sequence classifier read one reward per packed sequence.

    BERT's pooler takes the first token of each row; for a packed row it must take the first token
    of each sequence. A pre-hook on the model notes the sequence lengths of the call, and a pre-hook
    on the pooler hands it those first tokens as a batch of one-token rows.
    """

    def __init__(self, model: Any) -> None:
        self.lengths: list[int] | None = None
        self.handles = [
            model.register_forward_pre_hook(self._note_lengths, with_kwargs=True),
            model.bert.pooler.register_forward_pre_hook(self._first_tokens),
        ]

    def _note_lengths(self, module: Any, args: tuple, kwargs: dict) -> None:
        self.lengths = kwargs.get("packed_lengths")

    def _first_tokens(self, module: Any, args: tuple) -> tuple | None:
        if self.lengths is None:
            return None
        import torch

        hidden = args[0]
        starts = torch.tensor([0] + self.lengths[:-1], device=hidden.device).cumsum(0)
        return (hidden[0].index_select(0, starts).unsqueeze(1),) + args[1:]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
