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


@pytest.mark.parametrize("accum_c_fp32", [False, True])
def test_fp16_keeps_the_small_entries_of_a_mean_over_many_tokens(accum_c_fp32):
    """The upstream gradient of a mean over 8192 tokens (2⁻¹³ each) times a softmax entry
    over a 32k vocabulary is mostly below fp16's smallest normal number: cast as it is, the
    gradient would lose most of its entries (an 8e-2 error here). Scaling each
    chunk keeps fp16's own rounding."""
    gen = torch.Generator().manual_seed(2)
    n, d, v = 24, 16, 32000
    e = torch.randn(n, d, generator=gen, dtype=torch.float64).half()
    c = (3.0 / d**0.5 * torch.randn(v, d, generator=gen, dtype=torch.float64)).half()
    t = torch.randint(0, v, (n,), generator=gen)
    up = torch.full((n,), 2.0**-13, dtype=torch.float64)
    lse, de_ref, dc_ref, _ = _reference(e, c, None, t, up, 0.1, None)
    de, dc, _ = dense_backward(
        e, c, None, t, lse.float(), up.float(), beta=0.1, softcap=None,
        need=(True, True, False), chunk_rows=10, accum_c_fp32=accum_c_fp32,
    )  # fmt: skip
    for got, ref in ((de, de_ref), (dc, dc_ref)):
        err = float((got.double() - ref).abs().max())
        assert err <= 4e-3 * float(ref.abs().max()), err


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
    rows = dense_chunk_rows(v, torch.bfloat16, 512 << 20, tanh_buffer=False)
    assert rows * v * 6 <= 512 << 20 < (rows + 1) * v * 6  # fp32 logits + bf16 gradient
    assert dense_chunk_rows(v, torch.float32, 512 << 20, tanh_buffer=True) * v * 8 <= 512 << 20
    assert dense_chunk_rows(v, torch.float64, 512 << 20, tanh_buffer=False) * v * 8 <= 512 << 20
    assert dense_chunk_rows(v, torch.bfloat16, 1, tanh_buffer=False) == 1


class _ChunkMemory:
    """Peak bytes of live tensors shaped like a chunk's logits (``rows × V``), and the new
    storages of ``V × D`` size made other than by ``zeros`` and the final cast (the
    gradient buffer and its 16-bit copy)."""

    def __init__(self, rows: int, v: int, d: int):
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        watch = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if _UNWATCHED:  # inside the test's stand-in for the Triton pass
                    return out
                inputs = {
                    a.untyped_storage().data_ptr()
                    for a in tree_flatten((args, kwargs))[0]
                    if isinstance(a, torch.Tensor)
                }
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        st = t.untyped_storage()
                        new = st.data_ptr() not in watch.live and st.data_ptr() not in inputs
                        entry = watch.live.setdefault(st.data_ptr(), [st.nbytes(), [], t.shape])
                        entry[1].append(weakref.ref(t))
                        big = sorted(t.shape) == sorted((v, d))
                        if (
                            new
                            and big
                            and func.__name__ not in ("zeros.default", "_to_copy.default")
                        ):
                            watch.vd.append(func.__name__)  # a new V×D-sized storage
                now = 0
                for ptr, (nbytes, refs, shape) in list(watch.live.items()):
                    if all(r() is None for r in refs):
                        del watch.live[ptr]
                    elif sorted(shape) == sorted((rows, v)):
                        now += nbytes
                watch.peak = max(watch.peak, now)
                return out

        self.live, self.vd, self.peak, self.mode = {}, [], 0, Mode()


_UNWATCHED: list[bool] = []  # set while the stand-in below runs: its temporaries are its own


def _torch_elementwise(z, out, lse, g, targets, beta, softcap):
    """The Triton pass's contract, in PyTorch (into ``out``, ``z`` itself allowed); the
    memory watch ignores its temporaries (the Triton pass has none)."""
    _UNWATCHED.append(True)
    try:
        _elementwise_into(z, out, lse, g, targets, beta, softcap)
    finally:
        _UNWATCHED.pop()


def _elementwise_into(z, out, lse, g, targets, beta, softcap):
    zz = softcap * torch.tanh(z / softcap) if softcap is not None else z
    d = torch.exp(zz - lse[:, None])
    d[torch.arange(len(targets)), targets] -= 1.0 - beta
    d = (d - beta / z.shape[1]) * g[:, None]
    if softcap is not None:
        d = d * (1 - torch.tanh(z / softcap) ** 2)
    out.copy_(torch.where(g[:, None] != 0, d, 0.0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("path", ["torch", "elementwise"])
@pytest.mark.parametrize("bias", [False, True])
def test_chunk_memory_stays_in_the_budget(dtype, softcap, path, bias):
    """The chunk's live buffers never exceed what ``dense_chunk_rows`` budgets (the previous
    chunk is freed first), and no ``V × D`` temporary is made; both paths agree."""
    n, d, v, rows = 60, 16, 300, 7
    g = torch.Generator().manual_seed(6)
    e = torch.randn(n, d, generator=g).to(dtype)
    c = torch.randn(v, d, generator=g).to(dtype)
    b = torch.randn(v, generator=g).to(dtype) if bias else None
    t = torch.randint(0, v, (n,), generator=g)
    t[::3] = -100
    up = torch.randn(n, generator=g).masked_fill(t == -100, 0.0)
    z = e.float() @ c.float().T + (b.float() if bias else 0.0)
    lse = torch.logsumexp(softcap * torch.tanh(z / softcap) if softcap else z, 1)
    ew = _torch_elementwise if path == "elementwise" else None
    watch = _ChunkMemory(rows, v, d)
    with watch.mode:
        out = dense_backward(
            e, c, b, t, lse, up, beta=0.1, softcap=softcap, need=(True, True, bias),
            chunk_rows=rows, elementwise=ew,
        )  # fmt: skip
    tanh = softcap is not None and ew is None
    # the budget the formula allows for exactly `rows` tokens
    budget = max(b for b in range(0, 20 * rows * v) if dense_chunk_rows(v, dtype, b, tanh) <= rows)
    assert watch.peak <= budget, (watch.peak / (rows * v), budget / (rows * v))
    assert not watch.vd, watch.vd
    other = dense_backward(
        e, c, b, t, lse, up, beta=0.1, softcap=softcap, need=(True, True, bias), chunk_rows=rows,
        elementwise=None if ew else _torch_elementwise,
    )  # fmt: skip
    for x, y in zip(out, other, strict=True):
        if x is not None:
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_float32_accumulation_of_dc_over_many_chunks():
    """16-bit dC rounds once per chunk; ``accum_c_fp32`` keeps one rounding in all. With one
    token per chunk and a few vocabulary rows hit by every token, that shows, and the float32
    buffer's result is within bf16's rounding of float64's, with no ``V × D`` temporary."""
    n, d, v = 256, 4, 8
    g = torch.Generator().manual_seed(7)
    e = torch.randn(n, d, generator=g, dtype=torch.float64).to(torch.bfloat16)
    c = torch.randn(v, d, generator=g, dtype=torch.float64).to(torch.bfloat16)
    t = torch.randint(0, v, (n,), generator=g)
    up = torch.ones(n, dtype=torch.float64)
    lse, _, dc_ref, _ = _reference(e, c, None, t, up, 0.0, None)
    errs = {}
    for accum in (False, True):
        watch = _ChunkMemory(1, v, d)
        with watch.mode:
            _, dc, _ = dense_backward(
                e, c, None, t, lse.float(), up.float(), beta=0.0, softcap=None,
                need=(False, True, False), chunk_rows=1, accum_c_fp32=accum,
            )  # fmt: skip
        assert dc.dtype == torch.bfloat16 and not watch.vd, watch.vd
        errs[accum] = float((dc.double() - dc_ref).abs().max() / dc_ref.abs().max())
    assert errs[True] <= 2**-8, errs
    assert errs[False] > 2 * errs[True], errs


def test_autocast_around_the_backward_changes_nothing():
    """A backward run under autocast (as a caller may) keeps the float32 logits float32."""
    e, c, b, t, up = _case(torch.float32, bias=True, seed=8)
    lse, *_ = _reference(e, c, b, t, up, 0.1, None)
    args = (e, c, b, t, lse.float(), up.float().masked_fill(t == -100, 0.0))
    kw = dict(beta=0.1, softcap=None, need=(True, True, True), chunk_rows=5)
    plain = dense_backward(*args, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = dense_backward(*args, **kw)
    for x, y in zip(plain, under, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
