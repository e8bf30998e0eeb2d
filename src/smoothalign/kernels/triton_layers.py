"""Triton kernels for the lean RMSNorm, SwiGLU and rotary embedding (the GPU path of
``kernels.lean_layers`` and ``kernels.lean_rotary``).

Same arithmetic and the same saved tensors as the PyTorch functions in ``lean_layers``
(which are the reference and the CPU path): RMSNorm keeps its input and one fp32 ``rstd``
per row, SwiGLU keeps ``gate`` and ``up``. What the kernels add is speed: each forward and
backward is one pass over memory instead of the half-dozen elementwise PyTorch launches
(each a full read and write of the activations) that the eager layers and the PyTorch lean
backward make.

* RMSNorm forward, one program per row: ``rstd = 1/sqrt(mean(x²) + eps)`` in fp32,
  ``y = w · (x·rstd).to(dtype)`` (the product rounded to the input's dtype before the
  weight, as Llama's ``LlamaRMSNorm``).
* RMSNorm backward, each program a run of rows: ``dx = rstd·(g − n·mean(g·n))`` with
  ``n = x·rstd`` and ``g = (dy·w).to(dtype)``, and the weight gradient ``Σ_rows dy·h``
  (``h = n.to(dtype)``) accumulated in fp32 per program and summed over programs after.
* SwiGLU forward and backward: elementwise, ``silu(gate)`` rounded to the dtype before the
  product with ``up`` (as ``F.silu(gate) * up``).
* RoPE forward and backward: one program per position, all heads; each product and the
  sum rounded where the eager operations round them (compiled without FP fusion, which
  would fuse a product into the sum: ``kernels.lean_rotary``).

Rounding can differ from PyTorch's in the last place (another reduction order for
``mean(x²)``, another ``sigmoid``); the tests bound it. Run on CPU tensors only with
``TRITON_INTERPRET=1`` set before this module is imported.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from smoothalign.kernels import triton_interpreted

MAX_FUSED_WIDTH = 65536  # a row of the RMSNorm lives in registers: wider rows use PyTorch


@triton.jit
def _rms_fwd_kernel(X, W, Y, RSTD, H, eps, stride_x, stride_y, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / H + eps)
    h = (x * rstd).to(Y.dtype.element_ty)
    w = tl.load(W + cols, mask=mask, other=0.0)
    y = (w.to(tl.float32) * h.to(tl.float32)).to(Y.dtype.element_ty)
    tl.store(Y + row * stride_y + cols, y, mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _rms_bwd_kernel(
    X,
    W,
    RSTD,
    DY,
    DX,
    DW_PARTIAL,
    M,
    H,
    rows_per_program,
    stride_x,
    stride_dy,
    stride_dx,
    BLOCK: tl.constexpr,
    NEED_DX: tl.constexpr,
    NEED_DW: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    w = tl.load(W + cols, mask=mask, other=0.0)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    first = pid * rows_per_program
    for i in range(0, rows_per_program):
        row = (first + i).to(tl.int64)
        if row < M:
            x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0)
            n = x * rstd
            if NEED_DW:
                h = n.to(DY.dtype.element_ty).to(tl.float32)
                dw += dy.to(tl.float32) * h
            if NEED_DX:
                # the product dy·w rounded to the dtype first, as the eager backward does
                g = (dy.to(tl.float32) * w.to(tl.float32)).to(DY.dtype.element_ty)
                g = g.to(tl.float32)
                dot = tl.sum(g * n, 0) / H
                dx = rstd * (g - n * dot)
                tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
    if NEED_DW:
        tl.store(DW_PARTIAL + pid.to(tl.int64) * H + cols, dw, mask=mask)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _swiglu_fwd_kernel(G, U, Y, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    gate = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    silu = (gate * _sigmoid(gate)).to(Y.dtype.element_ty).to(tl.float32)
    tl.store(Y + offs, (silu * up).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(G, U, DY, DG, DU, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    gate = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    sig = _sigmoid(gate)
    silu = (gate * sig).to(DG.dtype.element_ty).to(tl.float32)  # as the forward rounded it
    d_silu = (dy * up).to(DG.dtype.element_ty).to(tl.float32)  # as eager: grad·up, rounded
    dg = d_silu * sig * (1.0 + gate * (1.0 - sig))
    tl.store(DG + offs, dg.to(DG.dtype.element_ty), mask=mask)
    tl.store(DU + offs, (dy * silu).to(DU.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(
    X,
    COS,
    SIN,
    Y,
    S,
    H,
    stride_xb,
    stride_xh,
    stride_xs,
    stride_yb,
    stride_yh,
    stride_ys,
    stride_cb,
    stride_cs,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BACKWARD: tl.constexpr,
):
    """One (batch, position) per program, every head: the rotation of RoPE, or (BACKWARD)
    its transpose applied to the output's gradient. Rounded where the eager operations
    round (each product to Y's dtype, then their sum), when launched without FP fusion
    (``rope``)."""
    pid = tl.program_id(0).to(tl.int64)
    b = pid // S
    s = pid % S
    h = tl.arange(0, BLOCK_H).to(tl.int64)  # h·stride: past 2³¹ for long contiguous grads
    j = tl.arange(0, BLOCK_HALF)
    jm = j < HALF
    m = (h < H)[:, None] & jm[None, :]
    x_at = X + b * stride_xb + s * stride_xs + h[:, None] * stride_xh + j[None, :]
    x1 = tl.load(x_at, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(x_at + HALF, mask=m, other=0.0).to(tl.float32)
    c_at = b * stride_cb + s * stride_cs + j
    c1 = tl.load(COS + c_at, mask=jm, other=0.0).to(tl.float32)[None, :]
    c2 = tl.load(COS + c_at + HALF, mask=jm, other=0.0).to(tl.float32)[None, :]
    s1 = tl.load(SIN + c_at, mask=jm, other=0.0).to(tl.float32)[None, :]
    s2 = tl.load(SIN + c_at + HALF, mask=jm, other=0.0).to(tl.float32)[None, :]
    out = Y.dtype.element_ty
    if BACKWARD:  # dx = g·cos + rotate_halfᵀ(g·sin), rotate_halfᵀ(u) = (u₂, −u₁)
        y1 = (x1 * c1).to(out).to(tl.float32) + (x2 * s2).to(out).to(tl.float32)
        y2 = (x2 * c2).to(out).to(tl.float32) - (x1 * s1).to(out).to(tl.float32)
    else:  # y = x·cos + rotate_half(x)·sin, rotate_half(x) = (−x₂, x₁)
        y1 = (x1 * c1).to(out).to(tl.float32) - (x2 * s1).to(out).to(tl.float32)
        y2 = (x2 * c2).to(out).to(tl.float32) + (x1 * s2).to(out).to(tl.float32)
    y_at = Y + b * stride_yb + s * stride_ys + h[:, None] * stride_yh + j[None, :]
    tl.store(y_at, y1.to(out), mask=m)
    tl.store(y_at + HALF, y2.to(out), mask=m)


# ------------------------------------------------------------------------------- host side
def _rows(x: Tensor) -> Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _row_launch(width: int) -> dict:
    """Block and warps for a kernel that holds one row of ``width`` in registers: more
    warps for wider rows (up to 8192 units, 32 values per thread and row tensor; wider rows
    hold more and may spill registers: slower, not wrong). The interpreter takes no warps."""
    block = triton.next_power_of_2(width)
    if triton_interpreted():
        return {"BLOCK": block}
    warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    return {"BLOCK": block, "num_warps": warps}


def _num_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def rms_norm_forward(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(y, rstd)``: ``y`` shaped like ``x``, ``rstd`` fp32 ``[rows]``."""
    x2, weight = _rows(x), weight.contiguous()
    m, h = x2.shape
    y = torch.empty((m, h), dtype=x.dtype, device=x.device)
    rstd = torch.empty(m, dtype=torch.float32, device=x.device)
    if m:
        _rms_fwd_kernel[(m,)](
            x2, weight, y, rstd, h, float(eps), x2.stride(0), y.stride(0), **_row_launch(h)
        )  # fmt: skip
    return y.view(x.shape), rstd


def rms_norm_backward(
    x: Tensor, weight: Tensor, rstd: Tensor, grad: Tensor, need_x: bool, need_w: bool
) -> tuple[Tensor | None, Tensor | None]:
    x2, dy, weight = _rows(x), _rows(grad.to(x.dtype)), weight.contiguous()
    m, h = x2.shape
    programs = max(1, min(m, _num_programs(x.device)))
    per = triton.cdiv(m, programs) if m else 1
    dx = torch.empty_like(x2) if need_x else None
    partial = torch.empty(programs, h, dtype=torch.float32, device=x.device) if need_w else None
    if m:
        _rms_bwd_kernel[(programs,)](
            x2, weight, rstd, dy,
            dx if dx is not None else x2,
            partial if partial is not None else rstd,
            m, h, per, x2.stride(0), dy.stride(0), dx.stride(0) if dx is not None else h,
            NEED_DX=need_x, NEED_DW=need_w, **_row_launch(h),
        )  # fmt: skip
    dw = None
    if need_w:
        dw = (partial.sum(0) if m else torch.zeros(h, device=x.device)).to(weight.dtype)
    return (dx.view(x.shape) if dx is not None else None), dw


SWIGLU_BLOCK = 1024


def swiglu_forward(gate: Tensor, up: Tensor) -> Tensor:
    gate, up = gate.contiguous(), up.contiguous()
    y = torch.empty_like(gate)
    n = gate.numel()
    if n:
        _swiglu_fwd_kernel[(triton.cdiv(n, SWIGLU_BLOCK),)](gate, up, y, n, BLOCK=SWIGLU_BLOCK)
    return y


def swiglu_backward(gate: Tensor, up: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    gate, up = gate.contiguous(), up.contiguous()
    grad = grad.to(gate.dtype).contiguous()
    dg, du = torch.empty_like(gate), torch.empty_like(up)
    n = gate.numel()
    if n:
        _swiglu_bwd_kernel[(triton.cdiv(n, SWIGLU_BLOCK),)](
            gate, up, grad, dg, du, n, BLOCK=SWIGLU_BLOCK
        )
    return dg, du


def rope(x: Tensor, cos: Tensor, sin: Tensor, out_dtype: torch.dtype, backward: bool) -> Tensor:
    """RoPE's rotation of ``x`` ``[B, H, S, hd]`` (any strides, unit stride in ``hd``) by
    ``cos``/``sin`` ``[B or 1, S, hd]``, or with ``backward`` its transpose (``x`` is then
    the output's gradient). The result has ``x``'s layout and ``out_dtype``; the products
    and their sum are rounded to it, as eager ``x·cos + rotate_half(x)·sin`` rounds them
    (in the backward: to the input's dtype, which autograd casts each gradient to), with
    FP fusion off so that the compiler keeps those roundings."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    y = torch.empty_like(x, dtype=out_dtype)
    bsz, heads, seq, hd = x.shape
    half = hd // 2
    if x.numel():
        # no FP fusion: with it, the compiler turns `a − x·s` into one fused multiply-add and
        # drops the rounding of x·s that eager does (seen in the sm_90 PTX: fma.rn.bf16;
        # without it: mul.rn.bf16, then sub.rn.bf16)
        launch = {} if triton_interpreted() else {"num_warps": 4, "enable_fp_fusion": False}
        _rope_kernel[(bsz * seq,)](
            x, cos, sin, y, seq, heads,
            x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2),
            cos.stride(0) if cos.shape[0] > 1 else 0, cos.stride(1),
            HALF=half, BLOCK_H=triton.next_power_of_2(heads),
            BLOCK_HALF=triton.next_power_of_2(half), BACKWARD=backward, **launch,
        )  # fmt: skip
    return y
