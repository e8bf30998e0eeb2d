"""SPEC §2: pairwise losses against float64 hand formulas, finite differences and Monte Carlo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import np_log_sigmoid, np_sigmoid
from smoothalign.losses import LOSSES, chosen_nll_term, get_loss, pairwise_loss


def _margins(rng, n=64) -> np.ndarray:
    h = rng.uniform(-8, 8, n)
    return np.concatenate([h, [-40.0, -1e-3, 0.0, 1e-3, 40.0]])


# ----------------------------------------------------------------- hand formulas (SPEC §2)
def ref_sigmoid(h, a):
    return -(1 - a) * np_log_sigmoid(h) - a * np_log_sigmoid(-h)


def ref_robust(h, eps):
    return ((1 - eps) * -np_log_sigmoid(h) - eps * -np_log_sigmoid(-h)) / (1 - 2 * eps)


def ref_ipo(h, beta):
    return (h / beta - 1 / (2 * beta)) ** 2


def ref_hinge(h):
    return np.maximum(0.0, 1 - h)


def test_registry_names():
    assert set(LOSSES) == {"sigmoid", "cals", "robust", "ipo", "hinge"}
    for name in LOSSES:
        assert get_loss(name) is LOSSES[name]


@pytest.mark.parametrize("name", ["sigmoid", "cals"])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.25, 0.5, "per-pair"])
def test_smoothed_sigmoid_matches_hand_formula(rng, name, alpha):
    h = _margins(rng)
    a = rng.uniform(0, 0.5, h.shape) if alpha == "per-pair" else alpha
    a_arg = torch.as_tensor(a) if alpha == "per-pair" else a
    out = pairwise_loss(name, torch.as_tensor(h), a_arg)
    assert out.dtype == torch.float64 and out.shape == h.shape
    np.testing.assert_allclose(out.numpy(), ref_sigmoid(h, a), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3, 0.45])
def test_robust_matches_hand_formula(rng, eps):
    h = _margins(rng)
    out = pairwise_loss("robust", torch.as_tensor(h), flip_rate=eps)
    np.testing.assert_allclose(out.numpy(), ref_robust(h, eps), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0])
def test_ipo_matches_hand_formula(rng, beta):
    h = _margins(rng)
    out = pairwise_loss("ipo", torch.as_tensor(h), beta=beta)
    np.testing.assert_allclose(out.numpy(), ref_ipo(h, beta), rtol=1e-12, atol=1e-12)


def test_hinge_matches_hand_formula(rng):
    h = _margins(rng)
    out = pairwise_loss("hinge", torch.as_tensor(h))
    np.testing.assert_allclose(out.numpy(), ref_hinge(h), rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    ("name", "alpha", "options"),
    [
        ("sigmoid", 0.0, {}),
        ("sigmoid", 0.3, {}),
        ("cals", "per-pair", {}),
        ("robust", 0.0, {"flip_rate": 0.2}),
        ("ipo", 0.0, {"beta": 0.1}),
        ("hinge", 0.0, {}),
    ],
)
def test_autograd_matches_finite_differences(rng, name, alpha, options):
    h = torch.as_tensor(rng.uniform(-6, 6, 12))
    if name == "hinge":  # keep clear of the kink at h = 1
        h = torch.where((h - 1).abs() < 0.1, h + 0.5, h)
    h.requires_grad_(True)
    a = torch.as_tensor(rng.uniform(0, 0.5, 12)) if alpha == "per-pair" else alpha
    assert torch.autograd.gradcheck(
        lambda x: pairwise_loss(name, x, a, **options), (h,), eps=1e-6, atol=1e-7
    )


def test_smoothed_sigmoid_gradient_is_sigmoid_minus_target(rng):
    h = torch.as_tensor(rng.uniform(-10, 10, 50), dtype=torch.float64).requires_grad_(True)
    a = torch.as_tensor(rng.uniform(0, 0.5, 50))
    pairwise_loss("sigmoid", h, a).sum().backward()
    expected = np_sigmoid(h.detach().numpy()) - (1 - a.numpy())  # g_α(1) = σ(h) − (1 − α)
    np.testing.assert_allclose(h.grad.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_cdpo_with_zero_alpha_is_exactly_dpo(rng):
    h = torch.as_tensor(_margins(rng))
    dpo = -F.logsigmoid(h)  # DPO: −log σ(h)
    for name in ("sigmoid", "cals"):
        assert torch.equal(pairwise_loss(name, h, 0.0), dpo)
        assert torch.equal(pairwise_loss(name, h, torch.zeros_like(h)), dpo)
    assert torch.equal(pairwise_loss("robust", h, flip_rate=0.0), dpo)
    h32 = h.float()
    assert torch.equal(pairwise_loss("sigmoid", h32), -F.logsigmoid(h32))


@pytest.mark.parametrize("eps", [0.1, 0.25, 0.4])
def test_robust_is_unbiased_in_expectation(rng, eps):
    """Flip (prob ε) ⇒ h → −h; E[rDPO] equals the clean DPO loss exactly."""
    h = torch.as_tensor(_margins(rng))
    clean = -np_log_sigmoid(h.numpy())
    expected = (1 - eps) * pairwise_loss("robust", h, flip_rate=eps) + eps * pairwise_loss(
        "robust", -h, flip_rate=eps
    )
    np.testing.assert_allclose(expected.numpy(), clean, rtol=1e-10, atol=1e-10)
    # ... which plain DPO under the same noise is not (it is biased upward by ε·h)
    biased = (1 - eps) * -np_log_sigmoid(h.numpy()) + eps * -np_log_sigmoid(-h.numpy())
    assert np.abs(biased - clean).max() > 1.0


def test_robust_is_unbiased_by_monte_carlo(rng):
    eps, n = 0.2, 200_000
    h = np.array([-3.0, -0.5, 0.0, 0.7, 2.0, 5.0])
    flips = rng.random((n, h.size)) < eps
    noisy = np.where(flips, -h, h)
    losses = pairwise_loss("robust", torch.as_tensor(noisy.reshape(-1)), flip_rate=eps)
    losses = losses.numpy().reshape(n, h.size)
    mean, sem = losses.mean(0), losses.std(0) / np.sqrt(n)
    clean = -np_log_sigmoid(h)
    assert np.all(np.abs(mean - clean) < 5 * sem + 1e-9), (mean, clean, sem)


def test_robust_can_be_negative():
    out = pairwise_loss("robust", torch.tensor([6.0], dtype=torch.float64), flip_rate=0.4)
    assert float(out) < 0
    assert float(out) == pytest.approx(float(ref_robust(np.array([6.0]), 0.4)[0]))


def test_alpha_float_equals_tensor_and_numpy_inputs_work(rng):
    h = rng.normal(0, 3, 20)
    by_float = pairwise_loss("sigmoid", torch.as_tensor(h), 0.2)
    by_tensor = pairwise_loss(
        "sigmoid", torch.as_tensor(h), torch.full((20,), 0.2, dtype=torch.float64)
    )
    by_numpy = pairwise_loss("sigmoid", h, np.full(20, 0.2))
    by_list = pairwise_loss("sigmoid", h.tolist(), 0.2)
    for out in (by_tensor, by_numpy, by_list):
        assert isinstance(out, torch.Tensor)
        torch.testing.assert_close(out, by_float, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(by_numpy.numpy(), ref_sigmoid(h, 0.2), rtol=1e-12)


def test_dtype_follows_margins_and_alpha_is_never_differentiated(rng):
    h = torch.as_tensor(rng.normal(0, 2, 8), dtype=torch.float32).requires_grad_(True)
    a = torch.full((8,), 0.1, dtype=torch.float64, requires_grad=True)
    out = pairwise_loss("cals", h, a)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert h.grad is not None and a.grad is None


def test_chosen_nll_term():
    logps = torch.tensor([-12.0, -3.5, -40.0], dtype=torch.float64)
    lengths = torch.tensor([4, 7, 10])
    out = chosen_nll_term(logps, lengths, 0.5)
    np.testing.assert_allclose(out.numpy(), [0.5 * 12 / 4, 0.5 * 3.5 / 7, 0.5 * 40 / 10])
    assert torch.equal(chosen_nll_term(logps, lengths, 0.0), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="chosen_lengths"):
        chosen_nll_term(logps, torch.tensor([4, 7]), 0.5)
    with pytest.raises(ValueError, match="chosen_lengths"):
        chosen_nll_term(logps, torch.tensor([4, 0, 3]), 0.5)
    with pytest.raises(ValueError, match="weight"):
        chosen_nll_term(logps, lengths, -1.0)
    with pytest.raises(ValueError, match="weight"):
        chosen_nll_term(logps, lengths, float("nan"))
    with pytest.raises(ValueError, match="chosen_logps"):
        chosen_nll_term(logps.reshape(3, 1), lengths, 0.5)
    with pytest.raises(ValueError, match="chosen_logps"):
        chosen_nll_term(torch.tensor([-1.0, float("nan"), -2.0]), lengths, 0.5)


# ----------------------------------------------------------------------------- bad input
H = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)


@pytest.mark.parametrize("alpha", [-0.1, 0.51, 1.0, float("nan"), float("inf")])
def test_alpha_outside_range_rejected(alpha):
    with pytest.raises(ValueError, match="alpha"):
        pairwise_loss("sigmoid", H, alpha)
    with pytest.raises(ValueError, match="alpha"):
        pairwise_loss("cals", H, torch.tensor([0.1, alpha, 0.2]))


@pytest.mark.parametrize("eps", [-0.1, 0.5, 0.7, float("nan")])
def test_flip_rate_outside_range_rejected(eps):
    with pytest.raises(ValueError, match="flip_rate"):
        pairwise_loss("robust", H, flip_rate=eps)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("inf"), float("nan"), True, "0.1"])
def test_ipo_beta_outside_range_rejected(beta):
    with pytest.raises(ValueError, match="beta: (must be a finite number > 0|expected a number)"):
        pairwise_loss("ipo", H, beta=beta)
    assert torch.isfinite(pairwise_loss("ipo", H, beta=np.float32(0.1))).all()  # NumPy's too
    assert torch.isfinite(pairwise_loss("ipo", H, beta=torch.tensor(0.1))).all()  # 0-d tensors


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_non_finite_margins_rejected(name, bad):
    opts = {"robust": {"flip_rate": 0.1}, "ipo": {"beta": 0.1}}.get(name, {})
    with pytest.raises(ValueError, match="margins"):
        pairwise_loss(name, torch.tensor([0.0, bad]), **opts)


def test_shape_errors():
    with pytest.raises(ValueError, match="alpha"):
        pairwise_loss("sigmoid", H, torch.full((4,), 0.1))
    with pytest.raises(ValueError, match="alpha"):
        pairwise_loss("sigmoid", H, torch.full((3, 1), 0.1))
    with pytest.raises(ValueError, match="margins"):
        pairwise_loss("sigmoid", H.reshape(1, 3))
    with pytest.raises(ValueError, match="margins"):
        pairwise_loss("sigmoid", torch.tensor(1.0))
    with pytest.raises(ValueError, match="margins"):
        pairwise_loss("sigmoid", "1.0")


def test_unknown_loss_name_rejected():
    with pytest.raises(ValueError, match="loss"):
        pairwise_loss("dpo", H)
    with pytest.raises(ValueError, match="loss"):
        get_loss("Sigmoid")


@pytest.mark.parametrize(
    ("name", "opts"), [("robust", {"flip_rate": 0.1}), ("ipo", {"beta": 0.1}), ("hinge", {})]
)
def test_smoothing_rejected_where_undefined(name, opts):
    with pytest.raises(ValueError, match="alpha"):
        pairwise_loss(name, H, 0.1, **opts)
    with pytest.raises(ValueError, match="alpha"):
        pairwise_loss(name, H, torch.tensor([0.0, 0.0, 0.1]), **opts)
    pairwise_loss(name, H, torch.zeros(3), **opts)  # explicit zero smoothing is fine


def test_unknown_and_missing_options_rejected():
    with pytest.raises(ValueError, match="options.*temperature"):
        pairwise_loss("sigmoid", H, temperature=2.0)
    with pytest.raises(ValueError, match="options.*flip_rate"):
        pairwise_loss("ipo", H, beta=0.1, flip_rate=0.1)
    with pytest.raises(ValueError, match="options.*beta"):
        pairwise_loss("hinge", H, beta=0.1)
    with pytest.raises(ValueError, match="options.*flip_rate"):
        pairwise_loss("robust", H)
    with pytest.raises(ValueError, match="options.*flip_rate"):
        pairwise_loss("robust", H, flip_rate=None)
    with pytest.raises(ValueError, match="options.*beta"):
        pairwise_loss("ipo", H)
    for beta in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            pairwise_loss("ipo", H, beta=beta)
