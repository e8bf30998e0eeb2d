"""Linear cross-entropy in plain PyTorch, chunked over tokens: the CPU path and the reference.

One ``torch.autograd.Function`` returns the per-token loss

    ℓ_n = lse(z_n) − (1 − β)·z_{n,t_n} − β·mean_v z_{n,v},     z_n = softcap(C·e_n + b)

(0 for ignored tokens) without holding the ``[N, V]`` logits: forward computes them chunk by
chunk and keeps only ``lse`` ``[N]``; backward recomputes each chunk's logits and forms
``∂ℓ/∂z = softmax − (1 − β)·onehot − β/V`` for that chunk only. Without softcap the mean
logit is ``e·c̄ + mean(b)`` (``c̄`` the mean row of C): no pass over the chunk's logits.

Arithmetic is float32 (float64 when an input is float64) whatever the input dtype: bf16 and
fp16 inputs are upcast, and C is upcast once per call — this is the reference and CPU path,
not the fast one (that is ``triton_lce``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from smoothalign.kernels._autograd import first_order_only

# logits held at once by one chunk, in elements (float32: 64 MiB)
CHUNK_ELEMENTS = 1 << 24


def _acc_dtype(*tensors: Tensor | None) -> torch.dtype:
    return (
        torch.float64
        if any(t is not None and t.dtype == torch.float64 for t in tensors)
        else torch.float32
    )


def _chunk_rows(n: int, v: int, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        return max(1, int(chunk_rows))
    return max(1, min(n, CHUNK_ELEMENTS // max(v, 1)))


def _logits(e: Tensor, c: Tensor, bias: Tensor | None, softcap: float | None):
    """``(z, tanh)``: the capped logits and, with softcap, ``tanh(raw/softcap)`` for the
    gradient (``None`` otherwise)."""
    raw = e @ c.T
    if bias is not None:
        raw = raw + bias
    if softcap is None:
        return raw, None
    th = torch.tanh(raw / softcap)
    return softcap * th, th


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Per-token smoothed cross-entropy ``[N]`` (float32/64) of ``e`` ``[N, D]`` against
    ``c`` ``[V, D]`` (+ ``bias`` ``[V]``); 0 where ``targets == ignore_index``."""

    @staticmethod
    def forward(
        ctx,
        e: Tensor,
        c: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        beta: float,
        ignore_index: int,
        softcap: float | None,
        chunk_rows: int | None,
    ) -> Tensor:
        n, _ = e.shape
        v = c.shape[0]
        acc = _acc_dtype(e, c, bias)
        valid = targets != ignore_index
        safe = targets.masked_fill(~valid, 0)
        cc = c.to(acc)
        bb = bias.to(acc) if bias is not None else None
        if beta > 0 and softcap is None:  # the mean-logit trick: e·c̄ + mean(b)
            c_mean = cc.mean(0)
            b_mean = bb.mean() if bb is not None else 0.0
        loss = torch.zeros(n, dtype=acc, device=e.device)
        lse = torch.zeros(n, dtype=torch.float32 if acc == torch.float32 else acc, device=e.device)
        rows = _chunk_rows(n, v, chunk_rows)
        with torch.no_grad():
            for s in range(0, n, rows):
                ec = e[s : s + rows].to(acc)
                z, _ = _logits(ec, cc, bb, softcap)
                lse_c = torch.logsumexp(z, -1)
                zt = z.gather(1, safe[s : s + rows, None]).squeeze(1)
                ell = lse_c - (1.0 - beta) * zt
                if beta > 0:
                    mean_z = z.mean(-1) if softcap is not None else ec @ c_mean + b_mean
                    ell = ell - beta * mean_z
                loss[s : s + rows] = ell
                lse[s : s + rows] = lse_c
        loss = loss.masked_fill(~valid, 0.0)
        ctx.save_for_backward(e, c, bias, targets, lse)
        ctx.beta, ctx.ignore_index, ctx.softcap, ctx.chunk_rows = (
            beta,
            ignore_index,
            softcap,
            chunk_rows,
        )
        return loss

    @staticmethod
    @first_order_only
    def backward(ctx, grad: Tensor):
        e, c, bias, targets, lse = ctx.saved_tensors
        beta, softcap = ctx.beta, ctx.softcap
        need_e, need_c, need_b = ctx.needs_input_grad[:3]
        n, _ = e.shape
        v = c.shape[0]
        acc = _acc_dtype(e, c, bias)
        valid = targets != ctx.ignore_index
        safe = targets.masked_fill(~valid, 0)
        g = grad.to(acc).masked_fill(~valid, 0.0)
        cc = c.to(acc)
        bb = bias.to(acc) if bias is not None else None
        de = torch.zeros(n, e.shape[1], dtype=acc, device=e.device) if need_e else None
        dc = torch.zeros_like(cc) if need_c else None
        db = torch.zeros(v, dtype=acc, device=e.device) if need_b else None
        rows = _chunk_rows(n, v, ctx.chunk_rows)
        for s in range(0, n, rows):
            gc = g[s : s + rows]
            if not bool(gc.any()):
                continue  # every token of the chunk ignored (or zero upstream gradient)
            ec = e[s : s + rows].to(acc)
            z, th = _logits(ec, cc, bb, softcap)
            dz = torch.exp(z - lse[s : s + rows, None].to(acc))
            dz.scatter_add_(
                1, safe[s : s + rows, None], torch.full_like(gc[:, None], -(1.0 - beta))
            )
            if beta > 0:
                dz -= beta / v
            dz *= gc[:, None]
            if th is not None:
                dz *= 1.0 - th * th
            if de is not None:
                de[s : s + rows] = dz @ cc
            if dc is not None:
                dc += dz.T @ ec
            if db is not None:
                db += dz.sum(0)
        return (
            de.to(e.dtype) if de is not None else None,
            dc.to(c.dtype) if dc is not None else None,
            db.to(bias.dtype) if db is not None else None,
            None,
            None,
            None,
            None,
            None,
        )


def chunked_token_losses(
    e: Tensor,
    c: Tensor,
    targets: Tensor,
    *,
    beta: float = 0.0,
    ignore_index: int = -100,
    softcap: float | None = None,
    bias: Tensor | None = None,
    chunk_rows: int | None = None,
) -> Tensor:
    """Per-token losses ``[N]`` (``e`` ``[N, D]``, ``targets`` ``[N]``), see the module doc."""
    return ChunkedLinearCrossEntropy.apply(
        e, c, bias, targets, float(beta), int(ignore_index), softcap, chunk_rows
    )
