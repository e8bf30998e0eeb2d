"""Accuracy and calibration of pairwise forecasts ``σ(h)`` against a known truth.

Where each pair's true preference probability ``q = P(first wins)`` is known (a study's
oracle), a forecast can be scored against it directly rather than against a sampled label.
"""

from __future__ import annotations

import math

import numpy as np

from smoothalign.calibration.metrics import calibration_summary

PAIRWISE_BINS = 20
"""Bins for a pairwise forecast read in both orders. Even, so that ½ is a bin edge: with an
odd count (15) the central bin straddles ½, a forecast ``p`` and its mirror ``1 − p`` fall
into it together with outcomes ``y`` and ``1 − y``, and the two readings cancel — every
forecast within 1/30 of ½ would look perfectly calibrated whatever the truth."""


def true_preference_metrics(
    margins: np.ndarray, q: np.ndarray, *, bins: int = PAIRWISE_BINS
) -> dict[str, float]:
    """Forecasts ``σ(d)`` ``[N]`` of margins ``d`` against the true ``q`` ``[N]``.

    ``accuracy_true``: the sign of ``d`` against the true preference (pairs with ``q = ½``
    left out, ties ``d = 0`` count half); ``ece_true`` / ``rms_true`` / ``brier_true``: each
    pair read in both orders, ``(σ(d), q)`` and ``(1 − σ(d), 1 − q)``; ``kl_true``: mean
    ``KL(q ‖ σ(d))``, computed stably from ``d``.
    """
    d = np.asarray(margins, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
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
