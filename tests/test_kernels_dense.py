"""The dense (BLAS-product) backward of the linear cross-entropy, against float64 autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from smoothalign.kernels.dense_backward import dense_backward, dense_chunk_rows

N, D, V = 29, 12, 41


def _case(dtype, *, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(N, D, generator=g, dtype=torch.float64)
    c = 0.7 * torch.randn(V, D, generator=g, dtype=torch.float64)
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    t = torch.randint(0, V, (N,), generator=g)
    t[::4] = -100
    up = torch.randn(N, generator=g, dtype=torch.float64)  # a per-token upstream gradient
    rnd = lambda x: x.to(dtype) if x is not None else None  # noqa: E731
    return rnd(e), rnd(c), rnd(b), t, up


def _reference(e, c, b, t, up, beta, softcap):
    """Float64 autograd of Σ_n up_n·ℓ_n on the same (rounded) inputs, and the lse."""
    e, c = e.double().clone().requires_grad_(), c.double().clone().requires_grad_()
    b = b.double().clone().requires_grad_() if b is not None else None
    z = e @ c.T + (b if b is not None else 0.0)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    loss = F.cross_entropy(z, t, label_smoothing=beta, reduction="none")
    (up * loss).sum().backward()
    lse = torch.logsumexp(z.detach(), 1)
    return lse, e.grad, c.grad, (b.grad if b is not None else None)


def _run(e, c, b, t, up, lse, beta, softcap, rows, **kw):
    g = up.float().masked_fill(t == -100, 0.0)
    return dense_backward(
        e, c, b, t, lse.float(), g, beta=beta, softcap=softcap, need=(True, True, b is not None),
        chunk_rows=rows, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.3])
@pytest.mark.parametrize(("softcap", "bias"), [(None, False), (None, True), (2.5, True)])
@pytest.mark.parametrize("rows", [1, 4, 100])
def test_float64_equals_autograd(beta, softcap, bias, rows):
    e, c, b, t, up = _case(torch.float64, bias=bias)
    e[t == -100] *= 1e3  # ignored tokens whose logits would overflow exp
    lse, de_ref, dc_ref, db_ref = _reference(e, c, b, t, up, beta, softcap)
    # an ignored token's lse is whatever the forward left there: it must not leak
    lse = lse.masked_fill(t == -100, float("nan"))
    g = up.masked_fill(t == -100, 0.0)
    de, dc, db = dense_backward(
        e, c, b, t, lse, g, beta=beta, softcap=softcap, need=(True, True, bias), chunk_rows=rows
    )
    torch.testing.assert_close(de, de_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dc, dc_ref, rtol=1e-10, atol=1e-12)
    if bias:
        torch.testing.assert_close(db, db_ref, rtol=1e-10, atol=1e-12)
    assert de[t == -100].abs().max() == 0  # ignored tokens get no gradient


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("accum_c_fp32", [False, True])
def test_16_bit_inputs_are_within_their_rounding(dtype, accum_c_fp32):
    e, c, b, t, up = _case(dtype, bias=True, seed=1)
    lse, de_ref, dc_ref, db_ref = _reference(e, c, b, t, up, 0.1, None)
    de, dc, db = _run(e, c, b, t, up, lse, 0.1, None, 5, accum_c_fp32=accum_c_fp32)
    assert de.dtype == dc.dtype == db.dtype == dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3  # the gradient is rounded before its products
    for got, ref in ((de, de_ref), (dc, dc_ref), (db, db_ref)):
        err = float((got.double() - ref).abs().max())
        assert err <= tol * float(ref.abs().max()), err


def test_all_ignored_and_unneeded_gradients():
    e, c, _, t, up = _case(torch.float32, bias=False)
    t = torch.full_like(t, -100)
    lse = torch.full((N,), float("nan"))
    de, dc, db = dense_backward(
        e, c, None, t, lse, torch.zeros(N), beta=0.1, softcap=None, need=(True, True, False),
        chunk_rows=3,
    )  # fmt: skip
    assert db is None and de.abs().max() == 0 and dc.abs().max() == 0
    de, dc, _ = dense_backward(
        e, c, None, t, lse, torch.zeros(N), beta=0.0, softcap=None, need=(False, True, False),
        chunk_rows=3,
    )  # fmt: skip
    assert de is None and dc is not None


def test_chunk_rows_fit_the_budget():
    v = 128256
    rows = dense_chunk_rows(v, torch.bfloat16, 512 << 20, softcap=False)
    assert rows * v * 6 <= 512 << 20 < (rows + 1) * v * 6  # fp32 logits + bf16 gradient
    assert dense_chunk_rows(v, torch.float32, 512 << 20, softcap=True) * v * 8 <= 512 << 20
    assert dense_chunk_rows(v, torch.bfloat16, 1, softcap=False) == 1
