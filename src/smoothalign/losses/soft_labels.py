"""Soft-label divergences for preference models trained on vote shares (SPEC §6).

A preference model outputs logits ``[B, R]`` over ``R`` preference classes (2 for a pair,
or ``R`` grades); the annotations give a prior ``p_i`` ``[B, R]`` (vote shares). Each loss
compares the model distribution ``q_θ(·|x_i)`` with a target — the prior itself, or the
batch-normalised posterior of :func:`posterior_target` — and returns per-row losses ``[B]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from smoothalign._checks import ArrayLike, as_number, as_tensor, check_finite, check_in_range

LOG2 = math.log(2.0)


def _check_pair(logits: ArrayLike, target: ArrayLike) -> tuple[Tensor, Tensor]:
    """``logits`` and ``target`` as tensors (NumPy arrays and lists are taken, as by
    :func:`soft_label_loss`), checked: shapes ``[B, R]``, finite, rows distributions."""
    logits = as_tensor(logits, "logits")
    target = as_tensor(target, "target", like=logits)
    if logits.ndim != 2:
        raise ValueError(f"logits: expected shape [B, R], got {list(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(f"target: expected shape {list(logits.shape)}, got {list(target.shape)}")
    check_finite(logits, "logits")
    _check_distribution(target, "target")
    return logits, target


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


def posterior_target(
    prior: Tensor, model_probs: Tensor | None = None, *, logits: Tensor | None = None
) -> Tensor:
    """``r_i(ρ) ∝ p_i(ρ) · q_θ(ρ|x_i) / Σ_{j∈B} q_θ(ρ|x_j)``, normalised over ρ (SPEC §6).

    ``prior`` is ``[B, R]``; the model is given as ``model_probs`` ``[B, R]`` or, better, as
    its ``logits`` ``[B, R]``: the product is formed in log space, so a class the model
    gives less than fp32's smallest probability still gets its exact share (from
    probabilities, an underflowed 0 stays 0). The batch sum estimates the marginal of each
    class under the model, so a model whose output is the same for every row leaves the
    prior unchanged. Classes with prior 0 get 0, with a zero (not NaN) gradient.
    """
    if (model_probs is None) == (logits is None):
        raise ValueError("posterior_target: pass exactly one of model_probs and logits")
    model = model_probs if model_probs is not None else logits
    name = "model_probs" if model_probs is not None else "logits"
    if prior.shape != model.shape or prior.ndim != 2:
        raise ValueError(
            f"prior/{name}: expected equal shapes [B, R], got {list(prior.shape)} "
            f"and {list(model.shape)}"
        )
    _check_distribution(prior, "prior")  # the posterior is normalised: check before it
    if model_probs is not None:
        check_in_range(model_probs, "model_probs", 0.0, 1.0)
        log_q = torch.log(model_probs)
    else:
        check_finite(logits, "logits")
        log_q = torch.log_softmax(logits, -1)
    # log p + log q − log Σ_j q_j, then a softmax over classes; -inf where p or q is 0
    log_marginal = torch.logsumexp(log_q, 0, keepdim=True)
    # a class no row's model gives any mass: its column is -inf throughout, and so would
    # be its marginal (−inf − (−inf) is NaN); it gets 0 like any class of zero probability
    log_marginal = log_marginal.masked_fill(torch.isneginf(log_marginal), 0.0)
    log_unnorm = torch.log(prior.to(log_q.dtype)) + log_q - log_marginal
    dead = torch.isneginf(log_unnorm).all(-1)
    if bool(dead.any()):
        i = int(dead.nonzero()[0])
        raise ValueError(f"prior: row {i} gives zero posterior mass (prior and model disagree)")
    return torch.softmax(log_unnorm, -1)


def _xlogx(t: Tensor) -> Tensor:
    """``t·log t`` with ``0·log 0 = 0`` and a finite gradient at 0 (``xlogy``'s is NaN)."""
    pos = t > 0
    return torch.where(pos, t * torch.log(torch.where(pos, t, 1.0)), 0.0)


def forward_kl(logits: ArrayLike, target: ArrayLike) -> Tensor:
    """``KL(target ‖ q_θ)`` per row; equals cross-entropy on one-hot targets."""
    logits, target = _check_pair(logits, target)
    log_q = torch.log_softmax(logits, -1)
    return (_xlogx(target) - target * log_q).sum(-1)


def reverse_kl(logits: ArrayLike, target: ArrayLike, *, target_floor: float = 1e-6) -> Tensor:
    """``KL(q_θ ‖ target)`` per row.

    Mode-seeking; infinite when the target has a zero where the model does not, so the
    target is floored at ``target_floor`` (and renormalised) — set 0 for the exact value.
    """
    logits, target = _check_pair(logits, target)
    target_floor = as_number(target_floor, "target_floor")
    if not 0 <= target_floor < 1:  # NaN fails too
        raise ValueError(f"target_floor: must lie in [0, 1), got {target_floor}")
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


def jensen_shannon(logits: ArrayLike, target: ArrayLike) -> Tensor:
    """``½KL(target ‖ M) + ½KL(q_θ ‖ M)``, ``M = ½(target + q_θ)``; symmetric, in ``[0, log 2]``."""
    logits, target = _check_pair(logits, target)
    log_q = torch.log_softmax(logits, -1)  # finite where softmax underflows to 0
    q = log_q.exp()
    m = 0.5 * (q + target)
    log_m = torch.log(m.clamp_min(torch.finfo(m.dtype).tiny))
    kl_t = (_xlogx(target) - target * log_m).sum(-1)
    kl_q = (q * (log_q - log_m)).sum(-1)
    return 0.5 * (kl_t + kl_q)


DIVERGENCES = {"fkl": forward_kl, "rkl": reverse_kl, "jsd": jensen_shannon}


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
    NumPy/list logits.

    ``posterior=True`` uses the batch-normalised posterior target of SPEC §6; gradients
    flow through it only when ``detach_target=False`` (the default stops them).
    """
    try:
        div = DIVERGENCES[name]
    except KeyError:
        raise ValueError(
            f"divergence: unknown name {name!r}; choose one of {sorted(DIVERGENCES)}"
        ) from None
    # tensors, NumPy arrays or lists, as pairwise_loss takes; the prior in the logits' dtype
    logits = as_tensor(logits, "logits")
    if logits.ndim != 2:
        raise ValueError(f"logits: expected shape [B, R], got {list(logits.shape)}")
    check_finite(logits, "logits")
    target = as_tensor(prior, "prior", like=logits)
    if target.shape != logits.shape:
        raise ValueError(f"prior: expected shape {list(logits.shape)}, got {list(target.shape)}")
    if posterior:
        target = posterior_target(target, logits=logits)
        if detach_target:
            target = target.detach()
    return div(logits, target)
