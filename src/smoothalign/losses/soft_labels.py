"""Soft-label divergences for preference models trained on vote shares (SPEC §6).

A preference model outputs logits ``[B, R]`` over ``R`` preference classes (2 for a pair,
or ``R`` grades); the annotations give a prior ``p_i`` ``[B, R]`` (vote shares). Each loss
compares the model distribution ``q_θ(·|x_i)`` with a target — the prior itself, or the
batch-normalised posterior of :func:`posterior_target` — and returns per-row losses ``[B]``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

from smoothalign._checks import (
    ArgumentTypeError,
    ArrayLike,
    as_number,
    as_tensor,
    check_finite,
    check_in_range,
)
from smoothalign._warn import SmoothalignWarning

LOG2 = math.log(2.0)


def _compute_dtype(t: Tensor) -> torch.dtype:
    """The dtype the losses compute in: float64 for float64 inputs, float32 otherwise
    (bf16/fp16 logits are upcast, as the fused kernels and ``F.cross_entropy`` under
    autocast do: in bf16 the Jensen–Shannon divergence was off by 1%)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_logits(logits: ArrayLike) -> Tensor:
    logits = as_tensor(logits, "logits")
    if logits.ndim != 2:
        raise ValueError(f"logits: expected shape [B, R], got {list(logits.shape)}")
    check_finite(logits, "logits")
    return logits


def _check_target(target: ArrayLike, logits: Tensor, name: str) -> Tensor:
    """``target`` (named ``name`` in messages: the argument the caller passed) as a tensor
    of ``logits``' shape whose rows are distributions, checked in its own dtype (a bf16
    prior sums to 1 only to bf16's rounding), then in the dtype the losses compute in."""
    target = as_tensor(target, name)
    if target.shape != logits.shape:
        raise ValueError(f"{name}: expected shape {list(logits.shape)}, got {list(target.shape)}")
    _check_distribution(target, name)
    return target.to(device=logits.device, dtype=_compute_dtype(logits))


def _check_pair(logits: ArrayLike, target: ArrayLike) -> tuple[Tensor, Tensor]:
    """``logits`` and ``target`` as tensors (NumPy arrays and lists are taken, as by
    :func:`soft_label_loss`), checked: shapes ``[B, R]``, finite, rows distributions; both
    in the dtype the losses compute in (float32, or float64 for float64 logits)."""
    logits = _check_logits(logits)
    target = _check_target(target, logits, "target")
    return logits.to(_compute_dtype(logits)), target


def _check_distribution(t: Tensor, name: str) -> None:
    """Rows in [0, 1] that sum to 1: to 1e-4, or to the dtype's rounding where that is
    coarser (a float32 distribution cast to bf16 is off by up to half its epsilon)."""
    check_in_range(t, name, 0.0, 1.0)
    sums = t.sum(-1, dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
    tol = max(1e-4, torch.finfo(t.dtype).eps) if t.is_floating_point() else 1e-4
    bad = (sums - 1).abs() > tol
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"{name}: row {i} sums to {float(sums[i]):.6f}, not 1")


def _check_flag(value: object, name: str) -> bool:
    """A switch: ``True`` or ``False`` (``posterior="no"`` is a true string, not a no)."""
    if not isinstance(value, bool | np.bool_):
        raise ArgumentTypeError(
            f"{name}: expected True or False, got {type(value).__name__} {value!r}"
        )
    return bool(value)


SINGLE_ROW = (
    "the posterior target (SPEC §6) of a batch of one row is its prior: the normaliser "
    "Σ_j q_θ(ρ|x_j) is that row's own q_θ, which cancels; the posterior needs batches of "
    "several rows"
)
"""What :func:`posterior_target` and ``soft_label_loss(posterior=True)`` warn for one row."""


def _posterior(prior: Tensor, log_q: Tensor, *, stacklevel: int) -> Tensor:
    """The posterior of checked inputs: ``prior`` and ``log q_θ`` ``[B, R]``, one dtype."""
    if prior.shape[0] == 1:
        # a warning, not an error: SPEC's formula is well defined for |B| = 1 (and gives p),
        # and a data set's last batch can be one row; a setting that makes every batch one
        # row (RewardConfig's batch_size=1) is refused where it is set
        warnings.warn(SINGLE_ROW, SmoothalignWarning, stacklevel=stacklevel + 1)
    # log p + log q − log Σ_j q_j, then a softmax over classes; -inf where p or q is 0
    log_marginal = torch.logsumexp(log_q, 0, keepdim=True)
    # a class no row's model gives any mass: its column is -inf throughout, and so would
    # be its marginal (−inf − (−inf) is NaN); it gets 0 like any class of zero probability
    log_marginal = log_marginal.masked_fill(torch.isneginf(log_marginal), 0.0)
    log_unnorm = torch.log(prior) + log_q - log_marginal
    dead = torch.isneginf(log_unnorm).all(-1)
    if bool(dead.any()):
        i = int(dead.nonzero()[0])
        raise ValueError(f"prior: row {i} gives zero posterior mass (prior and model disagree)")
    return torch.softmax(log_unnorm, -1)


def posterior_target(
    prior: ArrayLike, model_probs: ArrayLike | None = None, *, logits: ArrayLike | None = None
) -> Tensor:
    """``r_i(ρ) ∝ p_i(ρ) · q_θ(ρ|x_i) / Σ_{j∈B} q_θ(ρ|x_j)``, normalised over ρ (SPEC §6).

    ``prior`` is ``[B, R]``; the model is given as ``model_probs`` ``[B, R]`` (rows that
    sum to 1) or, better, as its ``logits`` ``[B, R]``: the product is formed in log space,
    so a class the model gives less than fp32's smallest probability still gets its exact
    share (from probabilities, an underflowed 0 stays 0). Each is a tensor, a NumPy array
    or a nested list, as for :func:`soft_label_loss`; the result is a tensor, float64 for
    float64 (NumPy, list) model inputs and float32 otherwise (bf16/fp16 are upcast). The
    batch sum estimates the marginal of each class under the model, so a model whose
    output is the same for every row leaves the prior unchanged, and so does a batch of
    one row: for ``B = 1`` the result is the prior, with a :class:`SmoothalignWarning`
    (not an error: the formula is well defined there, and a data set's last batch may be
    one row). Classes with prior 0 get 0, with a zero (not NaN) gradient.
    """
    if (model_probs is None) == (logits is None):
        raise ValueError("posterior_target: pass exactly one of model_probs and logits")
    name = "model_probs" if model_probs is not None else "logits"
    model = as_tensor(model_probs if model_probs is not None else logits, name)
    prior_t = as_tensor(prior, "prior")
    if prior_t.shape != model.shape or prior_t.ndim != 2:
        raise ValueError(
            f"prior/{name}: expected equal shapes [B, R], got {list(prior_t.shape)} "
            f"and {list(model.shape)}"
        )
    _check_distribution(prior_t, "prior")  # the posterior is normalised: check before it
    acc = _compute_dtype(model)
    if model_probs is not None:
        _check_distribution(model, "model_probs")
        log_q = torch.log(model.to(acc))
    else:
        check_finite(model, "logits")
        log_q = torch.log_softmax(model.to(acc), -1)
    prior_t = prior_t.to(device=log_q.device, dtype=acc)
    return _posterior(prior_t, log_q, stacklevel=2)


def _xlogx(t: Tensor) -> Tensor:
    """``t·log t`` with ``0·log 0 = 0`` and a finite gradient at 0 (``xlogy``'s is NaN)."""
    pos = t > 0
    return torch.where(pos, t * torch.log(torch.where(pos, t, 1.0)), 0.0)


def forward_kl(logits: ArrayLike, target: ArrayLike) -> Tensor:
    """``KL(target ‖ q_θ)`` per row; equals cross-entropy on one-hot targets."""
    return _forward_kl(*_check_pair(logits, target))


def reverse_kl(logits: ArrayLike, target: ArrayLike, *, target_floor: float = 1e-6) -> Tensor:
    """``KL(q_θ ‖ target)`` per row.

    Mode-seeking; infinite when the target has a zero where the model does not, so the
    target is floored at ``target_floor`` (and renormalised) — set 0 for the exact value.
    """
    logits, target = _check_pair(logits, target)
    target_floor = as_number(target_floor, "target_floor")
    if not 0 <= target_floor < 1:  # NaN fails too
        raise ValueError(f"target_floor: must lie in [0, 1), got {target_floor}")
    return _reverse_kl(logits, target, target_floor)


def jensen_shannon(logits: ArrayLike, target: ArrayLike) -> Tensor:
    """``½KL(target ‖ M) + ½KL(q_θ ‖ M)``, ``M = ½(target + q_θ)``; symmetric, in ``[0, log 2]``."""
    return _jensen_shannon(*_check_pair(logits, target))


# The divergences of checked inputs (``_check_pair``): logits and target ``[B, R]`` in one
# dtype, float32 or float64. Each public function above checks its arguments and names
# them; soft_label_loss checks its own (``prior``) and calls these.
def _forward_kl(logits: Tensor, target: Tensor) -> Tensor:
    log_q = torch.log_softmax(logits, -1)
    return (_xlogx(target) - target * log_q).sum(-1)


def _reverse_kl(logits: Tensor, target: Tensor, target_floor: float = 1e-6) -> Tensor:
    log_q = torch.log_softmax(logits, -1)
    t = target
    if target_floor > 0:
        t = target.clamp_min(target_floor)
        t = t / t.sum(-1, keepdim=True)
    q = log_q.exp()
    # 0·log(0/t) = 0 where the softmax underflows, even where t is 0 too (else 0·∞ = NaN)
    live = q > 0
    log_t = torch.log(torch.where(live, t, 1.0))  # no ∞ in the branch not taken: its gradient
    return torch.where(live, q * (log_q - log_t), 0.0).sum(-1)


def _jensen_shannon(logits: Tensor, target: Tensor) -> Tensor:
    log_q = torch.log_softmax(logits, -1)  # finite where softmax underflows to 0
    q = log_q.exp()
    m = 0.5 * (q + target)
    log_m = torch.log(m.clamp_min(torch.finfo(m.dtype).tiny))
    kl_t = (_xlogx(target) - target * log_m).sum(-1)
    kl_q = (q * (log_q - log_m)).sum(-1)
    return 0.5 * (kl_t + kl_q)


DIVERGENCES = {"fkl": forward_kl, "rkl": reverse_kl, "jsd": jensen_shannon}
_CHECKED = {"fkl": _forward_kl, "rkl": _reverse_kl, "jsd": _jensen_shannon}


def soft_label_loss(
    name: str,
    logits: ArrayLike,
    prior: ArrayLike,
    *,
    posterior: bool = False,
    detach_target: bool = True,
) -> Tensor:
    """Per-row loss ``[B]`` between the model and a soft target built from ``prior`` ``[B, R]``.

    ``logits`` and ``prior`` are tensors, NumPy arrays or nested lists (as for
    :func:`~smoothalign.losses.pairwise_loss`); the result is a tensor, float64 for
    float64 (NumPy/list) logits and float32 otherwise: bf16/fp16 logits are upcast to
    float32 before any arithmetic and the prior is never rounded to 16 bits (as
    ``F.cross_entropy`` under autocast, and the fused kernels); gradients flow back to the
    logits in their own dtype.

    ``posterior=True`` (a bool, as ``detach_target``) uses the batch-normalised posterior
    target of SPEC §6; gradients flow through it only when ``detach_target=False`` (the
    default stops them). The posterior's normaliser is a sum over the batch's rows, so a
    batch of one row gets its prior back: that is warned (:class:`SmoothalignWarning`), not
    refused (see :func:`posterior_target`).
    """
    try:
        div = _CHECKED[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"divergence: unknown name {name!r}; choose one of {sorted(DIVERGENCES)}"
        ) from None
    posterior = _check_flag(posterior, "posterior")
    detach_target = _check_flag(detach_target, "detach_target")
    # tensors, NumPy arrays or lists, as pairwise_loss takes; errors name `prior`
    logits = _check_logits(logits)
    target = _check_target(prior, logits, "prior")
    logits = logits.to(_compute_dtype(logits))  # float32 for bf16/fp16; keeps the graph
    if posterior:
        target = _posterior(target, torch.log_softmax(logits, -1), stacklevel=2)
        if detach_target:
            target = target.detach()
    return div(logits, target)
