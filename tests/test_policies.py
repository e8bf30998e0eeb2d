"""Smoothing policies selectable by name (SPEC §2 ``cals``, §3, §4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smoothalign.smoothing import (
    POLICY_NAMES,
    CALSCalibrator,
    CALSSmoothing,
    ConstantSmoothing,
    OracleSmoothing,
    SmoothingPolicy,
    forecasts_from_margins,
    make_policy,
)
from smoothalign.smoothing.policies import TIE_TOLERANCE


def _h(rng, n=32, dtype=torch.float64):
    return torch.as_tensor(rng.normal(0, 2, n), dtype=dtype)


def test_names_build_the_right_policies():
    assert type(make_policy("none")) is SmoothingPolicy
    assert isinstance(make_policy("constant:0.1"), ConstantSmoothing)
    for metric in ("l0", "l2"):
        cals = make_policy(f"cals-{metric}")
        assert isinstance(cals, CALSSmoothing) and cals.metric == metric
        assert isinstance(cals.calibrator, CALSCalibrator)
        oracle = make_policy(f"oracle-{metric}")
        assert isinstance(oracle, OracleSmoothing) and oracle.metric == metric
        assert oracle.needs_confidence
    assert make_policy(" cals-l2 ").name == "cals-l2"
    assert set(POLICY_NAMES) >= {"none", "cals-l0", "cals-l2", "oracle-l0", "oracle-l2"}


def test_none_and_constant(rng):
    h = _h(rng)
    assert torch.equal(make_policy("none").step(h), torch.zeros_like(h))
    a = make_policy("constant:0.15").step(h)
    assert torch.equal(a, torch.full_like(h, 0.15))
    assert torch.equal(make_policy("constant:0").step(h), torch.zeros_like(h))
    assert torch.equal(make_policy("constant:0.5").step(h), torch.full_like(h, 0.5))


@pytest.mark.parametrize("spec", ["constant:0.6", "constant:-0.1", "constant:nan"])
def test_constant_out_of_range(spec):
    """Named as the option that set it (``smoothing``, which the CLI shows as its flag),
    not as ``alpha``, which no option of a command is called."""
    with pytest.raises(ValueError, match=rf"^smoothing: '{spec}': the constant α must lie in"):
        make_policy(spec)


def test_constant_out_of_range_is_quoted_as_given():
    """The value in the message is the one typed, not its float32 rounding (0.69999999)."""
    with pytest.raises(ValueError, match=r"got 0\.7$"):
        make_policy("constant:0.7")


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "dpo",
        "cals",
        "cals-l1",
        "cals-",
        "oracle",
        "oracle-l3",
        "constant:",
        "constant:x",
        "CALS-L2",
    ],
)
def test_unknown_names_rejected(spec):
    with pytest.raises(ValueError, match="smoothing"):
        make_policy(spec)


def test_calibrator_options_only_for_cals():
    pol = make_policy(
        "cals-l0", bins=10, momentum=0.5, init_confidence=0.8, prior_strength=3.0, warmup_steps=2
    )
    cal = pol.calibrator
    assert (cal.bins, cal.momentum, cal.init_confidence, cal.prior_strength, cal.warmup_steps) == (
        10,
        0.5,
        0.8,
        3.0,
        2,
    )
    for spec in ("none", "constant:0.1", "oracle-l2"):
        with pytest.raises(ValueError, match="smoothing.*init_confidence"):
            make_policy(spec, init_confidence=0.8)
    with pytest.raises(ValueError, match="smoothing.*temperature"):
        make_policy("cals-l2", temperature=1.0)
    with pytest.raises(ValueError, match="bins"):
        make_policy("cals-l2", bins=7)


@pytest.mark.parametrize("metric", ["l0", "l2"])
def test_oracle_uses_true_confidence(rng, metric):
    h = _h(rng)
    q = rng.uniform(0, 1, h.numel())
    expected = np.minimum(q, 1 - q) if metric == "l0" else 2 * q * (1 - q)
    pol = make_policy(f"oracle-{metric}")
    np.testing.assert_allclose(pol.step(h, torch.as_tensor(q)).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(pol.step(h, q).numpy(), expected, rtol=1e-12)  # NumPy too
    with pytest.raises(ValueError, match="confidence"):
        pol.step(h)
    with pytest.raises(ValueError, match="confidence"):
        pol.alpha(h, torch.full((h.numel() + 1,), 0.7))
    with pytest.raises(ValueError, match="confidence"):
        pol.alpha(h, torch.full_like(h, 1.2))
    with pytest.raises(ValueError, match="confidence"):
        pol.alpha(h, torch.full_like(h, float("nan")))


@pytest.mark.parametrize("metric", ["l0", "l2"])
def test_cals_step_returns_alpha_before_update(rng, metric):
    pol = make_policy(f"cals-{metric}", init_confidence=0.9, prior_strength=2.0, momentum=0.5)
    ref = CALSCalibrator(init_confidence=0.9, prior_strength=2.0, momentum=0.5)
    for _ in range(4):
        h = _h(rng) + 1.0
        p = torch.sigmoid(h)
        expected = ref.alpha(p, metric)  # from the state before this batch ...
        a = pol.step(h)
        ref.update(p)  # ... which is folded in afterwards
        torch.testing.assert_close(a, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(pol.alpha(h), ref.alpha(p, metric), rtol=1e-12, atol=1e-12)
    assert torch.equal(pol.calibrator.wins, ref.wins)
    assert pol.calibrator.step == 4


def test_cals_first_step_with_full_confidence_is_plain_dpo(rng):
    pol = make_policy("cals-l2")  # c₀ = 1
    h = _h(rng, n=256)
    assert torch.equal(pol.step(h), torch.zeros_like(h))
    assert pol.calibrator.wins.sum() > 0  # but the batch was folded in


@pytest.mark.parametrize(
    "spec", ["none", "constant:0.2", "cals-l0", "cals-l2", "oracle-l0", "oracle-l2"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_alpha_is_detached_and_matches_margins(rng, spec, dtype):
    pol = make_policy(spec)
    h = _h(rng, dtype=dtype).requires_grad_(True)
    q = torch.full(h.shape, 0.7, dtype=torch.float64, requires_grad=True)
    a = pol.step(h, q if spec.startswith("oracle") else None)
    assert a.dtype == dtype and a.device == h.device and a.shape == h.shape
    assert not a.requires_grad and a.grad_fn is None
    assert a.min() >= 0 and a.max() <= 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("spec", ["none", "constant:0.2", "cals-l2", "oracle-l0"])
def test_alpha_on_cuda_margins(rng, spec):
    h = _h(rng).cuda()
    a = make_policy(spec).step(h, torch.full_like(h, 0.8) if spec.startswith("oracle") else None)
    assert a.device == h.device and a.dtype == h.dtype


def test_margins_are_validated(rng):
    for spec in ("none", "constant:0.1", "cals-l2"):
        pol = make_policy(spec)
        with pytest.raises(ValueError, match="margins"):
            pol.step(torch.tensor([0.0, float("nan")]))
        with pytest.raises(ValueError, match="margins"):
            pol.step(torch.zeros(2, 3))


def test_forecasts_from_margins_only_ties_are_half():
    # float64 keeps small but real margins off 1/2; |h| < 1e-5 is rounding noise, a tie
    h = torch.tensor([0.0, 1e-4, -1e-4, 3.0, 1e-7, -1e-7], dtype=torch.float32)
    p = forecasts_from_margins(h)
    assert p.dtype == torch.float64
    assert p[0] == 0.5 and p[1] > 0.5 and p[2] < 0.5
    assert p[4] == 0.5 and p[5] == 0.5
    assert torch.allclose(p[3], torch.sigmoid(torch.tensor(3.0, dtype=torch.float64)))
    # the tolerance itself is not a tie ("below" it is): |h| = TIE_TOLERANCE keeps σ(h)
    edge = torch.tensor([TIE_TOLERANCE, -TIE_TOLERANCE], dtype=torch.float64)
    expected = [1 / (1 + math.exp(-TIE_TOLERANCE)), 1 / (1 + math.exp(TIE_TOLERANCE))]
    assert forecasts_from_margins(edge).tolist() == pytest.approx(expected, rel=1e-15, abs=0)
    assert forecasts_from_margins(edge)[0] > 0.5 > forecasts_from_margins(edge)[1]
    # forecasts are bookkeeping: no graph back to margins that carry one
    assert not forecasts_from_margins(torch.ones(3, requires_grad=True)).requires_grad


def test_policy_state_round_trip(rng):
    pol = make_policy("cals-l2", init_confidence=0.8)
    for _ in range(3):
        pol.step(_h(rng))
    state = pol.state_dict()
    fresh = make_policy("cals-l2")
    fresh.load_state_dict(state)
    h = _h(rng)
    assert torch.equal(fresh.alpha(h), pol.alpha(h))
    with pytest.raises(ValueError, match="state"):
        make_policy("cals-l0").load_state_dict(state)
    with pytest.raises(ValueError, match="state"):
        make_policy("cals-l2").load_state_dict({"name": "cals-l2"})
    # a constant α is compared at full precision: 0.1234567 is not 0.1234568
    with pytest.raises(ValueError, match="state"):
        make_policy("constant:0.1234568").load_state_dict(
            make_policy("constant:0.1234567").state_dict()
        )
    none = make_policy("none")
    none.load_state_dict(none.state_dict())
    with pytest.raises(ValueError, match="state"):
        none.load_state_dict(state)


def test_rounding_noise_around_zero_margin_counts_as_a_tie():
    """|h| < TIE_TOLERANCE (rounding noise of a policy equal to its reference) is a tie:
    CALS does not count it, so it cannot pull the bins beside 1/2 toward 1/2."""
    from smoothalign.smoothing.policies import TIE_TOLERANCE

    policy = make_policy("cals-l2")
    noise = torch.tensor([3e-7, -8e-7, 0.0, TIE_TOLERANCE / 2], dtype=torch.float64)
    policy.update(noise)
    assert policy.calibrator.wins.sum() == 0 and policy.calibrator.losses.sum() == 0
    policy.update(torch.tensor([0.3], dtype=torch.float64))
    assert policy.calibrator.wins.sum() == 1 and policy.calibrator.losses.sum() == 1
