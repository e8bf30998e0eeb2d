"""SPEC §5 calibration metrics: ECE, RMS, MCE against a hand loop and against torchmetrics."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch

from smoothalign.calibration import (
    brier_score,
    calibration_summary,
    expected_calibration_error,
    max_calibration_error,
    reliability_curve,
    rms_calibration_error,
)
from smoothalign.calibration.plots import reliability_diagram


def hand_metrics(probs, outcomes, bins=15):
    """Independent float64 loop: bins [0,1/K), …, [(K−1)/K, 1]; empty bins contribute 0."""
    n = len(probs)
    members = [[] for _ in range(bins)]
    for p, y in zip(probs, outcomes, strict=True):
        k = bins - 1
        for j in range(bins):
            if p < (j + 1) / bins:
                k = j
                break
        members[k].append((float(p), float(y)))
    ece = sq = 0.0
    mce = 0.0
    for m in members:
        if not m:
            continue
        conf = sum(p for p, _ in m) / len(m)
        acc = sum(y for _, y in m) / len(m)
        ece += len(m) / n * abs(acc - conf)
        sq += len(m) / n * (acc - conf) ** 2
        mce = max(mce, abs(acc - conf))
    return ece, math.sqrt(sq), mce


def _random_data(rng, n=700):
    p = rng.beta(2, 2, n)
    y = (rng.random(n) < np.clip(p + 0.15 * np.sin(6 * p), 0, 1)).astype(float)
    return p, y


@pytest.mark.parametrize("bins", [15, 10, 7])
def test_metrics_equal_hand_computation(rng, bins):
    p, y = _random_data(rng)
    ece, rms, mce = hand_metrics(p, y, bins)
    assert expected_calibration_error(p, y, bins) == pytest.approx(ece, abs=1e-12)
    assert rms_calibration_error(p, y, bins) == pytest.approx(rms, abs=1e-12)
    assert max_calibration_error(p, y, bins) == pytest.approx(mce, abs=1e-12)
    assert ece > 0.01  # the data are miscalibrated: the check is not vacuous
    summary = calibration_summary(p, y, bins)
    assert summary["ece"] == pytest.approx(ece, abs=1e-12)
    assert summary["rms"] == pytest.approx(rms, abs=1e-12)
    assert summary["mce"] == pytest.approx(mce, abs=1e-12)
    assert summary["brier"] == pytest.approx(float(np.mean((p - y) ** 2)), abs=1e-12)


def test_hand_metrics_on_a_tiny_example():
    # bins of width 1/2: {0.1, 0.3} → conf 0.2, acc 0.5; {0.6, 0.8, 1.0} → conf 0.8, acc 2/3
    p = [0.1, 0.3, 0.6, 0.8, 1.0]
    y = [0, 1, 1, 0, 1]
    ece = 2 / 5 * 0.3 + 3 / 5 * abs(2 / 3 - 0.8)
    assert expected_calibration_error(p, y, bins=2) == pytest.approx(ece, abs=1e-12)
    assert max_calibration_error(p, y, bins=2) == pytest.approx(0.3, abs=1e-12)
    rms = math.sqrt(2 / 5 * 0.09 + 3 / 5 * (2 / 3 - 0.8) ** 2)
    assert rms_calibration_error(p, y, bins=2) == pytest.approx(rms, abs=1e-12)


@pytest.mark.parametrize(
    ("norm", "fn"),
    [
        ("l1", expected_calibration_error),
        ("l2", rms_calibration_error),
        ("max", max_calibration_error),
    ],
)
def test_metrics_match_torchmetrics(rng, norm, fn):
    from torchmetrics.functional.classification import binary_calibration_error

    for trial in range(3):
        p, y = _random_data(rng, n=500 + 250 * trial)
        ref = binary_calibration_error(
            torch.as_tensor(p), torch.as_tensor(y).long(), n_bins=15, norm=norm
        )
        assert fn(p, y, 15) == pytest.approx(float(ref), abs=1e-9)


def test_perfectly_calibrated_forecaster_has_small_ece(rng):
    n = 400_000
    p = rng.uniform(0, 1, n)
    y = (rng.random(n) < p).astype(float)
    assert expected_calibration_error(p, y) < 0.005
    assert rms_calibration_error(p, y) < 0.006
    # a biased forecaster of the same data is not
    assert expected_calibration_error(np.clip(p + 0.1, 0, 1), y) > 0.08


def test_outcomes_may_be_probabilities(rng):
    p = rng.uniform(0, 1, 1000)
    assert expected_calibration_error(p, p) == pytest.approx(0.0, abs=1e-12)
    truth = np.clip(p * 0.8 + 0.1, 0, 1)
    ece, rms, mce = hand_metrics(p, truth)
    assert expected_calibration_error(p, truth) == pytest.approx(ece, abs=1e-12)
    assert rms_calibration_error(p, truth) == pytest.approx(rms, abs=1e-12)
    assert max_calibration_error(p, truth) == pytest.approx(mce, abs=1e-12)
    # the Brier score too scores against the probability itself, not a rounded label
    brier = float(np.mean((p - truth) ** 2))
    assert brier_score(p, truth) == pytest.approx(brier, rel=1e-12)
    assert calibration_summary(p, truth)["brier"] == pytest.approx(brier, rel=1e-12)


def test_input_kinds_agree(rng):
    p, y = _random_data(rng, n=200)
    ref = expected_calibration_error(p, y)
    assert expected_calibration_error(p.tolist(), y.tolist()) == pytest.approx(ref, abs=1e-15)
    assert expected_calibration_error(
        torch.as_tensor(p), torch.as_tensor(y).bool()
    ) == pytest.approx(ref, abs=1e-15)
    assert expected_calibration_error(torch.as_tensor(p, dtype=torch.float32), y) == pytest.approx(
        ref, abs=1e-6
    )


def test_reliability_curve_contents(rng):
    p, y = _random_data(rng, n=300)
    c = reliability_curve(p, y, bins=5)
    assert c.bin_edges.shape == (6,) and c.counts.sum() == 300
    for k in range(5):
        lo, hi = k / 5, (k + 1) / 5
        m = (p >= lo) & ((p < hi) if k < 4 else (p <= hi))
        assert c.counts[k] == m.sum()
        if m.any():
            assert c.confidence[k] == pytest.approx(p[m].mean(), abs=1e-12)
            assert c.accuracy[k] == pytest.approx(y[m].mean(), abs=1e-12)
    empty = reliability_curve([0.05, 0.07], [1, 0], bins=5)
    assert np.isnan(empty.confidence[3]) and empty.gaps[3] == 0
    assert set(c.to_dict()) == {"bin_edges", "counts", "confidence", "accuracy"}


def test_bad_input_names_the_argument():
    ok = [0.2, 0.7]
    with pytest.raises(ValueError, match="probs"):
        expected_calibration_error([0.2, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="probs"):
        expected_calibration_error([0.2, 1.2], [0, 1])
    with pytest.raises(ValueError, match="probs"):
        rms_calibration_error([-0.1, 0.5], [0, 1])
    with pytest.raises(ValueError, match="outcomes"):
        expected_calibration_error(ok, [0, float("nan")])
    with pytest.raises(ValueError, match="outcomes"):
        max_calibration_error(ok, [0, 2])
    with pytest.raises(ValueError, match="outcomes"):
        expected_calibration_error(ok, [0, 1, 1])
    with pytest.raises(ValueError, match="probs"):
        expected_calibration_error([], [])
    with pytest.raises(ValueError, match="probs"):
        brier_score([], [])
    with pytest.raises(ValueError, match="bins"):
        expected_calibration_error(ok, [0, 1], bins=0)
    with pytest.raises(ValueError, match="bins"):
        expected_calibration_error(ok, [0, 1], bins=True)
    # a [B, C] softmax is not a list of top-label forecasts: refused, not flattened
    with pytest.raises(ValueError, match=r"probs: expected shape \[B\], got \[2, 2\]"):
        expected_calibration_error([[0.9, 0.1], [0.2, 0.8]], [1, 0, 0, 1])
    assert expected_calibration_error(ok, [0, 1], bins=np.int64(15)) == pytest.approx(0.25)


@pytest.mark.parametrize("bins", [10, 15, 20])
def test_a_forecast_on_a_bin_edge_is_in_the_bin_the_reported_edges_give(bins):
    probs = np.arange(bins + 1) / bins  # every edge, as a user would write it
    curve = reliability_curve(probs, np.zeros_like(probs), bins)
    expected = np.zeros(bins)
    for p in probs:  # brute force: the bin whose reported [left, right) holds p (1 in the last)
        k = next(k for k in range(bins) if p < curve.bin_edges[k + 1] or k == bins - 1)
        assert curve.bin_edges[k] <= p
        expected[k] += 1
    np.testing.assert_array_equal(curve.counts, expected)
    # the reviewer's case: 0.3 is below the fourth bin's left edge 0.30000000000000004
    assert expected_calibration_error([0.3, 0.25], [1, 0], 10) == pytest.approx(0.225)


def test_reliability_diagram_returns_a_figure(rng, tmp_path):
    import matplotlib.pyplot as plt

    p, y = _random_data(rng, n=400)
    curves = {"model": reliability_curve(p, y), "sparse": reliability_curve([0.1, 0.9], [0, 1])}
    fig = reliability_diagram(curves, title="test")
    assert isinstance(fig, matplotlib.figure.Figure)
    fig.savefig(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0
    plt.close(fig)


def test_pairwise_metrics_see_miscalibration_near_one_half():
    """Forecasts of 0.52 for labels whose true confidence is 0.9: read in both orders with an
    odd bin count, p and 1 - p would share the central bin and cancel to ECE 0; the even
    PAIRWISE_BINS keeps them apart and reports the gap of 0.38."""
    from smoothalign.calibration import PAIRWISE_BINS, true_preference_metrics

    assert PAIRWISE_BINS % 2 == 0
    margins = np.full(50, np.log(0.52 / 0.48))
    q = np.full(50, 0.9)
    m = true_preference_metrics(margins, q)
    assert m["ece_true"] == pytest.approx(0.38, abs=1e-9)
    assert m["rms_true"] == pytest.approx(0.38, abs=1e-9)


def test_a_forecast_of_exactly_one_is_in_the_last_bin():
    """``[(K−1)/K, 1]`` holds 1.0 (torchmetrics gives it a bin of its own: documented)."""
    from smoothalign.calibration.metrics import calibration_summary

    s = calibration_summary([0.95, 1.0], [1.0, 0.0], 15)
    # one bin, [14/15, 1]: accuracy ½ against mean confidence 0.975
    assert s["ece"] == pytest.approx(0.475, abs=1e-12)
    assert s["mce"] == pytest.approx(0.475, abs=1e-12)
