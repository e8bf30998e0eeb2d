"""RMSNorm and SwiGLU that keep fewer activations for the backward: in PyTorch here, and as
Triton kernels on CUDA (``kernels.triton_layers``).

Autograd keeps every intermediate that an operation's backward reads. For the Llama-family
RMSNorm written as PyTorch operations (``x.float()``, ``pow``, ``mean``, ``rsqrt``, two
products) that is an fp32 copy of the input plus the normalised bf16 tensor: 12 bytes per
hidden unit and token for a bf16 model. For ``silu(gate) * up`` it is ``gate``,
``silu(gate)`` and ``up``. These functions compute the same forward, operation for
operation (so the outputs are bit-identical), but save only the input and one fp32 scalar
per token (RMSNorm: 2 bytes per unit), or ``gate`` and ``up`` (SwiGLU), and recompute the
rest in the backward from what they kept: elementwise work, never a matrix product. That
is what Liger Kernel's Triton RMSNorm and SwiGLU keep.

Gradients are those of the eager operations up to rounding: 16-bit inputs are computed in
float32 (``COMPUTE_DTYPE``), as eager's RMSNorm does; float64 inputs stay float64 where
eager's do (the SwiGLU, RMSNorm's weight gradient).

**Recomputing the outputs too** (``recompute_outputs()``): the linear layers after a norm
(q/k/v, gate/up) keep the norm's output for their weight gradients, and ``down_proj`` keeps
``silu(gate) * up``: at Llama-3.2-1B shapes 24 of the 74 KiB a layer keeps per token.
Inside ``recompute_outputs()`` those tensors are saved as a recipe instead (saved-tensor
hooks): the norm's input, weight and ``eps``, or ``gate`` and ``up``, which the norm and
SwiGLU keep anyway, and the backward recomputes the output, bit for bit, when the linear
layer's backward asks for it. Elementwise work again, never a matrix product.

On CUDA (``backend="auto"``) the same functions run as Triton kernels
(``kernels.triton_layers``), one pass over memory each way, with the same saved tensors;
``backend="torch"`` forces the PyTorch path, ``"triton"`` the kernels (also on CPU tensors
under ``TRITON_INTERPRET=1``), and ``SMOOTHALIGN_LEAN_TRITON=0`` keeps CUDA on PyTorch.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from smoothalign.kernels._autograd import first_order_only

# the RMSNorm's arithmetic, as Llama's: float32 whatever the input (even float64); tests set
# float64 to check the backward's formula by finite differences
COMPUTE_DTYPE = torch.float32


BACKENDS = ("auto", "torch", "triton")


def _use_triton(backend: str, *tensors: Tensor, width: int) -> bool:
    """Whether the Triton kernels run: asked for, or ``auto`` on CUDA tensors of one
    supported dtype (and the fp32 arithmetic the kernels implement)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: {backend!r}; choose one of {BACKENDS}")
    if backend == "torch":
        return False
    if backend == "auto":
        if os.environ.get("SMOOTHALIGN_LEAN_TRITON", "1") == "0":
            return False
        if not all(t.is_cuda for t in tensors):
            return False
    dtypes = {t.dtype for t in tensors}
    supported = len(dtypes) == 1 and dtypes <= {torch.float32, torch.bfloat16, torch.float16}
    from smoothalign.kernels import triton_available, triton_interpreted
    from smoothalign.kernels.triton_layers import MAX_FUSED_WIDTH

    ok = supported and torch.float32 == COMPUTE_DTYPE and width <= MAX_FUSED_WIDTH
    ok = ok and triton_available()
    interpreted = triton_interpreted()
    if backend == "triton" and ok and not interpreted and not all(t.is_cuda for t in tensors):
        raise ValueError(
            "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 (set before "
            "triton is imported); on CPU use backend='torch' or 'auto'"
        )
    if backend == "triton" and not ok:
        raise ValueError(
            f"backend='triton': needs one dtype of float32/bfloat16/float16 (got "
            f"{sorted(str(d) for d in dtypes)}), width ≤ {MAX_FUSED_WIDTH} (got {width}) "
            "and triton installed"
        )
    return ok


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float, triton: bool) -> Tensor:
        ctx.triton = triton
        if triton:
            from smoothalign.kernels.triton_layers import rms_norm_forward

            y, rstd = rms_norm_forward(x, weight, eps)
            ctx.save_for_backward(x, weight, rstd)
            return y
        xf = x.to(COMPUTE_DTYPE)
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (xf * rstd).to(x.dtype)

    @staticmethod
    @first_order_only
    def backward(ctx, grad: Tensor):
        x, weight, rstd = ctx.saved_tensors
        if ctx.triton:
            from smoothalign.kernels.triton_layers import rms_norm_backward

            grad_x, grad_w = rms_norm_backward(
                x, weight, rstd, grad, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            )
            return grad_x, grad_w, None, None
        n = x.to(rstd.dtype) * rstd  # the normalised input, recomputed
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            h = n.to(x.dtype)
            acc = torch.promote_types(torch.promote_types(grad.dtype, h.dtype), rstd.dtype)
            gh = grad.to(acc) * h.to(acc)  # float64 stays float64, as in eager's weight·h
            grad_w = gh.reshape(-1, h.shape[-1]).sum(0).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            g = (grad * weight).to(x.dtype).to(rstd.dtype)  # as eager: the product, then .to()
            # d/dx of x·(mean(x²) + eps)^(-1/2): rstd·(g − n·mean(g·n))
            grad_x = (rstd * (g - n * (g * n).mean(-1, keepdim=True))).to(x.dtype)
        return grad_x, grad_w, None, None


def _rms_norm_value(x: Tensor, weight: Tensor, eps: float, triton: bool) -> Tensor:
    """The forward's output alone (the recompute of ``recompute_outputs``)."""
    if triton:
        from smoothalign.kernels.triton_layers import rms_norm_forward

        return rms_norm_forward(x, weight, eps)[0]
    xf = x.to(COMPUTE_DTYPE)
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rms_norm_cast_value(x: Tensor, weight: Tensor, eps: float, triton: bool, dtype) -> Tensor:
    return _rms_norm_value(x, weight, eps, triton).to(dtype)


def rms_norm(
    x: Tensor,
    weight: Tensor,
    eps: float,
    *,
    backend: str = "auto",
    cast_to: torch.dtype | None = None,
) -> Tensor:
    """``weight * (x / sqrt(mean(x²) + eps))`` computed in float32 and cast back to
    ``x.dtype`` before the weight, as Llama's ``LlamaRMSNorm`` does; saves ``x`` and one
    float32 per row for the backward. ``backend``: see the module doc. ``cast_to``: return
    the output cast to this dtype (differentiably), as the linear layers that read it
    under autocast would each cast it; inside :func:`recompute_outputs` the cast output is
    the one recomputed."""
    if x.shape[-1] == 0:
        raise ValueError(f"rms_norm: the normalised (last) dimension is empty: {tuple(x.shape)}")
    triton = _use_triton(backend, x, weight, width=x.shape[-1])
    out = _RMSNorm.apply(x, weight, float(eps), triton)
    cast = cast_to is not None and out.dtype != cast_to
    if cast:
        out = out.to(cast_to)
    if recompute_active():  # the recipe's arguments only where a scope will use them
        args = (x.detach(), weight.detach(), float(eps), triton)
        if cast:
            _register(out, _rms_norm_cast_value, (*args, cast_to))
        else:
            _register(out, _rms_norm_value, args)
    return out


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: Tensor, up: Tensor, triton: bool) -> Tensor:
        ctx.triton = triton
        ctx.save_for_backward(gate, up)
        if triton:
            from smoothalign.kernels.triton_layers import swiglu_forward

            return swiglu_forward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    @first_order_only
    def backward(ctx, grad: Tensor):
        gate, up = ctx.saved_tensors
        if ctx.triton:
            from smoothalign.kernels.triton_layers import swiglu_backward

            grad_gate, grad_up = swiglu_backward(gate, up, grad)
            return grad_gate, grad_up, None
        gf = gate.to(torch.promote_types(gate.dtype, COMPUTE_DTYPE))  # float64 stays float64
        sig = torch.sigmoid(gf)
        silu = (gf * sig).to(gate.dtype)  # as the forward rounded it
        grad_gate = grad_up = None
        if ctx.needs_input_grad[0]:
            d_silu = (grad * up).to(gf.dtype)
            grad_gate = (d_silu * sig * (1 + gf * (1 - sig))).to(gate.dtype)
        if ctx.needs_input_grad[1]:
            grad_up = (grad * silu).to(up.dtype)
        return grad_gate, grad_up, None


def swiglu(gate: Tensor, up: Tensor, *, backend: str = "auto") -> Tensor:
    """``silu(gate) * up``, saving only ``gate`` and ``up`` for the backward.
    ``backend``: see the module doc."""
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
    triton = _use_triton(backend, gate, up, width=0)
    out = _SwiGLU.apply(gate, up, triton)
    if recompute_active():
        _register(out, _swiglu_value, (gate.detach(), up.detach(), triton))
    return out


def _swiglu_value(gate: Tensor, up: Tensor, triton: bool) -> Tensor:
    if triton:
        from smoothalign.kernels.triton_layers import swiglu_forward

        return swiglu_forward(gate, up)
    return F.silu(gate) * up


# ----------------------------------------------------------------- recompute_outputs()
_ACTIVE = threading.local()  # .registry: the innermost recompute_outputs() scope's, or None


class _Source:
    """One norm or SwiGLU output that is not kept: how to recompute it (``fn(*args)``),
    and, while the backward still has readers of it to come, the recomputed tensor, so that
    q, k and v (or gate and up) share one recompute."""

    __slots__ = ("args", "cached", "fn", "pending")

    def __init__(self, fn, args):
        self.fn, self.args, self.cached, self.pending = fn, args, None, 0

    def take(self) -> Tensor:
        if self.cached is None:
            with torch.no_grad():
                self.cached = self.fn(*self.args)
        full = self.cached
        self.pending -= 1
        if self.pending <= 0:  # the last reader: drop it (a second backward recomputes)
            self.cached, self.pending = None, 0
        return full


class _Recipe:
    """A saved tensor that is a view of a :class:`_Source`'s output."""

    __slots__ = ("source", "view")

    def __init__(self, source: _Source, view):
        self.source, self.view = source, view
        source.pending += 1

    def __call__(self) -> Tensor:
        size, stride, offset = self.view
        return self.source.take().as_strided(size, stride, offset)


def _register(out: Tensor, fn, args) -> None:
    """Let the innermost :func:`recompute_outputs` scope recompute ``out`` (``fn(*args)``)
    instead of keeping it, wherever autograd saves it unchanged."""
    registry = getattr(_ACTIVE, "registry", None)
    if registry is not None and out.requires_grad and out.numel():
        # keyed by storage: the consumer may save a view of ``out`` (a reshaped input).
        # The weak reference makes a stale key harmless: while ``out`` lives, its storage
        # (and so its address) cannot belong to another tensor. The version counter (shared
        # by views) refuses a tensor changed in place since: the recipe would rebuild the
        # value before the change.
        storage = out.untyped_storage()
        registry[storage.data_ptr()] = (
            weakref.ref(out),
            storage.nbytes(),
            out.dtype,
            out._version,
            _Source(fn, args),
        )


def recompute_active() -> bool:
    """Whether a :func:`recompute_outputs` scope is open in this thread."""
    return getattr(_ACTIVE, "registry", None) is not None


@contextmanager
def recompute_outputs() -> Iterator[None]:
    """Inside this scope, tensors that autograd saves and that are (views of) the output of
    :func:`rms_norm` or :func:`swiglu` called in the same scope, unchanged since, are not
    kept: the backward recomputes them from the inputs those functions keep anyway (see the
    module doc). Every other saved tensor goes to the saved-tensor hooks already active
    outside, if any (so memory counters see them), else is kept as usual. The recipes hold
    their inputs directly: under hooks that move saved tensors elsewhere (CPU offloading,
    activation checkpointing) those inputs would stay where they are, so do not open this
    scope under them (``models.lean`` does not, in checkpointed layers)."""
    registry: dict[int, tuple] = {}
    outer = None
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    if top is not None:
        outer = top(False)
    outer_pack, outer_unpack = outer if outer is not None else (None, None)

    def pack(t: Tensor):
        entry = registry.get(t.untyped_storage().data_ptr()) if t.numel() else None
        if entry is not None:
            ref, nbytes, dtype, version, source = entry
            base = ref()
            if (
                base is not None
                and t.dtype == dtype
                and t._version == version
                and t.untyped_storage().nbytes() == nbytes
                and base.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
            ):
                return _Recipe(source, (t.size(), t.stride(), t.storage_offset()))
        return ("kept", outer_pack(t) if outer_pack is not None else t)

    def unpack(packed):
        if isinstance(packed, _Recipe):
            return packed()
        inner = packed[1]
        return outer_unpack(inner) if outer_unpack is not None else inner

    previous = getattr(_ACTIVE, "registry", None)
    _ACTIVE.registry = registry
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        _ACTIVE.registry = previous
