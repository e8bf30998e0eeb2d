"""Sample what a model's LM head sees: the hidden states at real tokens of a few texts,
and the entropies of the next-token distributions the head makes from them.

The hidden states are captured by a forward pre-hook on ``model.get_output_embeddings()``,
so they are exactly the head's input (after the final norm) whatever the architecture.
The default texts are the first conversations (prompt + chosen reply) of the shipped
controlled-sentiment set (``smoothalign/assets/sentiment_pairs.jsonl``), rendered with the
tokenizer's chat template when it has one (a template's date: the fixed one the training data
renders, ``data.tokenization.TEMPLATE_DATE``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["default_texts", "head_inputs", "prediction_entropies"]


def default_texts(n: int) -> list[str]:
    """The first ``n`` conversations of the shipped data set, as message lists rendered to text
    later by :func:`head_inputs` (here returned as JSON strings of the messages)."""
    from smoothalign.assets import embedded_dataset_path

    if n < 1:
        raise ValueError(f"number of texts: must be >= 1, got {n}")
    out = []
    with embedded_dataset_path().open(encoding="utf-8") as f:
        for line in f:
            if len(out) == n:
                break
            row = json.loads(line)
            out.append(json.dumps(row["prompt"] + row["chosen"]))
    return out


def _render(tokenizer: Any, text: str) -> str:
    """A JSON message list goes through the chat template (if any); other text is as is. A
    template that writes today's date (Llama-3.x Instruct's ``strftime_now``) writes the
    fixed date that dpo, sft, reward and rank-calibrate render their data with
    (:data:`smoothalign.data.tokenization.TEMPLATE_DATE`), so that the texts, and the
    entropies, are the same on any day, and the same text as the training data had."""
    from smoothalign.data.tokenization import fixed_template_date

    try:
        messages = json.loads(text)
    except ValueError:
        return text
    if not isinstance(messages, list):
        return text
    if getattr(tokenizer, "chat_template", None):
        with fixed_template_date():
            return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(m["content"] for m in messages)


@torch.no_grad()
def head_inputs(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_tokens: int = 256,
    batch_size: int = 8,
) -> torch.Tensor:
    """Hidden states ``[N, D]`` entering the LM head at every real (non-pad) token of
    ``texts`` (each cut to its first ``max_tokens`` tokens), on CPU."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError("model: has no output embeddings (LM head) to analyse")
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0].detach()))
    rows: list[torch.Tensor] = []
    try:
        rendered = [_render(tokenizer, t) for t in texts]
        for start in range(0, len(rendered), batch_size):
            enc = tokenizer(
                rendered[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_tokens,
                add_special_tokens=True,
            )
            captured.clear()
            model(
                input_ids=enc["input_ids"].to(device),
                attention_mask=enc["attention_mask"].to(device),
            )
            if len(captured) != 1:
                raise RuntimeError(f"LM head ran {len(captured)} times in one forward pass")
            mask = enc["attention_mask"].bool()
            rows.append(captured[0].cpu()[mask])
    finally:
        handle.remove()
    return torch.cat(rows).to(torch.float64)


@torch.no_grad()
def prediction_entropies(
    head_weight: torch.Tensor,
    hidden: torch.Tensor,
    head_bias: torch.Tensor | None = None,
    chunk: int = 256,
) -> torch.Tensor:
    """Entropy (nats) of ``softmax(C·e (+ b))`` for every row ``e`` of ``hidden``: logits in
    float32, softmax and entropy in float64."""
    C = head_weight.detach().to(torch.float32).cpu()
    b = None if head_bias is None else head_bias.detach().to(torch.float32).cpu()
    out = []
    for start in range(0, hidden.shape[0], chunk):
        z = hidden[start : start + chunk].to(torch.float32) @ C.T  # float32 matmul: fast
        if b is not None:
            z = z + b
        logp = torch.log_softmax(z.to(torch.float64), dim=-1)
        out.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(out)
