"""Pairwise reward-model losses from scalar rewards and a soft label (SPEC §1, §6). Tensors only.

A reward model scores each response, ``r₁ = r(x, y_chosen)`` and ``r₂ = r(x, y_rejected)``;
under Bradley–Terry its forecast that the first response wins is ``σ(d)``, ``d = r₁ − r₂``.
As a two-class preference model (SPEC §6, ``R = 2``, classes "first wins" / "second wins") its
distribution is ``q_θ = [σ(d), σ(−d)] = softmax([d, 0])``: the logits ``[d, 0]`` are exact,
not an approximation, since ``e^d / (e^d + 1) = σ(d)``. The label is ``p`` = the probability
(vote share) that the first response wins, i.e. the two-class target ``[p, 1 − p]``.

Losses (per pair, ``[B]``):

    bt        −log σ(±d) on the hard majority label z = 1[p > ½]; ties p = ½ carry no
              label and get weight 0 (left out of the mean)
    soft-bce  −p·log σ(d) − (1 − p)·log σ(−d)            (= fkl + H(p): same gradient)
    fkl       KL([p, 1−p] ‖ q_θ)
    rkl       KL(q_θ ‖ [p, 1−p])   (target floored at ``rkl_floor`` > 0: a unanimous vote is
              0/1, against which the reverse KL is infinite)
    jsd       ½KL(t ‖ M) + ½KL(q_θ ‖ M),  M = ½(t + q_θ)

``fkl``/``rkl``/``jsd`` go through :func:`smoothalign.losses.soft_label_loss`, optionally
against the batch-normalised posterior ``r_i ∝ p_i·q_θ(·|x_i) / Σ_j q_θ(·|x_j)`` (SPEC §6;
gradients stopped through it unless ``detach_target=False``). The batch normaliser is over
the pairs *as presented*: for a chosen-first data set the class "first wins" is "chosen wins".

Options, applied in this order:

1. **label smoothing** ``α`` ``[B]`` (from a smoothing policy, never differentiated): the target
   becomes ``(1 − 2α)·t + α``, i.e. ``t → t + α(1 − 2t)``, pulled toward ½. On a hard label
   this is exactly the smoothed sigmoid loss of SPEC §2 (cDPO) on the majority-first margin.
2. **margin** ``m ≥ 0`` (Llama-2 style): the loss sees ``d − m·(2ℓ − 1)`` instead of ``d``,
   where ``ℓ`` is the unsmoothed label (``z`` for ``bt``, ``p`` otherwise): the winner must win
   by ``m``, and by less when annotators were split. Swapping the two responses
   (``d → −d``, ``p → 1 − p``) leaves every loss unchanged, margin included.
3. **reward centering** ``λ ≥ 0`` (Eisenstein et al. 2023; TRL's ``center_rewards_coefficient``):
   ``+ λ·(r₁ + r₂)²`` per pair, which pins the free offset of the rewards near zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from smoothalign._checks import as_tensor, broadcast_per_pair, check_finite, check_in_range
from smoothalign.losses import (
    forward_kl,
    jensen_shannon,
    posterior_target,
    reverse_kl,
    soft_label_loss,
)

REWARD_LOSSES = ("bt", "soft-bce", "fkl", "rkl", "jsd")
POSTERIOR_LOSSES = ("fkl", "rkl", "jsd")
MONITORED = ("fkl", "rkl", "jsd")
"""The divergences logged for every run, whatever it trains on (the run report's plot)."""


def pair_logits(margins: Tensor) -> Tensor:
    """``[B] → [B, 2]`` logits ``[d, 0]``; their softmax is ``[σ(d), σ(−d)]`` exactly."""
    return torch.stack([margins, torch.zeros_like(margins)], dim=-1)


def binary_target(p: Tensor) -> Tensor:
    """``[B] → [B, 2]``: ``[p, 1 − p]`` (first wins, second wins)."""
    return torch.stack([p, 1 - p], dim=-1)


def majority_label(p: Tensor) -> tuple[Tensor, Tensor]:
    """``(z, decided)`` ``[B]`` each: ``z = 1[p > ½]`` and whether the vote was not a tie."""
    return (p > 0.5).to(p.dtype), p != 0.5


def majority_first_margins(margins: Tensor, p: Tensor) -> Tensor:
    """``d`` read with the majority winner first (``−d`` where ``p < ½``): the margin ``h`` a
    smoothing policy expects (SPEC §4 counts forecasts of the *labelled* winner winning)."""
    return torch.where(p < 0.5, -margins, margins)


def smooth_target(t: Tensor, alpha: Tensor) -> Tensor:
    """``(1 − 2α)·t + α``: label smoothing of a two-class target (``1 → 1 − α``, ``0 → α``)."""
    return t + alpha * (1 - 2 * t)


@dataclass
class RewardTerms:
    """One batch's reward-model objective; every per-pair tensor is ``[B]``."""

    loss: Tensor  # scalar: weighted mean of ``losses`` + λ·mean((r₁ + r₂)²)
    losses: Tensor  # the pairwise loss of each pair (without centering)
    weights: Tensor  # 1, or 0 for a tied vote under ``bt``
    margins: Tensor  # d = r₁ − r₂ (with gradient)
    target: (
        Tensor  # P(first wins) the loss aimed at (after majority, smoothing, posterior), detached
    )
    alpha: Tensor  # the smoothing each pair received
    centering: Tensor  # (r₁ + r₂)², detached


def reward_loss(
    name: str,
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    p_chosen: Tensor,
    *,
    alpha: Tensor | float = 0.0,
    posterior: bool = False,
    detach_target: bool = True,
    margin: float = 0.0,
    center_weight: float = 0.0,
    rkl_floor: float = 1e-6,
) -> RewardTerms:
    """The reward-model objective of one batch (see the module docstring).

    Args:
        name: one of :data:`REWARD_LOSSES`.
        chosen_rewards / rejected_rewards: ``r₁``, ``r₂`` ``[B]`` (with gradient).
        p_chosen: ``[B]`` probability / vote share that the first (chosen) response wins.
        alpha: label smoothing per pair, a float or ``[B]`` in ``[0, ½]`` (detached).
        posterior: train ``fkl``/``rkl``/``jsd`` against the SPEC §6 posterior target.
        detach_target: stop gradients through the posterior target (SPEC §6 default).
        margin: ``m ≥ 0``; center_weight: ``λ ≥ 0``.
        rkl_floor: floor of the target inside the ``rkl`` loss, in ``(0, ½)`` (as
            ``smoothalign reward --rkl-floor``): 0 is refused, since a unanimous vote (a target
            of 0/1) makes ``KL(q_θ ‖ t)`` infinite for every finite ``r₁ − r₂``; ½ or more
            would flatten every target to ½. It changes the ``rkl`` loss only, never the
            monitored divergences (:data:`METRIC_RKL_FLOOR`).

    Every loss computes in float64 for float64 rewards and in float32 otherwise: 16-bit
    rewards are upcast before any arithmetic (the vote shares and ``alpha`` are never
    rounded to 16 bits), as :func:`~smoothalign.losses.soft_label_loss` does, so every
    tensor of the result is float32 for them; gradients reach the rewards in their own
    dtype. A one-pair batch with ``posterior=True`` is warned once (its posterior is its
    prior; see :func:`~smoothalign.losses.posterior_target`).
    """
    if name not in REWARD_LOSSES:
        raise ValueError(f"loss: unknown {name!r}; choose one of {list(REWARD_LOSSES)}")
    if posterior and name not in POSTERIOR_LOSSES:
        raise ValueError(
            f"posterior: the posterior target (SPEC §6) applies to {list(POSTERIOR_LOSSES)}, "
            f"not {name!r}"
        )
    if not margin >= 0:
        raise ValueError(f"margin: must be >= 0, got {margin}")
    if not center_weight >= 0:
        raise ValueError(f"center_weight: must be >= 0, got {center_weight}")
    if name == "rkl" and not 0 < rkl_floor < 0.5:  # NaN fails too
        raise ValueError(
            f"rkl_floor: must lie in (0, 0.5), got {rkl_floor} (0: a unanimous vote makes the "
            "reverse KL infinite)"
        )
    r1 = check_finite(as_tensor(chosen_rewards, "chosen_rewards"), "chosen_rewards")
    r2 = check_finite(as_tensor(rejected_rewards, "rejected_rewards", like=r1), "rejected_rewards")
    if r1.ndim != 1 or r2.shape != r1.shape:
        raise ValueError(
            f"rewards: expected two [B] tensors, got {list(r1.shape)} and {list(r2.shape)}"
        )
    # float32 arithmetic for 16-bit rewards (float64 stays float64), as soft_label_loss and
    # the fused kernels compute: the vote shares and α are never rounded to 16 bits, and
    # every loss returns one dtype; gradients reach the rewards in their own dtype
    acc = torch.float64 if r1.dtype == torch.float64 else torch.float32
    r1, r2 = r1.to(acc), r2.to(acc)
    p = as_tensor(p_chosen, "p_chosen").detach().to(device=r1.device, dtype=acc)
    if p.shape != r1.shape:
        raise ValueError(f"p_chosen: expected shape {list(r1.shape)}, got {list(p.shape)}")
    check_in_range(p, "p_chosen", 0.0, 1.0)
    a = broadcast_per_pair(alpha, r1, "alpha").detach()
    check_in_range(a, "alpha", 0.0, 0.5)

    d = r1 - r2
    weights = torch.ones_like(p)
    label = p
    if name == "bt":
        label, decided = majority_label(p)
        weights = decided.to(p.dtype)
    target = smooth_target(label, a)
    shifted = d - margin * (2 * label - 1) if margin else d

    if name in ("bt", "soft-bce"):
        losses = -(target * F.logsigmoid(shifted) + (1 - target) * F.logsigmoid(-shifted))
        trained_on = target
    else:
        logits = pair_logits(shifted)
        goal = binary_target(target)
        if posterior:  # formed once: a one-pair batch is warned once (SINGLE_ROW), not twice
            goal = posterior_target(goal, logits=logits)
            if detach_target:
                goal = goal.detach()
        if name == "rkl":
            losses = reverse_kl(logits, goal, target_floor=rkl_floor)
        else:
            losses = soft_label_loss(name, logits, goal)
        trained_on = goal[:, 0]

    total = weights.sum()
    pair_mean = (losses * weights).sum() / total.clamp_min(1.0)
    centering = (r1 + r2) ** 2
    loss = pair_mean + center_weight * centering.mean() if center_weight else pair_mean
    return RewardTerms(
        loss=loss,
        losses=losses,
        weights=weights,
        margins=d,
        target=trained_on.detach(),
        alpha=a,
        centering=centering.detach(),
    )


METRIC_RKL_FLOOR = 1e-6
"""Floor of the vote share inside the *reported* reverse KL (logs, metrics, report): fixed,
whatever the ``rkl`` loss's ``rkl_floor``, so that runs are comparable; without a floor a
unanimous vote (share 0 or 1) makes it infinite."""


@torch.no_grad()
def monitored_divergences(
    margins: Tensor, p_chosen: Tensor, rkl_floor: float = METRIC_RKL_FLOOR
) -> dict:
    """``{"fkl", "rkl", "jsd"}`` ``[B]`` each: the model ``[σ(d), σ(−d)]`` against the plain
    vote share ``[p, 1 − p]`` (no smoothing, margin or posterior), for logging. The trainer
    and the report keep ``rkl_floor`` at :data:`METRIC_RKL_FLOOR`, not the loss's floor."""
    logits = pair_logits(margins.detach().to(torch.float64))
    target = binary_target(p_chosen.detach().to(torch.float64))
    return {
        "fkl": forward_kl(logits, target),
        "rkl": reverse_kl(logits, target, target_floor=rkl_floor),
        "jsd": jensen_shannon(logits, target),
    }
