"""Reward-model losses from r₁ − r₂ and a soft label, against float64 NumPy references."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from conftest import np_log_sigmoid, np_sigmoid
from smoothalign._warn import SmoothalignWarning
from smoothalign.losses import pairwise_loss
from smoothalign.reward.objective import (
    POSTERIOR_LOSSES,
    REWARD_LOSSES,
    majority_first_margins,
    monitored_divergences,
    pair_logits,
    reward_loss,
)


# ------------------------------------------------------------- float64 NumPy references
def ref_bern_kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KL(Bern(a) ‖ Bern(b)) elementwise, 0·log 0 = 0."""
    out = np.zeros_like(a)
    for i in range(a.size):
        for x, y in ((a[i], b[i]), (1 - a[i], 1 - b[i])):
            if x > 0:
                out[i] += x * math.log(x / y)
    return out


def ref_loss(name: str, d: np.ndarray, p: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    s = np_sigmoid(d)
    if name == "fkl":
        return ref_bern_kl(p, s)
    if name == "rkl":
        t = np.maximum(p, floor)
        u = np.maximum(1 - p, floor)
        return ref_bern_kl(s, t / (t + u))
    if name == "jsd":
        m = 0.5 * (p + s)
        return 0.5 * ref_bern_kl(p, m) + 0.5 * ref_bern_kl(s, m)
    if name == "soft-bce":
        return -(p * np_log_sigmoid(d) + (1 - p) * np_log_sigmoid(-d))
    raise AssertionError(name)


def ref_posterior(p: np.ndarray, d: np.ndarray) -> np.ndarray:
    """SPEC §6 for two classes: r ∝ [p·s/Σs, (1−p)(1−s)/Σ(1−s)], normalised."""
    s = np_sigmoid(d)
    first = p * s / s.sum()
    second = (1 - p) * (1 - s) / (1 - s).sum()
    return first / (first + second)


def _batch(rng, b=12, spread=2.0):
    r1 = rng.normal(0, spread, b)
    r2 = rng.normal(0, spread, b)
    p = rng.uniform(0.02, 0.98, b)
    return r1, r2, p


def _t(x, grad=False):
    return torch.tensor(x, dtype=torch.float64, requires_grad=grad)


# ------------------------------------------------------------- the two-class model
def test_pair_logits_softmax_is_bradley_terry(rng):
    d = rng.normal(0, 5, 50)
    probs = torch.softmax(pair_logits(_t(d)), -1).numpy()
    np.testing.assert_allclose(probs[:, 0], np_sigmoid(d), rtol=1e-12)
    np.testing.assert_allclose(probs[:, 1], np_sigmoid(-d), rtol=1e-12)


@pytest.mark.parametrize("name", ["soft-bce", "fkl", "rkl", "jsd"])
def test_losses_match_float64_references(rng, name):
    r1, r2, p = _batch(rng)
    terms = reward_loss(name, _t(r1), _t(r2), _t(p))
    ref = ref_loss(name, r1 - r2, p)
    np.testing.assert_allclose(terms.losses.detach().numpy(), ref, rtol=1e-9, atol=1e-12)
    assert float(terms.loss) == pytest.approx(ref.mean(), rel=1e-9)


def test_rkl_against_unanimous_votes_uses_the_floor(rng):
    r1, r2, _ = _batch(rng, b=6)
    p = np.array([0.0, 1.0, 1.0, 0.0, 0.5, 1.0])
    for floor in (1e-6, 1e-3):
        got = reward_loss("rkl", _t(r1), _t(r2), _t(p), rkl_floor=floor).losses.detach().numpy()
        np.testing.assert_allclose(got, ref_loss("rkl", r1 - r2, p, floor), rtol=1e-9)
    # 0 is refused as `reward --rkl-floor 0` is: against a unanimous vote the loss is ∞
    for floor in (0.0, 0.5, float("nan")):
        with pytest.raises(ValueError, match=r"rkl_floor: must lie in \(0, 0.5\)"):
            reward_loss("rkl", _t(r1), _t(r2), _t(p), rkl_floor=floor)


def test_soft_bce_is_forward_kl_plus_entropy_with_the_same_gradient(rng):
    r1, r2, p = _batch(rng)
    grads = {}
    for name in ("soft-bce", "fkl"):
        a, b = _t(r1, True), _t(r2, True)
        terms = reward_loss(name, a, b, _t(p))
        terms.loss.backward()
        grads[name] = (a.grad.numpy(), b.grad.numpy(), terms.losses.detach().numpy())
    entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    np.testing.assert_allclose(grads["soft-bce"][2], grads["fkl"][2] + entropy, rtol=1e-10)
    # ∂/∂r₁ of the mean loss is (σ(d) − p)/B; ∂/∂r₂ its negative
    expected = (np_sigmoid(r1 - r2) - p) / len(p)
    for name in grads:
        np.testing.assert_allclose(grads[name][0], expected, rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(grads[name][1], -expected, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("name", ["soft-bce", "fkl", "rkl", "jsd"])
def test_each_loss_is_minimised_at_the_target(name):
    """One pair: the loss over a fine grid of d is smallest where σ(d) = p."""
    for p in (0.2, 0.5, 0.73, 0.95):
        d = np.linspace(-6, 6, 24001)
        zeros = np.zeros_like(d)
        losses = reward_loss(name, _t(d), _t(zeros), _t(np.full_like(d, p))).losses
        best = d[int(torch.argmin(losses))]
        assert np_sigmoid(np.array([best]))[0] == pytest.approx(p, abs=1e-3)


# ------------------------------------------------------------- Bradley–Terry on the majority
def test_bt_is_the_sigmoid_loss_on_the_majority_first_margin(rng):
    r1, r2, _ = _batch(rng)
    p = np.array([0.8, 0.2, 1.0, 0.0, 0.6, 0.4, 0.9, 0.1, 0.7, 0.3, 0.55, 0.45])
    alpha = rng.uniform(0, 0.5, p.size)
    terms = reward_loss("bt", _t(r1), _t(r2), _t(p), alpha=_t(alpha))
    h = majority_first_margins(_t(r1 - r2), _t(p))
    np.testing.assert_allclose(h.numpy(), np.where(p > 0.5, r1 - r2, r2 - r1))
    expected = pairwise_loss("sigmoid", h, _t(alpha))
    np.testing.assert_allclose(terms.losses.detach().numpy(), expected.numpy(), rtol=1e-12)


def test_bt_leaves_tied_votes_out_of_the_mean(rng):
    r1, r2, _ = _batch(rng, b=4)
    p = np.array([0.5, 0.8, 0.5, 0.1])
    a, b = _t(r1, True), _t(r2, True)
    terms = reward_loss("bt", a, b, _t(p))
    np.testing.assert_array_equal(terms.weights.numpy(), [0, 1, 0, 1])
    assert float(terms.loss.detach()) == pytest.approx(
        float(terms.losses[[1, 3]].detach().mean()), rel=1e-12
    )
    terms.loss.backward()
    assert a.grad[0] == 0 and a.grad[2] == 0 and a.grad[1] != 0
    # a batch of ties only: zero loss and zero gradient, not NaN
    all_ties = reward_loss("bt", _t(r1, True), _t(r2), _t(np.full(4, 0.5)))
    assert float(all_ties.loss.detach()) == 0.0


# ------------------------------------------------------------- posterior target (SPEC §6)
@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd"])
def test_posterior_target_matches_the_reference_and_stops_gradients(rng, name):
    r1, r2, p = _batch(rng)
    d = r1 - r2
    a, b = _t(r1, True), _t(r2, True)
    terms = reward_loss(name, a, b, _t(p), posterior=True)
    post = ref_posterior(p, d)
    np.testing.assert_allclose(terms.target.numpy(), post, rtol=1e-10)
    np.testing.assert_allclose(terms.losses.detach().numpy(), ref_loss(name, d, post), rtol=1e-8)
    # with the target detached, the gradient is the plain loss's gradient at that target
    terms.loss.backward()
    plain = _t(r1, True)
    ref_terms = [
        reward_loss(name, plain[i : i + 1], _t(r2[i : i + 1]), _t(post[i : i + 1]))
        for i in range(len(p))
    ]
    sum(t.loss for t in ref_terms).backward()
    np.testing.assert_allclose(a.grad.numpy(), plain.grad.numpy() / len(p), rtol=1e-8)
    # and gradients through the target change it
    a2 = _t(r1, True)
    reward_loss(name, a2, _t(r2), _t(p), posterior=True, detach_target=False).loss.backward()
    assert not np.allclose(a2.grad.numpy(), a.grad.numpy())


def test_posterior_of_a_constant_model_is_the_prior(rng):
    p = rng.uniform(0.05, 0.95, 8)
    r1 = np.full(8, 0.7)
    r2 = np.zeros(8)
    for name in ("fkl", "rkl", "jsd"):
        post = reward_loss(name, _t(r1), _t(r2), _t(p), posterior=True)
        plain = reward_loss(name, _t(r1), _t(r2), _t(p))
        np.testing.assert_allclose(post.target.numpy(), p, rtol=1e-12)
        np.testing.assert_allclose(post.losses.numpy(), plain.losses.detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd"])
def test_a_one_pair_posterior_batch_is_warned_once(name):
    """A one-pair batch's posterior is its prior: said once per call, not once for the loss
    and again for the target it reports (``RewardTerms.target``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        terms = reward_loss(name, _t([0.3]), _t([-0.2]), _t([0.8]), posterior=True)
    said = [w for w in caught if issubclass(w.category, SmoothalignWarning)]
    assert len(said) == 1, [str(w.message) for w in said]
    assert "batch of one row" in str(said[0].message)
    assert said[0].filename.endswith("objective.py")  # where reward_loss asked for it
    np.testing.assert_allclose(terms.target.numpy(), [0.8], rtol=1e-12)


# ------------------------------------------------------------- 16-bit rewards
@pytest.mark.parametrize("posterior", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", REWARD_LOSSES)
def test_16_bit_rewards_compute_and_return_float32(rng, name, dtype, posterior):
    """Every loss upcasts 16-bit rewards to float32 before any arithmetic (as
    soft_label_loss does) and returns float32 throughout; the vote shares and α are never
    rounded to 16 bits (0.3 in bf16 is 0.30078). Against float64 on the same rewards, the
    gradient reaching the rewards in their own dtype."""
    if posterior and name not in POSTERIOR_LOSSES:
        pytest.skip("the posterior applies to fkl/rkl/jsd")
    b = 16
    r1, r2, _ = _batch(rng, b=b)
    p = rng.choice([0.0, 0.2, 0.3, 1 / 3, 0.5, 0.6, 0.7, 0.9, 1.0], b)  # none exact in bf16
    alpha = rng.uniform(0.0, 0.2, b)
    kw = dict(alpha=_t(alpha), margin=0.3, center_weight=0.1, posterior=posterior)
    a = torch.tensor(r1, dtype=dtype, requires_grad=True)
    c = torch.tensor(r2, dtype=dtype, requires_grad=True)
    got = reward_loss(name, a, c, p, **kw)
    # the reference: float64 arithmetic on the same (16-bit) rewards
    a64 = a.detach().double().requires_grad_()
    c64 = c.detach().double().requires_grad_()
    want = reward_loss(name, a64, c64, p, **kw)
    for field in ("loss", "losses", "weights", "margins", "target", "alpha", "centering"):
        assert getattr(got, field).dtype == torch.float32, field
    for field in ("losses", "weights", "margins", "target", "alpha", "centering"):
        np.testing.assert_allclose(
            getattr(got, field).detach().double().numpy(),
            getattr(want, field).detach().numpy(),
            rtol=1e-5,
            atol=1e-6,
            err_msg=field,
        )
    assert float(got.loss.detach()) == pytest.approx(float(want.loss.detach()), rel=1e-5, abs=1e-6)
    got.loss.backward()
    want.loss.backward()
    assert a.grad.dtype == dtype and c.grad.dtype == dtype
    # the gradient is float32 until it is rounded once to the rewards' dtype
    tol = torch.finfo(dtype).eps  # one rounding is at most half of it
    for g, g64 in ((a.grad, a64.grad), (c.grad, c64.grad)):
        np.testing.assert_allclose(g.double().numpy(), g64.numpy(), rtol=tol, atol=1e-6)


# ------------------------------------------------------------- options
@pytest.mark.parametrize("name", REWARD_LOSSES)
def test_swapping_the_responses_changes_nothing(rng, name):
    """d → −d with p → 1 − p is the same pair read the other way: same loss, with smoothing
    and margin too."""
    r1, r2, p = _batch(rng)
    p = np.where(np.abs(p - 0.5) < 1e-9, 0.6, p)
    alpha = rng.uniform(0, 0.3, p.size)
    kw = dict(alpha=_t(alpha), margin=0.7, center_weight=0.1)
    a = reward_loss(name, _t(r1), _t(r2), _t(p), **kw)
    b = reward_loss(name, _t(r2), _t(r1), _t(1 - p), **kw)
    np.testing.assert_allclose(a.losses.numpy(), b.losses.numpy(), rtol=1e-10, atol=1e-13)
    assert float(a.loss) == pytest.approx(float(b.loss), rel=1e-10)


def test_smoothing_pulls_the_target_toward_one_half(rng):
    r1, r2, p = _batch(rng)
    alpha = rng.uniform(0, 0.5, p.size)
    terms = reward_loss("soft-bce", _t(r1), _t(r2), _t(p), alpha=_t(alpha))
    smoothed = (1 - 2 * alpha) * p + alpha
    np.testing.assert_allclose(terms.target.numpy(), smoothed, rtol=1e-12)
    np.testing.assert_allclose(
        terms.losses.detach().numpy(), ref_loss("soft-bce", r1 - r2, smoothed), rtol=1e-10
    )


def test_margin_shifts_the_margin_by_the_label(rng):
    r1, r2, p = _batch(rng)
    m = 0.8
    got = reward_loss("soft-bce", _t(r1), _t(r2), _t(p), margin=m).losses.detach().numpy()
    np.testing.assert_allclose(got, ref_loss("soft-bce", r1 - r2 - m * (2 * p - 1), p), rtol=1e-10)
    z = (p > 0.5).astype(float)
    got = reward_loss("bt", _t(r1), _t(r2), _t(p), margin=m).losses.detach().numpy()
    np.testing.assert_allclose(got, ref_loss("soft-bce", r1 - r2 - m * (2 * z - 1), z), rtol=1e-10)


def test_centering_adds_the_squared_reward_sum(rng):
    r1, r2, p = _batch(rng)
    plain = reward_loss("jsd", _t(r1), _t(r2), _t(p))
    centered = reward_loss("jsd", _t(r1), _t(r2), _t(p), center_weight=0.25)
    assert float(centered.loss - plain.loss) == pytest.approx(0.25 * np.mean((r1 + r2) ** 2))


def test_monitored_divergences_match_the_references(rng):
    r1, r2, p = _batch(rng)
    got = monitored_divergences(_t(r1 - r2), _t(p))
    for name in ("fkl", "rkl", "jsd"):
        np.testing.assert_allclose(got[name].numpy(), ref_loss(name, r1 - r2, p), rtol=1e-9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="hinge"), "loss: unknown"),
        (dict(name="bt", posterior=True), "posterior"),
        (dict(name="soft-bce", posterior=True), "posterior"),
        (dict(p=[0.5, 1.2]), r"p_chosen: must lie in \[0.0, 1.0\]"),
        (dict(p=[0.5, float("nan")]), "p_chosen: contains NaN"),
        (dict(r1=[0.0, float("nan")]), "chosen_rewards: contains NaN"),
        (dict(alpha=0.7), "alpha"),
        (dict(margin=-1.0), "margin"),
        (dict(p=[0.5]), "p_chosen: expected shape"),
    ],
)
def test_bad_arguments_raise_named_errors(kwargs, match):
    args = dict(name="fkl", r1=[0.1, 0.2], r2=[0.0, 0.3], p=[0.5, 0.9])
    args.update(kwargs)
    options = {k: args.pop(k) for k in ("posterior", "alpha", "margin") if k in args}
    with pytest.raises(ValueError, match=match):
        reward_loss(args["name"], _t(args["r1"]), _t(args["r2"]), _t(args["p"]), **options)
