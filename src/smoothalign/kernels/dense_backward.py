"""The linear cross-entropy's backward through three BLAS products per chunk of tokens.

The Triton backward (``triton_lce._backward``) recomputes the logits block by block and adds
each block's gradient into ``dE`` and ``dC`` with atomic adds. That is fast where gradient
filtering skips most blocks (random or untrained weights: a near-uniform softmax) and bound
by the adds where it skips few, as with a trained model's peaked softmax (SmolLM2's hidden
states: 96% of the blocks computed, ``docs/results.md``). This backward instead holds the
gradient of ``rows`` tokens at a time and hands the products to the BLAS (cuBLAS on a GPU)::

    Z = E_c·Cᵀ (+ b), float32                  G = g_n·(softmax(Z) − (1 − β)·onehot − β/V)
    dE_c = G·C        dC += Gᵀ·E_c              db += Σ_n G_n        (·(1 − tanh²) with softcap)

Every entry counts: no filtering, exact up to the products' rounding. The logits are float32
(``lse`` from the forward is), ``G`` is cast to the inputs' dtype for the two products (as
cuBLAS needs for its 16-bit speed; fp32 accumulation inside), and ``dC`` accumulates in its
own dtype across chunks (one rounding per chunk; ``accum_c_fp32`` for a float32 buffer).

Memory beyond the gradients: the chunk's float32 logits and its 16-bit gradient,
``rows·V·6`` bytes for 16-bit inputs (``·4`` more with softcap, for ``tanh``). The chunk size
is the trade: every chunk reads ``C`` twice and ``dC`` once, so small chunks are bound by
memory traffic. An experiment, not the default: not yet timed on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def dense_chunk_rows(v: int, dtype: torch.dtype, chunk_bytes: int, softcap: bool) -> int:
    """Tokens per chunk so that the chunk's buffers take at most ``chunk_bytes``."""
    per_entry = 4 + (0 if dtype in (torch.float32, torch.float64) else 2) + (4 if softcap else 0)
    return max(1, int(chunk_bytes) // (per_entry * max(v, 1)))


def _logits_fp32(e_c: Tensor, c: Tensor) -> Tensor:
    """``e_c @ c.T`` in float32 (float64 for float64 inputs) without a float32 copy of ``c``
    on a GPU (16-bit products with float32 output)."""
    if e_c.dtype in (torch.float32, torch.float64):
        return e_c @ c.T
    if e_c.is_cuda:
        try:
            return torch.mm(e_c, c.T, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):
            pass  # an older torch: 16-bit logits, as eager's
    return (e_c @ c.T).float() if e_c.is_cuda else e_c.float() @ c.float().T


def _products(gz: Tensor, e_c: Tensor, c: Tensor, de, dc, db, s: int) -> None:
    """A chunk's share: ``dE[s:s+rows] = G·C``, ``dC += Gᵀ·E_c``, ``db += Σ_n G_n``."""
    if de is not None:
        torch.mm(gz, c, out=de[s : s + gz.shape[0]])
    if dc is not None:
        if dc.dtype == gz.dtype:
            dc.addmm_(gz.T, e_c)
        else:  # a float32 buffer for 16-bit inputs (accum_c_fp32)
            dc += _logits_fp32(gz.T, e_c.T)
    if db is not None:
        db += gz.sum(0, dtype=db.dtype)


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
    float32 logits into ``out`` in one pass; without it PyTorch does, in several.
    """
    need_e, need_c, need_b = need
    n, d = e.shape
    v = c.shape[0]
    acc = torch.float64 if e.dtype == torch.float64 else torch.float32
    de = torch.zeros_like(e) if need_e else None
    dc_dtype = acc if (accum_c_fp32 or c.dtype in (torch.float32, torch.float64)) else c.dtype
    dc = torch.zeros(v, d, dtype=dc_dtype, device=c.device) if need_c else None
    db = torch.zeros(v, dtype=acc, device=c.device) if need_b else None
    live = g != 0
    safe = targets.clamp(0, v - 1)
    for s in range(0, n, max(1, int(chunk_rows))):
        gc = g[s : s + chunk_rows].to(acc)
        if not bool(live[s : s + chunk_rows].any()):
            continue  # every token of the chunk ignored: its gradient rows stay 0
        e_c = e[s : s + chunk_rows]
        live_c = live[s : s + chunk_rows]
        lse_c = lse[s : s + chunk_rows].to(acc)
        z = _logits_fp32(e_c, c)
        if bias is not None:
            z += bias.to(acc)
        if elementwise is not None:
            gz = torch.empty(z.shape, dtype=e.dtype, device=z.device)
            elementwise(z, gz, lse_c, gc, safe[s : s + chunk_rows], beta, softcap)
            del z
            _products(gz, e_c, c, de, dc, db, s)
            continue
        th = None
        if softcap is not None:
            th = torch.tanh(z / softcap)
            torch.mul(th, softcap, out=z)
        if not bool(live_c.all()):  # an ignored token's lse may be anything: keep exp finite
            z.masked_fill_(~live_c[:, None], 0.0)
            lse_c = lse_c.masked_fill(~live_c, 0.0)
        z.sub_(lse_c[:, None]).exp_()  # softmax
        rows = torch.arange(z.shape[0], device=z.device)
        z[rows, safe[s : s + chunk_rows]] -= 1.0 - beta
        if beta > 0:
            z.sub_(beta / v)
        z.mul_(gc[:, None])
        if th is not None:
            z.mul_(th.mul_(th).neg_().add_(1.0))  # ∂(softcap·tanh(x/softcap))/∂x
            del th
        if db is not None:
            db += z.sum(0)
        gz = z if z.dtype == e.dtype else z.to(e.dtype)
        del z  # the 16-bit copy is all the products need
        _products(gz, e_c, c, de, dc, None, s)
    return (
        de,
        dc.to(c.dtype) if dc is not None else None,
        db.to(bias.dtype) if db is not None else None,
    )
