"""Model and tokenizer loading: built-in names ("tiny", "smollm2-135m"), local folders, GGUF."""

from smoothalign.models.loading import (
    BUILTIN_MODELS,
    describe_model,
    ensure_pad_token,
    load_model_and_tokenizer,
    load_tokenizer,
    smollm2_cache_dir,
    smollm2_gguf_path,
)
from smoothalign.models.logits import logit_transform

__all__ = [
    "BUILTIN_MODELS",
    "describe_model",
    "ensure_pad_token",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "logit_transform",
    "smollm2_cache_dir",
    "smollm2_gguf_path",
]
