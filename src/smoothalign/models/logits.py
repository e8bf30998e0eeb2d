"""What a causal LM does to ``lm_head(h)`` before its softmax, read from its config."""

from __future__ import annotations

from typing import Any


def logit_transform(config: Any) -> tuple[float, float | None]:
    """``(scale, softcap)`` that the model applies to ``lm_head(h)``: Cohere's
    ``logit_scale`` (×), Granite's ``logits_scaling`` (÷), Gemma's ``final_logit_softcapping``
    (``softcap·tanh(z / softcap)``); ``(1.0, None)`` for a plain head."""
    scale = float(getattr(config, "logit_scale", None) or 1.0)
    divide = getattr(config, "logits_scaling", None)
    if divide:
        scale /= float(divide)
    softcap = getattr(config, "final_logit_softcapping", None)
    return scale, (float(softcap) if softcap else None)
