"""A label's confidence from a few annotators' votes.

Pair ``i`` got ``v_i`` of ``K_i`` votes for its labelled winner; each annotator prefers it
with the unknown probability ``q_i`` (``v_i ~ Binomial(K_i, q_i)``). The estimate of ``q_i``
that per-pair smoothing ``a*(q̂)`` needs is a posterior mean ``E[q_i | v_i]`` under a prior
over ``q``:

* ``"uniform"``: Beta(1, 1), i.e. ``(v + 1) / (K + 2)``. With few votes it never gets near 0
  or 1 (five of five votes give 6/7), so ``a*(q̂)`` smooths every pair noticeably.
* ``"empirical"``: the prior is estimated from all the pairs' votes (empirical Bayes): a
  discrete distribution on a grid of ``q`` values, fitted by EM to maximise the marginal
  likelihood of the observed counts (the nonparametric MLE of a binomial mixture). When most
  pairs are clear-cut, unanimous votes then mean ``q`` near 1, and ties (``q = ½``) are
  recognised as such.
"""

from __future__ import annotations

import torch
from torch import Tensor

from smoothalign._checks import ArrayLike, as_integer, as_tensor, check_vector

PRIORS = ("uniform", "empirical")


def _counts(votes: ArrayLike, totals: ArrayLike) -> tuple[Tensor, Tensor]:
    v = as_tensor(votes, "votes")
    k = as_tensor(totals, "totals")
    if v.dtype == torch.bool or k.dtype == torch.bool:
        raise ValueError("votes, totals: expected counts, got booleans")
    v, k = v.to(torch.float64), k.to(torch.float64)
    if k.dim() == 0:
        k = k.expand_as(v)
    check_vector(v, "votes")
    check_vector(k, "totals")
    if v.numel() == 0:
        raise ValueError("votes: no pairs")
    if v.shape != k.shape:
        raise ValueError(f"votes and totals: shapes differ, {tuple(v.shape)} vs {tuple(k.shape)}")
    if not torch.all(torch.isfinite(v) & torch.isfinite(k)):
        raise ValueError("votes, totals: must be finite")
    if torch.any(v != v.round()) or torch.any(k != k.round()):
        raise ValueError("votes, totals: must be whole numbers")
    bad = torch.nonzero((k < 1) | (v < 0) | (v > k))
    if bad.numel():
        i = int(bad[0, 0])
        raise ValueError(
            f"votes, totals: row {i} has {v[i]:g} of {k[i]:g} votes; need 0 <= votes <= totals "
            "and totals >= 1"
        )
    return v, k


def fit_vote_prior(
    votes: ArrayLike, totals: ArrayLike, grid: int = 99, iterations: int = 500
) -> tuple[Tensor, Tensor]:
    """The empirical-Bayes prior over ``q``: ``(support [G], weights [G])`` on the grid
    ``q_g = g / (G + 1)``, ``g = 1..G``, maximising ``Σ_i log Σ_g w_g · Bin(v_i; K_i, q_g)``
    by EM (each iteration raises the likelihood; the weights stay a distribution). Pairs
    with the same ``(v, K)`` have the same posterior, so EM runs on the distinct counts with
    their multiplicities: its cost does not grow with the number of pairs.

    With one or two votes per pair (or very few pairs) the counts say little about the
    prior's shape: the fit is then close to its uniform start, and the uniform prior is the
    honest choice."""
    v, k = _counts(votes, totals)
    grid, iterations = as_integer(grid, "grid"), as_integer(iterations, "iterations")
    if grid < 1 or iterations < 1:
        raise ValueError(f"grid and iterations: must be >= 1, got {grid}, {iterations}")
    pairs, multiplicity = torch.unique(torch.stack([v, k], 1), dim=0, return_counts=True)
    share = multiplicity.to(torch.float64) / v.numel()
    support = torch.arange(1, grid + 1, dtype=torch.float64) / (grid + 1)
    log_lik = _log_binomial_likelihood(pairs[:, 0], pairs[:, 1], support)  # [U, G]
    weights = torch.full((grid,), 1.0 / grid, dtype=torch.float64)
    for _ in range(iterations):
        post = torch.softmax(log_lik + weights.clamp_min(1e-300).log(), dim=1)
        weights = share @ post
    return support, weights


def vote_confidence(
    votes: ArrayLike, totals: ArrayLike, prior: str = "empirical", **fit_options: int
) -> Tensor:
    """``E[q_i | v_i]`` ``[N]`` (float64) for each pair's votes ``v_i`` of ``K_i`` (``totals``
    may be one number) under the ``prior`` (``"uniform"`` or ``"empirical"``, see the
    module docstring); ``fit_options`` go to :func:`fit_vote_prior`."""
    v, k = _counts(votes, totals)
    if prior == "uniform":
        return (v + 1) / (k + 2)
    if prior != "empirical":
        raise ValueError(f"prior: unknown {prior!r}; choose one of {PRIORS}")
    return posterior_mean(v, k, *fit_vote_prior(v, k, **fit_options))


def posterior_mean(votes: ArrayLike, totals: ArrayLike, support: Tensor, weights: Tensor) -> Tensor:
    """``E[q_i | v_i]`` ``[N]`` under the discrete prior ``weights`` on ``support``
    (computed once per distinct ``(v, K)``)."""
    v, k = _counts(votes, totals)
    support = torch.as_tensor(support, dtype=torch.float64)
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if support.shape != weights.shape or support.dim() != 1 or support.numel() == 0:
        raise ValueError(
            f"support and weights: expected two non-empty vectors of one length, got "
            f"{tuple(support.shape)} and {tuple(weights.shape)}"
        )
    if not bool(((support > 0) & (support < 1)).all()):
        raise ValueError("support: every point must lie strictly inside (0, 1)")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError("weights: must be finite and >= 0")
    if abs(float(weights.sum()) - 1.0) > 1e-6:
        raise ValueError(f"weights: must sum to 1, got {float(weights.sum()):.6g}")
    pairs, index = torch.unique(torch.stack([v, k], 1), dim=0, return_inverse=True)
    post = torch.softmax(
        _log_binomial_likelihood(pairs[:, 0], pairs[:, 1], support)
        + weights.clamp_min(1e-300).log(),
        dim=1,
    )
    return (post @ support)[index]


def _log_binomial_likelihood(v: Tensor, k: Tensor, support: Tensor) -> Tensor:
    """``log q^v (1 − q)^(K − v)`` ``[N, G]``; the binomial coefficient does not depend on
    ``q`` and cancels in every posterior."""
    q = support[None, :]
    return v[:, None] * q.log() + (k - v)[:, None] * torch.log1p(-q)


__all__ = ["PRIORS", "fit_vote_prior", "posterior_mean", "vote_confidence"]
