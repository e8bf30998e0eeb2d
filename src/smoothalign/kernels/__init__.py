"""Fused linear cross-entropy and log-probabilities without the ``[N, V]`` logits (SPEC §5).

``linear_cross_entropy(e, c, targets, label_smoothing=β)`` equals
``F.cross_entropy(e @ c.T (+ bias), targets, label_smoothing=β)`` and
``linear_log_probs(e, c, targets)`` equals ``log_softmax(e @ c.T)[target]``, with gradients
for ``e``, ``c`` and ``bias``, but neither ever holds the logits of all tokens at once.

Two implementations behind one signature, chosen by device (``impl=None``):

* ``"triton"`` (``triton_lce``) on CUDA when Triton is importable: blockwise kernels, the
  logits only ever live in registers/shared memory;
* ``"chunked"`` (``chunked``) otherwise: PyTorch, chunked over tokens, float32 arithmetic;
  the reference for the Triton kernels and the CPU path.

Differences from ``F.cross_entropy``, all deliberate: the result is float32 (float64 for
float64 inputs) whatever the input dtype; ``reduction="mean"`` over a batch whose tokens are
all ignored is 0 with zero gradients (``F.cross_entropy`` gives NaN); under autocast ``e``
and ``c`` are cast to the autocast dtype first, as autocast does for the eager ``e @ c.T``
(float64 inputs are not), and the bias keeps its own dtype, as in ``e @ c.T + bias``. Bad
input — a target outside ``[0, V)`` that is not ``ignore_index``, targets that are not
int64/int32, mismatched shapes, non-float tensors, a ``filter_eps`` outside (0, 1) — is a
``ValueError`` before any kernel runs, naming the argument; an argument of the wrong kind
(``e``, ``c``, ``targets`` or ``bias`` that is not a tensor — a NumPy array, a list —, a
``label_smoothing`` or ``softcap`` that is not a number, an ``ignore_index`` that is not an
integer) is an ``ArgumentTypeError``, a ``TypeError`` that is a ``ValueError`` too. The backward is not itself differentiable (no
double backward: asking for one is an error).
Triton is imported lazily: the package works without it.
"""

from __future__ import annotations

import functools
import math
import os

import torch
from torch import Tensor

from smoothalign._checks import ArgumentTypeError, as_integer, as_number
from smoothalign.kernels.chunked import chunked_token_losses

IMPLS = ("auto", "triton", "chunked")
REDUCTIONS = ("mean", "sum", "none")
GRAD_FILTERS = ("auto", "off")
FUSED_LOGPS = ("auto", "on", "off")
"""The trainers' fused LM-head kernel settings (``dpo --fused-logps``, ``sft --fused``):
``auto`` (on with CUDA), ``on``, ``off``."""
"""The trainers' ``--grad-filter`` settings: the kernels' ``filter_eps`` ``"auto"`` or ``None``."""

__all__ = [
    "GRAD_FILTERS",
    "IMPLS",
    "autocast_inputs",
    "check_filter_eps",
    "filter_eps_for",
    "linear_cross_entropy",
    "linear_log_probs",
    "triton_available",
    "triton_interpreted",
]


def triton_interpreted() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's interpreter, read as Triton reads it
    (``1``, ``true`` or ``on``, any case)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on")


def filter_eps_for(setting: str) -> str | None:
    """``filter_eps`` for a ``--grad-filter`` setting: ``"auto"`` (skip the backward blocks
    whose softmax is negligible, as Cut Cross-Entropy does) or ``"off"`` (every block:
    no softmax mass dropped, slower where the softmax is spread thin)."""
    if setting not in GRAD_FILTERS:
        raise ValueError(f"grad_filter: {setting!r}; choose one of {GRAD_FILTERS}")
    return "auto" if setting == "auto" else None


def check_filter_eps(filter_eps: object) -> float | str | None:
    """``filter_eps``: ``"auto"``, ``None`` or a number in (0, 1), returned as it is used
    (a number as a Python float). A number is what :func:`~smoothalign._checks.as_number`
    takes, as for the other options (``np.float32(0.5)``, a 0-d tensor); a bool is refused
    rather than read as 1. Every entry of ``|softmax − (1 − β)·onehot|`` is at most 1, so a
    threshold of 1 or more would drop (nearly) the whole gradient."""
    if filter_eps is None or (isinstance(filter_eps, str) and filter_eps == "auto"):
        return filter_eps
    if isinstance(filter_eps, str):
        raise ArgumentTypeError(f"filter_eps: {filter_eps!r}; a number in (0, 1), 'auto' or None")
    value = as_number(filter_eps, "filter_eps")
    if not 0.0 < value < 1.0:  # NaN fails too
        raise ValueError(f"filter_eps: {filter_eps!r}; a number in (0, 1), 'auto' or None")
    return value


@functools.cache
def triton_available() -> bool:
    """Whether ``triton`` imports (its kernels also need a CUDA device, or
    ``TRITON_INTERPRET=1`` for CPU tensors)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


def _resolve_impl(impl: str | None, e: Tensor) -> str:
    impl = impl or "auto"
    if impl not in IMPLS:
        raise ValueError(f"impl: {impl!r}; choose one of {IMPLS}")
    if impl == "auto":
        usable = e.is_cuda and e.dtype != torch.float64 and triton_available()
        return "triton" if usable else "chunked"
    if impl == "triton" and not triton_available():
        raise RuntimeError("impl='triton': triton is not installed")
    if impl == "triton" and not e.is_cuda and not triton_interpreted():
        raise ValueError(
            f"impl='triton': the inputs are on {e.device.type}, where Triton runs only "
            "under TRITON_INTERPRET=1 (on the CPU, set before importing); use "
            "impl='chunked' or 'auto'"
        )
    return impl


def _arguments(
    e: Tensor,
    c: Tensor,
    targets: Tensor,
    bias: Tensor | None,
    label_smoothing: float,
    softcap: float | None,
    ignore_index: int,
) -> tuple[float, float | None, int]:
    """The kinds of the arguments, before any other check: tensors for ``e``, ``c``,
    ``targets`` and ``bias`` (the kernels run where their inputs are, so nothing is
    converted: a NumPy array has no device to follow), a number for ``label_smoothing`` and
    ``softcap``, an integer for ``ignore_index`` (``-100.5`` is not one: it was truncated).
    Returns the three options as Python numbers."""
    for name, t in (("e", e), ("c", c), ("targets", targets), ("bias", bias)):
        if t is None and name == "bias":
            continue
        if not isinstance(t, Tensor):
            raise ArgumentTypeError(
                f"{name}: expected a torch.Tensor, got {type(t).__name__} (the fused kernels "
                "take tensors only: convert with torch.as_tensor)"
            )
    label_smoothing = as_number(label_smoothing, "label_smoothing")
    softcap = None if softcap is None else as_number(softcap, "softcap")
    return label_smoothing, softcap, as_integer(ignore_index, "ignore_index")


def _check(
    e: Tensor,
    c: Tensor,
    targets: Tensor,
    bias: Tensor | None,
    label_smoothing: float,
    softcap: float | None,
    ignore_index: int,
) -> None:
    for name, t in (("e", e), ("c", c), ("bias", bias)):
        if t is not None and (not t.dtype.is_floating_point or t.dtype.is_complex):
            raise ValueError(f"{name}: a real floating-point tensor expected, got {t.dtype}")
    if e.dim() < 1:
        raise ValueError("e: expected [..., D], got a 0-dimensional tensor")
    if c.dim() != 2:
        raise ValueError(f"c: expected [V, D], got shape {tuple(c.shape)}")
    if e.shape[-1] != c.shape[1]:
        raise ValueError(f"e: last dimension {e.shape[-1]} != c's D = {c.shape[1]}")
    if tuple(targets.shape) != tuple(e.shape[:-1]):
        raise ValueError(
            f"targets: shape {tuple(targets.shape)} != e's leading shape {tuple(e.shape[:-1])}"
        )
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets: int64 or int32 class ids expected, got {targets.dtype}")
    if bias is not None and tuple(bias.shape) != (c.shape[0],):
        raise ValueError(f"bias: expected [{c.shape[0]}], got {tuple(bias.shape)}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing: {label_smoothing!r} not in [0, 1]")
    if softcap is not None and (
        isinstance(softcap, bool) or not (softcap > 0 and math.isfinite(softcap))
    ):
        raise ValueError(f"softcap: {softcap!r}; must be finite and > 0 (or None)")
    # a target outside the vocabulary would read a wrong (Triton) or no (CUDA gather) logit
    v = c.shape[0]
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= v))
    if bool(bad.any()):  # one host sync per call
        where = [int(i) for i in bad.nonzero()[0]]
        pos = where[0] if len(where) == 1 else tuple(where)
        raise ValueError(
            f"targets: {int(targets[tuple(where)])} at position {pos} is outside the "
            f"vocabulary [0, {v}) and is not ignore_index ({ignore_index})"
        )


def autocast_inputs(e: Tensor, c: Tensor):
    """Under autocast, cast ``e`` and ``c`` as autocast would for the eager ``e @ c.T``
    (float64 is not eligible: autocast leaves it alone). The bias keeps its dtype, as in the
    eager ``e @ c.T + bias``, whose sum promotes to the bias's float32."""
    kind = e.device.type
    eligible = torch.float64 not in (e.dtype, c.dtype)
    if eligible and kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind):
        dtype = torch.get_autocast_dtype(kind)
        e, c = e.to(dtype), c.to(dtype)
    return e, c


def _token_losses(
    e: Tensor,
    c: Tensor,
    targets: Tensor,
    *,
    beta: float,
    ignore_index: int,
    softcap: float | None,
    bias: Tensor | None,
    impl: str | None,
    filter_eps: float | str | None,
    filter_stats: dict | None = None,
) -> Tensor:
    """Per-token losses ``[N]`` of flat inputs, 0 for ignored tokens."""
    which = _resolve_impl(impl, e)
    e, c = autocast_inputs(e, c)
    with torch.autocast(e.device.type, enabled=False):
        if which == "triton":
            from smoothalign.kernels.triton_lce import triton_token_losses

            return triton_token_losses(
                e,
                c,
                targets,
                beta=beta,
                ignore_index=ignore_index,
                softcap=softcap,
                bias=bias,
                filter_eps=filter_eps,
                filter_stats=filter_stats,
            )
        if filter_stats is not None:  # the chunked path never filters
            live = targets != ignore_index
            filter_stats["dropped_mass"] = torch.where(live, 0.0, math.nan).to(e.device)
        return chunked_token_losses(
            e, c, targets, beta=beta, ignore_index=ignore_index, softcap=softcap, bias=bias
        )


def linear_cross_entropy(
    e: Tensor,
    c: Tensor,
    targets: Tensor,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    softcap: float | None = None,
    bias: Tensor | None = None,
    impl: str | None = None,
    filter_eps: float | str | None = "auto",
    filter_stats: dict | None = None,
) -> Tensor:
    """``F.cross_entropy(e @ c.T + bias, targets, label_smoothing=β)`` without the logits.

    ``e`` ``[..., D]`` hidden states, ``c`` ``[V, D]`` the LM head, ``targets`` ``[...]``
    class ids (``ignore_index`` to skip a token), ``bias`` ``[V]`` optional; ``softcap``
    caps the logits as ``softcap·tanh(z/softcap)`` (Gemma's final-logit softcapping).
    ``reduction``: ``"mean"`` over non-ignored tokens (0 when there are none), ``"sum"``, or
    ``"none"`` (shape of ``targets``, 0 at ignored tokens). Float32 result (float64 for
    float64 inputs). ``filter_eps`` (Triton only): skip a block's gradient when every
    ``|softmax − (1−β)·onehot|`` in it is below this; ``"auto"`` = ``finfo(dtype).eps/32``
    for bf16/fp16 and no filtering for float32, ``None`` never filters; with it the Triton
    backward also leaves out of ``dE`` the rows of a computed block below a quarter of it,
    and of ``dC`` such columns, and puts the off-target mass left out of ``dE`` back along
    C's mean row (``triton_lce``'s strips and compensation). ``filter_stats``: a dict that
    gets ``"dropped_mass"`` (float32 ``[N]``: per token, the softmax mass off its target
    that filtering left out of its ``dE``, before the compensation, NaN for ignored tokens;
    filled by the backward, or at once with zeros where nothing is filtered). ``impl``: ``None`` or
    ``"auto"`` (Triton on CUDA, chunked PyTorch otherwise), ``"triton"``, ``"chunked"``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: {reduction!r}; choose one of {REDUCTIONS}")
    label_smoothing, softcap, ignore_index = _arguments(
        e, c, targets, bias, label_smoothing, softcap, ignore_index
    )
    _check(e, c, targets, bias, label_smoothing, softcap, ignore_index)
    filter_eps = check_filter_eps(filter_eps)
    shape = targets.shape
    flat_t = targets.reshape(-1)
    losses = _token_losses(
        e.reshape(-1, e.shape[-1]),
        c,
        flat_t,
        beta=label_smoothing,
        ignore_index=ignore_index,
        softcap=softcap,
        bias=bias,
        impl=impl,
        filter_eps=filter_eps,
        filter_stats=filter_stats,
    )
    if reduction == "none":
        return losses.reshape(shape)
    if reduction == "sum":
        return losses.sum()
    n_valid = (flat_t != ignore_index).sum().clamp(min=1)
    return losses.sum() / n_valid.to(losses.dtype)


def linear_log_probs(
    e: Tensor,
    c: Tensor,
    targets: Tensor,
    *,
    ignore_index: int = -100,
    softcap: float | None = None,
    bias: Tensor | None = None,
    impl: str | None = None,
    filter_eps: float | str | None = "auto",
    filter_stats: dict | None = None,
) -> Tensor:
    """Per-token ``log softmax(e @ c.T + bias)[target]``, shape of ``targets``, float32
    (float64 for float64 inputs), 0 at ignored tokens; differentiable in ``e``, ``c``,
    ``bias``. The same kernels as :func:`linear_cross_entropy` (it is ``−`` its unsmoothed,
    unreduced loss), ``filter_stats`` included."""
    _, softcap, ignore_index = _arguments(e, c, targets, bias, 0.0, softcap, ignore_index)
    _check(e, c, targets, bias, 0.0, softcap, ignore_index)
    filter_eps = check_filter_eps(filter_eps)
    losses = _token_losses(
        e.reshape(-1, e.shape[-1]),
        c,
        targets.reshape(-1),
        beta=0.0,
        ignore_index=ignore_index,
        softcap=softcap,
        bias=bias,
        impl=impl,
        filter_eps=filter_eps,
        filter_stats=filter_stats,
    )
    return (-losses).reshape(targets.shape)
