"""The Triton RMSNorm and SwiGLU kernels (``kernels.triton_layers``) against float64
references and the PyTorch lean path.

As in ``test_kernels_triton.py``: without CUDA these run in a child pytest with
``TRITON_INTERPRET=1`` (tiny shapes), with CUDA here, compiled. Shapes are chosen so that
the row width is not a power of two and the backward's programs each take several rows
(and one takes fewer).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from smoothalign.kernels import triton_available
from smoothalign.kernels.lean_layers import rms_norm, swiglu
from triton_child import IN_PROCESS, run_in_interpreter_child

here = pytest.mark.skipif(
    not IN_PROCESS, reason="runs in the TRITON_INTERPRET=1 child process (see module doc)"
)
pytestmark = [pytest.mark.skipif(not triton_available(), reason="triton is not installed")]

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SHAPE = (3, 13, 24)  # 39 rows of 24: over 4 programs (interpreter) 10, 10, 10, 9 rows
TOL = {torch.float32: 2e-6, torch.bfloat16: 2**-7, torch.float16: 2**-10}


@pytest.mark.skipif(IN_PROCESS, reason="the kernels run in this process")
def test_interpreted_layer_kernels_in_a_child_process():
    run_in_interpreter_child(__file__)


def _close(got, want, dtype, what):
    """Within the dtype's rounding of the largest entry (fp32: a few units)."""
    err = float((got.double() - want.double()).abs().max())
    scale = float(want.double().abs().max())
    assert err <= 2 * TOL[dtype] * scale + 1e-12, f"{what}: {err:.3g} vs scale {scale:.3g}"


def _strict(got, want, what):
    """fp16 against the PyTorch path: the same roundings in the same places leave only
    fp32-level differences (a dropped rounding to the 16-bit dtype shows as ~1e-3). bf16
    cannot be held to this under the interpreter, which converts fp32 to bf16 by truncation
    rather than to nearest (a GPU rounds), so bf16 gets the one-ulp bound of ``_close``."""
    err = float((got.double() - want.double()).abs().max())
    scale = float(want.double().abs().max())
    assert err <= 1e-4 * scale, f"{what}: {err:.3g} vs scale {scale:.3g} (fp16, strict)"


def _rms_ref(x, w, eps):
    x = x.double()
    return w.double() * x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@here
def test_rms_norm_kernels_match_float64_and_the_pytorch_path(dtype):
    g = torch.Generator().manual_seed(0)
    x0 = 3 * torch.randn(*SHAPE, generator=g, dtype=torch.float64)
    w0 = 1 + 0.3 * torch.randn(SHAPE[-1], generator=g, dtype=torch.float64)
    up = torch.randn(*SHAPE, generator=g, dtype=torch.float64)
    out = {}
    for backend in ("torch", "triton"):
        x = x0.to(DEV, dtype).requires_grad_()
        w = w0.to(DEV, dtype).requires_grad_()
        y = rms_norm(x, w, 1e-5, backend=backend)
        y.backward(up.to(DEV, dtype))
        out[backend] = (y.detach(), x.grad, w.grad)
    x64 = x0.clone().requires_grad_()
    w64 = w0.clone().requires_grad_()
    y64 = _rms_ref(x64, w64, 1e-5)
    y64.backward(up)
    for name, ref, got, lean in zip(
        ("y", "dx", "dw"),
        (y64.detach(), x64.grad, w64.grad),
        out["triton"],
        out["torch"],
        strict=True,
    ):
        assert got.dtype == dtype and got.shape == ref.shape
        _close(got.cpu(), lean.cpu(), dtype, f"{name} vs PyTorch path")
        if dtype == torch.float16:  # see _strict
            _strict(got.cpu(), lean.cpu(), f"{name} vs PyTorch path")
        # no further from float64 than the PyTorch path is, plus one rounding
        err_t = float((got.cpu().double() - ref).abs().max())
        err_p = float((lean.cpu().double() - ref).abs().max())
        assert err_t <= err_p + TOL[dtype] * float(ref.abs().max()) + 1e-9, (name, err_t, err_p)


@here
def test_rms_norm_kernels_take_a_strided_weight():
    """A weight that is a strided view (here every other column of a matrix) is read as
    the values it shows, not as the memory after its first entry."""
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(*SHAPE, generator=g).to(DEV)
    wide = (1 + 0.3 * torch.randn(SHAPE[-1], 2, generator=g)).to(DEV)
    up = torch.randn(*SHAPE, generator=g).to(DEV)
    grads = {}
    for backend in ("torch", "triton"):
        x, w = x0.clone().requires_grad_(), wide.clone().requires_grad_()
        y = rms_norm(x, w[:, 0], 1e-6, backend=backend)
        y.backward(up)
        grads[backend] = (y.detach(), x.grad, w.grad)
    for got, want in zip(grads["triton"], grads["torch"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@here
def test_rms_norm_kernel_gradients_one_at_a_time():
    """A frozen weight (only dx) and a frozen input (only dw) give the full case's parts."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(*SHAPE, generator=g).to(DEV)
    w0 = (1 + 0.1 * torch.randn(SHAPE[-1], generator=g)).to(DEV)
    up = torch.randn(*SHAPE, generator=g).to(DEV)
    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    rms_norm(x, w, 1e-6, backend="triton").backward(up)
    x_only = x0.clone().requires_grad_()
    rms_norm(x_only, w0, 1e-6, backend="triton").backward(up)
    w_only = w0.clone().requires_grad_()
    rms_norm(x0, w_only, 1e-6, backend="triton").backward(up)
    torch.testing.assert_close(x_only.grad, x.grad, rtol=0, atol=0)
    torch.testing.assert_close(w_only.grad, w.grad, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@here
def test_swiglu_kernels_match_float64_and_the_pytorch_path(dtype):
    g = torch.Generator().manual_seed(2)
    a0 = 4 * torch.randn(5, 7, 33, generator=g, dtype=torch.float64)  # 1155: not 1024·k
    b0 = torch.randn(5, 7, 33, generator=g, dtype=torch.float64)
    up = torch.randn(5, 7, 33, generator=g, dtype=torch.float64)
    out = {}
    for backend in ("torch", "triton"):
        a = a0.to(DEV, dtype).requires_grad_()
        b = b0.to(DEV, dtype).requires_grad_()
        y = swiglu(a, b, backend=backend)
        y.backward(up.to(DEV, dtype))
        out[backend] = (y.detach(), a.grad, b.grad)
    a64, b64 = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    y64 = F.silu(a64) * b64
    y64.backward(up)
    for name, ref, got, lean in zip(
        ("y", "dgate", "dup"),
        (y64.detach(), a64.grad, b64.grad),
        out["triton"],
        out["torch"],
        strict=True,
    ):
        assert got.dtype == dtype and got.shape == ref.shape
        _close(got.cpu(), lean.cpu(), dtype, f"{name} vs PyTorch path")
        _close(got.cpu(), ref, dtype, f"{name} vs float64")
        if dtype == torch.float16:
            _strict(got.cpu(), lean.cpu(), f"{name} vs PyTorch path")


@here
def test_kernels_save_what_the_pytorch_path_saves():
    """Same tensors kept for the backward (bytes counted with saved-tensor hooks)."""
    saved = {}
    x = torch.randn(*SHAPE, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    w = torch.ones(SHAPE[-1], device=DEV, dtype=torch.bfloat16, requires_grad=True)
    for backend in ("torch", "triton"):
        seen: dict[int, int] = {}

        def pack(t, seen=seen):
            if not (t.is_leaf and t.requires_grad):
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            swiglu(rms_norm(x, w, 1e-6, backend=backend), x * 2, backend=backend)
        saved[backend] = sum(seen.values())
    rows = SHAPE[0] * SHAPE[1]
    # x*2 and the norm's output (bf16, kept by swiglu) and one fp32 rstd per row; the
    # PyTorch path keeps rstd as [rows, 1], the kernels as [rows]: the same bytes
    assert saved["triton"] == saved["torch"] == 2 * x.numel() * 2 + 4 * rows


def test_backend_is_checked():
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="backend"):
        rms_norm(x, torch.ones(4, dtype=torch.float64), 1e-6, backend="cuda")
    with pytest.raises(ValueError, match="float32/bfloat16/float16"):
        rms_norm(x, torch.ones(4, dtype=torch.float64), 1e-6, backend="triton")
    with pytest.raises(ValueError, match="differ"):
        swiglu(x, x[:1])
    # auto on CPU tensors is the PyTorch path (no interpreter needed)
    torch.testing.assert_close(swiglu(x, x), F.silu(x) * x)
    with pytest.raises(ValueError, match="empty"):
        rms_norm(torch.ones(3, 0), torch.ones(0), 1e-6)
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            swiglu(x.float(), x.float(), backend="triton")


@here
def test_recomputed_outputs_are_the_kernels_own():
    """Inside ``recompute_outputs()`` the kernels' outputs are recomputed (by the same
    kernels) rather than kept: every gradient is bit for bit the one without the scope."""
    from smoothalign.kernels.lean_layers import recompute_outputs

    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(*SHAPE, generator=g).to(DEV, torch.bfloat16)
    w0 = (1 + 0.1 * torch.randn(SHAPE[-1], generator=g)).to(DEV, torch.bfloat16)
    a0 = torch.randn(SHAPE[-1], 2 * SHAPE[-1], generator=g).to(DEV, torch.bfloat16)
    b0 = torch.randn(SHAPE[-1], 2 * SHAPE[-1], generator=g).to(DEV, torch.bfloat16)
    grads = []
    for scoped in (False, True):
        x, w, a, b = (t.clone().requires_grad_() for t in (x0, w0, a0, b0))
        with recompute_outputs() if scoped else torch.enable_grad():
            h = rms_norm(x, w, 1e-6, backend="triton")
            y = swiglu(h @ a, h @ b, backend="triton")  # two readers of h
            loss = (y.float() @ torch.ones(y.shape[-1], device=DEV)).square().sum()
        loss.backward()
        grads.append([t.grad for t in (x, w, a, b)])
    for u, v in zip(*grads, strict=True):
        assert torch.equal(u, v)


def _rope_inputs(q_dtype, table_dtype, batch_tables: bool, seed: int = 7):
    """q [2, 3, 5, 12] as a transposed view of [2, 5, 3, 12] (transformers' layout), k with
    one head, cos/sin broadcast over the batch or not, with independent random entries (not
    Llama's equal halves, so that a kernel mixing up the halves of the tables fails); 3
    heads and half-width 6 are not powers of two (masked lanes)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 5, 3, 12, generator=g, dtype=torch.float64).transpose(1, 2)
    k = torch.randn(2, 1, 5, 12, generator=g, dtype=torch.float64)
    tables = (2 if batch_tables else 1, 5, 12)
    cos = 2 * torch.rand(*tables, generator=g, dtype=torch.float64) - 1
    sin = 2 * torch.rand(*tables, generator=g, dtype=torch.float64) - 1
    gq = torch.randn(2, 3, 5, 12, generator=g, dtype=torch.float64)
    gk = torch.randn(2, 1, 5, 12, generator=g, dtype=torch.float64)
    cast = [t.to(DEV, q_dtype) for t in (q, k)] + [t.to(DEV, table_dtype) for t in (cos, sin)]
    return cast, (q, k, cos, sin), (gq, gk)


@pytest.mark.parametrize(
    "q_dtype, table_dtype, batch_tables",
    [
        (torch.float32, torch.float32, True),
        (torch.bfloat16, torch.bfloat16, False),
        (torch.float16, torch.float16, True),
        (torch.float16, torch.float32, False),  # autocast with fp32 weights
        (torch.bfloat16, torch.float32, True),  # the CUDA default: bf16 autocast, fp32 weights
    ],
)
@here
def test_rope_kernel_matches_the_eager_formula_and_float64(q_dtype, table_dtype, batch_tables):
    """Outputs and gradients of the kernel against the eager formula in the same dtypes:
    compiled on a GPU bit for bit (it rounds where eager rounds, FP fusion off); under the
    interpreter, which truncates to bf16, within the rounding of its terms, and for fp16
    to fp32-level differences; and no further from float64 than eager plus half a unit in
    the last place."""
    from smoothalign.kernels.lean_rotary import rotary

    (q0, k0, cos, sin), ref_in, (gq, gk) = _rope_inputs(q_dtype, table_dtype, batch_tables)
    got = {}
    for backend in ("torch", "triton"):
        q, k = q0.detach().clone().requires_grad_(), k0.detach().clone().requires_grad_()
        q_out, k_out = rotary(q, k, cos, sin, backend=backend)
        (q_out * gq.to(DEV, q_out.dtype)).sum().backward(retain_graph=True)
        (k_out * gk.to(DEV, k_out.dtype)).sum().backward()
        got[backend] = (q_out.detach(), k_out.detach(), q.grad, k.grad)
    q64, k64 = (t.clone().requires_grad_() for t in ref_in[:2])
    c64, s64 = ref_in[2:]
    outs64 = rotary(q64, k64, c64, s64, backend="torch")
    torch.autograd.backward(outs64, (gq, gk))
    ref = (outs64[0].detach(), outs64[1].detach(), q64.grad, k64.grad)
    names = ("q out", "k out", "dq", "dk")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    for name, lean, eager, want in zip(names, got["triton"], got["torch"], ref, strict=True):
        assert lean.dtype == eager.dtype and lean.shape == eager.shape, name
        lean, eager, dtype = lean.cpu(), eager.cpu(), lean.dtype
        if DEV == "cuda":  # bit for bit: the launch has FP fusion off (run F, with it, differed)
            assert torch.equal(lean, eager), f"{name}: not the eager rounding"
        _close(lean, eager, dtype, f"{name} vs the eager formula")
        if interpreted and dtype == torch.float16:  # the same roundings as eager (see _strict)
            _strict(lean, eager, f"{name} vs the eager formula")
        # no further from float64 than eager plus half a unit in the last place (a whole
        # one for bf16 under the interpreter, which truncates)
        ulps = 1.0 if interpreted and dtype == torch.bfloat16 else 0.5
        err_l = float((lean.double() - want).abs().max())
        err_e = float((eager.double() - want).abs().max())
        bound = err_e + ulps * TOL[dtype] * float(want.abs().max()) + 1e-12
        assert err_l <= bound, (name, err_l, err_e)
    # the output keeps q's layout (transformers' transposed view), as eager's does
    assert got["triton"][0].stride() == got["torch"][0].stride()
