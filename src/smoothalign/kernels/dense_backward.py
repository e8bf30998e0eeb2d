"""The linear cross-entropy's backward through three BLAS products per chunk of tokens.

The Triton backward (``triton_lce._backward``) recomputes the logits block by block and adds
each block's gradient into ``dE`` and ``dC`` with atomic adds. That is fast where gradient
filtering skips most blocks (random or untrained weights: a near-uniform softmax) and bound
by the adds where it skips few, as with a trained model's peaked softmax (SmolLM2's hidden
states: 96% of the blocks computed, ``docs/results.md``). This backward instead holds the
gradient of ``rows`` tokens at a time and hands the products to the BLAS (cuBLAS on a GPU)::

    Z = E_c·Cᵀ (+ b), float32                  G = g_n·(softmax(Z) − (1 − β)·onehot − β/V)
    dE_c = G·C        dC += Gᵀ·E_c              db += Σ_n G_n        (·(1 − tanh²) with softcap)

Every entry counts: no filtering. The logits are float32 (``lse`` from the forward is),
``G`` is cast to the inputs' dtype for the two products (as cuBLAS needs for its 16-bit
speed; fp32 accumulation inside), and 16-bit ``dC`` accumulates in its own dtype across
chunks: one rounding per chunk, so its error grows with the number of chunks
(``accum_c_fp32`` accumulates in a float32 ``[V, D]`` buffer instead, at twice C's memory and
float32 products). ``dbias`` is summed from the float32 ``G``. For fp16 inputs each chunk's
``g_n`` are divided by their largest ``|g_n|`` before the gradient is formed and the
products multiplied back: ``g_n·softmax`` of a mean over thousands of tokens is mostly
below fp16's smallest normal number and would be flushed to 0 by the cast.

Memory beyond the gradients: the chunk's float32 logits and its 16-bit gradient,
``rows·V·6`` bytes for 16-bit inputs (``rows·V·4`` more for ``tanh`` with softcap on the
PyTorch path; the Triton pass needs none). The chunk size is the trade: every chunk reads
``C`` twice and ``dC`` once, so small chunks are bound by memory traffic. An experiment, not
the default: not yet timed on a GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor


def dense_chunk_rows(v: int, dtype: torch.dtype, chunk_bytes: int, tanh_buffer: bool) -> int:
    """Tokens per chunk so that the chunk's buffers take at most ``chunk_bytes``: its logits
    (float32, float64 for float64 inputs), the 16-bit gradient for 16-bit inputs, and with
    ``tanh_buffer`` (softcap on the PyTorch path) a logits-sized ``tanh``."""
    logit = 8 if dtype == torch.float64 else 4
    per_entry = logit + (0 if dtype in (torch.float32, torch.float64) else 2)
    per_entry += logit if tanh_buffer else 0
    return max(1, int(chunk_bytes) // (per_entry * max(v, 1)))


@functools.cache
def _mm_out_dtype(device: str) -> bool:
    """Whether ``torch.mm(..., out_dtype=torch.float32)`` takes 16-bit inputs on ``device``
    (probed once on a 1×1 product, so that no other error is mistaken for its absence)."""
    a = torch.zeros(1, 1, dtype=torch.bfloat16, device=device)
    try:
        torch.mm(a, a, out_dtype=torch.float32)
    except Exception:  # TypeError (no such argument) or RuntimeError (no such kernel)
        return False
    return True


def _logits_fp32(e_c: Tensor, c: Tensor) -> Tensor:
    """``e_c @ c.T`` in float32 (float64 for float64 inputs) without a float32 copy of ``c``
    on a GPU (16-bit products with float32 output; 16-bit logits on a torch without them,
    as eager's)."""
    if e_c.dtype in (torch.float32, torch.float64):
        return e_c @ c.T
    if not e_c.is_cuda:
        return e_c.float() @ c.float().T  # the CPU: tests and the reference
    if _mm_out_dtype(str(e_c.device)):
        return torch.mm(e_c, c.T, out_dtype=torch.float32)
    return (e_c @ c.T).float()


def _torch_grad(z: Tensor, lse_c, gc, safe_c, live_c, beta: float, softcap, v: int) -> None:
    """``z`` (the chunk's logits) becomes ``g_n·∂ℓ_n/∂z`` in place, in PyTorch."""
    th = None
    if softcap is not None:
        th = z.div(softcap).tanh_()
        torch.mul(th, softcap, out=z)
    if not bool(live_c.all()):  # an ignored token's lse may be anything: keep exp finite
        z.masked_fill_(~live_c[:, None], 0.0)
        lse_c = lse_c.masked_fill(~live_c, 0.0)
    z.sub_(lse_c[:, None]).exp_()  # softmax
    z[torch.arange(z.shape[0], device=z.device), safe_c] -= 1.0 - beta
    if beta > 0:
        z.sub_(beta / v)
    z.mul_(gc[:, None])
    if th is not None:
        z.mul_(th.mul_(th).neg_().add_(1.0))  # ∂(softcap·tanh(x/softcap))/∂x


def dense_backward(
    e: Tensor,
    c: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    lse: Tensor,
    g: Tensor,
    *,
    beta: float,
    softcap: float | None,
    need: tuple[bool, bool, bool],
    chunk_rows: int,
    accum_c_fp32: bool = False,
    elementwise: Callable | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(dE, dC, dbias)`` of ``Σ_n g_n·ℓ_n`` (``None`` where ``need`` says so).

    ``g`` ``[N]`` float32: the upstream gradient per token, already 0 at ignored tokens
    (whose ``targets`` may hold anything: they are clamped); ``lse`` ``[N]`` the forward's
    log-sum-exp of the (capped) logits. ``elementwise(z, out, lse, g, targets, beta,
    softcap)``, when given (``triton_lce.dense_grad``), forms a chunk's gradient from its
    float32 logits into ``out`` (``z`` itself allowed) in one pass; without it PyTorch does,
    in several. Runs with autocast off: the products' dtypes are chosen here.
    """
    need_e, need_c, need_b = need
    n, d = e.shape
    v = c.shape[0]
    acc = torch.float64 if e.dtype == torch.float64 else torch.float32
    wide = e.dtype == acc  # float32/64 inputs: the gradient needs no 16-bit copy
    de = torch.zeros_like(e) if need_e else None
    dc_dtype = acc if (accum_c_fp32 or c.dtype in (torch.float32, torch.float64)) else c.dtype
    dc = torch.zeros(v, d, dtype=dc_dtype, device=c.device) if need_c else None
    db = torch.zeros(v, dtype=acc, device=c.device) if need_b else None
    # the float32 gradient is needed beyond the cast for a float32 dC buffer and for dbias
    keep_wide = wide or db is not None or (dc is not None and dc.dtype != e.dtype)
    g, lse = g.contiguous(), lse.contiguous()
    live = g != 0
    safe = targets.clamp(0, v - 1).contiguous()
    rows = max(1, int(chunk_rows))
    with torch.autocast(e.device.type, enabled=False):
        for s in range(0, n, rows):
            live_c = live[s : s + rows]
            if not bool(live_c.any()):
                continue  # every token of the chunk ignored: its gradient rows stay 0
            e_c, gc = e[s : s + rows], g[s : s + rows].to(acc)
            scale = 1.0
            if e.dtype == torch.float16:  # see the module doc (one host sync a chunk)
                scale = float(gc.abs().max())
                gc = gc / scale
            lse_c, safe_c = lse[s : s + rows].to(acc), safe[s : s + rows]
            z = _logits_fp32(e_c, c)
            if bias is not None:
                z += bias.to(acc)
            if elementwise is not None and z.dtype == torch.float32:
                if keep_wide:
                    elementwise(z, z, lse_c, gc, safe_c, beta, softcap)
                    gz = z if wide else z.to(e.dtype)
                else:  # the common case: straight to the 16-bit gradient, z freed at once
                    gz = torch.empty(z.shape, dtype=e.dtype, device=z.device)
                    elementwise(z, gz, lse_c, gc, safe_c, beta, softcap)
                    z = None
            else:
                _torch_grad(z, lse_c, gc, safe_c, live_c, beta, softcap, v)
                gz = z if wide else z.to(e.dtype)
                if not keep_wide:
                    z = None
            if de is not None:
                torch.mm(gz, c, out=de[s : s + rows])
                if scale != 1.0:
                    de[s : s + rows] *= scale
            if dc is not None:
                if dc.dtype == gz.dtype:
                    dc.addmm_(gz.T, e_c, alpha=scale)
                else:  # the float32 buffer (accum_c_fp32): float32 gradient and product
                    dc.addmm_(z.T, e_c.to(dc.dtype), alpha=scale)
            if db is not None:
                db += z.sum(0) * scale
            z = gz = None  # free the chunk before the next one is allocated
    return (
        de,
        dc.to(c.dtype) if dc is not None else None,
        db.to(bias.dtype) if db is not None else None,
    )
