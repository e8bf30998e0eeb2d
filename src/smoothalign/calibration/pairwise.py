"""Accuracy and calibration of pairwise forecasts ``σ(h)``, against the labels and a known truth.

Where each pair's true preference probability ``q = P(first wins)`` is known (a study's
oracle, a data set's ``confidence`` column), a forecast can be scored against it directly
rather than against a sampled label. :func:`preference_metrics` and
:func:`pairwise_reliability_curve` score the forecasts of a chosen-first preference set,
as ``smoothalign dpo`` and ``smoothalign eval preferences`` report them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from smoothalign._checks import ArrayLike, as_integer, as_tensor, check_in_range
from smoothalign.calibration.metrics import (
    ReliabilityCurve,
    _vector,
    calibration_summary,
    reliability_curve,
)

PAIRWISE_BINS = 20
"""Bins for a pairwise forecast read in both orders. Even, so that ½ is a bin edge: with an
odd count (15) the central bin straddles ½, a forecast ``p`` and its mirror ``1 − p`` fall
into it together with outcomes ``y`` and ``1 − y``, and the two readings cancel — every
forecast within 1/30 of ½ would look perfectly calibrated whatever the truth."""


def _pairwise_bins(bins: int) -> int:
    """``bins`` for a pairwise reading: an even integer >= 2 (see :data:`PAIRWISE_BINS`)."""
    bins = as_integer(bins, "bins")
    if bins < 2 or bins % 2:
        raise ValueError(
            f"bins: must be an even integer >= 2 (so ½ is a bin edge and a forecast never "
            f"shares a bin with its mirror image), got {bins}"
        )
    return bins


def _margins(margins: ArrayLike) -> np.ndarray:
    """The margins ``[N]`` as float64 NumPy (tensors detached, lists converted): at least
    one, no NaN; ``±inf`` is a forecast of exactly 1 or 0."""
    h = _vector(margins, "margins")
    if h.numel() == 0:
        raise ValueError("margins: empty; calibration needs at least one pair")
    if bool(torch.isnan(h).any()):
        raise ValueError(
            f"margins: contains NaN (first at index {torch.isnan(h).nonzero()[0].tolist()})"
        )
    return h.numpy()


def _per_pair(values: ArrayLike, name: str, n: int, *, unknown_ok: bool) -> np.ndarray:
    """A probability per pair ``[n]`` in ``[0, 1]`` as float64 NumPy; with ``unknown_ok``,
    NaN (unknown) is allowed too."""
    t = as_tensor(values, name).detach().to(torch.float64).cpu()
    if t.shape != (n,):  # one per pair, as many as the margins
        raise ValueError(f"{name}: expected shape [{n}], got {list(t.shape)}")
    if not unknown_ok:
        return check_in_range(t, name, 0.0, 1.0).numpy()
    bad = ~torch.isnan(t) & ~((t >= 0.0) & (t <= 1.0))  # inf too
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{name}: must lie in [0.0, 1.0] (or be NaN where unknown), got {float(t[i])} "
            f"at index [{i}]"
        )
    return t.numpy()


def true_preference_metrics(
    margins: ArrayLike, q: ArrayLike, *, bins: int = PAIRWISE_BINS
) -> dict[str, float]:
    """Forecasts ``σ(d)`` ``[N]`` of margins ``d`` against the true ``q`` ``[N]``.

    ``accuracy_true``: the sign of ``d`` against the true preference (pairs with ``q = ½``
    left out, ties ``d = 0`` count half); ``ece_true`` / ``rms_true`` / ``brier_true``: each
    pair read in both orders, ``(σ(d), q)`` and ``(1 − σ(d), 1 − q)``; ``kl_true``: mean
    ``KL(q ‖ σ(d))``, computed stably from ``d``.

    ``margins`` and ``q``: arrays, tensors (detached) or lists; ``d`` at least one value,
    none NaN (``±inf`` allowed), ``q`` in ``[0, 1]``; ``bins`` even (:data:`PAIRWISE_BINS`).
    A refusal is a ``ValueError`` naming the argument.
    """
    bins = _pairwise_bins(bins)
    d = _margins(margins)
    q = _per_pair(q, "q", len(d), unknown_ok=False)
    s = 1.0 / (1.0 + np.exp(-d))
    decided = q != 0.5
    right = np.where(d == 0, 0.5, (d > 0) == (q > 0.5))
    summary = calibration_summary(np.concatenate([s, 1 - s]), np.concatenate([q, 1 - q]), bins)
    # KL(q ‖ σ(d)) with log σ computed stably from d
    log_s, log_1s = -np.logaddexp(0.0, -d), -np.logaddexp(0.0, d)
    kl = _xlogx(q) + _xlogx(1 - q) - _times(q, log_s) - _times(1 - q, log_1s)
    return {
        "accuracy_true": float(right[decided].mean()) if decided.any() else math.nan,
        "ece_true": summary["ece"],
        "rms_true": summary["rms"],
        "brier_true": summary["brier"],
        "kl_true": float(kl.mean()),
    }


def _times(x: np.ndarray, log_y: np.ndarray) -> np.ndarray:
    """``x·log y`` with ``0·log 0 = 0`` (an infinite margin forecasts 0 or 1 exactly)."""
    with np.errstate(invalid="ignore"):
        return np.where(x > 0, x * log_y, 0.0)


def _xlogx(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def preference_metrics(margins: ArrayLike, confidence: ArrayLike) -> dict[str, float]:
    """Accuracy and calibration of the forecasts ``σ(h)`` of a canonical (chosen-first) set.

    Every pair is read in both orders — ``(σ(h), 1)`` and ``(1 − σ(h), 0)`` — so that a data
    set where the labelled winner always comes first still has two outcomes to calibrate
    against; the bins are ``PAIRWISE_BINS`` (even, so the two readings never share a bin). Where the true confidence ``q`` of the label is known, the forecasts are also
    scored against it: ``*_true`` metrics use outcomes ``(q, 1 − q)`` and the true winner,
    over the ``n_pairs_true`` pairs with a ``q`` (of ``n_pairs``; ``confidence`` is NaN
    where unknown).

    ``margins`` ``[N]`` (at least one, none NaN) and ``confidence`` ``[N]`` (in ``[0, 1]`` or
    NaN): arrays, tensors (detached) or lists; a refusal is a ``ValueError`` naming the
    argument.
    """
    h = _margins(margins)
    q = _per_pair(confidence, "confidence", len(h), unknown_ok=True)
    p = 1.0 / (1.0 + np.exp(-h))
    probs = np.concatenate([p, 1 - p])
    # a tie (h = 0, e.g. the policy still equal to its reference) counts as half right
    out: dict[str, float] = {
        "n_pairs": float(len(h)),
        "accuracy": float(np.mean((h > 0) + 0.5 * (h == 0))),
    }
    out["margin_mean"] = float(h.mean())
    labels = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    for k, v in calibration_summary(probs, labels, PAIRWISE_BINS).items():
        out[k] = v
    known = ~np.isnan(q)
    if known.any():
        out["n_pairs_true"] = float(known.sum())
        out.update(true_preference_metrics(h[known], q[known]))
    return out


def pairwise_reliability_curve(
    margins: ArrayLike, confidence: ArrayLike, bins: int = PAIRWISE_BINS
) -> ReliabilityCurve:
    """The reliability curve of the forecasts ``σ(h)`` of a chosen-first set, each pair read
    in both orders as :func:`preference_metrics` reads it: against its true ``q`` where the
    ``confidence`` is known (not NaN), else against its label (the chosen response won).
    The inputs as :func:`preference_metrics` takes them; ``bins`` even."""
    bins = _pairwise_bins(bins)
    h = _margins(margins)
    q = _per_pair(confidence, "confidence", len(h), unknown_ok=True)
    p = 1 / (1 + np.exp(-h))
    outcome = np.where(np.isnan(q), 1.0, q)  # the true q where known, else the label
    return reliability_curve(
        np.concatenate([p, 1 - p]), np.concatenate([outcome, 1 - outcome]), bins
    )
