"""DPO's objective from per-sequence log-probabilities (SPEC §1, §2). Tensors only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from smoothalign.losses import chosen_nll_term, pairwise_loss
from smoothalign.smoothing import SmoothingPolicy


def sequence_logps(
    logits: Tensor, labels: Tensor, ignore_index: int = -100
) -> tuple[Tensor, Tensor]:
    """Summed response log-probabilities ``log π(y|x)`` ``[N]`` and response lengths ``[N]``.

    ``logits`` ``[N, L, V]`` predict token ``t+1`` at position ``t``; ``labels`` ``[N, L]`` hold
    the token ids of the response and ``ignore_index`` on prompt and padding.
    """
    logits = logits[:, :-1]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # accumulate the log-sum-exp in fp32 at least
    targets = labels[:, 1:]
    mask = targets != ignore_index
    safe = targets.masked_fill(~mask, 0)
    token_logps = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    token_logps = token_logps.masked_fill(~mask, 0.0)
    return token_logps.sum(-1), mask.sum(-1)


@dataclass
class DPOTerms:
    """Per-pair quantities of one batch, all ``[B]``."""

    losses: Tensor  # what is averaged into the training loss (pairwise + optional NLL)
    margins: Tensor  # h = β·[(log π_θ − log π_ref)(y_w) − (log π_θ − log π_ref)(y_l)]
    chosen_rewards: Tensor  # β·(log π_θ − log π_ref)(y_w), detached
    rejected_rewards: Tensor
    alpha: Tensor  # the smoothing each pair received


def dpo_terms(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
    loss: str,
    policy: SmoothingPolicy,
    loss_options: dict[str, Any] | None = None,
    confidence: Tensor | None = None,
    chosen_lengths: Tensor | None = None,
    sft_weight: float = 0.0,
    update_policy: bool = True,
) -> DPOTerms:
    """The per-pair DPO losses of a batch.

    ``α`` comes from the smoothing ``policy`` evaluated on the margins *before* it is
    updated with them (``update_policy=False`` for evaluation: state untouched). A call
    that raises leaves the policy's state as it was.
    """
    if not sft_weight >= 0 or sft_weight == float("inf"):  # NaN fails the first test
        raise ValueError(f"sft_weight: must be finite and >= 0, got {sft_weight}")
    option_beta = (loss_options or {}).get("beta", beta)
    if option_beta != beta:  # IPO's β must be the margin's, or its loss is silently wrong
        raise ValueError(f"loss_options: beta {option_beta} differs from the margin's beta {beta}")
    chosen_logratio = policy_chosen - ref_chosen
    rejected_logratio = policy_rejected - ref_rejected
    h = beta * (chosen_logratio - rejected_logratio)
    alpha = policy.alpha(h.detach(), confidence)
    losses = pairwise_loss(loss, h, alpha, **(loss_options or {}))
    if sft_weight > 0:
        if chosen_lengths is None:
            raise ValueError("chosen_lengths: needed for the NLL term (sft_weight > 0)")
        losses = losses + chosen_nll_term(policy_chosen, chosen_lengths, sft_weight)
    if update_policy:  # only once every check has passed: a refused call leaves the state
        policy.update(h.detach())
    return DPOTerms(
        losses=losses,
        margins=h,
        chosen_rewards=(beta * chosen_logratio).detach(),
        rejected_rewards=(beta * rejected_logratio).detach(),
        alpha=alpha.detach(),
    )
