"""Swap a model's RMSNorm and SwiGLU MLP forwards for the activation-lean ones of
``kernels.lean_layers`` (same outputs, fewer tensors kept for the backward).

Only classes known to compute exactly ``weight * norm(x).to(dtype)`` and
``down_proj(silu(gate_proj(x)) * up_proj(x))`` are touched (Llama, Mistral, Qwen2/3 and
their SmolLM2 relatives); before a class is patched its new forward is run beside the
original on a small input and must give the same output bit for bit, so a transformers
version that changes a formula leaves that class alone instead of changing the model.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any

import torch
from torch import nn

from smoothalign.kernels.lean_layers import recompute_active, recompute_outputs, rms_norm, swiglu

NORM_CLASSES = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")
MLP_CLASSES = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP")
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


def use_lean_layers(model: nn.Module, recompute: bool = False) -> dict[str, int]:
    """Patch ``model``'s supported RMSNorm and MLP modules in place; returns how many of
    each were patched (``{"norm": n, "mlp": m}``; zeros for an unsupported architecture).
    With ``recompute``, each decoder layer of a supported class that holds patched modules
    also runs inside :func:`~smoothalign.kernels.lean_layers.recompute_outputs`, so that the
    norms' outputs and the SwiGLU product are recomputed in the backward instead of kept
    (``"layers"``: how many)."""
    checked: dict[type, bool] = {}
    counts = {"norm": 0, "mlp": 0}
    for module in model.modules():
        cls = type(module)
        name = cls.__name__
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
