"""The Triton linear cross-entropy kernels on CPU, under Triton's interpreter.

``TRITON_INTERPRET=1`` must be set before ``triton`` itself is imported (its own
``tl.max``… are ``triton.jit`` functions, interpreted or not from the start), which a
pytest process cannot promise; so without CUDA these tests run in a child pytest started
with that variable (``test_interpreted_kernels_in_a_child_process``), and with CUDA they
run here, compiled. The interpreter runs each program in NumPy: tiny shapes only, chosen
so that ``N``, ``V`` and ``D`` are not multiples of the interpreter's blocks (16 × 32 × 16).
What it cannot check: the 16-bit atomic adds of ``dC`` (the interpreter has none; it
accumulates in fp32), speed, and the GPU block sizes.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from smoothalign.kernels import linear_cross_entropy, linear_log_probs, triton_available
from triton_child import IN_PROCESS, run_in_interpreter_child

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")
here = pytest.mark.skipif(
    not IN_PROCESS, reason="runs in the TRITON_INTERPRET=1 child process (see module doc)"
)
pytestmark = [needs_triton]

N, D, V = 37, 24, 70


@pytest.mark.skipif(IN_PROCESS, reason="the kernels run in this process")
def test_interpreted_kernels_in_a_child_process():
    run_in_interpreter_child(__file__)


@pytest.fixture(scope="module")
def lce():
    import smoothalign.kernels.triton_lce as module

    return module


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(dtype, bias=False, scale=0.6, seed=0, ignore_every=5):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(N, D, generator=g)
    c = scale * torch.randn(V, D, generator=g)
    b = torch.randn(V, generator=g) if bias else None
    t = torch.randint(0, V, (N,), generator=g)
    if ignore_every:
        t[::ignore_every] = -100
    dev = _device()

    def leaf(x):
        return x.to(dev, dtype).requires_grad_() if x is not None else None

    return leaf(e), leaf(c), leaf(b), t.to(dev)


def _reference(e, c, b, t, beta, softcap, reduction="mean"):
    """Float64 eager cross-entropy on the same (rounded) inputs; fresh leaves."""
    e, c = e.detach().double().requires_grad_(), c.detach().double().requires_grad_()
    b = b.detach().double().requires_grad_() if b is not None else None
    z = e @ c.T + (b if b is not None else 0.0)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return F.cross_entropy(z, t, label_smoothing=beta, reduction=reduction), (e, c, b)


TOL = {  # (loss rtol, grad rtol relative to the largest gradient entry)
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (1e-5, 2e-2),  # the block gradient is rounded to bf16 before its matmuls
    torch.float16: (1e-5, 4e-3),
}


def _assert_grads(got, ref, rtol):
    for a, r in zip(got, ref, strict=True):
        if a is None:
            continue
        assert a.grad.dtype == a.dtype
        scale = float(r.grad.abs().max())
        err = float((a.grad.double() - r.grad).abs().max())
        assert err <= rtol * scale + 1e-7, f"gradient error {err:.3g} vs scale {scale:.3g}"


@here
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("beta", [0.0, 0.1])
@pytest.mark.parametrize(("softcap", "bias"), [(None, False), (None, True), (3.0, True)])
def test_matches_eager_float64(lce, dtype, beta, softcap, bias):
    e, c, b, t = _inputs(dtype, bias=bias)
    loss = linear_cross_entropy(
        e, c, t, label_smoothing=beta, softcap=softcap, bias=b, impl="triton", filter_eps=None
    )
    ref, leaves = _reference(e, c, b, t, beta, softcap)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref, rtol=TOL[dtype][0], atol=1e-6)
    loss.backward()
    ref.backward()
    _assert_grads((e, c, b), leaves, TOL[dtype][1])


@here
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_fp16_keeps_the_small_entries_of_a_mean_over_many_tokens(lce, beta):
    """A mean over 8192 tokens (upstream 2⁻¹³) times softmax entries over a 4k vocabulary is
    mostly below fp16's smallest normal number: each block is scaled before its fp16 cast
    (``SCALE_ROWS``), so ``dE`` and ``dC`` keep fp16's own rounding (without it: 1.3e-2 here)."""
    gen = torch.Generator().manual_seed(4)
    n, d, v = 24, 16, 4096
    dev = _device()
    e = torch.randn(n, d, generator=gen).half().to(dev).requires_grad_()
    c = (2.0 * torch.randn(v, d, generator=gen) / d**0.5).half().to(dev).requires_grad_()
    t = torch.randint(0, v, (n,), generator=gen).to(dev)
    losses = lce.triton_token_losses(e, c, t, beta=beta, filter_eps=None)
    (losses.sum() * 2.0**-13).backward()
    ref, leaves = _reference(e, c, None, t, beta, None, reduction="sum")
    (ref * 2.0**-13).backward()
    _assert_grads((e, c), leaves[:2], 4e-3)


@here
@pytest.mark.parametrize("layout", ["strided", "expanded"])
def test_a_bias_that_is_not_contiguous(lce, layout):
    """The kernels read the bias densely: a strided view (every other entry) or an expanded
    scalar must give the eager result, not neighbouring memory."""
    e, c, _, t = _inputs(torch.float32)
    g = torch.Generator().manual_seed(5)
    base = torch.randn(V, 2, generator=g) if layout == "strided" else torch.randn(1, generator=g)
    base = base.to(e.device).requires_grad_()
    b = base[:, 0] if layout == "strided" else base.expand(V)
    loss = linear_cross_entropy(e, c, t, label_smoothing=0.1, bias=b, impl="triton")
    ref, (e2, c2, b2) = _reference(e, c, b, t, 0.1, None)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    loss.backward()
    ref.backward()
    _assert_grads((e, c), (e2, c2), 1e-5)
    want = b2.grad[:, None] if layout == "strided" else b2.grad.sum(0, keepdim=True)
    got = base.grad[:, :1] if layout == "strided" else base.grad
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)


@here
def test_no_tokens_keeps_the_bias_in_the_graph(lce):
    e, c, _, t = _inputs(torch.float32)
    b = torch.zeros(V, device=e.device, requires_grad=True)
    loss = linear_cross_entropy(e.detach()[:0], c.detach(), t[:0], bias=b, impl="triton")
    loss.backward()
    assert b.grad is not None and bool((b.grad == 0).all())


@here
def test_second_derivatives_are_refused_not_wrong(lce):
    e, c, _, t = _inputs(torch.float32)
    loss = linear_cross_entropy(e, c, t, impl="triton")
    (ge,) = torch.autograd.grad(loss, e, create_graph=True)
    # every route: torch.autograd.grad walks only the nodes between the penalty and e, and
    # missed an error node hung beside them (allow_unused=True then dropped the penalty)
    for kw in ({}, {"allow_unused": True}):
        with pytest.raises(RuntimeError, match="first derivatives only"):
            torch.autograd.grad(ge.pow(2).sum(), e, retain_graph=True, **kw)
    with pytest.raises(RuntimeError, match="first derivatives only"):  # not a dropped penalty
        (loss + 10.0 * ge.pow(2).sum()).backward()


@pytest.mark.parametrize("reduction", ["sum", "none"])
@here
def test_reductions_and_several_de_chunks(lce, reduction, monkeypatch):
    monkeypatch.setattr(lce, "DE_CHUNK_ROWS", 16)  # three launches for N = 37
    e, c, b, t = _inputs(torch.float32, bias=True)
    loss = linear_cross_entropy(
        e, c, t, label_smoothing=0.1, bias=b, reduction=reduction, impl="triton"
    )
    ref, leaves = _reference(e, c, b, t, 0.1, None, reduction)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    w = torch.linspace(0.5, 2.0, N, dtype=torch.float64, device=t.device)
    w = w if reduction == "none" else 1.0
    (loss * w).sum().backward()
    (ref * w).sum().backward()
    _assert_grads((e, c, b), leaves, 1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.1])
@here
def test_all_ignored_is_zero_without_nan(lce, beta):
    e, c, b, t = _inputs(torch.bfloat16, bias=True)
    t = torch.full_like(t, -100)
    loss = linear_cross_entropy(e, c, t, label_smoothing=beta, bias=b, impl="triton")
    assert float(loss) == 0.0
    loss.backward()
    for x in (e, c, b):
        assert bool((x.grad == 0).all())


@here
def test_log_probs(lce):
    e, c, b, t = _inputs(torch.float32, bias=True)
    got = linear_log_probs(e, c, t, bias=b, impl="triton")
    e2, c2, b2 = (x.detach().double().requires_grad_() for x in (e, c, b))
    valid = t != -100
    ref = (e2 @ c2.T + b2).log_softmax(-1).gather(1, t.clamp(min=0)[:, None]).squeeze(1) * valid
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    w = torch.randn(N, dtype=torch.float64, device=t.device)
    (got * w).sum().backward()
    (ref * w).sum().backward()
    _assert_grads((e, c, b), (e2, c2, b2), 1e-5)


@here
def test_agrees_with_the_chunked_path(lce):
    e, c, b, t = _inputs(torch.bfloat16, bias=True)
    kw = {"label_smoothing": 0.1, "bias": b, "softcap": 4.0}
    a = linear_cross_entropy(e, c, t, impl="triton", **kw)
    ga = torch.autograd.grad(a, (e, c, b))
    r = linear_cross_entropy(e, c, t, impl="chunked", **kw)
    gr = torch.autograd.grad(r, (e, c, b))
    torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)
    for x, y in zip(ga, gr, strict=True):
        torch.testing.assert_close(x.float(), y.float(), rtol=0.05, atol=2e-3)


@here
def test_gradient_filtering_drops_only_negligible_blocks(lce):
    """Peaked softmax (large logits): most blocks are below 2⁻¹² and skipped; the result
    stays within bf16 resolution of the unfiltered gradient, and the β terms stay exact."""
    e, c, b, t = _inputs(torch.bfloat16, scale=4.0)
    with torch.no_grad():  # make the target the clear winner of every row
        idx = t.clamp(min=0)
        c[idx] = (e * 0.5).to(c.dtype)
    grads = {}
    for eps in (None, "auto"):
        loss = linear_cross_entropy(e, c, t, label_smoothing=0.1, impl="triton", filter_eps=eps)
        grads[eps] = torch.autograd.grad(loss, (e, c))
    for x, y in zip(grads[None], grads["auto"], strict=True):
        scale = float(x.abs().max())
        assert float((x.float() - y.float()).abs().max()) <= 2**-8 * scale


@here
def test_filter_eps_resolution(lce):
    assert lce.resolve_filter_eps("auto", torch.bfloat16) == 2.0**-12
    assert lce.resolve_filter_eps("auto", torch.float16) == 2.0**-15
    assert lce.resolve_filter_eps("auto", torch.float32) is None
    with pytest.MonkeyPatch.context() as mp:  # the tuning override of auto's divisor
        mp.setenv("SMOOTHALIGN_LCE_FILTER_DIV", "64")
        assert lce.resolve_filter_eps("auto", torch.bfloat16) == 2.0**-13
        assert lce.resolve_filter_eps("auto", torch.float32) is None
        assert lce.resolve_filter_eps(1e-3, torch.bfloat16) == 1e-3  # a number is itself
        for bad in ("0.5", "nan", "x"):
            mp.setenv("SMOOTHALIGN_LCE_FILTER_DIV", bad)
            with pytest.raises(ValueError, match="SMOOTHALIGN_LCE_FILTER_DIV"):
                lce.resolve_filter_eps("auto", torch.bfloat16)
    assert lce.resolve_filter_eps(None, torch.bfloat16) is None
    with pytest.raises(ValueError, match="filter_eps"):
        lce.resolve_filter_eps(-1.0, torch.bfloat16)


@pytest.mark.parametrize(("n", "v", "d"), [(8192, 256000, 2304), (8192, 128256, 4096),
                                           (8192, 49152, 576), (300, 1000, 64)])  # fmt: skip
def test_de_chunk_stays_a_small_share_of_the_gradients(lce, n, v, d):
    """The fp32 ``dE`` buffer of one backward launch: whole token blocks, within both caps
    (or the 8-block floor), so small shapes (SmolLM2's, the third) keep the memory target."""
    bn = 64
    rows = lce._de_chunk_rows(n, v, d, 2, bn)
    assert rows % bn == 0 and rows >= 8 * bn
    buffer = min(rows, n) * d * 4
    grads = (n + v) * d * 2
    assert buffer <= lce.DE_CHUNK_BYTES
    assert buffer <= lce.DE_CHUNK_SHARE * grads or rows == 8 * bn


def test_dense_backward_setting_from_the_environment(lce, monkeypatch):
    for raw, expected in (("", None), ("0", None), ("0.0", None), ("64", 64 << 20),
                          ("0.5", 1 << 19), ("1e-9", 1)):  # fmt: skip
        monkeypatch.setenv("SMOOTHALIGN_LCE_DENSE", raw)
        assert lce._dense_bytes_from_env() == expected
    for raw in ("abc", "-3", "nan", "inf"):
        monkeypatch.setenv("SMOOTHALIGN_LCE_DENSE", raw)
        with pytest.raises(ValueError, match="SMOOTHALIGN_LCE_DENSE"):
            lce._dense_bytes_from_env()


@pytest.fixture
def interpreter_blocks(monkeypatch):
    """The interpreter's 16 × 32 (× 16) blocks on a GPU too, where the tuned defaults are
    larger (64 × 128 for bf16): the brute forces below follow the kernel's blocks."""
    if torch.cuda.is_available():
        monkeypatch.setenv("SMOOTHALIGN_LCE_FWD", "16,32,16,4,1")
        monkeypatch.setenv("SMOOTHALIGN_LCE_BWD", "16,32,16,4,1")


def _skipped_off_target_mass(e, c, t, beta, eps):
    """The block rule (``strips=0``) of :func:`_strip_rule_reference`: per live token, the
    softmax mass off its target in the skipped blocks; and the blocks' distance to the
    threshold."""
    _, _, left_out, margin = _strip_rule_reference(e, c, t, beta, eps, 0.0)
    return left_out, margin


def _dropped(lce, e, c, t, beta, eps, block_max):
    """The block rule's count (``strips=0``; the strips test checks theirs)."""
    stats = {}
    losses = lce.triton_token_losses(
        e, c, t, beta=beta, filter_eps=eps, block_max=block_max, filter_stats=stats, strips=0.0
    )
    assert not stats  # filled by the backward
    losses.sum().backward()
    got = stats["dropped_mass"].cpu().double()
    live = t.cpu() != -100
    assert got[~live].isnan().all()  # no gradient, no count
    return got[live]


@here
@pytest.mark.parametrize("block_max", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_filter_stats_count_the_softmax_mass_left_out(lce, block_max, beta, interpreter_blocks):
    """``filter_stats``: per live token, the softmax mass off its target in the blocks the
    filter skipped, against a float64 brute force of the block rule."""
    eps = 2e-2
    e, c, _, t = _inputs(torch.bfloat16, scale=0.5, seed=4)
    with torch.no_grad():  # the likely tokens in the first vocabulary block, as in a real LM
        c[32:] *= 0.05
        t[t != -100] %= 32
    expected, margin = _skipped_off_target_mass(e, c, t, beta, eps)
    assert margin > 1e-3  # no block at the threshold: rounding cannot flip one
    assert (expected > 1e-3).sum() > 5 and expected.max() < 0.9  # blocks skipped, not all
    got = _dropped(lce, e, c, t, beta, eps, block_max)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@here
def test_filter_stats_of_confident_tokens_are_near_zero(lce, interpreter_blocks):
    """A token predicted with near certainty loses next to nothing when its whole block
    row, target included, is skipped: its gradient was ~0 anyway (the count is of the mass
    off the target, not of the target's own probability)."""
    eps = 2e-2
    g = torch.Generator().manual_seed(9)
    c = torch.randn(V, D, generator=g)
    t = torch.randint(0, V, (N,), generator=g)
    t[::5] = -100
    e = 3.0 * c[t.clamp(min=0)]  # each token's hidden state points at its target's row
    dev = _device()
    e = e.to(dev, torch.bfloat16).requires_grad_()
    c = c.to(dev, torch.bfloat16).requires_grad_()
    t = t.to(dev)
    expected, margin = _skipped_off_target_mass(e, c, t, 0.0, eps)
    assert margin > 1e-3
    p = torch.softmax(e.detach().double() @ c.detach().double().T, 1).cpu()
    live = (t != -100).cpu()
    p_t = p[live, t.cpu()[live]]
    assert (p_t > 1 - eps).all() and float((1 - p_t).max()) < eps  # every block skipped
    got = _dropped(lce, e, c, t, 0.0, eps, block_max=False)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert got.max() < 1e-2  # the old count (all mass in skipped blocks) would give ~1


def _strip_rule_reference(e, c, t, beta, eps, strip_eps, bn=16, bv=32):
    """Float64 brute force of the strip rule (interpreter blocks 16 × 32): a block is
    computed when some live token has ``|softmax − (1 − β)·onehot| ≥ eps`` in it or it
    holds a live token's target; of a computed block, ``dE`` takes the rows with an entry
    ≥ ``strip_eps`` (every row at 0: the block rule) or their target and ``dC`` the columns with such an entry or a live
    token's target; the β terms are exact. Mean reduction over the live tokens. Returns
    ``(dE, dC, off-target mass per live token left out of dE, the thresholds' smallest
    relative distance to any block, row or column maximum)``."""
    e64, c64 = e.detach().double().cpu(), c.detach().double().cpu()
    tt = t.cpu()
    live = tt != -100
    p = torch.softmax(e64 @ c64.T, 1)
    d = p.clone()
    d[live, tt[live]] -= 1.0 - beta
    d[~live] = 0.0
    g = live.double() / live.sum()
    n, v = p.shape
    in_de = torch.zeros(n, v, dtype=torch.bool)
    in_dc = torch.zeros(n, v, dtype=torch.bool)
    margins = []
    for i in range(0, n, bn):
        for j in range(0, v, bv):
            a = d[i : i + bn, j : j + bv].abs()
            hit = torch.zeros_like(a, dtype=torch.bool)  # live targets in the block
            for r in range(i, min(i + bn, n)):
                if live[r] and j <= tt[r] < j + bv:
                    hit[r - i, tt[r] - j] = True
            margins.append(abs(float(a.max()) - eps) / eps)
            if a.max() < eps and not hit.any():
                continue
            rows, cols = a.amax(1), a.amax(0)
            if strip_eps > 0:  # (0: the block rule, every row and column of the block)
                margins += [float(x) for x in ((rows - strip_eps).abs() / strip_eps)]
                margins += [float(x) for x in ((cols - strip_eps).abs() / strip_eps)]
            in_de[i : i + bn, j : j + bv] = ((rows >= strip_eps) | hit.any(1))[:, None]
            in_dc[i : i + bn, j : j + bv] = ((cols >= strip_eps) | hit.any(0))[None, :]
    gd = g[:, None] * d
    de = torch.where(in_de, gd, 0.0) @ c64 - beta * g[:, None] * c64.mean(0)
    dc = torch.where(in_dc, gd, 0.0).T @ e64 - (beta / v) * (g @ e64)[None, :]
    off = p.clone()
    off[live, tt[live]] = 0.0
    left_out = torch.where(in_de, 0.0, off).sum(1)[live]
    return de, dc, left_out, min(margins)


@here
@pytest.mark.parametrize("compensate", [False, True])
@pytest.mark.parametrize("block_max", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_strips_add_only_the_rows_and_columns_above_their_threshold(
    lce, block_max, beta, compensate, interpreter_blocks
):
    """``strips``: a computed block adds to ``dE`` only its tokens with an entry at or above
    ``strips·filter_eps`` and to ``dC`` only its vocabulary entries with one, against a
    float64 brute force of that rule (float32 inputs: no 16-bit rounding in between); the
    filter statistics count what ``dE`` left out; ``compensate`` adds that mass times C's
    mean row to each token's ``dE``."""
    eps, share = 5e-2, 0.5
    e, c, _, t = _inputs(torch.float32, scale=0.5, seed=0)
    de, dc, left_out, margin = _strip_rule_reference(e, c, t, beta, eps, share * eps)
    assert margin > 1e-3  # no maximum at a threshold: rounding cannot flip one
    # the rule differs from the block rule here: some blocks are skipped, and some computed
    # ones drop rows and columns, by far more than the tolerance below
    de0, dc0, block_rule_left_out, _ = _strip_rule_reference(e, c, t, beta, eps, 0.0)
    assert float(block_rule_left_out.max()) > 1e-2
    assert float((left_out - block_rule_left_out).max()) > 5e-2
    assert float((de - de0).abs().max()) > 1e-2 * float(de.abs().max())
    assert float((dc - dc0).abs().max()) > 1e-2 * float(dc.abs().max())
    live = (t != -100).cpu()
    if compensate:
        g = 1.0 / float(live.sum())
        de[live] += g * left_out[:, None] * c.detach().double().cpu().mean(0)[None, :]
    stats = {}
    losses = lce.triton_token_losses(
        e,
        c,
        t,
        beta=beta,
        filter_eps=eps,
        block_max=block_max,
        filter_stats=stats,
        strips=share,
        compensate=compensate,
    )
    (losses.sum() / (t != -100).sum()).backward()
    torch.testing.assert_close(e.grad.cpu().double(), de, rtol=0, atol=1e-6 * float(de.abs().max()))
    torch.testing.assert_close(c.grad.cpu().double(), dc, rtol=0, atol=1e-6 * float(dc.abs().max()))
    got = stats["dropped_mass"].cpu().double()[live]
    torch.testing.assert_close(got, left_out, rtol=0, atol=1e-5)


@here
@pytest.mark.parametrize("compensate", [False, True])
def test_a_confident_tokens_target_is_never_left_out(lce, compensate, interpreter_blocks):
    """A token predicted with ``1 − p_t`` below the strip threshold (β = 0) has every
    gradient entry under it, its target's ``d_t = p_t − 1`` included; dropping ``d_t·C_t``
    while its off-target mass goes back along C's mean row would undo their cancellation.
    The target's row and column are kept (and its block computed), against the float64
    brute force of the rule, on a head with a large mean row."""
    g = torch.Generator().manual_seed(0)
    c = 0.5 * torch.randn(V, D, generator=g) + 6.0 * torch.randn(D, generator=g) / D**0.5
    e = torch.randn(N, D, generator=g)
    t = torch.randint(0, V, (N,), generator=g)
    t[::5] = -100
    eps, share = 5e-2, 0.5
    toward = (c[t[1]] - c.mean(0)) / (c[t[1]] - c.mean(0)).norm()
    for a in torch.linspace(0.5, 20, 400):  # token 1 confident: 1 − p_t < strip_eps
        e[1] = a * toward
        p_t = torch.softmax(e[1].double() @ c.double().T, 0)[t[1]]
        if 1 - p_t < 0.6 * share * eps:
            break
    assert 1 - p_t < 0.6 * share * eps
    e, c, t = e.to(_device()).requires_grad_(), c.to(_device()).requires_grad_(), t.to(_device())
    de, dc, left_out, margin = _strip_rule_reference(e, c, t, 0.0, eps, share * eps)
    assert margin > 1e-3
    live = (t != -100).cpu()
    if compensate:
        de[live] += left_out[:, None] * c.detach().double().cpu().mean(0)[None, :] / live.sum()
    losses = lce.triton_token_losses(
        e, c, t, filter_eps=eps, block_max=False, strips=share, compensate=compensate
    )
    (losses.sum() / live.sum()).backward()
    scale = float(de.abs().max())
    torch.testing.assert_close(e.grad.cpu().double(), de, rtol=0, atol=1e-6 * scale)
    torch.testing.assert_close(c.grad.cpu().double(), dc, rtol=0, atol=1e-6 * float(dc.abs().max()))


def test_compensate_setting(lce, monkeypatch):
    monkeypatch.delenv("SMOOTHALIGN_LCE_COMPENSATE", raising=False)
    assert lce.resolve_compensate(None) is True
    assert lce.resolve_compensate(False) is False and lce.resolve_compensate(True) is True
    for raw, expected in (("0", False), ("1", True), ("", True), ("true", True)):
        monkeypatch.setenv("SMOOTHALIGN_LCE_COMPENSATE", raw)
        assert lce.resolve_compensate(None) is expected


def test_strips_setting(lce, monkeypatch):
    monkeypatch.delenv("SMOOTHALIGN_LCE_STRIPS", raising=False)
    assert lce.resolve_strips(None) == lce.STRIPS_DEFAULT
    assert lce.resolve_strips(0.0) is None and lce.resolve_strips(0.25) == 0.25
    for raw, expected in (("0", None), ("1", 1.0), ("0.5", 0.5)):
        monkeypatch.setenv("SMOOTHALIGN_LCE_STRIPS", raw)
        assert lce.resolve_strips(None) == expected
    for raw in ("abc", "-0.1", "1.5", "nan"):
        monkeypatch.setenv("SMOOTHALIGN_LCE_STRIPS", raw)
        with pytest.raises(ValueError, match="SMOOTHALIGN_LCE_STRIPS|strips"):
            lce.resolve_strips(None)
    with pytest.raises(ValueError, match="strips"):
        lce.resolve_strips(2.0)


@here
def test_filter_stats_are_zero_when_nothing_is_filtered(lce):
    e, c, _, t = _inputs(torch.bfloat16)
    live = (t != -100).cpu()
    for kw in ({"filter_eps": None}, {"dense_backward": 1 << 20}):
        stats = {}
        lce.triton_token_losses(e, c, t, beta=0.1, filter_stats=stats, **kw).sum().backward()
        mass = stats["dropped_mass"].cpu()
        assert mass.shape == (N,) and mass[~live].isnan().all()
        assert mass[live].abs().max() == 0


@here
def test_dense_backward_through_the_environment_stores_no_block_maxima(lce, monkeypatch):
    """``SMOOTHALIGN_LCE_DENSE`` (what the benchmarks set) reaches the backward, and the
    forward then keeps no block maxima (the dense backward has no use for them)."""
    import smoothalign.kernels.dense_backward as dense

    calls = []
    real = dense.dense_backward
    monkeypatch.setattr(
        dense, "dense_backward", lambda *a, **k: calls.append(k["chunk_rows"]) or real(*a, **k)
    )
    e, c, _, t = _inputs(torch.bfloat16)
    saved = {}
    for setting in ("0", "1"):
        monkeypatch.setenv("SMOOTHALIGN_LCE_DENSE", setting)
        losses = lce.triton_token_losses(e, c, t, beta=0.1, block_max=True)
        saved[setting] = losses.grad_fn.saved_tensors[5]  # the block maxima, or None
        losses.sum().backward()
    assert calls == [(1 << 20) // (V * 6)]
    assert saved["0"] is not None and saved["1"] is None
    with pytest.raises(ValueError, match="dense_backward"):
        lce.triton_token_losses(e, c, t, dense_backward=-1)


@here
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_dense_grad_kernel_is_the_gradient_of_the_logits(lce, softcap):
    """``dense_grad``: one pass from float32 logits to ``up·∂ℓ/∂z`` in bf16, against float64
    autograd of the smoothed cross-entropy; an ignored row is 0 even with a NaN ``lse``."""
    g = torch.Generator().manual_seed(3)
    rows, beta = 5, 0.1
    z = 4 * torch.randn(rows, V, generator=g)
    t = torch.randint(0, V, (rows,), generator=g)
    up = torch.randn(rows, generator=g)
    up[2] = 0.0  # an ignored token
    zz = z.double().requires_grad_()
    capped = softcap * torch.tanh(zz / softcap) if softcap else zz
    lse = torch.logsumexp(capped.detach(), 1).float()
    lse[2] = float("nan")
    loss = F.cross_entropy(capped, t, label_smoothing=beta, reduction="none")
    (up.double() * loss).sum().backward()
    dev = _device()
    out = torch.empty(rows, V, dtype=torch.bfloat16, device=dev)
    lce.dense_grad(z.to(dev), out, lse.to(dev), up.to(dev), t.to(dev), beta, softcap)
    assert out[2].abs().max() == 0
    err = (out.double().cpu() - zz.grad).abs().max()
    assert err <= 2**-8 * zz.grad.abs().max(), float(err)  # bf16's rounding of the output


@here
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("beta", "softcap"), [(0.0, None), (0.1, None), (0.1, 3.0)])
def test_dense_backward_after_the_triton_forward(lce, dtype, beta, softcap, monkeypatch):
    """``dense_backward``: the Triton forward, then the BLAS-product backward (chunks of 7
    tokens here), against float64 eager; the forward's loss is the same as without it."""
    import smoothalign.kernels.dense_backward as dense

    calls = []
    real = dense.dense_backward

    def spy(*args, **kwargs):
        calls.append(kwargs["chunk_rows"])
        return real(*args, **kwargs)

    monkeypatch.setattr(dense, "dense_backward", spy)
    e, c, b, t = _inputs(dtype, bias=True)
    nbytes = 7 * V * (4 + (2 if dtype != torch.float32 else 0))  # logits + 16-bit gradient
    losses = lce.triton_token_losses(
        e, c, t, beta=beta, softcap=softcap, bias=b, dense_backward=nbytes
    )
    plain = lce.triton_token_losses(e, c, t, beta=beta, softcap=softcap, bias=b)
    torch.testing.assert_close(losses, plain, rtol=0, atol=0)
    losses.sum().backward()
    ref, leaves = _reference(e, c, b, t, beta, softcap, reduction="sum")
    ref.backward()
    assert calls == [7]
    assert float(losses.sum()) == pytest.approx(float(ref), rel=TOL[dtype][0])
    _assert_grads((e, c, b), leaves, TOL[dtype][1])


@pytest.mark.parametrize("fwd_rows", [16, 32])
@here
def test_forward_block_maxima(lce, fwd_rows, monkeypatch):
    """``block_max``: the forward stores the largest logit of each group of tokens (the
    smaller BLOCK_N of forward and backward) per vocabulary block, exactly (fp32)."""
    monkeypatch.setenv("SMOOTHALIGN_LCE_FWD", f"{fwd_rows},32,16,1,2")
    monkeypatch.setenv("SMOOTHALIGN_LCE_BWD", "16,32,16,1,2")
    e, c, b, t = _inputs(torch.float32, bias=True)
    with torch.no_grad():
        _, _, _, (bmax, bv, group), _ = lce._forward(e, c, b, t, 0.0, -100, None, store_bmax=True)
    assert (bv, group) == (32, 16)
    z = (e.double() @ c.double().T + b.double()).T  # [V, N]
    blocks = torch.nn.functional.pad(z, (0, -N % group, 0, -V % bv), value=float("-inf"))
    want = blocks.view(-1, bv, blocks.shape[1] // group, group).amax((1, 3))
    assert bmax.shape == want.shape and bmax.dtype == torch.float32
    torch.testing.assert_close(bmax.double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fwd_blocks", ["same", "twice", "taller"])
@pytest.mark.parametrize("peaked", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@here
def test_block_maxima_skip_changes_nothing_measurable(lce, dtype, peaked, fwd_blocks, monkeypatch):
    """Skipping blocks before their recompute gives the in-block filter's gradient (or a
    closer one): it keeps every target (even one with negligible softmax), every block with
    a softmax entry above the threshold, and the β terms. "twice": the forward's vocabulary
    blocks are two backward blocks wide (as on the GPU); "taller": its token blocks are two
    backward blocks tall (the GPU's 128-row forward beside a 16- or 32-row backward, whose
    maxima are then kept per backward block of tokens)."""
    # small blocks, so that V = 70 spans several (on a GPU too, where the defaults are wider)
    monkeypatch.setenv("SMOOTHALIGN_LCE_BWD", "16,32,16,1,2")
    wide = 64 if fwd_blocks == "twice" else 32
    tall = 32 if fwd_blocks == "taller" else 16
    monkeypatch.setenv("SMOOTHALIGN_LCE_FWD", f"{tall},{wide},16,1,2")
    e, c, b, t = _inputs(dtype, scale=4.0 if peaked else 0.6)
    if peaked:
        with torch.no_grad():  # most blocks negligible …
            idx = t.clamp(min=0)
            c[idx] = (e * 0.5).to(c.dtype)
            c[idx[:3]] = (-e[:3] * 0.5).to(c.dtype)  # … and three targets with softmax ≈ 0
    eps = 2.0**-12
    grads = {}
    for name, kw in {
        "exact": {"filter_eps": None},
        "in-block": {"filter_eps": eps, "block_max": False},
        "block max": {"filter_eps": eps, "block_max": True},
    }.items():
        from smoothalign.kernels.triton_lce import triton_token_losses

        losses = triton_token_losses(e, c, t, beta=0.1, **kw)
        grads[name] = torch.autograd.grad(losses.sum(), (e, c))
    for x, y, z in zip(grads["exact"], grads["in-block"], grads["block max"], strict=True):
        scale = float(x.abs().max())
        # compiled on a GPU, bf16 gradients of C are summed by bf16 atomic adds in no fixed
        # order: two runs of the same kernel can differ by one unit in the last place
        ulp = (
            2.0 ** (math.floor(math.log2(scale)) - 7)
            if x.is_cuda and dtype != torch.float32
            else 0.0
        )
        err_block = float((x.float() - z.float()).abs().max())
        err_in = float((x.float() - y.float()).abs().max())
        assert err_block <= 2**-8 * scale + ulp
        assert err_block <= err_in + 2**-8 * scale * 0.25 + ulp


@here
def test_block_maxima_keep_the_forward_block_width(lce, monkeypatch):
    """The backward reads the maxima with the block width the forward used, whatever the
    configuration says by then."""
    from smoothalign.kernels.triton_lce import triton_token_losses

    monkeypatch.setenv("SMOOTHALIGN_LCE_BWD", "16,32,16,1,2")
    g = torch.Generator().manual_seed(1)
    # 4 tokens, 8 vocabulary blocks of 32: each token's softmax sits on one entry of block 1
    # (v = 40 + i), its target in block 6; every other block is negligible
    e0, c0 = torch.randn(4, 16, generator=g), 0.5 * torch.randn(256, 16, generator=g)
    c0[40:44] = 3.0 * e0
    t = torch.arange(200, 204).to(_device())
    grads = {}
    for block_max in (False, True):
        monkeypatch.setenv("SMOOTHALIGN_LCE_FWD", "16,32,16,1,2")
        e, c = (x.to(_device()).requires_grad_() for x in (e0, c0))
        losses = triton_token_losses(e, c, t, filter_eps=1e-3, block_max=block_max)
        monkeypatch.setenv("SMOOTHALIGN_LCE_FWD", "16,64,16,1,2")  # changed before backward
        grads[block_max] = torch.autograd.grad(losses.sum(), (e, c))
    for x, y in zip(grads[False], grads[True], strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@here
def test_a_bias_masking_whole_blocks_with_minus_infinity(lce, dtype, monkeypatch):
    """-inf bias on whole vocabulary blocks (masked tokens): the loss and gradients of
    F.cross_entropy, not NaN. The first block and one forward split slice are all -inf."""
    monkeypatch.setenv("SMOOTHALIGN_LCE_FWD", "16,32,16,1,2")
    monkeypatch.setenv("SMOOTHALIGN_LCE_BWD", "16,32,16,1,2")
    e, c, _, t = _inputs(dtype)
    b = torch.zeros(V, device=e.device, dtype=dtype)
    b[:32] = float("-inf")
    t = torch.where((t >= 0) & (t < 32), t + 32, t)  # no target is masked
    loss = linear_cross_entropy(e, c, t, bias=b, impl="triton", filter_eps=None)
    ref, leaves = _reference(e, c, b, t, 0.0, None)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), ref, rtol=TOL[dtype][0], atol=1e-6)
    loss.backward()
    ref.backward()
    _assert_grads((e, c), leaves[:2], TOL[dtype][1])


@pytest.mark.gpu_only
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
    reason="TMA bulk reductions need a GPU of compute capability 9.0+ (the interpreter has none)",
)
@pytest.mark.parametrize(
    "dtype, rows, case",
    [
        (torch.bfloat16, 256, "both"),
        (torch.bfloat16, 203, "both"),  # 203: the last token block crosses the end
        (torch.float16, 203, "both"),
        (torch.float32, 203, "both"),
        (torch.bfloat16, 203, "dE only"),
        (torch.bfloat16, 203, "dC only"),
        (torch.bfloat16, 203, "bias"),
        (torch.bfloat16, 203, "fp32 dC"),
    ],
)
def test_tma_reductions_give_the_red_path_gradients(lce, dtype, rows, case, monkeypatch):
    """``tma_reduce=True`` adds the same tiles through TMA bulk reductions: the same
    gradients up to the order of the additions (fp32 to fp32 rounding; 16-bit to one
    rounding of the largest entry, as two red-path runs differ), with V, D and N not
    multiples of the blocks (TMA clips the tiles' rows and columns at the tensors' ends),
    several dE chunks, one gradient at a time, a bias, and dC accumulated in fp32."""
    monkeypatch.setattr(lce, "DE_CHUNK_ROWS", 128)
    assert lce._tma_reduce(True, torch.device("cuda"), 264)  # else both runs would be red
    g = torch.Generator().manual_seed(3)
    e0 = torch.randn(rows, 264, generator=g).cuda().to(dtype)
    c0 = (0.3 * torch.randn(1000, 264, generator=g)).cuda().to(dtype)
    b0 = torch.randn(1000, generator=g).cuda().to(dtype) if case == "bias" else None
    t = torch.randint(0, 1000, (rows,), generator=g).cuda()
    t[::7] = -100
    grads = {}
    for tma in (False, True):
        e = e0.clone().requires_grad_(case != "dC only")
        c = c0.clone().requires_grad_(case != "dE only")
        b = b0.clone().requires_grad_() if b0 is not None else None
        lce.triton_token_losses(
            e, c, t, beta=0.1, bias=b, tma_reduce=tma, accum_c_fp32=case == "fp32 dC"
        ).sum().backward()
        grads[tma] = [x.grad.float() for x in (e, c, b) if x is not None and x.requires_grad]
    assert len(grads[True]) == len(grads[False]) >= 1
    for a, b in zip(grads[False], grads[True], strict=True):
        tol = 1e-5 if dtype == torch.float32 else 2**-7
        assert float((a - b).abs().max()) <= tol * float(a.abs().max())
        assert torch.isfinite(b).all()  # nothing written outside the tensors


@here
def test_backward_makes_no_16bit_copy_of_the_de_chunk(lce, monkeypatch):
    """Each fp32 ``dE`` chunk is cast into the gradient in place (``copy_``): a ``.to()``
    first would make a 16-bit copy of the chunk, alive beside everything else at the
    backward's peak (16 MiB at the benchmark shapes). Every new tensor the backward makes is
    watched; none is a 16-bit ``[rows, D]`` copy."""
    from torch.utils._python_dispatch import TorchDispatchMode

    made = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._to_copy.default:
                made.append((out.dtype, tuple(out.shape)))
            return out

    monkeypatch.setattr(lce, "DE_CHUNK_ROWS", 16)  # several chunks
    e, c, _, t = _inputs(torch.bfloat16)
    loss = lce.triton_token_losses(e, c, t, beta=0.1).sum()
    with Watch():
        loss.backward()
    # (the interpreter accumulates dC in fp32 and casts it, [V, D], at the end: that cast
    # is the gradient itself, and on a GPU dC is accumulated in bf16 with no cast at all)
    chunk_copies = [m for m in made if m[0] == torch.bfloat16 and m[1][-1:] == (D,)]
    chunk_copies = [m for m in chunk_copies if len(m[1]) == 2 and m[1][0] <= 16]
    assert e.grad is not None and not chunk_copies, chunk_copies
