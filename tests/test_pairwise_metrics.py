"""Pairwise evaluation metrics against float64 hand references written from their docstrings
and docs/architecture.md ("Pairwise calibration is mirrored"), docs/results.md (20 bins, ½
a bin edge; ties count half) and SPEC §5 (equal-width bins ``[j/K, (j+1)/K)``, the last one
closed).

* ``true_preference_metrics`` (calibration/pairwise.py): forecasts ``σ(d)`` against a known
  ``q = P(first wins)``;
* ``preference_metrics`` (calibration/pairwise.py): the DPO evaluation of a chosen-first set
  (``smoothalign dpo`` and ``smoothalign eval preferences``);
* ``reward_metrics`` (reward/trainer.py): the reward-model evaluation against vote shares.

The references below use plain Python floats, one pair at a time; nothing is imported from
the package except the functions under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smoothalign.calibration import (
    pairwise_reliability_curve,
    preference_metrics,
    true_preference_metrics,
)
from smoothalign.reward.config import RewardConfig
from smoothalign.reward.trainer import reward_metrics

DOC_BINS = 20  # docs/results.md: "each pair in both orders over 20 bins (½ a bin edge)"
TOL = 1e-12


# ----------------------------------------------------------------------------- references


def _log_sigmoid(x: float) -> float:
    """``log σ(x)`` for any float ``x`` (``−log(1 + e^{−x})``, split by sign)."""
    if x >= 0:
        return -math.log1p(math.exp(-x))
    return x - math.log1p(math.exp(x))


def _sigmoid(x: float) -> float:
    return math.exp(_log_sigmoid(x))


def _binned(forecasts, outcomes, bins):
    """ECE, RMS, MCE over equal-width bins ``[j/K, (j+1)/K)`` (last bin closed)."""
    members = [[] for _ in range(bins)]
    for p, y in zip(forecasts, outcomes, strict=True):
        j = next((j for j in range(bins) if p < (j + 1) / bins), bins - 1)
        members[j].append((p, y))
    n = len(forecasts)
    ece = sq = mce = 0.0
    for m in members:
        if m:
            gap = abs(sum(y for _, y in m) / len(m) - sum(p for p, _ in m) / len(m))
            ece += len(m) / n * gap
            sq += len(m) / n * gap**2
            mce = max(mce, gap)
    return ece, math.sqrt(sq), mce


def _mirrored(forecasts, outcomes):
    """Every pair read in both orders: ``(p, y)`` and ``(1 − p, 1 − y)``."""
    return [*forecasts, *(1 - p for p in forecasts)], [*outcomes, *(1 - y for y in outcomes)]


def _xlogy(x: float, y: float) -> float:
    return 0.0 if x == 0 else x * math.log(y)


def _bernoulli_kl(q: float, d: float) -> float:
    """``KL([q, 1 − q] ‖ [σ(d), σ(−d)])`` with ``0 log 0 = 0``."""
    return (
        _xlogy(q, q)
        + _xlogy(1 - q, 1 - q)
        - (q * _log_sigmoid(d) if q else 0.0)
        - ((1 - q) * _log_sigmoid(-d) if q != 1 else 0.0)
    )


def _sign_score(d: float, truth: float) -> float:
    """1 if the sign of ``d`` picks the side that ``truth`` (a probability) favours, ½ on a
    tie ``d = 0``, else 0; ``truth`` must not be ½."""
    if d == 0:
        return 0.5
    return 1.0 if (d > 0) == (truth > 0.5) else 0.0


def hand_true_preference(margins, q, bins=DOC_BINS) -> dict[str, float]:
    margins, q = [float(x) for x in margins], [float(x) for x in q]
    decided = [(d, t) for d, t in zip(margins, q, strict=True) if t != 0.5]
    s = [_sigmoid(d) for d in margins]
    ece, rms, _ = _binned(*_mirrored(s, q), bins)
    return {
        "accuracy_true": (
            sum(_sign_score(d, t) for d, t in decided) / len(decided) if decided else math.nan
        ),
        "ece_true": ece,
        "rms_true": rms,
        # both readings have the same squared error
        "brier_true": sum((a - b) ** 2 for a, b in zip(s, q, strict=True)) / len(s),
        "kl_true": sum(_bernoulli_kl(t, d) for d, t in zip(margins, q, strict=True)) / len(q),
    }


def _assert_matches(got: dict, want: dict, tol=TOL):
    for k, v in want.items():
        if math.isnan(v):
            assert math.isnan(got[k]), k
        else:
            assert got[k] == pytest.approx(v, abs=tol), k


def _margins_and_q(rng, n=400):
    """Non-zero random margins with a few exact ties, and a truth that the forecasts follow
    only loosely (miscalibrated, asymmetric), with some ``q = ½`` and ``q ∈ {0, 1}``."""
    d = rng.normal(0.0, 2.0, n)
    d[rng.choice(n, 25, replace=False)] = 0.0
    q = 1 / (1 + np.exp(-(0.6 * d + 0.8 + rng.normal(0, 1.0, n))))
    q[rng.choice(n, 30, replace=False)] = 0.5
    q[:4] = [0.0, 1.0, 0.0, 1.0]
    q[4:8] = rng.uniform(0.5, 0.6, 4)  # just above ½: the threshold is ½ itself
    q[8:12] = rng.uniform(0.4, 0.5, 4)
    return d, q


# ----------------------------------------------------------------------------- tests


def test_true_preference_metrics_equal_the_hand_reference(rng):
    d, q = _margins_and_q(rng)
    assert (d == 0).sum() >= 10 and (q == 0.5).sum() >= 20  # ties and dropped pairs present
    # a tie on a decided pair exists, so "ties count half" is exercised
    assert ((d == 0) & (q != 0.5)).any()
    want = hand_true_preference(d, q)
    got = true_preference_metrics(d, q)
    assert set(got) == set(want)
    _assert_matches(got, want)
    # the reference is not trivial: the forecasts are miscalibrated and imperfect
    assert want["ece_true"] > 0.05 and 0.55 < want["accuracy_true"] < 0.95
    # and the bins follow the argument (even: an odd count is refused, see below)
    for bins in (8, 10):
        _assert_matches(true_preference_metrics(d, q, bins=bins), hand_true_preference(d, q, bins))


def test_true_preference_metrics_small_hand_example():
    """Three pairs worked by hand: accuracy drops the q = ½ pair and counts the tie half."""
    d = np.array([1.0, 0.0, -2.0])
    q = np.array([0.7, 0.9, 0.5])
    m = true_preference_metrics(d, q)
    assert m["accuracy_true"] == pytest.approx((1.0 + 0.5) / 2, abs=TOL)
    s1, s3 = 1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(2.0))
    kl = (
        0.7 * math.log(0.7 / s1)
        + 0.3 * math.log(0.3 / (1 - s1))
        + 0.9 * math.log(0.9 / 0.5)
        + 0.1 * math.log(0.1 / 0.5)
        + 0.5 * math.log(0.5 / s3)
        + 0.5 * math.log(0.5 / (1 - s3))
    ) / 3
    assert m["kl_true"] == pytest.approx(kl, abs=TOL)
    assert m["brier_true"] == pytest.approx(
        ((s1 - 0.7) ** 2 + 0.4**2 + (s3 - 0.5) ** 2) / 3, abs=TOL
    )
    # every q = ½: no decided pair, accuracy undefined
    assert math.isnan(true_preference_metrics(d, np.full(3, 0.5))["accuracy_true"])


def test_true_preference_kl_is_finite_and_right_for_large_margins():
    d = np.array([60.0, -60.0, 700.0, -700.0])
    q = np.array([0.3, 0.3, 1.0, 0.0])
    got = true_preference_metrics(d, q)["kl_true"]
    # KL(0.3 ‖ σ(±60)) ≈ 0.3 log 0.3 + 0.7 log 0.7 + 60·(0.7 or 0.3); q ∈ {0,1} agreeing: ≈ 0
    h = 0.3 * math.log(0.3) + 0.7 * math.log(0.7)
    assert math.isfinite(got)
    assert got == pytest.approx((h + 0.7 * 60 + h + 0.3 * 60) / 4, rel=1e-12)
    # an infinite margin that agrees with a certain truth costs nothing (0·log 0 = 0)
    inf = true_preference_metrics(np.array([math.inf, -math.inf, 2.0]), np.array([1.0, 0, 0.8]))
    kl_2 = 0.8 * math.log(0.8 / _sigmoid(2.0)) + 0.2 * math.log(0.2 / _sigmoid(-2.0))
    assert inf["kl_true"] == pytest.approx(kl_2 / 3, rel=1e-12)


def hand_preference_metrics(h, confidence) -> dict[str, float]:
    """DPO eval of a chosen-first set: accuracy of ``h > 0`` (ties ½), calibration of
    ``(σ(h), 1)`` and ``(1 − σ(h), 0)``; ``*_true`` on the pairs whose confidence is known."""
    h = [float(x) for x in h]
    s = [_sigmoid(x) for x in h]
    probs, labels = _mirrored(s, [1.0] * len(s))
    ece, rms, mce = _binned(probs, labels, DOC_BINS)
    out = {
        "n_pairs": float(len(h)),
        "accuracy": sum(_sign_score(x, 1.0) for x in h) / len(h),
        "margin_mean": sum(h) / len(h),
        "ece": ece,
        "rms": rms,
        "mce": mce,
        "brier": sum((1 - p) ** 2 for p in s) / len(s),
    }
    known = [(x, c) for x, c in zip(h, confidence, strict=True) if not math.isnan(c)]
    if known:  # n_pairs_true: how many pairs the *_true metrics cover
        out["n_pairs_true"] = float(len(known))
        out |= hand_true_preference([x for x, _ in known], [c for _, c in known])
    return out


def test_dpo_preference_metrics_equal_the_hand_reference(rng):
    n = 300
    h = rng.normal(0.4, 1.5, n)
    h[rng.choice(n, 20, replace=False)] = 0.0
    # label confidences of a chosen-first set: mostly > ½, a few ½, some unknown (NaN)
    conf = rng.uniform(0.3, 1.0, n)
    conf[rng.choice(n, 15, replace=False)] = 0.5
    conf[rng.choice(n, 60, replace=False)] = np.nan
    want = hand_preference_metrics(h, conf)
    got = preference_metrics(h, conf)
    assert set(got) == set(want)
    _assert_matches(got, want)
    assert want["ece"] > 0.05 and want["ece_true"] > 0.02  # miscalibrated both ways
    assert got["n_pairs_true"] == n - 60  # the pairs with a known confidence
    # no confidence known: no *_true metrics at all, the rest unchanged
    none_known = preference_metrics(h, np.full(n, np.nan))
    assert set(none_known) == {"n_pairs", "accuracy", "margin_mean", "ece", "rms", "mce", "brier"}
    _assert_matches(none_known, {k: want[k] for k in none_known})


def test_pairwise_reliability_curve_reads_both_orders_against_q_or_the_label():
    """The diagram's curve (``dpo``'s and ``eval preferences``' reliability.png): each pair
    as ``(σ(h), y)`` and ``(1 − σ(h), 1 − y)``, ``y`` its true ``q`` where known, else 1 (the
    chosen response won); per bin the mean forecast, mean outcome and count."""
    h = np.array([2.0, -1.0, 0.0, 0.3, 4.0])
    conf = np.array([0.9, np.nan, 0.5, np.nan, 0.2])
    s = [_sigmoid(x) for x in h]
    forecasts, outcomes = _mirrored(s, [1.0 if math.isnan(c) else c for c in conf])
    curve = pairwise_reliability_curve(h, conf)
    assert len(curve.counts) == DOC_BINS and curve.counts.sum() == 2 * len(h)
    for j in range(DOC_BINS):
        members = [
            (p, y)
            for p, y in zip(forecasts, outcomes, strict=True)
            if next((k for k in range(DOC_BINS) if p < (k + 1) / DOC_BINS), DOC_BINS - 1) == j
        ]
        assert curve.counts[j] == len(members), j
        if members:
            assert curve.confidence[j] == pytest.approx(np.mean([p for p, _ in members]), abs=TOL)
            assert curve.accuracy[j] == pytest.approx(np.mean([y for _, y in members]), abs=TOL)


@pytest.mark.parametrize("bins", [15, 1, 0, -2])
def test_pairwise_metrics_refuse_an_odd_or_too_small_bin_count(bins):
    """PAIRWISE_BINS' docstring: with an odd count the central bin straddles ½, a forecast
    and its mirror share it and cancel (0.01 against q = 0.9 read as ECE 0, not 0.3975)."""
    d, q = np.array([0.01, -0.01]), np.array([0.9, 0.1])
    assert true_preference_metrics(d, q, bins=20)["ece_true"] == pytest.approx(0.3975, abs=1e-6)
    with pytest.raises(ValueError, match="^bins: must be an even integer >= 2"):
        true_preference_metrics(d, q, bins=bins)
    with pytest.raises(ValueError, match="^bins: must be an even integer >= 2"):
        pairwise_reliability_curve(d, q, bins=bins)
    with pytest.raises(ValueError, match="^bins: expected an integer"):
        pairwise_reliability_curve(d, q, bins=20.0)


_H3 = np.array([0.1, 0.2, 0.3])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: preference_metrics(_H3, np.array([0.8])),
            r"^confidence: expected shape \[3\], got \[1\]",
        ),
        (
            lambda: preference_metrics(np.array([0.1, np.nan]), np.full(2, np.nan)),
            "^margins: contains NaN",
        ),
        (
            lambda: preference_metrics(np.zeros((2, 2)), np.full((2, 2), np.nan)),
            r"^margins: expected shape \[B\], got \[2, 2\]",
        ),
        (
            lambda: preference_metrics(np.zeros(4), np.full((2, 2), np.nan)),
            r"^confidence: expected shape \[4\], got \[2, 2\]",
        ),
        (lambda: preference_metrics(np.array([]), np.array([])), "^margins: empty"),
        (
            lambda: preference_metrics(_H3, [0.5, 1.5, np.nan]),
            r"^confidence: must lie in \[0.0, 1.0\].*1.5 at index \[1\]",
        ),
        (lambda: preference_metrics(_H3, [0.5, np.inf, np.nan]), "^confidence: must lie in"),
        (lambda: preference_metrics(["0.1"], [0.5]), "^margins: expected real numbers"),
        (
            lambda: pairwise_reliability_curve(np.array([0.1, 0.2]), None),
            "^confidence: expected a float",
        ),
        (
            lambda: pairwise_reliability_curve(_H3, np.array([0.8])),
            r"^confidence: expected shape \[3\]",
        ),
        (lambda: pairwise_reliability_curve(np.array([]), np.array([])), "^margins: empty"),
        (lambda: pairwise_reliability_curve([np.nan], [0.5]), "^margins: contains NaN"),
        (lambda: true_preference_metrics(_H3, [0.5, 1.2, 0.3]), r"^q: must lie in \[0.0, 1.0\]"),
        (lambda: true_preference_metrics(_H3, [0.5, np.nan, 0.3]), "^q: contains NaN"),
        (lambda: true_preference_metrics(_H3, [0.5]), r"^q: expected shape \[3\], got \[1\]"),
        (lambda: true_preference_metrics([], []), "^margins: empty"),
        (lambda: true_preference_metrics([np.nan], [0.5]), "^margins: contains NaN"),
    ],
)
def test_pairwise_metrics_name_the_bad_argument(call, message):
    """A malformed input is a ValueError naming the argument as the caller passed it
    (``margins``, ``confidence``, ``q``), before NumPy warns or fails on its own terms."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Mean of empty slice" on the way to the refusal
        with pytest.raises(ValueError, match=message):
            call()


def test_pairwise_metrics_take_tensors_and_lists(rng):
    """Tensors (detached, any float dtype, requiring grad or not) and lists give what the
    float64 arrays give; ``confidence`` may hold NaN where unknown."""
    h = rng.normal(0.3, 1.5, 40)
    conf = rng.uniform(0.2, 1.0, 40)
    conf[::5] = np.nan
    want = preference_metrics(h, conf)
    got = preference_metrics(torch.tensor(h, requires_grad=True), torch.tensor(conf))
    _assert_matches(got, want, tol=0)
    _assert_matches(preference_metrics(h.tolist(), conf.tolist()), want, tol=0)
    q = np.nan_to_num(conf, nan=0.5)
    _assert_matches(
        true_preference_metrics(torch.tensor(h, requires_grad=True), torch.tensor(q)),
        true_preference_metrics(h, q),
        tol=0,
    )
    want_curve = pairwise_reliability_curve(h, conf)
    got_curve = pairwise_reliability_curve(torch.tensor(h, requires_grad=True), conf.tolist())
    np.testing.assert_array_equal(got_curve.counts, want_curve.counts)
    np.testing.assert_array_equal(got_curve.accuracy, want_curve.accuracy)
    # a float32 tensor is read in float64, as a float32 array is
    h32 = torch.tensor(h, dtype=torch.float32)
    _assert_matches(preference_metrics(h32, conf), preference_metrics(h32.numpy(), conf), tol=0)


def _rkl(s: float, p: float, floor: float) -> float:
    """``KL([σ, 1 − σ] ‖ t)`` with ``t`` = ``[p, 1 − p]`` floored at ``floor`` and
    renormalised."""
    t1, t2 = max(p, floor), max(1 - p, floor)
    t1, t2 = t1 / (t1 + t2), t2 / (t1 + t2)
    return _xlogy(s, s) - _xlogy(s, t1) + _xlogy(1 - s, 1 - s) - _xlogy(1 - s, t2)


def _jsd(s: float, p: float) -> float:
    m1, m2 = (s + p) / 2, (2 - s - p) / 2

    def kl(a1, a2):
        return _xlogy(a1, a1) - _xlogy(a1, m1) + _xlogy(a2, a2) - _xlogy(a2, m2)

    return 0.5 * kl(p, 1 - p) + 0.5 * kl(s, 1 - s)


def hand_reward_metrics(d, p, confidence=None, *, floor=1e-6, bins=DOC_BINS):
    """Reward-model eval: accuracy of the sign of ``d`` against the majority vote (tied votes
    left out, ``d = 0`` half), ``σ(d)`` against the vote shares in both orders, the mean
    divergences of ``[σ(d), σ(−d)]`` from ``[p, 1 − p]``, and ``*_true`` where known."""
    d, p = [float(x) for x in d], [float(x) for x in p]
    s = [_sigmoid(x) for x in d]
    decided = [(x, v) for x, v in zip(d, p, strict=True) if v != 0.5]
    ece, rms, mce = _binned(*_mirrored(s, p), bins)
    n = len(d)
    out = {
        "n_pairs": float(n),
        "accuracy": (
            sum(_sign_score(x, v) for x, v in decided) / len(decided) if decided else math.nan
        ),
        "n_tied_votes": float(n - len(decided)),  # the pairs accuracy leaves out
        "ece": ece,
        "rms": rms,
        "mce": mce,
        "brier": sum((a - b) ** 2 for a, b in zip(s, p, strict=True)) / n,
        "fkl": sum(_bernoulli_kl(v, x) for x, v in zip(d, p, strict=True)) / n,
        "rkl": sum(_rkl(a, v, floor) for a, v in zip(s, p, strict=True)) / n,
        "jsd": sum(_jsd(a, v) for a, v in zip(s, p, strict=True)) / n,
        "margin_mean": sum(d) / n,
        "margin_abs_mean": sum(abs(x) for x in d) / n,
    }
    if confidence is not None:
        known = [(x, c) for x, c in zip(d, confidence, strict=True) if not math.isnan(c)]
        if known:
            out["n_pairs_true"] = float(len(known))
            out |= hand_true_preference([x for x, _ in known], [c for _, c in known], bins)
    return out


def _reward_inputs(rng, n=400):
    d = rng.normal(0.3, 1.8, n)
    d[rng.choice(n, 20, replace=False)] = 0.0
    # vote shares of 4 or 5 annotators (so some are exactly 0, ½ and 1), either order
    k = rng.choice([4, 5], n)
    p = rng.binomial(k, 1 / (1 + np.exp(-(0.5 * d + 0.5)))) / k
    q = 1 / (1 + np.exp(-(0.7 * d + rng.normal(0, 0.8, n))))
    q[rng.choice(n, 20, replace=False)] = 0.5
    q[rng.choice(n, 80, replace=False)] = np.nan
    return d, p, q


def test_reward_metrics_equal_the_hand_reference(rng):
    d, p, q = _reward_inputs(rng)
    assert {0.0, 0.5, 1.0} <= set(p.tolist()) and (p < 0.5).any()
    want = hand_reward_metrics(d, p, q)
    got = reward_metrics(d, p, q)
    assert set(got) == set(want)
    _assert_matches(got, want)
    assert want["ece"] > 0.02 and want["ece_true"] > 0.02
    # without confidences: no *_true metrics
    plain = reward_metrics(d, p)
    assert set(plain) == set(hand_reward_metrics(d, p))
    _assert_matches(plain, hand_reward_metrics(d, p))


def test_reward_metrics_follow_the_bins_but_not_the_loss_floor(rng):
    """The reported reverse KL floors the vote share at a fixed 1e-6, whatever the rkl
    loss's rkl_floor (a training option): runs with different floors compare."""
    d, p, q = _reward_inputs(rng, n=250)
    cfg = RewardConfig(rkl_floor=1e-2)
    want = hand_reward_metrics(d, p, q, floor=1e-6, bins=8)
    got = reward_metrics(d, p, q, cfg, bins=8)
    _assert_matches(got, want)
    # the floor would matter here (vote shares of 0 and 1): the check is not vacuous
    assert abs(want["rkl"] - hand_reward_metrics(d, p, q, floor=1e-2, bins=8)["rkl"]) > 1e-3


@pytest.mark.parametrize("bins", [15, 1, 0, -2])
@pytest.mark.parametrize("with_confidence", [False, True])
def test_reward_metrics_refuse_an_odd_bin_count_with_or_without_confidence(bins, with_confidence):
    """reward_metrics reads each pair in both orders, as the pairwise metrics do: an odd
    bins puts 0.01 and its mirror in the central bin against p = 0.9 and 0.1, an ECE of 0
    (20 bins: 0.3975). It is refused whether or not a confidence is known (it was refused
    only when true_preference_metrics got some, and accepted silently otherwise)."""
    d, p = np.array([0.01, -0.01]), np.array([0.9, 0.1])
    q = np.array([0.9, 0.1]) if with_confidence else None
    assert reward_metrics(d, p, q, bins=20)["ece"] == pytest.approx(0.3975, abs=1e-6)
    with pytest.raises(ValueError, match="^bins: must be an even integer >= 2"):
        reward_metrics(d, p, q, bins=bins)
    with pytest.raises(ValueError, match="^bins: expected an integer"):
        reward_metrics(d, p, q, bins=20.0)
