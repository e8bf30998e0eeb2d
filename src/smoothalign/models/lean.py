"""Swap a model's RMSNorm and SwiGLU MLP forwards for the activation-lean ones of
``kernels.lean_layers`` (same outputs, fewer tensors kept for the backward), and its
attention's rotary embedding for ``kernels.lean_rotary``'s (the same formula, one Triton
pass over q and k each way on CUDA: a speed change, it keeps what eager keeps).

The rotary embedding is a module-level function of the modeling file
(``apply_rotary_pos_emb``), not a module. It is replaced there by a dispatcher that calls
the lean version only inside the forward of a patched attention module (a context
variable says so) and the original everywhere else, so other models in the process, and
this model's unpatched parts, compute exactly what they did.

Only classes known to compute exactly ``weight * norm(x).to(dtype)`` and
``down_proj(silu(gate_proj(x)) * up_proj(x))`` are touched (Llama, Mistral, Qwen2/3 and
their SmolLM2 relatives); before a class is patched its new forward is run beside the
original on a small input and must give the same output bit for bit, so a transformers
version that changes a formula leaves that class alone instead of changing the model.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import types
from typing import Any

import torch
from torch import nn

from smoothalign._warn import warn_once
from smoothalign.kernels.lean_layers import recompute_active, recompute_outputs, rms_norm, swiglu
from smoothalign.kernels.lean_rotary import rotary

NORM_CLASSES = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")
MLP_CLASSES = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP")
ATTENTION_CLASSES = ("LlamaAttention", "MistralAttention", "Qwen2Attention", "Qwen3Attention")
LAYER_CLASSES = (
    "LlamaDecoderLayer",
    "MistralDecoderLayer",
    "Qwen2DecoderLayer",
    "Qwen3DecoderLayer",
)


def _lean_norm_forward(self, hidden_states, backend="auto"):
    return rms_norm(hidden_states, self.weight, self.variance_epsilon, backend=backend)


def _lean_mlp_forward(self, x, backend="auto"):
    return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x), backend=backend))


def _is_silu(act: Any) -> bool:
    return isinstance(act, nn.SiLU) or type(act).__name__ in ("SiLUActivation", "SiLU")


def _same_output(module: nn.Module, lean, width: int) -> bool:
    """The lean forward's formula equals the module's own, bit for bit, on a random input in
    the module's dtype and on its device: checked on the PyTorch path, which does the same
    operations (the Triton kernels, used on CUDA, are tested against it, to rounding)."""
    param = next(module.parameters())
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        x = torch.randn(2, 3, width, generator=g).to(device=param.device, dtype=param.dtype)
        return bool(torch.equal(type(module).forward(module, x), lean(module, x, "torch")))


def _autocasting() -> bool:
    return torch.is_autocast_enabled("cuda") or torch.is_autocast_enabled("cpu")


def _no_lora_input_casts(layer: nn.Module, active: bool):
    """Under autocast, PEFT's LoRA layers cast their input to the adapter's (fp32) dtype
    and autocast casts it back for the matrix product: the copy saved is a new tensor, not
    the norm's output or the SwiGLU product. Without PEFT's cast the same values reach the
    adapters (autocast casts fp32 and bf16 inputs alike) and the saved input is the one a
    recipe can rebuild."""
    if not active:
        return contextlib.nullcontext()
    try:
        from peft.helpers import disable_input_dtype_casting
    except ImportError:  # no PEFT, no LoRA layers to tell
        return contextlib.nullcontext()
    return disable_input_dtype_casting(layer)


def _scoped_layer_forward(self, *args, **kwargs):
    """The layer's own (class) forward inside :func:`recompute_outputs`; bound as a method,
    so that a deep copy of the model binds it to the copy. Not in a checkpointed layer:
    checkpointing keeps nothing of the layer, and the recipes would hold their inputs
    outside its hooks."""
    forward = type(self).forward
    if getattr(self, "gradient_checkpointing", False) and self.training:
        return forward(self, *args, **kwargs)
    with recompute_outputs(), _no_lora_input_casts(self, _autocasting()):
        return forward(self, *args, **kwargs)


def _recomputed_norm_forward(self, hidden_states, backend="auto"):
    """A decoder layer's input / post-attention norm with ``recompute``: under autocast
    and inside the layer's recompute scope, its output goes cast to the autocast dtype, as
    each linear layer reading it (q, k, v; gate, up) would cast it for itself first (the
    same values, bit for bit, when each reader casts before anything else: LoRA dropout,
    if any, now runs on the cast values), so that one tensor is saved for all of them and
    it can be recomputed instead."""
    device = hidden_states.device.type
    cast_to = None
    if recompute_active() and torch.is_autocast_enabled(device):
        cast_to = torch.get_autocast_dtype(device)
    return rms_norm(
        hidden_states, self.weight, self.variance_epsilon, backend=backend, cast_to=cast_to
    )


_LEAN_ROPE = contextvars.ContextVar("smoothalign_lean_rope", default=False)


def _rope_dispatcher(original):
    """``apply_rotary_pos_emb`` for a modeling file: the lean rotary embedding inside a
    patched attention forward (and for the plain 4-argument call only), else ``original``.
    While torch.compile traces, always ``original`` (its compiler fuses the formula itself):
    a context variable cannot be traced, and reading one would break every graph of every
    model of this modeling file, patched or not."""

    @functools.wraps(original)
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        if torch.compiler.is_compiling() or not _LEAN_ROPE.get():
            return original(q, k, cos, sin, *args, **kwargs)
        if args or kwargs:  # a call the lean version does not take (unsqueeze_dim, ...)
            warn_once(
                "lean layers: apply_rotary_pos_emb called with more than (q, k, cos, sin); "
                "the modeling file's own function is used"
            )
            return original(q, k, cos, sin, *args, **kwargs)
        return rotary(q, k, cos, sin)

    apply_rotary_pos_emb.smoothalign_original = original
    return apply_rotary_pos_emb


@functools.cache
def _same_rope(original, device: str, dtype: torch.dtype) -> bool:
    """``original`` (a modeling file's function) computes what ``rotary`` does, bit for
    bit, on random q, k, cos, sin of this dtype and device (PyTorch path); once per
    function, device and dtype."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    q, k, cos, sin = rand(2, 3, 5, 8), rand(2, 1, 5, 8), rand(2, 5, 8), rand(2, 5, 8)
    with torch.no_grad():
        try:
            want = original(q, k, cos, sin)
        except Exception:  # another signature: leave it alone
            return False
        got = rotary(q, k, cos, sin, backend="torch")
    return all(torch.equal(a, b) for a, b in zip(want, got, strict=True))


def _lean_attention_forward(self, *args, **kwargs):
    """The attention's own (class) forward, with the lean rotary embedding switched on for
    its call of the modeling file's ``apply_rotary_pos_emb`` (not while torch.compile
    traces: see ``_rope_dispatcher``)."""
    if torch.compiler.is_compiling():
        return type(self).forward(self, *args, **kwargs)
    token = _LEAN_ROPE.set(True)
    try:
        return type(self).forward(self, *args, **kwargs)
    finally:
        _LEAN_ROPE.reset(token)


def _rope_patched(module: nn.Module) -> bool:
    own = vars(module).get("forward")
    return getattr(own, "__func__", None) is _lean_attention_forward


def _patch_rope(module: nn.Module) -> bool:
    """Route ``module``'s rotary embedding to the lean one; True if it is (also when it
    already was). False, and nothing changed, when the module has a forward of its own
    (another patch, accelerate's hooks) or the module its forward runs in has no
    ``apply_rotary_pos_emb`` computing the eager formula. The function is looked up in
    the globals of the forward that runs (``inspect.unwrap``: through decorators), which
    is the right modeling file also for a class that inherits its forward."""
    if _rope_patched(module):
        return True
    if "forward" in vars(module):
        return False
    home = getattr(inspect.unwrap(type(module).forward), "__globals__", {})
    current = home.get("apply_rotary_pos_emb")
    if current is None:
        return False
    original = getattr(current, "smoothalign_original", current)
    param = next(module.parameters(), None)
    if param is None or not _same_rope(original, str(param.device), param.dtype):
        return False
    if current is original:
        home["apply_rotary_pos_emb"] = _rope_dispatcher(original)
    module.forward = types.MethodType(_lean_attention_forward, module)
    return True


def use_lean_layers(model: nn.Module, recompute: bool = False) -> dict[str, int]:
    """Patch ``model``'s supported RMSNorm, MLP and attention modules in place; returns how
    many of each were patched (``{"norm": n, "mlp": m, "rope": r}``; zeros for an
    unsupported architecture).
    With ``recompute``, each decoder layer of a supported class that holds patched modules
    also runs inside :func:`~smoothalign.kernels.lean_layers.recompute_outputs`, so that the
    norms' outputs and the SwiGLU product are recomputed in the backward instead of kept
    (``"layers"``: how many)."""
    checked: dict[type, bool] = {}
    counts = {"norm": 0, "mlp": 0, "rope": 0}
    for module in model.modules():
        cls = type(module)
        name = cls.__name__
        if name in ATTENTION_CLASSES:
            counts["rope"] += _patch_rope(module)
            continue
        if name in NORM_CLASSES and hasattr(module, "variance_epsilon"):
            kind, lean, width = "norm", _lean_norm_forward, module.weight.shape[-1]
        elif name in MLP_CLASSES and _is_silu(getattr(module, "act_fn", None)):
            kind, lean, width = "mlp", _lean_mlp_forward, module.gate_proj.in_features
        else:
            continue
        if cls not in checked:
            checked[cls] = _same_output(module, lean, width)
        if checked[cls]:
            module.forward = types.MethodType(lean, module)
            counts[kind] += 1
    if recompute:
        counts["layers"] = 0
        for module in model.modules():
            if type(module).__name__ in LAYER_CLASSES and any(
                "forward" in vars(child) for child in module.modules() if child is not module
            ):
                module.forward = types.MethodType(_scoped_layer_forward, module)
                counts["layers"] += 1
                for name in ("input_layernorm", "post_attention_layernorm"):
                    norm = getattr(module, name, None)
                    if norm is not None and "forward" in vars(norm):  # patched above
                        norm.forward = types.MethodType(_recomputed_norm_forward, norm)
    return counts
