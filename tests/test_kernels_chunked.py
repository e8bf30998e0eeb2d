"""The chunked PyTorch linear cross-entropy against float64 eager references (SPEC §5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from smoothalign.kernels import check_filter_eps, linear_cross_entropy, linear_log_probs
from smoothalign.kernels.chunked import ChunkedLinearCrossEntropy

N, D, V = 23, 8, 19


def _inputs(dtype=torch.float64, bias=False, ignore_every=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(N, D, generator=g, dtype=torch.float64)
    c = 0.7 * torch.randn(V, D, generator=g, dtype=torch.float64)
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    t = torch.randint(0, V, (N,), generator=g)
    if ignore_every:
        t[::ignore_every] = -100
    cast = (lambda x: x.to(dtype).requires_grad_()) if dtype else (lambda x: x)
    return cast(e), cast(c), (cast(b) if b is not None else None), t


def _reference(e, c, b, t, beta, softcap, reduction):
    """Eager float64: F.cross_entropy of the materialised logits."""
    z = e.double() @ c.double().T
    if b is not None:
        z = z + b.double()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return F.cross_entropy(z, t, label_smoothing=beta, reduction=reduction)


def _leaves(e, c, b):
    return [x for x in (e, c, b) if x is not None]


@pytest.mark.parametrize("beta", [0.0, 0.1])
@pytest.mark.parametrize("softcap", [None, 2.5])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_and_gradients_match_eager_float64(beta, softcap, bias, reduction):
    e, c, b, t = _inputs(bias=bias)
    got = linear_cross_entropy(
        e, c, t, label_smoothing=beta, softcap=softcap, bias=b, reduction=reduction, impl="chunked"
    )
    e2, c2, b2 = (x.detach().clone().requires_grad_() if x is not None else None for x in (e, c, b))
    ref = _reference(e2, c2, b2, t, beta, softcap, reduction)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    w = torch.linspace(0.5, 1.5, N, dtype=torch.float64) if reduction == "none" else 1.0
    (got * w).sum().backward()
    (ref * w).sum().backward()
    for a, r in zip(_leaves(e, c, b), _leaves(e2, c2, b2), strict=True):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-9, atol=1e-12)


def test_small_chunks_give_the_same_result():
    e, c, b, t = _inputs(bias=True)
    whole = ChunkedLinearCrossEntropy.apply(e, c, b, t, 0.1, -100, None, None)
    chunked = ChunkedLinearCrossEntropy.apply(e, c, b, t, 0.1, -100, None, 3)
    torch.testing.assert_close(whole, chunked, rtol=1e-12, atol=1e-12)
    gw = torch.autograd.grad(whole.sum(), (e, c, b))
    gc = torch.autograd.grad(chunked.sum(), (e, c, b))
    for a, r in zip(gw, gc, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("beta", "softcap"), [(0.0, None), (0.2, None), (0.2, 1.5)])
def test_gradcheck(beta, softcap):
    g = torch.Generator().manual_seed(1)
    e = torch.randn(5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    c = torch.randn(7, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.tensor([0, 6, -100, 3, 3])
    assert torch.autograd.gradcheck(
        lambda e, c, b: ChunkedLinearCrossEntropy.apply(e, c, b, t, beta, -100, softcap, 2),
        (e, c, b),
    )


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_log_probs_match_log_softmax(softcap):
    e, c, b, t = _inputs(bias=True)
    got = linear_log_probs(e, c, t, softcap=softcap, bias=b, impl="chunked")
    e2, c2, b2 = (x.detach().clone().requires_grad_() for x in (e, c, b))
    z = e2 @ c2.T + b2
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    valid = t != -100
    ref = z.log_softmax(-1).gather(1, t.clamp(min=0)[:, None]).squeeze(1) * valid
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert bool((got[~valid] == 0).all())
    w = torch.randn(N, dtype=torch.float64)
    (got * w).sum().backward()
    (ref * w).sum().backward()
    for a, r in zip((e, c, b), (e2, c2, b2), strict=True):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_all_ignored_gives_zero_loss_and_zero_gradients(reduction, beta):
    e, c, b, _ = _inputs(bias=True)
    t = torch.full((N,), -100)
    loss = linear_cross_entropy(
        e, c, t, label_smoothing=beta, bias=b, reduction=reduction, impl="chunked"
    )
    assert bool((loss == 0).all())
    loss.sum().backward()
    for x in (e, c, b):
        assert x.grad is not None and bool((x.grad == 0).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_float32(dtype):
    e, c, b, t = _inputs(dtype=dtype, bias=True)
    loss = linear_cross_entropy(e, c, t, label_smoothing=0.1, bias=b, impl="chunked")
    assert loss.dtype == torch.float32
    # the reference sees the same rounded inputs, in float64
    e2, c2, b2 = (x.detach().double().requires_grad_() for x in (e, c, b))
    ref = _reference(e2, c2, b2, t, 0.1, None, "mean")
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    loss.backward()
    ref.backward()
    for a, r in zip((e, c, b), (e2, c2, b2), strict=True):
        assert a.grad.dtype == dtype
        # gradients are rounded to the input dtype once, at the end
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=1e-2, atol=1e-3)


def test_leading_dimensions_and_custom_ignore_index():
    e, c, _, t = _inputs(ignore_every=0)
    t = t.clone()
    t[::3] = 7  # class 7 is "ignored"
    got = linear_cross_entropy(
        e.reshape(1, N, D), c, t.reshape(1, N), ignore_index=7, reduction="none", impl="chunked"
    )
    assert got.shape == (1, N)
    ref = torch.where(t == 7, 0.0, F.cross_entropy(e @ c.T, t, ignore_index=7, reduction="none"))
    torch.testing.assert_close(got.reshape(-1), ref, rtol=1e-10, atol=1e-12)


def test_autocast_casts_the_inputs_like_the_eager_matmul():
    e, c, _, t = _inputs(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(e, c, t, impl="chunked")
    ref = _reference(e.detach().bfloat16(), c.detach().bfloat16(), None, t, 0.0, None, "mean")
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    got.backward()
    assert e.grad.dtype == torch.float32 and c.grad.dtype == torch.float32


def test_bad_arguments_are_refused():
    e, c, _, t = _inputs()
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(e, c, t, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        linear_cross_entropy(e, c, t, label_smoothing=1.5)
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(e, c, t[:-1])
    with pytest.raises(ValueError, match="last dimension"):
        linear_cross_entropy(e[:, :-1], c, t)
    with pytest.raises(ValueError, match="softcap"):
        linear_cross_entropy(e, c, t, softcap=0.0)
    with pytest.raises(ValueError, match="impl"):
        linear_cross_entropy(e, c, t, impl="cuda")
    with pytest.raises(ValueError, match="softcap"):
        linear_cross_entropy(e, c, t, softcap=float("inf"))
    with pytest.raises(ValueError, match="e: a real floating-point"):
        linear_cross_entropy(e.long(), c.long(), t)
    with pytest.raises(ValueError, match="0-dimensional"):
        linear_cross_entropy(e[0, 0], c, t[0])


def test_autocast_keeps_the_bias_dtype_like_the_eager_sum():
    """Eager ``e @ c.T + b`` under autocast adds the float32 bias to the bf16 product (the sum
    promotes); a bias rounded to bf16 would move logits near 300 by up to 1."""
    e, c, _, t = _inputs(dtype=torch.float32)
    b = torch.linspace(300.3, 301.9, V, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(e, c, t, bias=b, impl="chunked")
        z = e @ c.T + b
    assert z.dtype == torch.float32
    ref = F.cross_entropy(z.detach().double(), t)
    # our product is fp32-accumulated from bf16 inputs, eager's is rounded to bf16 first
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=2e-2)
    rounded = F.cross_entropy((e @ c.T).detach().double() + b.bfloat16().double(), t)
    assert abs(float(rounded) - float(ref)) > 0.1  # the case is real: rounding b matters


def test_targets_must_be_int64_or_int32():
    """Other integer dtypes would wrap around (a uint8 target 156 is -100 mod 256) or fail
    inside a gather: refused up front, naming ``targets``."""
    e, c, _, t = _inputs()
    for dtype in (torch.uint8, torch.int8, torch.int16):
        with pytest.raises(ValueError, match="targets: int64 or int32"):
            linear_cross_entropy(e, c, t.clamp(min=0).to(dtype))
    got = linear_cross_entropy(e, c, t.int())
    torch.testing.assert_close(got, linear_cross_entropy(e, c, t))


@pytest.mark.parametrize("bad", [True, 1.0, 2.0, 0.0, -1e-3, "bogus"])
def test_filter_eps_outside_zero_one_is_refused_on_every_path(bad):
    """A threshold of 1 or more drops (nearly) every gradient entry; ``True`` is not 1."""
    e, c, _, t = _inputs()
    with pytest.raises(ValueError, match="filter_eps"):
        linear_cross_entropy(e, c, t, filter_eps=bad)
    with pytest.raises(ValueError, match="filter_eps"):
        linear_log_probs(e, c, t, filter_eps=bad)
    with pytest.raises(ValueError, match="softcap"):
        linear_cross_entropy(e, c, t, softcap=True)
    linear_cross_entropy(e, c, t, filter_eps=0.5)  # chunked: accepted, never used


@pytest.mark.parametrize(
    "eps", [np.float32(0.5), np.float64(1e-3), np.array(0.25), torch.tensor(0.5), 1e-3]
)
def test_filter_eps_takes_any_number_as_the_other_options_do(eps):
    """A NumPy scalar (``np.float32(0.5)``, what arithmetic on a NumPy config gives) or a 0-d
    array or tensor is a number, as for ``label_smoothing``; it is checked as one, and
    passed on as a Python float."""
    e, c, _, t = _inputs()
    want = linear_cross_entropy(e, c, t)
    torch.testing.assert_close(linear_cross_entropy(e, c, t, filter_eps=eps), want)
    torch.testing.assert_close(linear_log_probs(e, c, t, filter_eps=eps), linear_log_probs(e, c, t))
    got = check_filter_eps(eps)
    assert type(got) is float and got == float(eps)
    for bad in (np.float32(1.5), np.float64(0.0), np.float32("nan"), np.bool_(True)):
        with pytest.raises(ValueError, match="^filter_eps: "):
            linear_cross_entropy(e, c, t, filter_eps=bad)
    with pytest.raises(ValueError, match=r"^filter_eps: expected a number, got an array"):
        check_filter_eps(np.array([0.5]))
    assert check_filter_eps("auto") == "auto" and check_filter_eps(None) is None


def test_second_derivatives_are_refused_not_wrong():
    """The backward is not differentiable: ``create_graph`` through it is an error, not a
    silently dropped term."""
    e, c, _, t = _inputs()
    loss = linear_cross_entropy(e, c, t)
    (ge,) = torch.autograd.grad(loss, e, create_graph=True)
    with pytest.raises(RuntimeError, match="first derivatives only"):  # not a dropped penalty
        (loss + 10.0 * ge.pow(2).sum()).backward()


@pytest.mark.parametrize("fn", ["loss", "log_probs"])
@pytest.mark.parametrize("wrt", ["e", "c", "both"])
def test_second_derivatives_are_refused_on_every_route(fn, wrt):
    """A gradient penalty taken with ``torch.autograd.grad`` (not ``.backward()``) raised
    PyTorch's "appears to not have been used in the graph", and with ``allow_unused=True``
    returned ``None``: the penalty's term silently dropped. Every route raises ours."""
    e, c, _, t = _inputs()
    call = linear_cross_entropy if fn == "loss" else lambda *a: linear_log_probs(*a).sum()
    loss = call(e, c, t)
    ge, gc = torch.autograd.grad(loss, (e, c), create_graph=True)
    penalty = ge.pow(2).sum() + gc.pow(2).sum()
    inputs = {"e": (e,), "c": (c,), "both": (e, c)}[wrt]
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(penalty, inputs, retain_graph=True)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(penalty, inputs, allow_unused=True, retain_graph=True)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        (loss + penalty).backward()
    # first derivatives under create_graph are the plain ones, and usable as values
    (ge_plain,) = torch.autograd.grad(call(e, c, t), e)
    torch.testing.assert_close(ge.detach(), ge_plain, rtol=0, atol=0)


def test_arguments_of_the_wrong_kind_are_named():
    """Raw ``TypeError``/``AttributeError`` from deep inside (``'<=' not supported``, ``'list'
    object has no attribute 'shape'``), or a silently truncated ``ignore_index``: now an
    error naming the argument (an ``ArgumentTypeError``: a TypeError and a ValueError)."""
    e, c, b, t = _inputs(bias=True)
    cases = [
        ({"label_smoothing": "0.1"}, "label_smoothing: expected a number"),
        ({"label_smoothing": None}, "label_smoothing: expected a number"),
        ({"softcap": "2"}, "softcap: expected a number"),
        ({"ignore_index": -100.5}, "ignore_index: expected an integer"),
        ({"ignore_index": "-100"}, "ignore_index: expected an integer"),
        ({"bias": b.detach().numpy()}, "bias: expected a torch.Tensor"),
    ]
    for kw, message in cases:
        for call in (linear_cross_entropy, linear_log_probs):
            if call is linear_log_probs and "label_smoothing" in kw:
                continue
            with pytest.raises(TypeError, match=f"^{message}"):
                call(e, c, t, **kw)
            with pytest.raises(ValueError, match=f"^{message}"):
                call(e, c, t, **kw)
    for call in (linear_cross_entropy, linear_log_probs):
        with pytest.raises(TypeError, match="^e: expected a torch.Tensor, got ndarray"):
            call(e.detach().numpy(), c, t)
        with pytest.raises(TypeError, match="^c: expected a torch.Tensor, got list"):
            call(e, c.tolist(), t)
        with pytest.raises(TypeError, match="^targets: expected a torch.Tensor, got list"):
            call(e, c, t.tolist())
    # numbers of other kinds are fine: NumPy scalars, 0-d tensors, an integer softcap
    import numpy as np

    ref = linear_cross_entropy(e, c, t, label_smoothing=0.1, softcap=2.0, ignore_index=-100)
    got = linear_cross_entropy(
        e, c, t, label_smoothing=np.float64(0.1), softcap=2, ignore_index=np.int64(-100)
    )
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    got = linear_cross_entropy(
        e,
        c,
        t,
        label_smoothing=torch.tensor(0.1, dtype=torch.float64),
        ignore_index=torch.tensor(-100),
        softcap=2.0,
    )
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [-1, V, V + 1000])
@pytest.mark.parametrize("fn", ["loss", "log_probs"])
def test_targets_outside_the_vocabulary_are_refused(bad, fn):
    """Not a gather error or a silently wrong loss: a ValueError naming the position."""
    e, c, _, t = _inputs()
    t = t.clone()
    t[3] = bad
    call = linear_cross_entropy if fn == "loss" else linear_log_probs
    with pytest.raises(ValueError, match=rf"targets: {bad} at position 3 is outside"):
        call(e, c, t)
    t[3] = -100  # the ignore index itself is fine, and so is a custom one
    call(e, c, t)
    t[t == -100] = -7
    call(e, c, t, ignore_index=-7)
    with pytest.raises(ValueError, match="-7 at position 0"):  # -7 is a target like any other
        call(e, c, t)


def test_auto_picks_chunked_on_cpu():
    from smoothalign.kernels import _resolve_impl

    e, *_ = _inputs()
    assert _resolve_impl(None, e) == "chunked"


def test_autocast_leaves_float64_alone():
    """Autocast never casts float64 (it is not eligible), so neither do we: the result is
    the float64 loss, as the eager ``e @ c.T`` gives under autocast."""
    e, c, _, t = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(e, c, t, label_smoothing=0.1)
        eager = F.cross_entropy(e @ c.T, t, label_smoothing=0.1)
    assert got.dtype == eager.dtype == torch.float64
    torch.testing.assert_close(got, eager, rtol=1e-10, atol=1e-12)


def test_triton_on_cpu_tensors_outside_the_interpreter_is_a_clear_error(monkeypatch):
    from smoothalign.kernels import triton_available

    if not triton_available():
        pytest.skip("triton not installed")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    e, c, t = torch.randn(4, 8), torch.randn(16, 8), torch.tensor([1, 2, 3, 4])
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        linear_log_probs(e, c, t, impl="triton")
    from smoothalign.kernels import triton_interpreted

    for value, on in (("1", True), ("true", True), ("ON", True), ("0", False), ("", False)):
        monkeypatch.setenv("TRITON_INTERPRET", value)  # read as Triton reads it
        assert triton_interpreted() is on, value
