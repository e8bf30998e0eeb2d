"""Turn one preference pair into token ids: a prompt, and each response as its continuation.

**Plain text.** The prompt and each response are tokenised separately with
``add_special_tokens=False`` and concatenated, so the prompt/response boundary is always a
token boundary (TRL does the same; put any separating space or newline in the text yourself).
If the tokenizer has a BOS token, the prompt starts with exactly one: it is prepended unless
the prompt's tokens already start with it (a prompt text that begins with the BOS string).
Each response ends with the EOS token, appended unless the response already ends with it.

**Conversational.** The chat template owns every special token (BOS, role markers, end of
turn); nothing is added. The prompt is
``apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)``, the full text is
``apply_chat_template(prompt + response, tokenize=False)``, both tokenised with
``add_special_tokens=False``, and the response tokens are the full tokens after the prompt's.
That requires the prefix property, checked twice: the full text starts with the prompt text,
and the full tokens start with the prompt tokens. A template or tokenizer that breaks it
raises ``RowTokenizationError`` naming the response field, and the row is reported as bad.

**Truncation** (``fit_response``) cuts a response from the end, keeping its start, so that
prompt + response fits ``max_length``; the prompt is never cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]
"""A chat message: at least ``{"role": str, "content": str}``."""


@dataclass
class TokenizedPair:
    """One validated, tokenised preference pair (what ``PreferenceCollator`` batches).

    Attributes:
        prompt_ids: prompt tokens ``[P]`` (BOS included where it applies).
        chosen_ids / rejected_ids: response tokens ``[R_w]`` / ``[R_l]`` (after the prompt;
            EOS or the template's end of turn included unless truncated away);
            ``P + R <= max_length``.
        index: position in the row list given to validation (unique; the collator's
            ``index``); ``row``: 0-based row in its file; ``file``: file name for folders.
        confidence: probability that the chosen response really wins, in ``[0, 1]``, or None.
        ref_chosen_logp / ref_rejected_logp: precomputed ``log π_ref(y|x)`` (summed over
            response tokens, nats), or None.
        chosen_truncated / rejected_truncated: whether the response was cut to fit.
        metadata: every other column of the row (e.g. oracle rewards), unchanged.
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    index: int
    row: int
    file: str | None = None
    confidence: float | None = None
    ref_chosen_logp: float | None = None
    ref_rejected_logp: float | None = None
    chosen_truncated: bool = False
    rejected_truncated: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


class RowTokenizationError(ValueError):
    """A row that cannot be tokenised; ``field`` and ``code`` go into its ``BadRow``."""

    def __init__(self, field: str, code: str, reason: str):
        super().__init__(reason)
        self.field, self.code, self.reason = field, code, reason


def tokenize_preference(
    prompt: str | Sequence[Message],
    chosen: str | Sequence[Message],
    rejected: str | Sequence[Message],
    tokenizer: Any,
) -> tuple[list[int], list[int], list[int]]:
    """Untruncated ``(prompt_ids, chosen_ids, rejected_ids)`` for one well-formed pair.

    ``prompt``/``chosen``/``rejected`` are all strings (plain text) or all message lists
    (conversational); see the module docstring for the conventions.

    Raises:
        RowTokenizationError: the chat template fails or breaks the prefix property.
    """
    if isinstance(prompt, str):
        return _tokenize_plain(prompt, chosen, rejected, tokenizer)
    return _tokenize_conversation(list(prompt), list(chosen), list(rejected), tokenizer)


def fit_response(
    response_ids: list[int], prompt_len: int, max_length: int
) -> tuple[list[int], bool]:
    """``(ids, truncated)``: the response cut from the end so ``prompt_len + len(ids) <= max_length``."""
    room = max_length - prompt_len
    if len(response_ids) <= room:
        return response_ids, False
    return response_ids[: max(room, 0)], True


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    # one batched call: the per-call overhead of a transformers tokenizer exceeds the work
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _tokenize_plain(
    prompt: str, chosen: str, rejected: str, tokenizer: Any
) -> tuple[list[int], list[int], list[int]]:
    prompt_ids, *responses = _encode(tokenizer, [prompt, chosen, rejected])
    bos = tokenizer.bos_token_id
    if bos is not None and prompt_ids[:1] != [bos]:
        prompt_ids = [bos, *prompt_ids]
    eos = tokenizer.eos_token_id
    for ids in responses:
        if ids[-1:] != [eos]:
            ids.append(eos)
    return prompt_ids, responses[0], responses[1]


def _render(tokenizer: Any, messages: list[Message], field: str, generation_prompt: bool) -> str:
    try:
        text = tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=False
        )
    except Exception as e:  # Jinja raises anything a template author chose (role order, ...)
        raise RowTokenizationError(
            field, "chat_template_error", f"the chat template failed: {type(e).__name__}: {e}"
        ) from e
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}")
    return text


def _tokenize_conversation(
    prompt: list[Message], chosen: list[Message], rejected: list[Message], tokenizer: Any
) -> tuple[list[int], list[int], list[int]]:
    prompt_text = _render(tokenizer, prompt, "prompt", generation_prompt=True)
    names = ("chosen", "rejected")
    full_texts = [
        _render(tokenizer, prompt + response, name, generation_prompt=False)
        for name, response in zip(names, (chosen, rejected), strict=True)
    ]
    prompt_ids, *all_full_ids = _encode(tokenizer, [prompt_text, *full_texts])
    responses = []
    for name, full_text, full_ids in zip(names, full_texts, all_full_ids, strict=True):
        if not full_text.startswith(prompt_text):
            k = _first_difference(prompt_text, full_text)
            raise RowTokenizationError(
                name,
                "chat_template_prefix",
                "the chat template does not render prompt+response as the rendered prompt "
                f"followed by the response (they differ at character {k}: "
                f"{prompt_text[k : k + 30]!r} vs {full_text[k : k + 30]!r})",
            )
        if full_ids[: len(prompt_ids)] != prompt_ids:
            k = _first_difference(prompt_ids, full_ids)
            raise RowTokenizationError(
                name,
                "chat_template_prefix",
                f"tokenising prompt+response changes the prompt's tokens from token {k} on "
                "(a token merges across the prompt/response boundary); end the generation "
                "prompt with a special token",
            )
        responses.append(full_ids[len(prompt_ids) :])
    return prompt_ids, responses[0], responses[1]


def _first_difference(a: Sequence, b: Sequence) -> int:
    for k, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return k
    return min(len(a), len(b))
