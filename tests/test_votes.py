"""A label's confidence from annotator votes (smoothing.votes), against brute-force Bayes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smoothalign.smoothing.votes import fit_vote_prior, posterior_mean, vote_confidence


def _marginal_log_lik(v, k, support, weights) -> float:
    """Σ_i log Σ_g w_g · C(K, v_i) q_g^v_i (1 − q_g)^(K − v_i), with Python floats."""
    total = 0.0
    for vi, ki in zip(v, k, strict=True):
        total += math.log(
            sum(
                w * math.comb(ki, vi) * q**vi * (1 - q) ** (ki - vi)
                for q, w in zip(support, weights, strict=True)
            )
        )
    return total


def test_uniform_prior_is_laplace():
    v = torch.tensor([0, 1, 2, 3, 5])
    k = torch.tensor([3, 3, 3, 3, 5])
    got = vote_confidence(v, k, prior="uniform")
    assert torch.allclose(got, (v + 1.0).double() / (k + 2.0).double())
    assert got.dtype == torch.float64


def test_empirical_posterior_mean_is_bayes_with_the_fitted_prior():
    rng = np.random.default_rng(0)
    k = rng.integers(1, 7, size=60)
    v = rng.binomial(k, rng.choice([0.1, 0.5, 0.9], size=60))
    support, weights = fit_vote_prior(v, k, grid=19, iterations=50)
    got = vote_confidence(v, k, grid=19, iterations=50)
    s, w = support.tolist(), weights.tolist()
    for i in range(60):
        like = [
            wg * q ** int(v[i]) * (1 - q) ** int(k[i] - v[i]) for q, wg in zip(s, w, strict=True)
        ]
        expected = sum(q * lk for q, lk in zip(s, like, strict=True)) / sum(like)
        assert float(got[i]) == pytest.approx(expected, rel=1e-9)


def test_em_never_lowers_the_marginal_likelihood():
    rng = np.random.default_rng(1)
    k = np.full(40, 4)
    v = rng.binomial(k, rng.choice([0.2, 0.8], size=40))
    values = []
    for it in (1, 2, 5, 20, 80):
        support, weights = fit_vote_prior(v, k, grid=9, iterations=it)
        assert float(weights.sum()) == pytest.approx(1.0)
        values.append(_marginal_log_lik(v.tolist(), k.tolist(), support.tolist(), weights.tolist()))
    assert all(b >= a - 1e-9 for a, b in zip(values, values[1:], strict=False))
    assert values[-1] > values[0]


def test_empirical_prior_finds_clear_cut_pairs_and_beats_the_uniform_prior():
    """Monte Carlo: q from {0.05: 40%, 0.5: 20%, 0.95: 40%}, five votes each. Five votes
    identify only the distribution of the counts, not the prior's exact shape in the middle:
    so the fitted prior must reproduce the counts' distribution and put the clear-cut mass
    near 0 and 1; its posterior mean must be closer to q than Laplace's (v + 1)/(K + 2),
    which cannot get past 6/7 with five votes."""
    rng = np.random.default_rng(2)
    q = rng.choice([0.05, 0.5, 0.95], p=[0.4, 0.2, 0.4], size=20000)
    v = rng.binomial(5, q)
    support, weights = fit_vote_prior(v, 5)
    s, w = support.numpy(), weights.numpy()
    predicted = [
        sum(wg * math.comb(5, j) * sg**j * (1 - sg) ** (5 - j) for sg, wg in zip(s, w, strict=True))
        for j in range(6)
    ]
    observed = np.bincount(v, minlength=6) / v.size
    assert np.allclose(predicted, observed, atol=0.01)
    assert w[s <= 0.2].sum() == pytest.approx(0.4, abs=0.05)
    assert w[s >= 0.8].sum() == pytest.approx(0.4, abs=0.05)
    eb = vote_confidence(v, 5).numpy()
    lap = vote_confidence(v, 5, prior="uniform").numpy()
    assert np.mean((eb - q) ** 2) < 0.8 * np.mean((lap - q) ** 2)
    assert eb[v == 5].mean() > 0.9 > lap[v == 5].max()


def test_bad_votes_name_the_row():
    with pytest.raises(ValueError, match="row 2 has 4 of 3 votes"):
        vote_confidence([0, 1, 4], 3)
    with pytest.raises(ValueError, match="whole numbers"):
        vote_confidence([0.5, 1.0], 3)
    with pytest.raises(ValueError, match="shapes differ"):
        vote_confidence([0, 1], [3, 3, 3])
    with pytest.raises(ValueError, match="prior"):
        vote_confidence([0, 1], 3, prior="jeffreys")
    with pytest.raises(ValueError, match="totals >= 1"):
        vote_confidence([0], 0)


def test_posterior_mean_refuses_a_bad_prior():
    third = torch.full((3,), 1 / 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="strictly inside"):  # 0·log 0 would give NaN
        posterior_mean([0, 2], [2, 2], torch.tensor([0.0, 0.5, 1.0]), third)
    with pytest.raises(ValueError, match=">= 0"):
        posterior_mean([0, 2], [2, 2], torch.tensor([0.2, 0.5, 0.8]), torch.tensor([1.5, -0.5, 0]))
    with pytest.raises(ValueError, match="sum to 1"):
        posterior_mean([0, 2], [2, 2], torch.tensor([0.2, 0.5, 0.8]), 2 * third)
    # float32 support with float64 weights is fine (both are read as float64)
    got = posterior_mean([1], [2], torch.tensor([0.25, 0.75]), torch.tensor([0.5, 0.5]).double())
    assert float(got[0]) == pytest.approx(0.5)


def test_em_equals_a_plain_per_pair_em():
    """The EM runs on distinct (v, K) with multiplicities; a plain EM over every pair,
    written here with NumPy, reaches the same weights."""
    rng = np.random.default_rng(3)
    k = rng.integers(1, 6, size=300)
    v = rng.binomial(k, rng.choice([0.1, 0.6, 0.95], size=300))
    support, weights = fit_vote_prior(v, k, grid=15, iterations=40)
    q = np.arange(1, 16) / 16
    like = q[None, :] ** v[:, None] * (1 - q[None, :]) ** (k - v)[:, None]  # [N, G]
    w = np.full(15, 1 / 15)
    for _ in range(40):
        post = like * w
        post /= post.sum(1, keepdims=True)
        w = post.mean(0)
    assert np.allclose(support.numpy(), q)
    assert np.allclose(weights.numpy(), w, rtol=1e-9, atol=1e-12)
