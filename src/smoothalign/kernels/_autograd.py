"""``first_order_only``: the kernels' backwards give first derivatives only, and say so.

Their gradients are computed from saved tensors with operations autograd does not see
(Triton kernels, in-place updates, a saved ``rstd`` without its graph). Under
``create_graph=True`` PyTorch's ``once_differentiable`` guards against a second derivative
only when the *incoming gradient* requires grad; a gradient penalty such as
``loss + |∂loss/∂e|²`` reaches ``e`` only through the saved tensors, and its term would be
silently dropped. This decorator also looks at the saved tensors: if any of them requires
grad, the gradients it returns carry a node that raises when differentiated again.

That node must lie on the path back to the inputs, not beside it: ``once_differentiable``
hangs it on fresh leaves, which ``.backward()`` reaches (and raises) but
``torch.autograd.grad(penalty, e)`` does not, since that walks only the nodes between
``penalty`` and ``e``: it raised PyTorch's "appears to not have been used in the graph"
and, with ``allow_unused=True``, returned ``None``, the penalty's term silently dropped.
So each returned gradient is tied, through the error node, to every incoming gradient
and saved tensor that requires grad (by adding an exact zero: the sum of an empty slice
of each), and any route that differentiates it again meets the error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

MESSAGE = (
    b"smoothalign's fused kernels give first derivatives only: a second derivative "
    b"(create_graph=True, then a backward through the gradient) is not supported"
)


def first_order_only(backward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(backward)
    def wrapper(ctx: Any, *grads: Any) -> Any:
        with torch.no_grad():
            outputs = backward(ctx, *grads)
        if not torch.is_grad_enabled():  # the usual case: no create_graph
            return outputs
        watched = [
            t for t in (*grads, *ctx.saved_tensors) if isinstance(t, Tensor) and t.requires_grad
        ]
        if not watched:
            return outputs
        # an exact 0 (each sum is over no element) whose graph reaches every watched tensor
        anchor = sum(t.reshape(-1)[:0].sum(dtype=torch.float32) for t in watched)
        single = not isinstance(outputs, tuple)
        items = (outputs,) if single else outputs
        error = torch._C._functions.DelayedError(MESSAGE, len(items))

        def tracked(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            # t + 0 in t's dtype and on its device, carrying anchor's graph back to the inputs
            return t.detach() + anchor.to(device=t.device, dtype=t.dtype)

        wrapped = error(*[tracked(t) for t in items])
        return wrapped[0] if single else wrapped

    return wrapper
