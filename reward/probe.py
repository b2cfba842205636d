"""Head-only training: the reward head fitted on the frozen base model's own features.

Each reply is read once by the frozen base; the reward head (the linear layer a sequence-classification
model puts on its pooled state: ``score`` on a decoder, ``classifier`` on BERT) is then fitted by an
L2-regularised Bradley–Terry logistic fit on the pairs' feature differences. On a CPU this costs one
forward pass per reply instead of epochs of backpropagation, and on held-out domains it is the setting
that generalised best (``docs/reward.md``, "Generalisation"): the base's features are not bent towards
the training domains' quirks, only read.

The fitted weights are folded into the head, so the saved folder is an ordinary sequence-classification
model that ``RewardModel.load`` scores like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from reward.encoding import padded_batches
from reward.errors import RewardError


def head_module(model: Any) -> Any:
    """The linear reward head of a sequence-classification model (one output)."""
    import torch

    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Linear) and head.out_features == 1:
            return head
        if head is not None and isinstance(getattr(head, "out_proj", None), torch.nn.Linear):
            return head.out_proj  # RoBERTa-style heads: dense → tanh → out_proj
    raise RewardError(f"head-only training needs a linear reward head; {type(model).__name__} has none "
                      "(use a BERT-style or decoder base, or train all layers)")


def head_features(model: Any, ids: Sequence[Sequence[int]], *, pad_token_id: int, batch_size: int = 16,
                  lm_head: Any = None, reply_starts: Sequence[int] | None = None,
                  progress: Callable[[int], None] | None = None) -> Any:
    """The input of the reward head at the position the model pools, one row per token sequence; with
    ``lm_head`` (and ``reply_starts``) one more column, the reply's mean log-probability under the base
    causal LM (``reward/likelihood.py``), read in the same forward pass. ``progress`` is called with the
    number of rows read after every batch.

    A decoder's head reads every position and the model keeps the rightmost non-padding one
    (transformers' rule, copied here so that the fitted head scores exactly as it was fitted); a BERT
    head reads the pooled first token already."""
    import torch

    from reward.likelihood import mean_reply_logprob

    if lm_head is not None and reply_starts is None:
        raise RewardError("the likelihood feature needs where each reply begins")
    head = head_module(model)
    captured: list[Any] = []
    hook = head.register_forward_hook(lambda _module, args, _out: captured.append(args[0].detach()))
    rows: list[Any] = [None] * len(ids)
    device = next(model.parameters()).device
    if lm_head is not None:
        lm_head = lm_head.to(device)
    try:
        with torch.inference_mode():
            for chunk, input_ids, mask in padded_batches(ids, pad_token_id=pad_token_id, batch_size=batch_size):
                width = input_ids.shape[1]
                captured.clear()
                input_ids = input_ids.to(device)
                model(input_ids=input_ids, attention_mask=mask.to(device))
                states = captured[-1].float()
                extra = None
                if lm_head is not None:
                    if states.dim() != 3:
                        raise RewardError("the likelihood feature needs a decoder base (per-token states)")
                    extra = mean_reply_logprob(states, input_ids, [reply_starts[i] for i in chunk],
                                               [len(ids[i]) for i in chunk], lm_head)
                if states.dim() == 3:
                    positions = torch.arange(width, device=device) * (input_ids != pad_token_id).long()
                    states = states[torch.arange(len(chunk), device=device), positions.argmax(-1)]
                states = states.double().cpu()
                if extra is not None:
                    extra = extra.cpu()
                    states = torch.cat([states, extra[:, None]], dim=1)
                for row, i in enumerate(chunk):
                    rows[i] = states[row]
                if progress is not None:
                    progress(len(chunk))
    finally:
        hook.remove()
    return torch.stack(rows).double()


def fit_head(diffs: Any, *, l2: float) -> Any:
    """Weights ``w`` maximising Σ log σ(w·Δ) − l2·|w|² over feature differences Δ (chosen − rejected),
    on standardised features, returned in the original units; no intercept (a shared offset cancels
    in every pair).

    >>> import torch
    >>> d = torch.tensor([[1.0, 0.3], [2.0, -0.1], [0.5, 0.2], [-0.2, 0.1]], dtype=torch.float64)
    >>> w = fit_head(d, l2=0.1)
    >>> bool(w[0] > 0), bool(((d @ w) > 0).double().mean() >= 0.75)
    (True, True)
    """
    import torch

    scale = diffs.std(0) + 1e-6
    x = torch.cat([diffs / scale, -diffs / scale])
    y = torch.cat([torch.ones(len(diffs)), torch.zeros(len(diffs))]).double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Any:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return (w.detach() / scale).double()


def set_head(model: Any, weights: Any) -> None:
    """Put the fitted weights into the reward head (bias zeroed: it cancels in every pair)."""
    import torch

    head = head_module(model)
    with torch.no_grad():
        head.weight.copy_(weights.to(head.weight.dtype).reshape(1, -1))
        if head.bias is not None:
            head.bias.zero_()


def reply_features(model: Any, encoder: Any, items: Sequence[tuple[Any, str]], *, pad_token_id: int,
                   lm_head: Any = None, batch_size: int = 16,
                   progress: Callable[[int], None] | None = None) -> tuple[Any, list[bool]]:
    """:func:`head_features` of (messages, reply) items as ``encoder`` encodes them (with the likelihood
    column when ``lm_head`` is given), and which items were truncated: the one way training, scoring
    and the benchmarks read a head-only model's features."""
    ids, cut, starts = encoder.encode_spans(items)
    features = head_features(model, ids, pad_token_id=pad_token_id, batch_size=batch_size, lm_head=lm_head,
                             reply_starts=starts, progress=progress)
    return features, cut


def pair_feature_diffs(model: Any, encoder: Any, pairs: Sequence[Any], *, pad_token_id: int,
                       lm_head: Any = None) -> Any:
    """Head features of each pair's chosen reply minus its rejected reply's."""
    items = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    features, _ = reply_features(model, encoder, items, pad_token_id=pad_token_id, lm_head=lm_head)
    return features[:len(pairs)] - features[len(pairs):]


def fit_head_only(config: Any, plan: Any) -> Any:
    """:func:`reward.train.fit` for ``head_only``: load the base, read every training reply once (with
    ``likelihood``, its mean log-probability too), fit the head, and return the same ``FittedModel``
    (no trainer)."""
    import time

    import torch

    from reward.encoding import Encoder
    from reward.likelihood import base_lm_head
    from reward.scoring import progress_bar
    from reward.train import FittedModel, _load_model, default_threads

    threads = config.num_threads or default_threads()
    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = _load_model(plan.base, config)
    model.eval()
    lm_head = base_lm_head(model, plan.base) if getattr(config, "likelihood", False) else None
    encoder = Encoder(tokenizer, max_length=config.max_length or 512, min_context_tokens=config.min_context_tokens)
    started = time.perf_counter()
    items = [(p.prompt, p.chosen) for p in plan.train_pairs] + [(p.prompt, p.rejected) for p in plan.train_pairs]
    n = len(plan.train_pairs)
    with progress_bar(len(items), "Reading replies") as bar:
        features, cut = reply_features(model, encoder, items, pad_token_id=tokenizer.pad_token_id or 0,
                                       lm_head=lm_head, progress=bar.update)
    diffs = features[:n] - features[n:]
    weights = fit_head(diffs, l2=config.head_l2)
    hidden = head_module(model).in_features
    set_head(model, weights[:hidden])
    seconds = time.perf_counter() - started
    margins = diffs @ weights
    loss = float(torch.nn.functional.softplus(-margins).mean())
    return FittedModel(trainer=None, network=model, tokenizer=tokenizer, encoder=encoder, packed=False,
                       n_truncated=sum(1 for i in range(n) if cut[i] or cut[n + i]), seconds=seconds,
                       pairs_per_second=n / seconds if seconds else float("nan"), losses=[loss],
                       lm_head=lm_head, likelihood_weight=float(weights[hidden]) if lm_head is not None else None)
