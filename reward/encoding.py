"""Tokenising pairs inside the toolkit, so that no pair is lost.

TRL's ``RewardTrainer`` drops pairs longer than ``max_length`` and appends an EOS token (which a BERT
encoder lacks). Here each (conversation, reply) is tokenised once, and when it is too long the
*context* is cut from the left (oldest turns first) while the reply is kept; only a reply that alone
exceeds the budget is cut (from its end). Three layouts:

- ``pair``: encoders with a sentence-pair template (BERT: ``[CLS] context [SEP] reply [SEP]``);
- ``chat``: tokenizers with a chat template (the conversational format, reply as the assistant turn);
- ``text``: anything else (``User: …`` lines, then the reply).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def render_context(messages: Sequence[tuple[str, str]]) -> str:
    """Plain-text rendering of a conversation for encoders without a chat template.

    >>> render_context([("system", "Be kind."), ("user", "I feel low")])
    'System: Be kind.\\nUser: I feel low'
    """
    return "\n".join(f"{ROLE_NAMES.get(role, role.title())}: {content}" for role, content in messages)


def fit(context: list[int], reply: list[int], budget: int, min_context: int) -> tuple[list[int], list[int], bool]:
    """Cut ``context`` from the left and, only if still needed, ``reply`` from the right.

    >>> fit([1, 2, 3, 4], [5, 6], budget=4, min_context=1)
    ([3, 4], [5, 6], True)
    >>> fit([1, 2, 3, 4], [5, 6, 7, 8, 9], budget=4, min_context=1)
    ([4], [5, 6, 7], True)
    >>> fit(list(range(100)), list(range(100, 200)), budget=10, min_context=64)[1]
    [100, 101, 102, 103, 104]
    >>> fit([1], [2], budget=4, min_context=1)
    ([1], [2], False)
    """
    if len(context) + len(reply) <= budget:
        return context, reply, False
    # the context reserve never takes more than half the budget: the reply is what is scored
    keep_context = max(budget - len(reply), min(len(context), min_context, budget // 2))
    keep_reply = budget - keep_context
    return (context[len(context) - keep_context:] if keep_context else []), reply[:keep_reply], True


@dataclass
class Encoder:
    """Turns (messages, reply) into token ids for one tokenizer and ``max_length``."""

    tokenizer: Any
    max_length: int = 512
    min_context_tokens: int = 64
    layout: str = ""
    prefix: list[int] = field(default_factory=list)
    middle: list[int] = field(default_factory=list)
    suffix: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        tok = self.tokenizer
        model_max = getattr(tok, "model_max_length", None)
        if isinstance(model_max, int) and 0 < model_max < self.max_length:
            self.max_length = model_max
        if not self.layout:
            if getattr(tok, "chat_template", None):
                self.layout = "chat"
            elif tok.cls_token is not None and tok.sep_token is not None:
                self.layout = "pair"
            else:
                self.layout = "text"
        a, b = self._ids(["a", "b"])
        if self.layout == "pair":
            self.prefix, self.middle, self.suffix = _template(tok("a", "b")["input_ids"], a, b)
        elif self.layout == "text":
            self.prefix, _, self.suffix = _template(tok("a")["input_ids"] + [-7], a, [-7])
            self.middle = self._ids(["\nAssistant: "])[0]

    def describe(self) -> dict[str, Any]:
        return {"layout": self.layout, "max_length": self.max_length, "min_context_tokens": self.min_context_tokens}

    def _ids(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def _split(self, messages: Sequence[tuple[str, str]], reply: str) -> tuple[str, str]:
        if self.layout == "chat":
            prompt = [{"role": r, "content": c} for r, c in messages]
            head = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False) \
                if prompt else ""
            full = self.tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": reply}],
                                                      tokenize=False)
            if head and full.startswith(head):
                return head, full[len(head):]
            return "", full
        return render_context(messages), reply

    def encode(self, items: Sequence[tuple[Sequence[tuple[str, str]], str]]) -> tuple[list[list[int]], list[bool]]:
        """Token ids for many (messages, reply) items; each distinct text is tokenised once."""
        ids, truncated, _ = self.encode_spans(items)
        return ids, truncated

    def encode_spans(self, items: Sequence[tuple[Sequence[tuple[str, str]], str]]
                     ) -> tuple[list[list[int]], list[bool], list[int]]:
        """:meth:`encode`, and where each row's reply begins (its tokens run from there to the end,
        the template's closing tokens included): what the likelihood feature reads."""
        splits = [self._split(messages, reply) for messages, reply in items]
        unique = sorted({text for pair in splits for text in pair})
        ids = dict(zip(unique, self._ids(unique), strict=True))
        budget = self.max_length - len(self.prefix) - len(self.middle) - len(self.suffix)
        out, truncated, starts = [], [], []
        for context, reply in splits:
            ctx_ids, reply_ids, cut = fit(ids[context], ids[reply], budget, self.min_context_tokens)
            middle = self.middle if (ctx_ids or self.layout == "pair") else []
            out.append(self.prefix + ctx_ids + middle + reply_ids + self.suffix)
            truncated.append(cut)
            starts.append(len(self.prefix) + len(ctx_ids) + len(middle))
        return out, truncated, starts


def padded_batches(ids: Sequence[Sequence[int]], *, pad_token_id: int, batch_size: int) -> Any:
    """Right-padded ``(row indices, input_ids, attention_mask)`` batches of token rows, shortest rows
    first (length-sorted batches waste the least padding); the indices say where each row came from.

    >>> [(chunk, x.tolist(), m.tolist()) for chunk, x, m in padded_batches([[5, 6, 7], [8]], pad_token_id=0,
    ...                                                                   batch_size=2)]
    [([1, 0], [[8, 0, 0], [5, 6, 7]], [[1, 0, 0], [1, 1, 1]])]
    """
    import torch

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(ids[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
            mask[row, :len(ids[i])] = 1
        yield chunk, input_ids, mask


def _template(full: list[int], a: list[int], b: list[int]) -> tuple[list[int], list[int], list[int]]:
    """Special tokens around two sequences, read off an encoded example.

    >>> _template([101, 1, 102, 2, 102], [1], [2])
    ([101], [102], [102])
    """
    start = next(i for i in range(len(full)) if full[i:i + len(a)] == a)
    after_a = start + len(a)
    mid = next(i for i in range(after_a, len(full)) if full[i:i + len(b)] == b)
    return full[:start], full[after_a:mid], full[mid + len(b):]


def encode_pairs(encoder: Encoder, pairs: Sequence[Any], *, with_margin: bool) -> tuple[dict[str, list], int]:
    """Columns for TRL (``chosen_ids``, ``rejected_ids``, ``length``, optional ``margin``) and how many
    pairs had to be truncated."""
    items = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    ids, cut = encoder.encode(items)
    n = len(pairs)
    columns: dict[str, list] = {"chosen_ids": ids[:n], "rejected_ids": ids[n:],
                                "length": [len(c) + len(r) for c, r in zip(ids[:n], ids[n:], strict=True)]}
    if with_margin:
        columns["margin"] = [float(p.margin) for p in pairs]
    return columns, sum(1 for i in range(n) if cut[i] or cut[n + i])
