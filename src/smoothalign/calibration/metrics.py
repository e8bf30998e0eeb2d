"""Calibration metrics of probabilistic forecasts (SPEC §5).

``probs`` are forecasts in ``[0, 1]`` of an event (a labelled winner winning, or a
multiple-choice answer being right, with ``probs`` = the max-softmax confidence);
``outcomes`` are what happened, 0/1 — or, where the truth is known, the true probability
of the event in ``[0, 1]``. One equal-width binning serves every metric, so the
reliability curve, ECE, RMS and MCE always agree with each other:

    ECE = Σ_b (n_b/N)·|acc_b − conf_b|      RMS = sqrt(Σ_b (n_b/N)·(acc_b − conf_b)²)
    MCE = max_b |acc_b − conf_b|  (non-empty bins)

The bins are ``[0, 1/K), [1/K, 2/K), …, [(K−1)/K, 1]``, their edges ``np.linspace(0, 1,
K + 1)`` (a forecast on an edge goes to the bin the reported edges put it in), and the
results match ``torchmetrics``' binary calibration error (``norm`` = l1 / l2 / max; tested)
except for forecasts of exactly 1, which torchmetrics puts in a bin of their own and these
put in the last bin, ``[(K−1)/K, 1]`` (a two-option question with a 37-nat score gap has
a max-softmax of exactly 1 in float64).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from smoothalign._checks import ArrayLike, as_integer, as_tensor, check_in_range, check_vector


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin statistics ``[K]``; ``confidence`` and ``accuracy`` are NaN in empty bins."""

    bin_edges: np.ndarray  # [K + 1]
    counts: np.ndarray  # [K]
    confidence: np.ndarray  # [K] mean forecast in the bin
    accuracy: np.ndarray  # [K] mean outcome in the bin

    @property
    def weights(self) -> np.ndarray:
        return self.counts / max(self.counts.sum(), 1)

    @property
    def gaps(self) -> np.ndarray:
        """``|acc_b − conf_b|``, 0 in empty bins."""
        return np.nan_to_num(np.abs(self.accuracy - self.confidence))

    def to_dict(self) -> dict[str, list[float]]:
        return {k: np.asarray(v).tolist() for k, v in asdict(self).items()}


def _vector(x: ArrayLike, name: str) -> torch.Tensor:
    """``x`` as a float64 CPU tensor of shape ``[B]``, detached (a tensor, an array, a list);
    refusals name ``name``."""
    return check_vector(as_tensor(x, name).detach().to(torch.float64).cpu(), name)


def _inputs(probs: ArrayLike, outcomes: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    p, y = _vector(probs, "probs"), _vector(outcomes, "outcomes")
    if y.shape != p.shape:
        raise ValueError(f"outcomes: expected {p.numel()} values like probs, got {y.numel()}")
    if p.numel() == 0:
        raise ValueError("probs: empty; calibration needs at least one forecast")
    check_in_range(p, "probs", 0.0, 1.0)
    check_in_range(y, "outcomes", 0.0, 1.0)
    return p, y


def reliability_curve(probs: ArrayLike, outcomes: ArrayLike, bins: int = 15) -> ReliabilityCurve:
    """Bin the forecasts into ``bins`` equal-width bins and average forecasts and outcomes."""
    bins = as_integer(bins, "bins")
    if bins < 1:
        raise ValueError(f"bins: must be a positive integer, got {bins!r}")
    p, y = _inputs(probs, outcomes)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # each forecast in the bin its reported edges hold (floor(p·K) disagrees with them at
    # some edges: 0.3·10 is 3, but the fourth bin starts at 0.30000000000000004)
    idx = torch.searchsorted(torch.from_numpy(edges[1:-1]), p, right=True)
    counts = torch.bincount(idx, minlength=bins).to(torch.float64)
    sum_p = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, p)
    sum_y = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, y)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = (sum_p / counts).numpy()
        acc = (sum_y / counts).numpy()
    return ReliabilityCurve(
        bin_edges=edges,
        counts=counts.numpy(),
        confidence=conf,
        accuracy=acc,
    )


def expected_calibration_error(probs: ArrayLike, outcomes: ArrayLike, bins: int = 15) -> float:
    """ECE: the bin-weighted mean of ``|accuracy − confidence|``."""
    c = reliability_curve(probs, outcomes, bins)
    return float(np.sum(c.weights * c.gaps))


def rms_calibration_error(probs: ArrayLike, outcomes: ArrayLike, bins: int = 15) -> float:
    """RMS calibration error: ``sqrt(Σ_b (n_b/N)·(acc_b − conf_b)²)``."""
    c = reliability_curve(probs, outcomes, bins)
    return math.sqrt(float(np.sum(c.weights * c.gaps**2)))


def max_calibration_error(probs: ArrayLike, outcomes: ArrayLike, bins: int = 15) -> float:
    """MCE: the largest ``|accuracy − confidence|`` over non-empty bins."""
    c = reliability_curve(probs, outcomes, bins)
    return float(c.gaps[c.counts > 0].max())


def brier_score(probs: ArrayLike, outcomes: ArrayLike) -> float:
    """Mean squared error ``mean((p − y)²)`` of the forecasts."""
    p, y = _inputs(probs, outcomes)
    return float(((p - y) ** 2).mean())


def calibration_summary(probs: ArrayLike, outcomes: ArrayLike, bins: int = 15) -> dict[str, float]:
    """ECE, RMS, MCE and Brier score in one dictionary (one binning for all)."""
    c = reliability_curve(probs, outcomes, bins)
    return {
        "ece": float(np.sum(c.weights * c.gaps)),
        "rms": math.sqrt(float(np.sum(c.weights * c.gaps**2))),
        "mce": float(c.gaps[c.counts > 0].max()),
        "brier": brier_score(probs, outcomes),
    }
