"""The SFT objective: token-level label-smoothed cross-entropy on completion tokens (SPEC §5).

With logits ``z = C·e`` (``C``: the LM head ``[V, D]``, ``e``: a last hidden state ``[D]``),
target ``t`` and smoothing ``β``, each completion token costs

    L = (1 − β)·(lse(z) − z_t) + β·(lse(z) − mean_v z_v)

which is ``F.cross_entropy(z, t, label_smoothing=β)`` exactly. The loss is computed from the
hidden states and the head weight, not from the model's logits, so that the fused kernel
(``smoothalign.kernels.linear_cross_entropy``, which never holds the ``[N, V]`` logits) can
take over with ``fused=True`` behind the same signature.

Labels are not shifted (the collator's layout): the hidden state at position ``s`` predicts
``labels[:, s + 1]``; ``ignore_index`` marks prompt and padding tokens, which count neither
in the loss nor in the mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from smoothalign._checks import ArgumentTypeError, as_number
from smoothalign.kernels import autocast_inputs, linear_cross_entropy

IGNORE_INDEX = -100
REDUCTIONS = ("mean", "sum", "none")


def shift_for_next_token(hidden: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(e [N, D], targets [N])``: every position's hidden state beside the token it
    predicts, ``N = B·(L − 1)``."""
    if hidden.ndim != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden [B, L, D] and labels [B, L] expected, got {list(hidden.shape)} and "
            f"{list(labels.shape)}"
        )
    e = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    return e, labels[:, 1:].reshape(-1)


def head_logits(
    e: Tensor, head_weight: Tensor, bias: Tensor | None = None, softcap: float | None = None
) -> Tensor:
    """``z = e·Cᵀ (+ b)``, then ``softcap·tanh(z / softcap)`` where the model caps its logits
    (Gemma 2). Computed in float32 (float64 stays float64) from the inputs as autocast
    would round them, whatever the autocast: the loss needs an accurate ``lse``, and so the
    fused kernels' arithmetic is matched (a bf16 product rounds every logit to 8 bits)."""
    e, head_weight = autocast_inputs(e, head_weight)
    acc = torch.float64 if torch.float64 in (e.dtype, head_weight.dtype) else torch.float32
    with torch.autocast(e.device.type, enabled=False):
        b = bias.to(acc) if bias is not None else None
        z = F.linear(e.to(acc), head_weight.to(acc), b)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return z


def _check_labels(hidden: Tensor, head_weight: Tensor, labels: Tensor) -> Tensor:
    """``hidden``, ``head_weight`` and ``labels`` are tensors, and ``labels`` holds int64 or
    int32 token ids (as the fused kernel takes; a float or bool tensor failed in
    ``F.cross_entropy`` with a dtype error that named no argument, and int32 failed there
    too): returned as int64."""
    for name, t in (("hidden", hidden), ("head_weight", head_weight), ("labels", labels)):
        if not isinstance(t, Tensor):
            raise ArgumentTypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ArgumentTypeError(
            f"labels: int64 or int32 token ids expected (ignore_index on prompt and padding), "
            f"got {labels.dtype}"
        )
    return labels.long()


def sft_loss(
    hidden: Tensor,
    head_weight: Tensor,
    labels: Tensor,
    *,
    label_smoothing: float,
    ignore_index: int = IGNORE_INDEX,
    fused: bool = False,
    reduction: str = "mean",
    bias: Tensor | None = None,
    softcap: float | None = None,
    filter_eps: str | float | None = "auto",
    filter_stats: dict | None = None,
) -> Tensor:
    """Label-smoothed next-token cross-entropy over the completion tokens.

    Args:
        hidden: last hidden states ``[B, L, D]`` (after the final norm: what the head reads).
        head_weight: LM head ``C`` ``[V, D]``.
        labels: ``[B, L]`` int64 (or int32) token ids, ``ignore_index`` on prompt and
            padding (not shifted); a float or bool tensor is refused, naming ``labels``.
        label_smoothing: ``β`` in ``[0, 1]``.
        fused: use ``smoothalign.kernels.linear_cross_entropy`` (no ``[N, V]`` logits).
        reduction: ``"mean"`` over the counted tokens, ``"sum"``, or ``"none"``:
            ``[B, L − 1]``, 0 where ignored. With no counted token, ``"mean"`` is NaN here
            (as ``F.cross_entropy``) and 0 in the fused kernel; the trainer only sums.
        bias / softcap: the head's bias ``[V]`` and logit soft-capping, where the model has them.
        filter_eps: the fused kernel's gradient filter (``kernels.filter_eps_for``), and
            ``filter_stats`` its report (``kernels.linear_cross_entropy``; fused only).

    Returns:
        A scalar (``mean``/``sum``, float32) or ``[B, L − 1]`` per-token losses in nats.
    """
    label_smoothing = as_number(label_smoothing, "label_smoothing")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1], got {label_smoothing}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: {reduction!r}; choose one of {REDUCTIONS}")
    labels = _check_labels(hidden, head_weight, labels)
    e, targets = shift_for_next_token(hidden, labels)
    if fused:
        out = linear_cross_entropy(
            e,
            head_weight,
            targets,
            label_smoothing=label_smoothing,
            ignore_index=ignore_index,
            reduction=reduction,
            softcap=softcap,
            bias=bias,
            filter_eps=filter_eps,
            filter_stats=filter_stats,
        )
        return out.reshape(labels.shape[0], -1) if reduction == "none" else out
    keep = targets != ignore_index
    # only the counted tokens go through the head: prompts are often most of the sequence
    z = head_logits(e[keep], head_weight, bias, softcap)
    losses = F.cross_entropy(z, targets[keep], label_smoothing=label_smoothing, reduction="none")
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean()
    full = losses.new_zeros(targets.shape).masked_scatter(keep, losses)
    return full.reshape(labels.shape[0], -1)


@torch.no_grad()
def token_statistics(
    hidden: Tensor,
    head_weight: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    bias: Tensor | None = None,
    softcap: float | None = None,
    chunk_size: int = 2048,
) -> dict[str, Tensor]:
    """What the logs and the evaluation read on the completion tokens, without gradient and
    ``chunk_size`` tokens at a time (the fused path never builds all ``[N, V]`` logits).

    Returns ``[B, L − 1]`` tensors (float32; 0 where ignored, ``mask`` marks the counted
    tokens): ``nll`` = ``lse(z) − z_t`` (the unsmoothed loss, comparable across ``β``),
    ``correct`` (argmax = target), ``entropy`` of ``softmax(z)`` in nats, ``confidence`` =
    max softmax probability, ``uniform_ce`` = ``lse(z) − mean_v z_v`` (the cross-entropy
    against the uniform distribution: the loss is ``(1 − β)·nll + β·uniform_ce``, SPEC §5).
    """
    e, targets = shift_for_next_token(hidden, labels)
    keep = targets != ignore_index
    rows = keep.nonzero().squeeze(1)
    names = ("nll", "correct", "entropy", "confidence", "uniform_ce")
    out = {name: torch.zeros(targets.shape, dtype=torch.float32, device=e.device) for name in names}
    # autocast's rounding of the inputs once, and the head in float32 once, not per chunk
    e, head_weight = autocast_inputs(e, head_weight)
    acc = torch.float64 if torch.float64 in (e.dtype, head_weight.dtype) else torch.float32
    head_weight = head_weight.to(acc)
    with torch.autocast(e.device.type, enabled=False):
        _fill_token_statistics(out, e, head_weight, targets, rows, bias, softcap, chunk_size)
    shape = (labels.shape[0], labels.shape[1] - 1)
    result = {name: t.reshape(shape) for name, t in out.items()}
    result["mask"] = keep.reshape(shape)
    return result


def _fill_token_statistics(out, e, head_weight, targets, rows, bias, softcap, chunk_size):
    for start in range(0, rows.numel(), chunk_size):
        idx = rows[start : start + chunk_size]
        z = head_logits(e[idx], head_weight, bias, softcap)
        logp = torch.log_softmax(z, dim=-1)
        lse = torch.logsumexp(z, dim=-1)
        t = targets[idx]
        values = {
            "nll": -logp.gather(1, t[:, None]).squeeze(1),
            "correct": (z.argmax(-1) == t).float(),
            # 0·log 0 = 0 where a logit is -inf (a masked vocabulary entry), not NaN
            "entropy": -torch.where(logp > -torch.inf, logp.exp() * logp, 0.0).sum(-1),
            "confidence": logp.max(-1).values.exp(),
            "uniform_ce": lse - z.mean(-1),
        }
        for name, v in values.items():
            out[name][idx] = v.float()  # float32 whatever the model's dtype
