"""How well the policy's likelihood ranks its own samples the way the preference model does.

Arrays only (NumPy, float64); no models.
"""

from __future__ import annotations

import math

import numpy as np


def average_ranks(x: np.ndarray, tie_tolerance: float = 0.0) -> np.ndarray:
    """Ranks ``1..n`` of ``x`` ``[n]``, ties sharing their average rank: values within
    ``tie_tolerance`` of the smallest of their run of sorted values tie."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] - sorted_x[i] <= tie_tolerance:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: np.ndarray, y: np.ndarray, y_tie_tolerance: float = 0.0) -> float:
    """Spearman's rank correlation (Pearson on average ranks; ``y`` values within
    ``y_tie_tolerance`` tie); NaN when either is constant or there are fewer than two
    points."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman: expected two [n] arrays, got {x.shape} and {y.shape}")
    if len(x) < 2:
        return math.nan
    rx, ry = average_ranks(x), average_ranks(y, y_tie_tolerance)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / den) if den > 0 else math.nan


def ranking_metrics(
    logps: np.ndarray, scores: np.ndarray, tie_tolerance: float = 0.0
) -> dict[str, float]:
    """Metrics of ``K`` candidates for each of ``P`` prompts: ``logps``/``scores`` ``[P, K]``.
    Scores within ``tie_tolerance`` tie, as in the training loss (the same text scored in
    two batches can differ by float rounding).

    * ``score_mean`` / ``score_sem``: the preference model's mean score of the samples and
      its standard error (over prompts' means);
    * ``spearman_within``: Spearman between the policy's ``s̄`` and the score within each
      prompt, averaged over the prompts where neither is constant (what calibration by
      ranking should raise); ``spearman_pooled``: the same over all ``P·K`` samples;
    * ``pair_accuracy``: the share of pairs with different (untied) scores that ``s̄``
      orders alike;
    * ``policy_top_score``: mean score of each prompt's most likely candidate (what
      likelihood-based reranking would pick); ``best_of_k_score``: of its best-scored one;
    * ``logp_mean``: the mean ``s̄``.
    """
    logps, scores = np.asarray(logps, np.float64), np.asarray(scores, np.float64)
    if logps.shape != scores.shape or logps.ndim != 2:
        raise ValueError(f"expected two [P, K] arrays, got {logps.shape} and {scores.shape}")
    tol = tie_tolerance
    per_prompt = [spearman(lp, sc, tol) for lp, sc in zip(logps, scores, strict=True)]
    finite = [r for r in per_prompt if not math.isnan(r)]
    ds = scores[:, :, None] - scores[:, None, :]
    dl = logps[:, :, None] - logps[:, None, :]
    upper = np.triu(np.ones(scores.shape[1], dtype=bool), 1)[None]
    counted = upper & (np.abs(ds) > tol)
    agree = (np.sign(ds) == np.sign(dl)) & counted
    prompt_means = scores.mean(1)
    return {
        "n_prompts": float(scores.shape[0]),
        "n_candidates": float(scores.size),
        "score_mean": float(scores.mean()),
        "score_sem": float(prompt_means.std(ddof=1) / math.sqrt(len(prompt_means)))
        if len(prompt_means) > 1
        else math.nan,
        "spearman_within": float(np.mean(finite)) if finite else math.nan,
        "n_spearman_prompts": float(len(finite)),
        "spearman_pooled": spearman(logps.ravel(), scores.ravel(), tol),
        "pair_accuracy": float(agree.sum() / counted.sum()) if counted.any() else math.nan,
        "policy_top_score": float(scores[np.arange(len(scores)), logps.argmax(1)].mean()),
        "best_of_k_score": float(scores.max(1).mean()),
        "logp_mean": float(logps.mean()),
    }
