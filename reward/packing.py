"""Padding-free ("packed") training batches for BERT-family reward models on a CPU.

TRL pads the chosen and rejected sequences of a batch to the longest one, and on a CPU PyTorch's
fused attention kernel is slow in the backward pass for BERT's 32-wide heads (about half of a
MiniLM training step, bench/reward_counselchat.py). Here the sequences of a batch are laid end to end
in one row of tokens: the linear layers see only real tokens, and each sequence attends only to
itself, through batched matmuls over the sequences of one block width (lengths rounded up to 16)
with a hand-written backward, about twice as fast as the padded fused kernel at these sizes. The
weights, the loss and TRL's training loop are unchanged: only the layout of a batch and the
attention kernel differ; rewards and gradients equal the padded path's (fp32) and match it to bf16
precision under autocast (tests/test_reward_packing.py).

Used for BERT-style sequence classifiers (``BertForSequenceClassification``: the reward is read
from the first token of each sequence); other models keep TRL's padded batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from typing import Any

PACKED_ATTENTION = "therapref_packed"
SUPPORTED_MODEL_TYPES = ("bert",)


def packed_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
                     dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """Attention of packed sequences: ``query``/``key``/``value`` are ``[1, heads, tokens, head_dim]``
    and ``packed_lengths`` (passed through the model's keyword arguments) holds the length of each
    sequence; each sequence attends only to itself. Returns ``[1, tokens, heads, head_dim]``."""
    layout = _layout(tuple(kwargs["packed_lengths"]), query.device)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    # [tokens, heads, head_dim]: the projections' own memory layout, so no copy here
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))
    if dropout and module.training:
        out, _ = _attend(q, k, v, layout, scale, dropout)
    else:
        out = _PackedAttention.apply(q, k, v, layout, scale)
    return out.unsqueeze(0), None


#: Sequences are attended in blocks padded to a multiple of this many tokens, one batched matmul per
#: block width. oneDNN, which runs CPU bf16 matmuls, builds (JIT-compiles) a kernel for every new
#: shape, about 1 ms each; with exact lengths nearly every sequence of a batch paid that. Padded keys
#: are masked and padded queries dropped.
BLOCK_MULTIPLE = 16


def round_up(n: int, multiple: int) -> int:
    """>>> round_up(177, 16), round_up(176, 16), round_up(1, 16)
    (192, 176, 16)
    """
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class _Group:
    width: int  # padded block length
    lengths: tuple[int, ...]  # of its sequences
    gather: Any  # [sequences × width] token index per block slot; the last index is a zero row


@dataclass(frozen=True)
class _Layout:
    groups: tuple[_Group, ...]
    scatter: Any  # [tokens]: each token's row in the groups' flattened blocks, laid end to end


@lru_cache(maxsize=8)  # the same batch passes every layer, forward and backward
def _layout(lengths: tuple[int, ...], device: Any) -> _Layout:
    import torch

    tokens = sum(lengths)
    starts = list(accumulate(lengths, initial=0))
    by_width: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_width.setdefault(round_up(n, BLOCK_MULTIPLE), []).append(i)
    groups, scatter, offset = [], [0] * tokens, 0
    for width, members in sorted(by_width.items()):
        gather = []
        for j, i in enumerate(members):
            gather += list(range(starts[i], starts[i] + lengths[i])) + [tokens] * (width - lengths[i])
            for r in range(lengths[i]):
                scatter[starts[i] + r] = offset + j * width + r
        offset += len(members) * width
        groups.append(_Group(width, tuple(lengths[i] for i in members), torch.tensor(gather, device=device)))
    return _Layout(tuple(groups), torch.tensor(scatter, device=device))


def _to_blocks(x: Any, group: _Group) -> Any:
    """``[tokens + 1, heads, head_dim]`` (last row zero) → contiguous ``[sequences, heads, width, head_dim]``
    (CPU bf16 matmuls copy strided operands on every call otherwise)."""
    blocks = x.index_select(0, group.gather).view(len(group.lengths), group.width, *x.shape[1:])
    return blocks.transpose(1, 2).contiguous()


def _from_blocks(blocks: list[Any], layout: _Layout) -> Any:
    """Inverse of ``_to_blocks`` for all groups: back to ``[tokens, heads, head_dim]``."""
    import torch

    flat = [b.transpose(1, 2).reshape(-1, b.shape[1], b.shape[3]) for b in blocks]
    return torch.cat(flat).index_select(0, layout.scatter)


def _with_zero_row(x: Any) -> Any:
    import torch

    return torch.cat([x, x.new_zeros(1, *x.shape[1:])])


def _attend(q: Any, k: Any, v: Any, layout: _Layout, scale: float, dropout: float = 0.0) -> tuple[Any, list]:
    """Output ``[tokens, heads, head_dim]`` and, per group, the (q, k, v, probabilities) blocks."""
    import torch

    q, k, v = _with_zero_row(q), _with_zero_row(k), _with_zero_row(v)
    outs, saved = [], []
    for group in layout.groups:
        qb, kb, vb = _to_blocks(q, group) * scale, _to_blocks(k, group), _to_blocks(v, group)
        scores = torch.matmul(qb, kb.transpose(-1, -2))
        for j, n in enumerate(group.lengths):
            if n < group.width:
                scores[j, :, :, n:] = float("-inf")  # padded keys get probability 0
        probs = torch.softmax(scores, dim=-1)
        if dropout:
            probs = torch.nn.functional.dropout(probs, p=dropout)
        outs.append(torch.matmul(probs, vb))
        saved.append((qb, kb, vb, probs))
    return _from_blocks(outs, layout), saved


def _packed_attention_function() -> Any:
    import torch

    class PackedAttention(torch.autograd.Function):
        """softmax(scale · q kᵀ) v per sequence, with a hand-written backward: one autograd node per
        layer instead of a dozen per block."""

        @staticmethod
        def forward(ctx: Any, q: Any, k: Any, v: Any, layout: _Layout, scale: float) -> Any:
            out, saved = _attend(q, k, v, layout, scale)
            ctx.save_for_backward(*(t for blocks in saved for t in blocks))
            ctx.layout, ctx.scale = layout, scale
            return out

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> tuple[Any, Any, Any, None, None]:
            saved = ctx.saved_tensors
            grad_out = _with_zero_row(grad_out)  # padded query rows get zero gradient: nothing leaks
            dq, dk, dv = [], [], []
            for index, group in enumerate(ctx.layout.groups):
                qb, kb, vb, probs = saved[4 * index:4 * index + 4]
                do = _to_blocks(grad_out, group)
                dv.append(torch.matmul(probs.transpose(-1, -2), do))
                ds = torch._softmax_backward_data(torch.matmul(do, vb.transpose(-1, -2)), probs, -1, probs.dtype)
                dq.append(torch.matmul(ds, kb).mul_(ctx.scale))
                dk.append(torch.matmul(ds.transpose(-1, -2), qb))
            layout = ctx.layout
            return _from_blocks(dq, layout), _from_blocks(dk, layout), _from_blocks(dv, layout), None, None

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


def token_multiple(n_tokens: int) -> int:
    """The packed row is padded to a multiple of this, so that the linear layers see a few dozen
    shapes over a training run instead of a new one per batch (see BLOCK_MULTIPLE): about 1/16 of the
    row at most, between 16 and 256 tokens.

    >>> token_multiple(100), token_multiple(1000), token_multiple(2800), token_multiple(20000)
    (16, 32, 128, 256)
    """
    return max(16, min(256, 2 ** (n_tokens.bit_length() - 5)))


def pack_rows(rows: Sequence[Sequence[int]], *, pad_token_id: int = 0) -> dict[str, Any]:
    """One row of tokens for several sequences, with restarting positions and the sequence lengths.

    The row ends with a filler sequence of padding tokens that rounds its length up to
    ``token_multiple``; the filler attends only to itself and yields no reward.

    >>> packed = pack_rows([[101, 7, 102], [101, 102]])
    >>> packed["input_ids"].tolist()[0][:6], packed["position_ids"].tolist()[0][:7], packed["packed_lengths"]
    ([101, 7, 102, 101, 102, 0], [0, 1, 2, 0, 1, 0, 1], [3, 2, 11])
    >>> packed["packed_sequences"], int(packed["attention_mask"].sum()), packed["input_ids"].shape[1]
    (2, 5, 16)
    """
    import torch

    lengths = [len(row) for row in rows]
    if not all(lengths):
        raise ValueError("cannot pack an empty sequence")
    tokens = sum(lengths)
    filler = round_up(tokens, token_multiple(tokens)) - tokens
    ids = [token for row in rows for token in row] + [pad_token_id] * filler
    input_ids = torch.tensor(ids, dtype=torch.long).unsqueeze(0)
    all_lengths = lengths + ([filler] if filler else [])
    position_ids = torch.cat([torch.arange(n) for n in all_lengths]).unsqueeze(0)
    attention_mask = torch.ones_like(input_ids)
    if filler:
        attention_mask[0, tokens:] = 0  # TRL counts the real tokens; the packed attention needs no mask
    return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": attention_mask,
            "token_type_ids": torch.zeros_like(input_ids), "packed_lengths": all_lengths,
            "packed_sequences": len(lengths)}


@dataclass
class PackedPreferenceCollator:
    """TRL's preference batch (chosen rows, then rejected rows) laid end to end without padding."""

    pad_token_id: int = 0

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = pack_rows([e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples],
                          pad_token_id=self.pad_token_id)
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
        self.lengths: list[int] | None = None  # of the real sequences (the filler yields no reward)
        self.handles = [
            model.register_forward_pre_hook(self._note_lengths, with_kwargs=True),
            model.bert.pooler.register_forward_pre_hook(self._first_tokens),
        ]

    def _note_lengths(self, module: Any, args: tuple, kwargs: dict) -> None:
        lengths = kwargs.get("packed_lengths")
        self.lengths = lengths[:kwargs.get("packed_sequences", len(lengths))] if lengths is not None else None

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
