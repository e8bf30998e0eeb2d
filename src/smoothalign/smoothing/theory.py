"""Optimal smoothing as a function of the label confidence ``q`` (SPEC §3).

With an observed label ``z ~ Bernoulli(q)`` (``z = 1``: the labelled winner won), the
smoothed sigmoid loss has gradient ``σ(h) − t_α(z)`` with ``t_α(1) = 1 − α``, ``t_α(0) = α``;
the ideal gradient is ``σ(h) − q``, so the estimation error is ``e = q − t_α(z)``.

All functions are vectorised and accept floats, NumPy arrays or tensors; they return the
same kind they were given.
"""

from __future__ import annotations

import torch
from torch import Tensor

from smoothalign._checks import ArrayLike, as_tensor, check_in_range, same_type_as_input

METRICS = ("l0", "l2")


def _q(q: ArrayLike) -> Tensor:
    return check_in_range(as_tensor(q, "q"), "q", 0.0, 1.0)


def _alpha(alpha: ArrayLike, like: Tensor) -> Tensor:
    return check_in_range(as_tensor(alpha, "alpha", like=like), "alpha", 0.0, 0.5)


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric: unknown {metric!r}; choose one of {METRICS}")
    return metric


def _optimal_alpha(q: Tensor, metric: str) -> Tensor:
    if check_metric(metric) == "l2":
        return 2 * q * (1 - q)
    return torch.minimum(q, 1 - q)


def optimal_alpha(q: ArrayLike, metric: str = "l2"):
    """``a*(q)``: ``2q(1−q)`` for ``ℓ2`` (minimises ``E[e²]``), ``min(q, 1−q)`` for ``ℓ0``
    (minimises ``P(e ≠ 0)``). Both lie in ``[0, ½]``."""
    return same_type_as_input(_optimal_alpha(_q(q), metric), q)


def equilibrium_forecast(q: ArrayLike, metric: str = "l2"):
    """The stationary forecast ``σ(h) = q + a*(q)·(1 − 2q)`` of the expected smoothed loss."""
    qt = _q(q)
    return same_type_as_input(qt + _optimal_alpha(qt, metric) * (1 - 2 * qt), q)


def gradient_error_mse(q: ArrayLike, alpha: ArrayLike):
    """``E[e²] = q(q − 1 + α)² + (1 − q)(q − α)²``."""
    qt = _q(q)
    a = _alpha(alpha, qt)
    return same_type_as_input(qt * (qt - 1 + a) ** 2 + (1 - qt) * (qt - a) ** 2, q)


def gradient_error_prob(q: ArrayLike, alpha: ArrayLike, *, atol: float = 1e-12):
    """``P(e ≠ 0) = q·[q ≠ 1−α] + (1−q)·[q ≠ α]``: how often the smoothed target misses ``q``."""
    qt = _q(q)
    a = _alpha(alpha, qt)
    miss_if_won = ((qt - (1 - a)).abs() > atol).to(qt.dtype)
    miss_if_lost = ((qt - a).abs() > atol).to(qt.dtype)
    return same_type_as_input(qt * miss_if_won + (1 - qt) * miss_if_lost, q)


def smoothed_target(label: ArrayLike, alpha: ArrayLike):
    """``t_α(z)``: ``1 − α`` for ``z = 1`` and ``α`` for ``z = 0``."""
    z = check_in_range(as_tensor(label, "label"), "label", 0.0, 1.0)
    a = _alpha(alpha, z)
    return same_type_as_input(z * (1 - a) + (1 - z) * a, label)
