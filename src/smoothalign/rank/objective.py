"""Calibration by ranking (SLiC-style): the loss, as pure tensor functions.

For one prompt with ``K`` candidates sorted by the preference model's score, best first
(rank 0 is best), and ``s̄(y)`` the policy's length-normalised log-likelihood of each,

    L_rank = mean over pairs i < j of  max(0, λ·(j − i) − (s̄(y_i) − s̄(y_j)))

i.e. the better candidate must beat the worse one by a margin that grows with their distance
in the ranking. Pairs whose scores tie (``|score_i − score_j| <= tie_tolerance``, e.g. two
identical samples) carry no ranking information and are left out of the mean. The
calibration loss adds ``w_nll · NLL(reference)`` with the NLL per token (``−s̄`` of the
reference response), so that the policy stays anchored to its supervised data.

Averaging over pairs (rather than summing) keeps ``λ`` and ``w_nll`` on the same scale
whatever ``K``. Nothing here knows of models, tokenizers or files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from smoothalign.train.objective import sequence_logps


def mean_token_logps(
    logits: Tensor, labels: Tensor, ignore_index: int = -100
) -> tuple[Tensor, Tensor]:
    """``(s̄, n)``: the mean log-probability per response token ``[N]`` and the response
    lengths ``[N]``. ``logits`` ``[N, L, V]`` predict token ``t+1`` at ``t``; ``labels``
    ``[N, L]`` hold response ids and ``ignore_index`` on prompt and padding. A row without
    response tokens is an error (its mean would be 0/0)."""
    total, lengths = sequence_logps(logits, labels, ignore_index)
    if bool((lengths <= 0).any()):
        rows = (lengths <= 0).nonzero().flatten().tolist()[:5]
        raise ValueError(f"labels: rows {rows} have no response tokens (nothing to normalise)")
    return total / lengths.to(total.dtype), lengths


def rank_pair_weights(
    k: int,
    scores: Tensor | None = None,
    *,
    tie_tolerance: float = 0.0,
    device: torch.device | None = None,
) -> tuple[Tensor, Tensor]:
    """``(distance, mask)``, both ``[B, K, K]`` (``[1, K, K]`` without ``scores``):
    ``distance[i, j] = j − i`` and ``mask[i, j]`` true for the pairs ``i < j`` that count.
    With ``scores`` ``[B, K]`` (sorted best first), pairs whose scores tie are masked out."""
    idx = torch.arange(k, device=device)
    distance = (idx[None, :] - idx[:, None]).unsqueeze(0)  # [1, K, K], j − i
    mask = distance > 0
    if scores is not None:
        gap = (scores[:, :, None] - scores[:, None, :]).abs()
        mask = mask & (gap > tie_tolerance)
    return distance, mask


def ranking_loss(
    logps: Tensor,
    margin: float,
    *,
    scores: Tensor | None = None,
    tie_tolerance: float = 0.0,
) -> Tensor:
    """Per-prompt ranking loss ``[B]``: the mean over counted pairs ``i < j`` of
    ``max(0, margin·(j − i) − (logps[:, i] − logps[:, j]))``.

    Args:
        logps: ``[B, K]`` length-normalised log-likelihoods of the candidates, **sorted by
            the preference model's score, best first** (column 0 is the best candidate).
        margin: ``λ >= 0``: the margin per rank of distance.
        scores: ``[B, K]`` the sorted scores, optional; only used to drop tied pairs.
        tie_tolerance: pairs with ``|Δscore| <= tie_tolerance`` are dropped (with ``scores``).

    A prompt whose pairs all tie contributes 0 (and no gradient).
    """
    if logps.ndim != 2 or logps.shape[1] < 2:
        raise ValueError(f"logps: expected shape [B, K] with K >= 2, got {list(logps.shape)}")
    if not margin >= 0:
        raise ValueError(f"margin: must be >= 0, got {margin}")
    if scores is not None and scores.shape != logps.shape:
        raise ValueError(
            f"scores: expected shape {list(logps.shape)} (like logps), got {list(scores.shape)}"
        )
    if scores is not None and bool((scores[:, :-1] < scores[:, 1:] - tie_tolerance).any()):
        raise ValueError("scores: each row must be sorted best first (non-increasing)")
    distance, mask = rank_pair_weights(
        logps.shape[1], scores, tie_tolerance=tie_tolerance, device=logps.device
    )
    gap = logps[:, :, None] - logps[:, None, :]  # [B, K, K]: s̄_i − s̄_j
    hinge = torch.clamp(margin * distance.to(logps.dtype) - gap, min=0.0)
    mask = mask.expand_as(hinge)
    counted = mask.sum(dim=(1, 2))
    total = torch.where(mask, hinge, torch.zeros_like(hinge)).sum(dim=(1, 2))
    return total / counted.clamp(min=1).to(logps.dtype)


def pair_accuracy(
    logps: Tensor, scores: Tensor | None = None, *, tie_tolerance: float = 0.0
) -> Tensor:
    """Per prompt ``[B]``: the share of counted pairs ``i < j`` (sorted best first) that the
    policy already orders right, ``s̄_i > s̄_j`` (NaN where no pair counts)."""
    distance, mask = rank_pair_weights(
        logps.shape[1], scores, tie_tolerance=tie_tolerance, device=logps.device
    )
    right = (logps[:, :, None] > logps[:, None, :]) & mask
    counted = mask.expand(logps.shape[0], -1, -1).sum(dim=(1, 2)).to(logps.dtype)
    return torch.where(
        counted > 0, right.sum(dim=(1, 2)).to(logps.dtype) / counted.clamp(min=1), torch.nan
    )


@dataclass
class RankTerms:
    """Per-prompt quantities of one batch, all ``[B]``."""

    losses: Tensor  # ranking + w_nll · NLL(reference)
    ranking: Tensor
    nll: Tensor  # per-token NLL of the reference (0 where none is used)
    pair_accuracy: Tensor


def calibration_terms(
    candidate_logps: Tensor,
    scores: Tensor,
    *,
    margin: float,
    reference_logps: Tensor | None = None,
    nll_weight: float = 0.0,
    tie_tolerance: float = 0.0,
) -> RankTerms:
    """The calibration loss of a batch: ``candidate_logps``/``scores`` ``[B, K]`` sorted best
    first, ``reference_logps`` ``[B]`` the reference responses' ``s̄`` (needed when
    ``nll_weight > 0``)."""
    if not nll_weight >= 0:
        raise ValueError(f"nll_weight: must be >= 0, got {nll_weight}")
    ranking = ranking_loss(candidate_logps, margin, scores=scores, tie_tolerance=tie_tolerance)
    if nll_weight > 0:
        if reference_logps is None:
            raise ValueError("reference_logps: needed for the NLL term (nll_weight > 0)")
        if reference_logps.shape != ranking.shape:
            raise ValueError(
                f"reference_logps: expected shape {list(ranking.shape)}, "
                f"got {list(reference_logps.shape)}"
            )
        nll = -reference_logps
        losses = ranking + nll_weight * nll
    else:
        nll = torch.zeros_like(ranking)
        losses = ranking
    with torch.no_grad():
        acc = pair_accuracy(candidate_logps.detach(), scores, tie_tolerance=tie_tolerance)
    return RankTerms(losses=losses, ranking=ranking, nll=nll.detach(), pair_accuracy=acc)
