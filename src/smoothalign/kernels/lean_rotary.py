"""Rotary position embedding (RoPE) of the query and key in one pass over memory each way.

``rotary(q, k, cos, sin)`` is ``(q·cos + rotate_half(q)·sin, k·cos + rotate_half(k)·sin)``
with ``rotate_half(x) = (−x₂, x₁)`` over the halves of the head dimension and ``cos``/``sin``
``[B, S, hd]`` broadcast over the heads of ``q``, ``k`` ``[B, H, S, hd]``: transformers'
``apply_rotary_pos_emb`` of the Llama family (``unsqueeze_dim=1``).

Eager PyTorch spends five launches per tensor on it in the forward (two products, a
negation, a concatenation, a sum) and about as many in the backward, each a full read and
write of ``q`` or ``k``. At the Llama-3.2-1B DPO benchmark's shape on an H200, this kernel
together with the lean layers on the reference model took the step from 343 to 304 ms
(docs/results.md, runs E and F; the two were not measured apart); the kernel itself takes
2.2 ms a step. It is a speed change: like eager it keeps only ``cos`` and ``sin``.

On CUDA (``backend="auto"``) the Triton kernel of ``kernels.triton_layers`` reads and writes each tensor once, and rounds where the eager
operations round (each product, then the sum, to the result's dtype; in the backward to
the input's), so its outputs and gradients are the eager operations' bit for bit. That
needs FP fusion off at its launch: with it (Triton's default), the compiler fused one
product into the difference (``fma.rn.bf16`` in the sm_90 PTX), so the first H200 run of
the kernel (docs/results.md, run F) differed from eager where the products cancel.

The PyTorch path is the eager formula itself. It is taken on CPU, for other shapes (an odd
head dimension, ``cos`` not ``[B or 1, S, hd]``), when ``cos``/``sin`` need a gradient,
for dtypes the kernel does not take (each of these on CUDA with a warning, once), and with
``SMOOTHALIGN_LEAN_TRITON=0``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from smoothalign._warn import warn_once
from smoothalign.kernels.lean_layers import BACKENDS, _use_triton


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _eager(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        from smoothalign.kernels.triton_layers import rope

        ctx.save_for_backward(cos, sin)
        ctx.x_dtype = x.dtype
        return rope(x, cos, sin, torch.result_type(x, cos), backward=False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        from smoothalign.kernels.triton_layers import rope

        cos, sin = ctx.saved_tensors
        return rope(grad, cos, sin, ctx.x_dtype, backward=True), None, None


def _kernel_shape(x: Tensor, cos: Tensor) -> bool:
    bsz, _, seq, hd = x.shape
    return (
        hd % 2 == 0 and cos.dim() == 3 and cos.shape[0] in (1, bsz) and cos.shape[1:] == (seq, hd)
    )


def rotary(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, *, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """RoPE of ``q`` and ``k`` (see the module doc); ``backend`` as in ``kernels.lean_layers``
    (``"triton"`` refuses inputs the kernel does not take)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: {backend!r}; choose one of {BACKENDS}")
    if backend == "torch":
        return _eager(q, k, cos, sin)
    fits = (
        q.dim() == k.dim() == 4
        and _kernel_shape(q, cos)
        and _kernel_shape(k, cos)
        and sin.shape == cos.shape
        and sin.dtype == cos.dtype
        and cos.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and cos.device == sin.device == q.device
        and not (cos.requires_grad or sin.requires_grad)
    )
    if not fits:
        if q.is_cuda:  # the kernel was expected here: say once why it is not used
            warn_once(
                f"rotary: the eager formula for q {tuple(q.shape)}, cos {tuple(cos.shape)} "
                f"{cos.dtype}{' with gradients' if cos.requires_grad else ''} (the Triton "
                "kernel takes q, k [B, H, S, hd] with an even hd and cos, sin [B or 1, S, hd] "
                "without gradients)"
            )
        if backend == "triton":
            raise ValueError(
                "rotary, backend='triton': needs q, k [B, H, S, hd] with an even hd and cos, "
                "sin [B or 1, S, hd] of one float dtype, without gradients (got q "
                f"{tuple(q.shape)}, k {tuple(k.shape)}, cos {tuple(cos.shape)} {cos.dtype}, "
                f"sin {tuple(sin.shape)} {sin.dtype})"
            )
        return _eager(q, k, cos, sin)
    if not _use_triton(backend, q, k, width=0):  # CUDA (for auto), q and k of one dtype
        return _eager(q, k, cos, sin)
    return _Rotary.apply(q, cos, sin), _Rotary.apply(k, cos, sin)
