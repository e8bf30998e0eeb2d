"""SPEC §6: soft-label divergences and the batch-normalised posterior target."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import np_softmax
from smoothalign._warn import SmoothalignWarning
from smoothalign.losses import (
    DIVERGENCES,
    forward_kl,
    jensen_shannon,
    posterior_target,
    reverse_kl,
    soft_label_loss,
)


# ------------------------------------------------------------- float64 NumPy references
def ref_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p ‖ q) per row with the convention 0·log 0 = 0."""
    out = np.zeros(p.shape[0])
    for i in range(p.shape[0]):
        for r in range(p.shape[1]):
            if p[i, r] > 0:
                out[i] += p[i, r] * math.log(p[i, r] / q[i, r])
    return out


def ref_jsd(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    m = 0.5 * (p + q)
    return 0.5 * ref_kl(p, m) + 0.5 * ref_kl(q, m)


def ref_posterior(prior: np.ndarray, model: np.ndarray) -> np.ndarray:
    b, r = prior.shape
    out = np.zeros_like(prior)
    for i in range(b):
        for k in range(r):
            out[i, k] = prior[i, k] * model[i, k] / sum(model[j, k] for j in range(b))
        out[i] /= out[i].sum()
    return out


def _data(rng, b=16, r=4, scale=2.0):
    logits = rng.normal(0, scale, (b, r))
    target = rng.dirichlet(np.ones(r), size=b)
    target = np.clip(target, 1e-4, None)  # keep clear of reverse KL's floor
    return logits, target / target.sum(-1, keepdims=True)


@pytest.mark.parametrize("r", [2, 5])
def test_divergences_match_float64_references(rng, r):
    logits, target = _data(rng, r=r)
    lt, tt = torch.as_tensor(logits), torch.as_tensor(target)
    q = np_softmax(logits)
    np.testing.assert_allclose(forward_kl(lt, tt).numpy(), ref_kl(target, q), rtol=1e-10)
    np.testing.assert_allclose(
        reverse_kl(lt, tt, target_floor=0).numpy(), ref_kl(q, target), rtol=1e-10
    )
    # the default floor (1e-6) is far below every target entry here: same value
    np.testing.assert_allclose(reverse_kl(lt, tt).numpy(), ref_kl(q, target), rtol=1e-8)
    np.testing.assert_allclose(jensen_shannon(lt, tt).numpy(), ref_jsd(target, q), rtol=1e-10)
    assert DIVERGENCES["fkl"] is forward_kl and DIVERGENCES["rkl"] is reverse_kl
    assert DIVERGENCES["jsd"] is jensen_shannon


def test_forward_kl_with_zero_target_entries(rng):
    logits, _ = _data(rng, r=3)
    target = np.array([[0.0, 0.3, 0.7]] * logits.shape[0])
    out = forward_kl(torch.as_tensor(logits), torch.as_tensor(target)).numpy()
    np.testing.assert_allclose(out, ref_kl(target, np_softmax(logits)), rtol=1e-10)


def test_reverse_kl_is_infinite_without_floor_and_finite_with_it():
    logits = torch.zeros(1, 2, dtype=torch.float64)
    target = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert math.isinf(float(reverse_kl(logits, target, target_floor=0)))
    assert math.isfinite(float(reverse_kl(logits, target)))
    # where the softmax underflows to 0 the term is 0·log(0/t) = 0, also where t is 0
    under = torch.tensor([[-1000.0, 0.0]], dtype=torch.float64, requires_grad=True)
    value = reverse_kl(under, target.flip(-1), target_floor=0)
    value.sum().backward()
    assert float(value) == 0.0 and bool(torch.isfinite(under.grad).all())
    with pytest.raises(ValueError, match="target_floor"):
        reverse_kl(logits, target, target_floor=-0.1)
    with pytest.raises(ValueError, match="target_floor"):
        reverse_kl(logits, target, target_floor=1.0)  # the floored target would be uniform


def test_reverse_kl_floor_is_clamp_then_renormalise(rng):
    """A floor that bites: the target becomes ``max(t, f) / Σ max(t, f)`` (a distribution),
    checked against a float64 NumPy reference."""
    logits = rng.normal(0, 2, (6, 4))
    target = rng.dirichlet(np.full(4, 0.3), size=6)
    target[:, 0] = 0.0  # entries the floor lifts
    target /= target.sum(-1, keepdims=True)
    floor = 0.05
    floored = np.maximum(target, floor)
    floored /= floored.sum(-1, keepdims=True)
    got = reverse_kl(torch.as_tensor(logits), torch.as_tensor(target), target_floor=floor)
    np.testing.assert_allclose(got.numpy(), ref_kl(np_softmax(logits), floored), rtol=1e-10)


def test_forward_kl_on_one_hot_equals_cross_entropy(rng):
    logits = torch.as_tensor(rng.normal(0, 3, (32, 6)))
    labels = torch.as_tensor(rng.integers(0, 6, 32))
    one_hot = F.one_hot(labels, 6).to(torch.float64)
    ce = F.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(forward_kl(logits, one_hot), ce, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(soft_label_loss("fkl", logits, one_hot), ce, rtol=1e-12, atol=1e-12)


def test_jsd_symmetric_and_bounded(rng):
    la = torch.as_tensor(rng.normal(0, 4, (64, 3)))
    lb = torch.as_tensor(rng.normal(0, 4, (64, 3)))
    ab = jensen_shannon(la, torch.softmax(lb, -1))
    ba = jensen_shannon(lb, torch.softmax(la, -1))
    torch.testing.assert_close(ab, ba, rtol=1e-10, atol=1e-12)
    assert ab.min() >= -1e-12 and ab.max() <= math.log(2) + 1e-12
    # identical distributions: 0; (nearly) disjoint supports: → log 2
    same = jensen_shannon(la, torch.softmax(la, -1))
    assert same.abs().max() < 1e-12
    far = jensen_shannon(
        torch.tensor([[60.0, 0.0]], dtype=torch.float64),
        torch.tensor([[0.0, 1.0]], dtype=torch.float64),
    )
    assert float(far) == pytest.approx(math.log(2), abs=1e-12)
    assert float(far) <= math.log(2) + 1e-12


def test_posterior_target_matches_reference_and_is_normalised(rng):
    prior = rng.dirichlet(np.ones(3), size=10)
    model = np_softmax(rng.normal(0, 1.5, (10, 3)))
    post = posterior_target(torch.as_tensor(prior), torch.as_tensor(model))
    np.testing.assert_allclose(post.numpy(), ref_posterior(prior, model), rtol=1e-12)
    np.testing.assert_allclose(post.sum(-1).numpy(), 1.0, atol=1e-12)
    assert post.min() >= 0
    # the posterior is not the prior when the model output differs between rows
    assert np.abs(post.numpy() - prior).max() > 1e-2


def test_posterior_equals_prior_when_model_output_is_constant(rng):
    prior = torch.as_tensor(rng.dirichlet(np.ones(4), size=7))
    row = torch.softmax(torch.as_tensor(rng.normal(0, 2, 4)), -1)
    model = row.expand(7, 4).clone()
    torch.testing.assert_close(posterior_target(prior, model), prior, rtol=1e-12, atol=1e-12)
    # end to end: posterior=True with identical logits in every row equals the plain prior
    logits = torch.as_tensor(rng.normal(0, 2, 4)).expand(7, 4).clone()
    for name in DIVERGENCES:
        torch.testing.assert_close(
            soft_label_loss(name, logits, prior, posterior=True),
            soft_label_loss(name, logits, prior),
            rtol=1e-10,
            atol=1e-12,
        )


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_gradient_stops_through_posterior_by_default_and_flows_on_request(rng, name):
    logits0, _ = _data(rng, b=6, r=3)
    prior = torch.as_tensor(rng.dirichlet(np.ones(3), size=6))
    div = DIVERGENCES[name]

    def grad_of(fn):
        x = torch.as_tensor(logits0).clone().requires_grad_(True)
        fn(x).sum().backward()
        return x.grad

    def by_hand(x, detach):  # the same target built by hand from the SPEC formula
        q = torch.softmax(x, -1)
        r = prior * q / q.sum(0, keepdim=True)
        r = r / r.sum(-1, keepdim=True)
        return div(x, r.detach() if detach else r)

    g_default = grad_of(lambda x: soft_label_loss(name, x, prior, posterior=True))
    g_stopped = grad_of(lambda x: by_hand(x, detach=True))
    g_flowing = grad_of(
        lambda x: soft_label_loss(name, x, prior, posterior=True, detach_target=False)
    )
    g_through = grad_of(lambda x: by_hand(x, detach=False))
    torch.testing.assert_close(g_default, g_stopped, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_flowing, g_through, rtol=1e-10, atol=1e-12)
    assert (g_default - g_flowing).abs().max() > 1e-4
    # and the flowing gradient is the true one (finite differences, float64)
    x = torch.as_tensor(logits0).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: soft_label_loss(name, z, prior, posterior=True, detach_target=False),
        (x,),
        eps=1e-6,
        atol=1e-7,
    )


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_divergence_gradients_match_finite_differences(rng, name):
    logits, target = _data(rng, b=5, r=3)
    x = torch.as_tensor(logits).requires_grad_(True)
    t = torch.as_tensor(target)
    assert torch.autograd.gradcheck(lambda z: DIVERGENCES[name](z, t), (x,), eps=1e-6, atol=1e-7)


def test_bad_inputs_name_the_argument():
    logits = torch.zeros(3, 2, dtype=torch.float64)
    prior = torch.full((3, 2), 0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match="divergence"):
        soft_label_loss("kl", logits, prior)
    with pytest.raises(ValueError, match="logits"):
        soft_label_loss("fkl", torch.zeros(3), prior[:, 0])
    with pytest.raises(ValueError, match="logits"):
        soft_label_loss("jsd", torch.tensor([[0.0, float("nan")]] * 3), prior, posterior=True)
    with pytest.raises(ValueError, match="prior"):
        soft_label_loss("fkl", logits, prior[:2])
    with pytest.raises(ValueError, match="target"):
        forward_kl(logits, torch.tensor([[0.5, 0.6]] * 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="target"):
        reverse_kl(logits, torch.tensor([[1.5, -0.5]] * 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="target"):
        jensen_shannon(logits, prior[:, :1])
    with pytest.raises(ValueError, match="prior"):
        posterior_target(prior[:2], prior)
    with pytest.raises(ValueError, match="model_probs"):
        posterior_target(prior, torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError, match="exactly one"):
        posterior_target(prior, prior, logits=logits)
    # the posterior is normalised whatever the prior: a prior row that does not sum to 1
    bad = torch.tensor([[0.9, 0.9], [0.2, 0.8], [0.5, 0.5]], dtype=torch.float64)
    with pytest.raises(ValueError, match="prior: row 0 sums to 1.8"):
        soft_label_loss("fkl", logits, bad, posterior=True)


# ------------------------------------------------------------- edge cases of the numerics
@pytest.mark.parametrize("name", ["fkl", "jsd"])
def test_gradient_through_the_posterior_with_unanimous_votes_is_finite_and_true(rng, name):
    """A prior of exactly 0 or 1 makes posterior entries exactly 0; ``xlogy(r, r)``'s
    gradient there is 0/0. The true gradient is finite (finite differences, float64)."""
    logits = torch.as_tensor(rng.normal(0, 1, (4, 2))).requires_grad_(True)
    prior = torch.tensor([[1.0, 0.0], [0.6, 0.4], [0.0, 1.0], [0.8, 0.2]], dtype=torch.float64)
    loss = soft_label_loss(name, logits, prior, posterior=True, detach_target=False)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(grad).all()
    assert torch.autograd.gradcheck(
        lambda z: soft_label_loss(name, z, prior, posterior=True, detach_target=False),
        (logits,),
        eps=1e-6,
        atol=1e-7,
    )


@pytest.mark.parametrize("p", [1.0, 0.7, 0.5])
def test_jsd_gradient_where_the_softmax_underflows(p):
    """At a margin of 110 the fp32 softmax of the losing class is exactly 0; the gradient
    must stay finite and equal the float64 one (which does not underflow)."""
    grads = {}
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor([[110.0, 0.0]], dtype=dtype, requires_grad=True)
        target = torch.tensor([[p, 1 - p]], dtype=dtype)
        jensen_shannon(x, target).sum().backward()
        grads[dtype] = x.grad
    assert torch.isfinite(grads[torch.float32]).all()
    torch.testing.assert_close(
        grads[torch.float32].double(), grads[torch.float64], atol=1e-6, rtol=0
    )


def test_posterior_from_logits_is_exact_where_probabilities_underflow():
    # identical rows leave the prior unchanged, however small q_θ is (SPEC §6)
    logits = torch.tensor([[-80.0, 0.0]] * 4)
    prior = torch.tensor([[0.5, 0.5]] * 4)
    torch.testing.assert_close(posterior_target(prior, logits=logits), prior)
    # a unanimous vote the model contradicts beyond fp32's range: the posterior is the prior's
    # class, not an error (from probabilities q_θ underflows to 0 and nothing is left)
    logits = torch.tensor([[-120.0, 0.0], [0.0, 0.0]])
    prior = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    post = posterior_target(prior, logits=logits)
    assert post[0].tolist() == [1.0, 0.0] and torch.isfinite(post).all()
    with pytest.raises(ValueError, match="row 0 gives zero posterior mass"):
        posterior_target(prior, torch.softmax(logits, -1))
    # and it equals the float64 formula on ordinary inputs
    x = torch.tensor([[0.3, -1.2], [2.0, 0.1], [-0.5, 0.4]], dtype=torch.float64)
    pr = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], dtype=torch.float64)
    q = torch.softmax(x, -1)
    ref = pr * q / q.sum(0, keepdim=True)
    torch.testing.assert_close(posterior_target(pr, logits=x), ref / ref.sum(-1, keepdim=True))


def test_a_class_no_row_gives_mass_gets_zero_not_nan(rng):
    prior = rng.dirichlet(np.ones(3), size=4)
    prior[:, 2] = 0.0
    prior /= prior.sum(1, keepdims=True)
    model = np_softmax(rng.normal(0, 1.0, (4, 3)))
    model[:, 2] = 0.0  # every row's model gives the third class exactly 0
    model /= model.sum(1, keepdims=True)
    post = posterior_target(torch.as_tensor(prior), torch.as_tensor(model))
    # brute force on the two live classes alone
    expected = np.zeros_like(prior)
    expected[:, :2] = ref_posterior(prior[:, :2], model[:, :2] / model[:, :2].sum(1, keepdims=True))
    np.testing.assert_allclose(post.numpy(), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_a_float32_prior_is_accepted_with_16_bit_logits(rng, dtype, name):
    # 400 float32 distributions that sum to 1 within float32 rounding; cast to 16 bits,
    # some rows sum to 1 ± 4e-3 (bf16): still a distribution, to the dtype's precision
    prior = torch.as_tensor(rng.dirichlet(np.ones(5), size=400), dtype=torch.float32)
    logits = torch.as_tensor(rng.normal(0, 1, (400, 5))).to(dtype)
    for posterior in (False, True):
        loss = soft_label_loss(name, logits, prior, posterior=posterior)
        assert loss.dtype == torch.float32 and bool(torch.isfinite(loss).all())
    with pytest.raises(ValueError, match="row 0 sums to"):
        soft_label_loss(name, logits, prior * 1.05)  # off by more than the rounding


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(DIVERGENCES))
@pytest.mark.parametrize("posterior", [False, True])
def test_16_bit_logits_are_computed_in_float32(rng, dtype, name, posterior):
    """bf16/fp16 logits are upcast before any arithmetic and the prior is not rounded to
    16 bits: the loss is the float64 one of the same (rounded) logits to float32's
    precision (in bf16 the JSD was off by 1%), float32 as ``F.cross_entropy`` under
    autocast returns, and the gradient reaches the 16-bit logits in their dtype."""
    logits = torch.as_tensor(rng.normal(0, 2, (64, 3))).to(dtype).requires_grad_(True)
    prior = torch.as_tensor(rng.dirichlet(np.ones(3), size=64))
    loss = soft_label_loss(name, logits, prior.float(), posterior=posterior)
    ref = soft_label_loss(name, logits.detach().double(), prior, posterior=posterior)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    loss.sum().backward()
    assert logits.grad.dtype == dtype and bool(torch.isfinite(logits.grad.float()).all())
    # the exported divergences and the posterior compute in float32 too
    post = posterior_target(prior.float(), logits=logits.detach())
    assert post.dtype == torch.float32
    torch.testing.assert_close(
        post.double(),
        posterior_target(prior, logits=logits.detach().double()),
        rtol=1e-5,
        atol=1e-7,
    )
    div = DIVERGENCES[name](logits.detach(), prior.float())
    assert div.dtype == torch.float32


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_the_posterior_of_one_row_is_its_prior_and_is_warned(rng, name):
    """SPEC §6's normaliser is a sum over the batch: for one row it is that row's own q_θ,
    which cancels, so ``posterior=True`` silently trained on the prior. The formula is
    well defined (and a data set's last batch may be one row): warned, not refused."""
    logits, prior = (torch.as_tensor(a) for a in _data(rng, b=4, r=3))
    with pytest.warns(SmoothalignWarning, match="batch of one row is its prior"):
        one = soft_label_loss(name, logits[:1], prior[:1], posterior=True)
    torch.testing.assert_close(one, soft_label_loss(name, logits[:1], prior[:1]))
    with pytest.warns(SmoothalignWarning, match="batch of one row"):
        posterior_target(prior[:1], logits=logits[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # two rows or more: nothing to say
        soft_label_loss(name, logits[:2], prior[:2], posterior=True)
        posterior_target(prior, logits=logits)
        soft_label_loss(name, logits[:1], prior[:1])  # no posterior asked: no warning


def test_errors_name_the_argument_the_caller_passed():
    """``soft_label_loss``'s distribution is its ``prior`` (not the internal ``target``),
    and its switches are bools: ``posterior="no"`` was a true string."""
    logits = torch.zeros(3, 2, dtype=torch.float64)
    prior = torch.tensor([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^prior: must lie in \[0.0, 1.0\]"):
        soft_label_loss("fkl", logits, prior * 2)
    with pytest.raises(ValueError, match=r"^prior: row 0 sums to 0.9"):
        soft_label_loss("jsd", logits, prior * 0.9)
    with pytest.raises(ValueError, match=r"^prior: row 0 sums to 0.9"):
        soft_label_loss("rkl", logits, prior * 0.9, posterior=True)
    for bad in ("no", 0, None, 1.0):
        with pytest.raises(TypeError, match="^posterior: expected True or False"):
            soft_label_loss("fkl", logits, prior, posterior=bad)
        with pytest.raises(TypeError, match="^detach_target: expected True or False"):
            soft_label_loss("fkl", logits, prior, posterior=True, detach_target=bad)
    # the exported divergences still name their own argument, `target`
    with pytest.raises(ValueError, match="^target: row 0 sums"):
        forward_kl(logits, prior * 0.9)


def test_posterior_target_takes_what_its_siblings_take_and_checks_model_probs(rng):
    """NumPy arrays and lists, as ``soft_label_loss`` (it raised a raw ``isfinite()``
    TypeError); ``model_probs`` rows must sum to 1, as the prior's (to the same tolerance)."""
    logits, prior = _data(rng, b=5, r=3)
    expected = posterior_target(torch.as_tensor(prior), logits=torch.as_tensor(logits))
    for p, z in ((prior, logits), (prior.tolist(), logits.tolist())):
        got = posterior_target(p, logits=z)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    q = np_softmax(logits)
    torch.testing.assert_close(posterior_target(prior, q), expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"^model_probs: row 0 sums to 0.9"):
        posterior_target(prior, q * 0.9)
    posterior_target(prior, q * (1 + 5e-5))  # within the prior check's 1e-4: accepted
    with pytest.raises(TypeError, match="^logits: expected real numbers"):
        posterior_target(prior, logits=[["a", "b", "c"]] * 5)
