"""SPEC §3: optimal smoothing a*(q) and the equilibrium forecast, against Monte Carlo,
brute-force grid search and gradient descent in float64."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from smoothalign.smoothing import (
    equilibrium_forecast,
    gradient_error_mse,
    gradient_error_prob,
    optimal_alpha,
    smoothed_target,
)

# α grid with step 1/400: contains every q below and its complement exactly.
ALPHA_GRID = np.arange(201) / 400.0
# Confidences on the grid's lattice (multiples of 1/400) so that the ℓ0 optimum is a grid
# point; includes q < 1/2 (flipped labels), q = 1/2 and the end points.
QS = [0.0, 0.1, 0.2, 0.35, 0.5, 0.7, 0.8, 0.9, 0.975, 1.0]


def _mc_errors(q: float, n: int, seed: int) -> np.ndarray:
    """e = q − t_α(z) for z ~ Bernoulli(q), for every α of the grid: ``[len(grid), n]``."""
    z = np.random.default_rng(seed).random(n) < q
    t = np.where(z[None, :], 1.0 - ALPHA_GRID[:, None], ALPHA_GRID[:, None])
    return q - t


@pytest.mark.parametrize("q", QS)
def test_optimal_alpha_l2_is_grid_minimiser_of_monte_carlo_mse(q):
    e = _mc_errors(q, 100_000, seed=int(q * 1000) + 1)
    mse = (e**2).mean(1)
    brute = ALPHA_GRID[np.argmin(mse)]
    # Empirical frequency f moves the minimiser to q + f(1 − 2q): |Δ| ≲ 4σ_f + grid step.
    tol = 4 * math.sqrt(q * (1 - q) / 100_000) + 1 / 400
    assert abs(optimal_alpha(q, "l2") - brute) <= tol
    # the closed-form E[e²] of gradient_error_mse agrees with the Monte-Carlo mean
    closed = gradient_error_mse(np.full_like(ALPHA_GRID, q), ALPHA_GRID)
    np.testing.assert_allclose(closed, mse, atol=5e-3)


@pytest.mark.parametrize("q", QS)
def test_optimal_alpha_l0_is_grid_minimiser_of_monte_carlo_miss_rate(q):
    e = _mc_errors(q, 100_000, seed=int(q * 1000) + 2)
    miss = (np.abs(e) > 1e-9).mean(1)
    best = miss.min()
    minimisers = ALPHA_GRID[miss == best]
    assert len(minimisers) == 1, "P(e≠0) must have a unique minimiser on the grid"
    assert optimal_alpha(q, "l0") == pytest.approx(minimisers[0], abs=1e-12)
    # the closed-form P(e ≠ 0) of gradient_error_prob agrees with Monte Carlo
    closed = gradient_error_prob(np.full_like(ALPHA_GRID, q), ALPHA_GRID)
    np.testing.assert_allclose(closed, miss, atol=5e-3)


def test_miss_probability_with_exact_comparison():
    """``atol=0`` compares exactly: on dyadic q and α (exact in binary) P(e ≠ 0) equals its
    enumeration over z in exact rational arithmetic, a hit counting as no miss."""
    grid = [Fraction(i, 8) for i in range(9)]
    qs = [q for q in grid for a in grid if a <= Fraction(1, 2)]
    alphas = [a for q in grid for a in grid if a <= Fraction(1, 2)]
    ref = [q * (q != 1 - a) + (1 - q) * (q != a) for q, a in zip(qs, alphas, strict=True)]
    got = gradient_error_prob(np.array(qs, dtype=float), np.array(alphas, dtype=float), atol=0)
    np.testing.assert_array_equal(got, np.array(ref, dtype=float))
    assert 0.0 in got  # the exact hits (α = a*_ℓ0(q)) are among them


def test_mc_minimiser_is_not_trivially_satisfied():
    """Sanity of the brute force itself: the two metrics pick different α (q = 0.8)."""
    e = _mc_errors(0.8, 50_000, seed=7)
    a_l2 = ALPHA_GRID[np.argmin((e**2).mean(1))]
    a_l0 = ALPHA_GRID[np.argmin((np.abs(e) > 1e-9).mean(1))]
    assert abs(a_l2 - 0.32) < 0.01 and abs(a_l0 - 0.2) < 1e-12


def test_spec_worked_values():
    # SPEC §3: q = 0.8 → ℓ0 0.68, ℓ2 0.608; q = 0.2 → ℓ0 0.32
    assert equilibrium_forecast(0.8, "l0") == pytest.approx(0.68, abs=1e-12)
    assert equilibrium_forecast(0.2, "l0") == pytest.approx(0.32, abs=1e-12)
    assert equilibrium_forecast(0.8, "l2") == pytest.approx(0.608, abs=1e-12)
    assert optimal_alpha(0.8, "l2") == pytest.approx(2 * 0.8 * 0.2, abs=1e-12)
    assert optimal_alpha(0.8, "l0") == pytest.approx(0.2, abs=1e-12)


def test_equilibrium_matches_spec_closed_forms():
    q = np.linspace(0, 1, 101)
    l0 = 0.5 + 2 * (q - 0.5) * np.abs(q - 0.5)
    l2 = q - 2 * q * (1 - q) * (2 * q - 1)
    np.testing.assert_allclose(equilibrium_forecast(q, "l0"), l0, atol=1e-12)
    np.testing.assert_allclose(equilibrium_forecast(q, "l2"), l2, atol=1e-12)
    hi = q[q >= 0.5]
    np.testing.assert_allclose(equilibrium_forecast(hi, "l0"), hi**2 + (1 - hi) ** 2, atol=1e-12)


@pytest.mark.parametrize("metric", ["l0", "l2"])
def test_equilibrium_matches_gradient_descent_on_expected_smoothed_loss(metric):
    """Minimise E_z[loss(h; t_α(z))] over h by GD in float64; σ(h) → equilibrium_forecast."""
    q = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    a = torch.minimum(q, 1 - q) if metric == "l0" else 2 * q * (1 - q)  # SPEC §3, by hand
    h = torch.zeros_like(q, requires_grad=True)
    opt = torch.optim.SGD([h], lr=4.0)
    for _ in range(600):
        opt.zero_grad()
        logsig_pos = -torch.logaddexp(torch.zeros_like(h), -h)  # log σ(h)
        logsig_neg = -torch.logaddexp(torch.zeros_like(h), h)  # log σ(−h)
        # z = 1 (prob q): target 1 − α on the forecast σ(h); z = 0: target α.
        loss_z1 = -(1 - a) * logsig_pos - a * logsig_neg
        loss_z0 = -a * logsig_pos - (1 - a) * logsig_neg
        (q * loss_z1 + (1 - q) * loss_z0).sum().backward()
        opt.step()
    p_gd = torch.sigmoid(h.detach())
    assert h.grad.abs().max() < 1e-10, "gradient descent did not converge"
    torch.testing.assert_close(
        equilibrium_forecast(q, metric), p_gd, atol=1e-4, rtol=0, check_dtype=True
    )


@pytest.mark.parametrize("metric", ["l0", "l2"])
def test_optimal_alpha_range_and_fixed_points(metric):
    q = np.linspace(0, 1, 10_001)
    a = optimal_alpha(q, metric)
    assert a.min() >= 0 and a.max() <= 0.5
    np.testing.assert_allclose(a, a[::-1], atol=1e-12)  # a*(q) = a*(1 − q)
    assert optimal_alpha(0.0, metric) == 0.0
    assert optimal_alpha(1.0, metric) == 0.0
    assert optimal_alpha(0.5, metric) == 0.5
    # smoothing never reverses a label: the labelled winner's target stays ≥ 1/2
    assert (1 - a).min() >= 0.5


def test_smoothed_target_definition():
    z = np.array([1.0, 0.0, 1.0, 0.0])
    a = np.array([0.0, 0.0, 0.3, 0.3])
    np.testing.assert_allclose(smoothed_target(z, a), [1.0, 0.0, 0.7, 0.3], atol=1e-15)


_CALLS = {
    "optimal_alpha": lambda x: optimal_alpha(x, "l2"),
    "equilibrium_forecast": lambda x: equilibrium_forecast(x, "l0"),
    "gradient_error_mse": lambda x: gradient_error_mse(x, 0.1),
    "gradient_error_prob": lambda x: gradient_error_prob(x, 0.1),
    "smoothed_target": lambda x: smoothed_target(x, 0.1),
}


@pytest.mark.parametrize("fn", list(_CALLS), ids=list(_CALLS))
def test_same_kind_out_as_in(fn):
    f = _CALLS[fn]
    out = f(0.3)
    assert type(out) is float
    arr = np.array([0.1, 0.3, 0.9])
    out = f(arr)
    assert isinstance(out, np.ndarray) and out.shape == (3,)
    out = f(np.array([[0.1, 0.2], [0.3, 0.4]]))
    assert isinstance(out, np.ndarray) and out.shape == (2, 2)
    for dtype in (torch.float32, torch.float64):
        t = torch.tensor([0.1, 0.3, 0.9], dtype=dtype)
        out = f(t)
        assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == (3,)
        np.testing.assert_allclose(out.numpy(), f(arr), rtol=1e-6)
    assert f(0.3) == pytest.approx(float(f(np.array([0.3]))[0]), abs=1e-15)


def test_bad_inputs_name_the_argument():
    for bad in (-0.1, 1.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="q"):
            optimal_alpha(bad)
        with pytest.raises(ValueError, match="q"):
            equilibrium_forecast(np.array([0.5, bad]))
    for bad in (-0.01, 0.51, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            gradient_error_mse(0.5, bad)
        with pytest.raises(ValueError, match="alpha"):
            gradient_error_prob(0.5, bad)
        with pytest.raises(ValueError, match="alpha"):
            smoothed_target(1.0, bad)
    for bad in (2.0, -0.5):
        with pytest.raises(ValueError, match="label"):
            smoothed_target(bad, 0.1)
    with pytest.raises(ValueError, match="metric"):
        optimal_alpha(0.5, "l1")
    with pytest.raises(ValueError, match="metric"):
        equilibrium_forecast(0.5, "L2")
    with pytest.raises(ValueError, match="q"):
        optimal_alpha("0.5")
