"""SPEC §4: the CALS calibrator — recovery of a known calibration curve, mirror symmetry,
the update rule against a NumPy reference, cold start, state, and data parallelism."""

from __future__ import annotations

import datetime
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from smoothalign.smoothing import CALSCalibrator, make_policy
from smoothalign.smoothing.calibrator import TIE_BAND


def _logit(p):
    return np.log(p) - np.log1p(-p)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def simulate_presented_forecasts(rng, n, curve, p_sampler):
    """Model forecast p for "A beats B", truth z ~ Bernoulli(c(p)); the pair is presented
    labelled-winner-first, so the calibrator sees p if z else 1 − p."""
    p = p_sampler(n)
    z = rng.random(n) < curve(p)
    return np.where(z, p, 1 - p)


def reference_bin_confidence(curve, density, bins):
    """What q̂_k converges to for a symmetric curve (c(1−u) = 1 − c(u)): in bin k, "first
    wins" forecasts have density c(u)·g(u) and "first loses" (1−c(u))·g(u), with
    g(u) = f(u) + f(1−u); so q̂_k → ∫_k c·g / ∫_k g (bin-average of c weighted by g)."""
    out = np.empty(bins)
    for k in range(bins):
        u = (k + (np.arange(2000) + 0.5) / 2000) / bins
        g = density(u) + density(1 - u)
        out[k] = np.sum(curve(u) * g) / np.sum(g)
    return out


# ----------------------------------------------------------------------- curve recovery
CURVES = {
    "overconfident": lambda p: _sigmoid(0.5 * _logit(p)),
    "underconfident": lambda p: _sigmoid(2.0 * _logit(p)),
    "calibrated": lambda p: p,
}


@pytest.mark.parametrize("curve_name", sorted(CURVES))
@pytest.mark.parametrize("forecast_dist", ["uniform", "logit-normal"])
def test_recovers_known_calibration_curve(rng, curve_name, forecast_dist):
    curve = CURVES[curve_name]
    bins, sd = 20, 1.5
    if forecast_dist == "uniform":
        sampler = lambda n: rng.uniform(1e-6, 1 - 1e-6, n)  # noqa: E731
        density = lambda u: np.ones_like(u)  # noqa: E731
    else:
        sampler = lambda n: _sigmoid(rng.normal(0, sd, n))  # noqa: E731

        def density(u):
            s = _logit(u)
            return np.exp(-0.5 * (s / sd) ** 2) / (u * (1 - u))

    cal = CALSCalibrator(bins=bins, momentum=0.98, init_confidence=1.0, prior_strength=10.0)
    for _ in range(60):
        cal.update(simulate_presented_forecasts(rng, 4000, curve, sampler))
    q_hat = cal.bin_confidence().numpy()
    expected = reference_bin_confidence(curve, density, bins)
    populated = (cal.wins + cal.losses).numpy() >= 1000
    assert populated.sum() >= 12
    np.testing.assert_allclose(q_hat[populated], expected[populated], atol=0.03)
    # and per label: ĉ of a forecast u is the curve near u
    u = np.linspace(0.03, 0.97, 40)
    ok = populated[cal.bin_index(u).numpy()]
    np.testing.assert_allclose(cal.confidence(u).numpy()[ok], curve(u)[ok], atol=0.05)


def test_recovery_detects_a_miscalibrated_model(rng):
    """The estimate follows the curve: two different curves give clearly different q̂."""
    sampler = lambda n: rng.uniform(0, 1, n)  # noqa: E731
    est = {}
    for name in ("overconfident", "underconfident"):
        cal = CALSCalibrator(momentum=0.9)
        for _ in range(30):
            cal.update(simulate_presented_forecasts(rng, 4000, CURVES[name], sampler))
        est[name] = cal.confidence([0.9]).item()
    assert est["overconfident"] < 0.8 < est["underconfident"]


# ----------------------------------------------------------------------- mirror symmetry
def _query_points(rng, bins):
    """Forecasts in (1/2, 1] — interior bin edges, the end point, random values — and their
    mirror images. For p ≥ 1/2, 1 − p is exact in floating point (for p < 1/2 it may round,
    and then it is not the mirror image of p)."""
    edges = np.arange(bins // 2 + 1, bins + 1) / bins
    hi = np.concatenate([edges, [1 - 1e-12, 0.5 + 1e-12], rng.uniform(0.5, 1, 200)])
    assert np.all(1 - (1 - hi) == hi)
    return hi, 1 - hi


@pytest.mark.parametrize("bins", [2, 8, 10, 20])
def test_bins_are_mirror_symmetric(rng, bins):
    cal = CALSCalibrator(bins=bins)
    hi, lo = _query_points(rng, bins)
    assert torch.equal(cal.bin_index(lo), bins - 1 - cal.bin_index(hi))
    p = np.concatenate([hi, lo])
    k = cal.bin_index(p)
    assert k.min() >= 0 and k.max() <= bins - 1
    # forecasts strictly below 1/2 in the lower half, strictly above in the upper half
    assert bool((k[torch.as_tensor(p) < 0.5] < bins // 2).all())
    assert bool((k[torch.as_tensor(p) > 0.5] >= bins // 2).all())
    # equal-width bins away from the edges
    interior = p[np.abs(p * bins - np.round(p * bins)) > 1e-9]
    ref = np.minimum(np.floor(interior * bins), bins - 1)
    np.testing.assert_array_equal(cal.bin_index(interior).numpy(), ref)


@pytest.mark.parametrize(("kappa", "c0"), [(0.0, 1.0), (0.0, 0.8), (10.0, 0.5), (3.0, 0.5)])
def test_mirror_symmetry_once_converged(rng, kappa, c0):
    cal = CALSCalibrator(bins=20, momentum=0.9, init_confidence=c0, prior_strength=kappa)
    # deliberately lopsided forecasts (mostly > 1/2), but every bin populated, plus forecasts
    # exactly on bin edges (dyadic 0.25 / 0.75, decimal 0.1, 0.7, 0.95) and at 0 and 1
    edges = np.array([0.0, 0.1, 0.25, 0.7, 0.75, 0.75, 0.95, 1.0, 1.0])
    for _ in range(5):
        cal.update(np.concatenate([rng.beta(4, 1.5, 3000), rng.uniform(0, 1, 400), edges]))
        # every pair's mirrored reading is counted in the mirror bin: l_k = w_{K−1−k}
        assert torch.equal(cal.losses, cal.wins.flip(0))
    hi, lo = _query_points(rng, 20)
    # a tie (within TIE_BAND of ½, like 0.5 ± 1e-12) is read as ½ from bin K/2 on both sides
    outside = np.abs(hi - 0.5) >= TIE_BAND
    assert not outside.all()
    hi, lo = hi[outside], lo[outside]
    total = cal.confidence(hi) + cal.confidence(lo)
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-12)
    q = cal.bin_confidence()
    torch.testing.assert_close(q + q.flip(0), torch.ones_like(q), rtol=0, atol=1e-12)


@pytest.mark.parametrize("p", [0.25, 0.75, 0.7, 0.3, 0.05, 0.95, 0.0, 1.0])
def test_mirrored_reading_of_an_edge_forecast(p):
    """A forecast on a bin edge: its "first wins" count and its mirrored "first loses"
    count land in mirror-image bins, so the bin pair reads q̂ + q̂' = 1 with κ = 0."""
    cal = CALSCalibrator(bins=20, momentum=0.9, prior_strength=0.0)
    cal.update([p])
    (k_w,) = cal.wins.nonzero()[0].tolist()
    (k_l,) = cal.losses.nonzero()[0].tolist()
    assert k_l == 19 - k_w
    assert k_w == int(cal.bin_index([p]))


def test_mirror_symmetry_needs_neutral_prior(rng):
    """With κ > 0 and c₀ ≠ 1/2 the prior breaks the symmetry (the test above can fail)."""
    cal = CALSCalibrator(bins=20, init_confidence=1.0, prior_strength=10.0)
    cal.update(rng.uniform(0, 1, 200))
    assert float((cal.confidence([0.8]) + cal.confidence([0.2])).item()) > 1.01


# ----------------------------------------------------------------------- the update rule
def reference_update(wins, losses, forecasts, bins, momentum):
    """SPEC §4 in plain NumPy: each non-tie forecast adds a "first wins" count in its bin and
    a "first loses" count in the bin of 1 − p̂; only bins the batch touched decay."""
    cw, cl = np.zeros(bins), np.zeros(bins)
    for p in forecasts:
        if p == 0.5:
            continue
        cw[min(int(math.floor(p * bins)), bins - 1)] += 1
        cl[min(int(math.floor((1 - p) * bins)), bins - 1)] += 1
    touched = (cw + cl) > 0
    wins = np.where(touched, momentum * wins + cw, wins)
    losses = np.where(touched, momentum * losses + cl, losses)
    return wins, losses


def test_update_matches_numpy_reference(rng):
    bins, m, kappa, c0 = 10, 0.7, 4.0, 0.9
    cal = CALSCalibrator(bins=bins, momentum=m, init_confidence=c0, prior_strength=kappa)
    w, l = np.zeros(bins), np.zeros(bins)
    for step in range(12):
        # batches concentrated on a few bins, so that many bins are left untouched
        centre = rng.uniform(0.05, 0.95)
        batch = np.clip(rng.normal(centre, 0.04, rng.integers(1, 40)), 0.0, 1.0)
        batch[: step % 3] = 0.5  # a few exact ties
        cal.update(torch.as_tensor(batch))
        w, l = reference_update(w, l, batch, bins, m)
        np.testing.assert_allclose(cal.wins.numpy(), w, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(cal.losses.numpy(), l, rtol=1e-12, atol=1e-12)
        assert cal.step == step + 1
    q_ref = (w + kappa * c0) / (w + l + kappa)
    np.testing.assert_allclose(cal.bin_confidence().numpy(), q_ref, rtol=1e-12)
    p = rng.uniform(0, 1, 50)
    k = np.minimum(np.floor(p * bins), bins - 1).astype(int)
    np.testing.assert_allclose(cal.confidence(p).numpy(), q_ref[k], rtol=1e-12)
    a_l2 = 2 * q_ref[k] * (1 - q_ref[k])
    a_l0 = np.minimum(q_ref[k], 1 - q_ref[k])
    np.testing.assert_allclose(cal.alpha(p, "l2").numpy(), a_l2, rtol=1e-12)
    np.testing.assert_allclose(cal.alpha(p, "l0").numpy(), a_l0, rtol=1e-12)


def test_only_touched_bins_decay():
    cal = CALSCalibrator(bins=10, momentum=0.5, prior_strength=0.0)
    cal.update([0.05] * 4)  # bin 0 wins, mirror bin 9 losses
    cal.update([0.35] * 2)  # bins 3 / 6 only
    assert cal.wins[0] == 4 and cal.losses[9] == 4  # untouched: not decayed
    assert cal.wins[3] == 2 and cal.losses[6] == 2
    cal.update([0.95])  # bin 9 wins, bin 0 losses: both touched, both decay
    assert cal.wins[0] == 2 and cal.losses[0] == 1
    assert cal.wins[9] == 1 and cal.losses[9] == 2
    assert cal.wins[3] == 2 and cal.losses[6] == 2  # still untouched
    assert float(cal.wins.sum()) == 5 and float(cal.losses.sum()) == 5


def test_exact_ties_are_not_counted(rng):
    cal = CALSCalibrator()
    cal.update([0.5] * 100)
    assert cal.wins.sum() == 0 and cal.losses.sum() == 0 and cal.step == 1
    # h = 0 through a policy: every forecast is a tie, the state stays at the prior
    pol = make_policy("cals-l2", init_confidence=0.8)
    first = pol.step(torch.zeros(64))
    assert pol.calibrator.wins.sum() == 0 and pol.calibrator.losses.sum() == 0
    # ... so the next all-tie batch still gets a*(c₀) = 2·0.8·0.2, not the stall value 1/2
    second = pol.step(torch.zeros(64))
    torch.testing.assert_close(first, torch.full((64,), 0.32), rtol=0, atol=1e-6)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    # mixed batch: identical to the same batch without its ties
    batch = rng.uniform(0, 1, 50)
    a, b = CALSCalibrator(), CALSCalibrator()
    a.update(np.concatenate([batch, [0.5] * 30]))
    b.update(batch)
    assert torch.equal(a.wins, b.wins) and torch.equal(a.losses, b.losses)


def test_direct_calibrator_applies_the_tie_tolerance_as_the_policy_does():
    """README's direct use, ``cal.update(σ(h))``, under the rounding noise of a policy equal
    to its reference (|h| ~ 1e-7 < TIE_TOLERANCE): SPEC §4 calls those ties, so the direct
    path counts nothing, exactly as the policy path, instead of filling the bins beside ½
    with noise and reporting q̂ → ½ (the cold-start stall)."""
    cal, pol = CALSCalibrator(), make_policy("cals-l2")
    torch.manual_seed(0)
    for _ in range(50):
        h = torch.randn(8, dtype=torch.float64) * 1e-7
        cal.update(torch.sigmoid(h))
        pol.step(h)
    assert cal.wins.sum() == 0 and cal.losses.sum() == 0 and cal.step == 50
    assert torch.equal(cal.wins, pol.calibrator.wins)
    assert torch.equal(cal.losses, pol.calibrator.losses)
    hq = torch.tensor([1e-3, 0.05], dtype=torch.float64)
    assert torch.equal(cal.alpha(torch.sigmoid(hq)), pol.alpha(hq))
    assert torch.equal(cal.alpha(torch.sigmoid(hq)), torch.zeros(2, dtype=torch.float64))


def test_forecasts_in_the_tie_band_are_ties_and_the_band_edge_is_not(rng):
    """The tie band is the image of |h| < TIE_TOLERANCE under σ: a forecast inside it is
    neither counted nor read from its own side's bin (it is read from bin K/2, as ½ is);
    the forecast σ(±h) of a margin at or beyond the tolerance is an ordinary forecast, so
    the policies' forecasts (ties already exactly ½) are binned as before."""
    from smoothalign.smoothing.policies import TIE_TOLERANCE, forecasts_from_margins

    assert abs(TIE_BAND - (_sigmoid(TIE_TOLERANCE) - 0.5)) < 1e-8 * TIE_BAND
    inside = [0.5 + 1e-7, 0.5 - 1e-7, 0.5 + 0.99 * TIE_BAND, 0.5 - 0.99 * TIE_BAND]
    batch = rng.uniform(0, 1, 40)
    a, b = CALSCalibrator(), CALSCalibrator()
    a.update(np.concatenate([batch, inside]))
    b.update(batch)
    assert torch.equal(a.wins, b.wins) and torch.equal(a.losses, b.losses)
    # read as ½: bin K/2, below ½ too (not its mirror bin K/2 − 1)
    cal = CALSCalibrator(bins=8, momentum=0.5, prior_strength=4.0)
    cal.update([0.5 + 0.25 / 8] * 6)
    half = cal.confidence([0.5])
    assert torch.equal(cal.confidence(inside), half.expand(4))
    assert torch.equal(cal.alpha(inside), cal.alpha([0.5] * 4))
    # margins at the tolerance and beyond, and their float32 roundings: counted, unchanged
    h = np.concatenate([[TIE_TOLERANCE], np.nextafter(TIE_TOLERANCE, 1.0) + np.zeros(1)])
    h = np.concatenate([h, np.linspace(1e-5, 3e-5, 1001).astype(np.float32)])
    h = torch.as_tensor(np.concatenate([h, -h]), dtype=torch.float64)
    h = h[h.abs() >= TIE_TOLERANCE]  # float32(1e-5) is just below it
    p = forecasts_from_margins(h)
    assert bool(((p - 0.5).abs() >= TIE_BAND).all())
    edge = CALSCalibrator(bins=8)
    edge.update(p)
    assert float(edge.wins.sum()) == len(h)


@pytest.mark.parametrize("bins", [2, 8, 20])
def test_an_exact_tie_is_looked_up_in_bin_half(bins):
    """A tie is never counted, but a tied pair still needs a confidence: it is read from bin
    K/2 (the first bin above 1/2), not from its mirror K/2 − 1. With κ > 0 and c₀ ≠ 1/2 the
    two differ: here bin K/2 holds n wins and bin K/2 − 1 their n mirrored losses, so the
    tie's confidence is the SPEC's (n + κ·c₀)/(n + κ), not (0 + κ·c₀)/(n + κ)."""
    n, kappa, c0 = 6, 4.0, 1.0
    cal = CALSCalibrator(bins=bins, momentum=0.5, init_confidence=c0, prior_strength=kappa)
    cal.update([0.5 + 0.25 / bins] * n)  # inside bin K/2
    assert int(cal.bin_index([0.5])[0]) == bins // 2
    q = (n + kappa * c0) / (n + kappa)
    assert float(cal.confidence([0.5])[0]) == pytest.approx(q, rel=1e-12)
    assert float(cal.alpha([0.5], "l2")[0]) == pytest.approx(2 * q * (1 - q), rel=1e-12)
    assert float(cal.alpha([0.5], "l0")[0]) == pytest.approx(min(q, 1 - q), rel=1e-12)


@pytest.mark.parametrize("kappa", [0.0, 10.0])
def test_full_confidence_prior_gives_no_smoothing_before_any_update(kappa):
    cal = CALSCalibrator(init_confidence=1.0, prior_strength=kappa)
    p = torch.tensor([0.0, 0.01, 0.3, 0.5, 0.5, 0.77, 1.0], dtype=torch.float64)
    for metric in ("l0", "l2"):
        assert torch.equal(cal.alpha(p, metric), torch.zeros_like(p))
    assert torch.equal(cal.confidence(p), torch.ones_like(p))


def test_warmup_returns_prior_alpha_while_bins_update(rng):
    c0, warm = 0.8, 3
    cal = CALSCalibrator(init_confidence=c0, warmup_steps=warm, momentum=0.9)
    p = rng.uniform(0, 1, 64)
    for step in range(warm):
        assert cal.in_warmup()
        np.testing.assert_allclose(cal.alpha(p, "l2").numpy(), 2 * c0 * (1 - c0), rtol=1e-12)
        np.testing.assert_allclose(cal.alpha(p, "l0").numpy(), 1 - c0, rtol=1e-12)
        before = cal.wins.clone()
        cal.update(rng.beta(5, 1, 500))
        assert not torch.equal(cal.wins, before), f"bins frozen during warm-up step {step}"
    assert not cal.in_warmup()
    q = cal.confidence(p).numpy()
    np.testing.assert_allclose(cal.alpha(p, "l2").numpy(), 2 * q * (1 - q), rtol=1e-12)
    assert np.abs(cal.alpha(p, "l2").numpy() - 2 * c0 * (1 - c0)).max() > 0.05


# ----------------------------------------------------------------------- state
def _trained(rng, **kw) -> CALSCalibrator:
    cal = CALSCalibrator(**kw)
    for _ in range(4):
        cal.update(rng.beta(3, 1, 300))
    return cal


def test_state_dict_round_trip_is_exact(rng, tmp_path):
    cal = _trained(
        rng, bins=12, momentum=0.95, init_confidence=0.9, prior_strength=7.0, warmup_steps=2
    )
    state = cal.state_dict()
    path = tmp_path / "cal.pt"
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)
    fresh = CALSCalibrator()  # different hyper-parameters: all must come from the state
    fresh.load_state_dict(loaded)
    again = fresh.state_dict()
    assert set(again) == set(state)
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(again[key], value) and again[key].dtype == torch.float64
        else:
            assert again[key] == value and type(again[key]) is type(value)
    p = rng.uniform(0, 1, 100)
    for metric in ("l0", "l2"):
        assert torch.equal(fresh.alpha(p, metric), cal.alpha(p, metric))
    assert torch.equal(fresh.confidence(p), cal.confidence(p))
    # both continue identically
    batch = rng.uniform(0, 1, 77)
    cal.update(batch)
    fresh.update(batch)
    assert torch.equal(fresh.wins, cal.wins) and torch.equal(fresh.losses, cal.losses)
    assert fresh.step == cal.step


def test_state_held_as_lists_restores_exactly(rng):
    """A state that went through JSON (lists of floats) restores bit-exactly: the counts
    are read as float64, not through float32."""
    cal = _trained(rng, bins=8)
    state = cal.state_dict()
    as_lists = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
    fresh = CALSCalibrator(bins=8)
    fresh.load_state_dict(as_lists)
    assert torch.equal(fresh.wins, cal.wins) and torch.equal(fresh.losses, cal.losses)


def test_state_dict_is_a_snapshot(rng):
    cal = _trained(rng)
    state = cal.state_dict()
    wins = state["wins"].clone()
    cal.update(rng.uniform(0, 1, 100))
    assert torch.equal(state["wins"], wins)
    other = CALSCalibrator()
    other.load_state_dict(state)
    state["wins"] += 1.0
    assert torch.equal(other.wins, wins)
    # nor does an in-place edit of a state taken later reach the calibrator
    later = cal.state_dict()
    wins, losses = cal.wins.clone(), cal.losses.clone()
    later["wins"] += 1.0
    later["losses"] += 1.0
    assert torch.equal(cal.wins, wins) and torch.equal(cal.losses, losses)


_DROP = object()


def _bad_states(good):
    def edit(**changes):
        s = dict(good)
        for k, v in changes.items():
            if v is _DROP:
                s.pop(k)
            else:
                s[k] = v
        return s

    return {
        "missing wins": edit(wins=_DROP),
        "missing step": edit(step=_DROP),
        "wins wrong length": edit(wins=torch.zeros(good["bins"] + 2, dtype=torch.float64)),
        "losses 2-D": edit(losses=torch.zeros(1, good["bins"], dtype=torch.float64)),
        "bins disagrees with arrays": edit(bins=good["bins"] + 2),
        "negative count": edit(wins=-torch.ones(good["bins"], dtype=torch.float64)),
        "nan count": edit(losses=torch.full((good["bins"],), float("nan"), dtype=torch.float64)),
        "odd bins": edit(bins=3, wins=torch.zeros(3), losses=torch.zeros(3)),
        "momentum 1": edit(momentum=1.0),
        "momentum None": edit(momentum=None),  # a TypeError inside float(), reported as state
        "init_confidence list": edit(init_confidence=[0.5]),
        # what the constructor refuses (strings, bools, a float count) a state may not hold
        "momentum string": edit(momentum="0.9"),
        "init_confidence string": edit(init_confidence="1.0"),
        "prior_strength bool": edit(prior_strength=True),
        "warmup_steps float": edit(warmup_steps=2.0),
        "bins string": edit(bins=str(good["bins"])),
        "c0 > 1": edit(init_confidence=1.5),
        "negative step": edit(step=-1),
        "fractional step": edit(step=2.5),
        "not numeric": edit(wins="abc"),
        "not a dict": [1, 2, 3],
    }


def test_load_state_dict_rejects_malformed_state(rng):
    cal = _trained(rng, bins=8)
    good = cal.state_dict()
    target = _trained(rng, bins=10)
    before = target.state_dict()
    for label, bad in _bad_states(good).items():
        with pytest.raises(ValueError, match="state") as err:
            target.load_state_dict(bad)
        for key in ("momentum", "init_confidence", "prior_strength", "warmup_steps"):
            if label.startswith(key):
                assert key in str(err.value), label
        # a failed load leaves the calibrator untouched
        now = target.state_dict()
        assert now["bins"] == before["bins"], label
        assert torch.equal(now["wins"], before["wins"]), label
        assert now["step"] == before["step"], label


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"bins": 3}, "bins"),
        ({"bins": 0}, "bins"),
        ({"bins": 20.0}, "bins"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": 1.5}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"momentum": float("nan")}, "momentum"),
        ({"init_confidence": 1.01}, "init_confidence"),
        ({"init_confidence": -0.01}, "init_confidence"),
        ({"prior_strength": -1.0}, "prior_strength"),
        ({"prior_strength": float("inf")}, "prior_strength"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"warmup_steps": 1.5}, "warmup_steps"),
    ],
)
def test_invalid_constructor_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CALSCalibrator(**kwargs)


def test_invalid_forecasts_and_metric():
    cal = CALSCalibrator()
    for bad in ([0.2, float("nan")], [0.2, 1.1], [-0.1], [[0.2, 0.3]]):
        with pytest.raises(ValueError, match="forecasts"):
            cal.update(bad)
        with pytest.raises(ValueError, match="forecasts"):
            cal.alpha(bad)
    with pytest.raises(ValueError, match="metric"):
        cal.alpha([0.3], metric="l1")


def test_reliability_summary(rng):
    cal = _trained(rng, bins=10)
    rel = cal.reliability()
    assert len(rel["bin_edges"]) == 11 and len(rel["q_hat"]) == 10
    np.testing.assert_allclose(rel["q_hat"], cal.bin_confidence().numpy())
    np.testing.assert_allclose(rel["wins"], cal.wins.numpy())
    np.testing.assert_allclose(rel["losses"], cal.losses.numpy())


# ----------------------------------------------------------------------- cold start
def _logistic_run(policy_spec, x, z, steps, lr, **opts):
    """Full-batch GD on the (smoothed) pairwise loss of a logistic model, from θ = 0.

    Pairs are presented labelled-winner-first: the margin is h = (2z − 1)·θ·x, and by
    SPEC §2 the loss gradient wrt h is σ(h) − (1 − α)."""
    sign = 2.0 * z - 1.0
    theta = torch.zeros(x.shape[1], dtype=torch.float64)
    policy = make_policy(policy_spec, **opts) if policy_spec else None
    alphas = []
    for _ in range(steps):
        h = sign * (x @ theta)
        a = policy.step(h) if policy is not None else torch.zeros_like(h)
        alphas.append(float(a.mean()))
        g_h = torch.sigmoid(h) - (1 - a)
        theta = theta - lr * ((g_h * sign) @ x) / len(z)
    h = sign * (x @ theta)
    return float((h > 0).double().mean()), theta, alphas


@pytest.mark.parametrize("kappa", [10.0, 0.0])
@pytest.mark.parametrize("c0", [1.0, 0.8])
@pytest.mark.parametrize("metric", ["l2", "l0"])
def test_cals_does_not_stall_at_cold_start(c0, metric, kappa):
    """SPEC §4's cold-start hazard. With κ = 0 only the exclusion of ties and α-before-update
    keep the first step from reporting q̂ = 1/2 (α = 1/2, zero gradient, θ stuck at 0)."""
    gen = torch.Generator().manual_seed(11)
    n, d = 600, 8
    theta_star = torch.randn(d, generator=gen, dtype=torch.float64)
    theta_star *= 2.0 / theta_star.norm()
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    z = (torch.rand(n, generator=gen, dtype=torch.float64) < torch.sigmoid(x @ theta_star)).double()
    steps, lr = 60, 0.5
    acc_mle, theta_mle, _ = _logistic_run(None, x, z, steps, lr)
    acc_cals, theta_cals, alphas = _logistic_run(
        f"cals-{metric}", x, z, steps, lr, init_confidence=c0, prior_strength=kappa
    )
    assert acc_mle > 0.65, "the task must be learnable by plain MLE"
    assert acc_cals >= 0.9 * acc_mle, (acc_cals, acc_mle)
    # the policy did smooth (it is not plain MLE in disguise) but never to the stall point
    assert max(alphas[1:]) > 0.05
    assert max(alphas) < 0.5
    assert float(theta_cals.norm()) > 0.1 * float(theta_mle.norm())


# ----------------------------------------------------------------------- data parallel
def _ddp_worker(rank, world_size, init_file, out_dir, batches):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        cal = CALSCalibrator(bins=10, momentum=0.8, init_confidence=0.9, prior_strength=5.0)
        for batch in batches:
            cal.update(np.array_split(batch, world_size)[rank])
        torch.save(cal.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_data_parallel_ranks_agree_with_single_process(rng, tmp_path):
    batches = []
    for _ in range(4):
        first = rng.beta(5, 2, 64)  # rank 0's half
        second = np.concatenate([rng.uniform(0.0, 0.2, 60), [0.5] * 4])  # rank 1's, with ties
        batches.append(np.concatenate([first, second]))
    single = CALSCalibrator(bins=10, momentum=0.8, init_confidence=0.9, prior_strength=5.0)
    for batch in batches:
        single.update(batch)

    ctx = mp.spawn(
        _ddp_worker,
        args=(2, str(tmp_path / "rendezvous"), str(tmp_path), batches),
        nprocs=2,
        join=False,
    )
    deadline = time.monotonic() + 60
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("distributed calibrator update did not finish in 60 s")

    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    ref = single.state_dict()
    for state in states:
        assert torch.equal(state["wins"], ref["wins"])
        assert torch.equal(state["losses"], ref["losses"])
        assert state["step"] == ref["step"] == len(batches)
    # sanity: each half alone gives a different state, so the all-reduce mattered
    alone = CALSCalibrator(bins=10, momentum=0.8, init_confidence=0.9, prior_strength=5.0)
    for batch in batches:
        alone.update(np.array_split(batch, 2)[0])
    assert not torch.equal(alone.wins, ref["wins"])
