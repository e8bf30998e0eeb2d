"""Turn one preference pair into token ids: a prompt, and each response as its continuation.

**Plain text.** Each response's tokens are those it has *after the prompt*: the tail of
``encode(prompt + response)`` beyond ``encode(prompt)`` (``add_special_tokens=False``), when
the prompt's tokens are a prefix of the joint ones. Where a token would merge across the
boundary, the response is tokenised on its own instead, so the boundary is a token boundary
(TRL tokenises every response on its own; for most BPE tokenizers the two agree, but a
Llama-2-style SentencePiece tokenizer prepends ``▁`` to any text it encodes, so a response
encoded alone starts with a token it never has after a prompt). Put any separating space or
newline in the text yourself.
If the tokenizer has a BOS token, the prompt starts with exactly one: it is prepended unless
the prompt's tokens already start with it (a prompt text that begins with the BOS string).
Each response ends with the EOS token, appended unless the response already ends with it.

**Conversational.** The chat template owns every special token (BOS, role markers, end of
turn); nothing is added. The prompt is
``apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)``, the full text is
``apply_chat_template(prompt + response, tokenize=False)``, both tokenised with
``add_special_tokens=False``, and the response tokens are the full tokens after the prompt's.
That requires the full text to start with the prompt text; a template that breaks it raises
``RowTokenizationError`` naming the response field, and the row is reported as bad, as is a
message whose content holds one of the tokenizer's special-token strings
(``special_token_in_text``: it would be read as that token). Where
the full tokens do not start with the prompt tokens (a token merges across the boundary, as
SmolLM2's does for a response that starts with two spaces after the generation prompt's
newline), the response is the rest of the full text tokenised on its own, as for plain
text: the boundary is a token boundary, as it is when the model generates after the prompt.
A tokenizer that prepends a space to any text it encodes (Llama-2's ``▁``) cannot do that
without adding a space: there such a row stays a bad row (``chat_template_prefix``).
A response of more than one message (a ``user`` or ``tool`` message between two replies,
or two replies in a row) is tokenised as the whole conversation is in ``tokenize_messages``
below: each of its assistant turns starts and ends at a token boundary, and
:func:`tokenize_responses` gives their spans, so that only the model's turns are scored
(DPO's ``log π(y|x)``) or trained on (SFT); what the template puts between them (the other
turns, the next reply's generation prompt) is text the model reads.

**SFT rows** use the same conventions: ``tokenize_prompt_completion`` treats the completion
as a response; ``tokenize_messages`` renders a whole conversation once and finds each
assistant turn's tokens as the difference between the renderings of the conversation up to
that turn with and without it (``add_generation_prompt=True`` before it). Each rendering
must be a prefix of the whole text; where a token merges across a turn boundary, the text
is split there and the rest tokenised on its own, as at the prompt/response boundary (with
the same exception for tokenizers that prepend a space).
A conversational completion of more than one message is such a response (the spans
:func:`tokenize_prompt_completion` returns).
``tokenize_text`` (a plain ``text`` row) ends with EOS as a response does, and
starts with exactly one BOS only where the tokenizer adds one itself
(:func:`tokenizer_adds_bos`: what ``tokenizer(text)`` gives, as in pre-training).

**Truncation** (``fit_response``) cuts a response from the end, keeping its start, so that
prompt + response fits ``max_length``; the prompt is never cut.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]
"""A chat message: at least ``{"role": str, "content": str}``."""
Spans = list[tuple[int, int]]
"""``(start, end)`` token offsets into a response: the ones of its assistant turns."""


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
        chosen_spans / rejected_spans: where the response holds other turns than the
            assistant's (a user or tool message between replies), the spans of its
            assistant turns (offsets into the untruncated response, so they may reach past
            a cut one): only their tokens count in ``log π(y|x)``; ``None``: every token.
        metadata: every other column of the row (e.g. oracle rewards), unchanged.
        content_key: a digest of the row's text fields (``validation.content_key``): rows
            with the same one are copies of each other, which a holdout keeps together.
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
    chosen_spans: Spans | None = None
    rejected_spans: Spans | None = None
    content_key: str | None = field(default=None, compare=False, repr=False)


class RowTokenizationError(ValueError):
    """A row that cannot be tokenised; ``field`` and ``code`` go into its ``BadRow``."""

    def __init__(self, field: str, code: str, reason: str):
        super().__init__(reason)
        self.field, self.code, self.reason = field, code, reason


def tokenize_responses(
    prompt: str | Sequence[Message],
    responses: Sequence[str | Sequence[Message]],
    tokenizer: Any,
    names: Sequence[str] = ("chosen", "rejected"),
    *,
    strict: bool = True,
) -> tuple[list[int], list[tuple[list[int], Spans | None]]]:
    """Untruncated ``prompt_ids`` and, for each response, ``(ids, spans)``.

    ``prompt`` and ``responses`` are all strings (plain text) or all message lists
    (conversational); see the module docstring for the conventions. ``spans`` are those of
    the response's assistant turns where it has more than one message, else ``None`` (every
    token is the model's). ``names`` name the responses in a ``RowTokenizationError``.
    ``strict=False`` (for scoring generated text, not for data) lets a plain-text response
    that merges with its prompt under a space-prepending tokenizer be tokenised on its own
    all the same.

    Raises:
        RowTokenizationError: the chat template fails or breaks the prefix property.
    """
    if isinstance(prompt, str):
        prompt_ids, ids = _tokenize_plain(prompt, list(responses), names, tokenizer, strict=strict)
        return prompt_ids, [(r, None) for r in ids]
    return _tokenize_conversation(list(prompt), [list(r) for r in responses], names, tokenizer)


def tokenize_preference(
    prompt: str | Sequence[Message],
    chosen: str | Sequence[Message],
    rejected: str | Sequence[Message],
    tokenizer: Any,
    *,
    strict: bool = True,
) -> tuple[list[int], list[int], list[int]]:
    """Untruncated ``(prompt_ids, chosen_ids, rejected_ids)`` for one well-formed pair, as
    :func:`tokenize_responses` tokenises them (without the spans)."""
    prompt_ids, ((chosen_ids, _), (rejected_ids, _)) = tokenize_responses(
        prompt, [chosen, rejected], tokenizer, strict=strict
    )
    return prompt_ids, chosen_ids, rejected_ids


def tokenize_prompt_completion(
    prompt: str | Sequence[Message],
    completion: str | Sequence[Message],
    tokenizer: Any,
    field: str = "completion",
) -> tuple[list[int], list[int], Spans | None]:
    """Untruncated ``(prompt_ids, completion_ids, assistant_spans)`` for one SFT row, with the
    conventions of :func:`tokenize_responses` (the completion is a response): for a
    conversational completion of more than one message (a user or tool message between two
    replies, or replies in a row) the spans ``(start, end)`` (offsets into
    ``completion_ids``) of its assistant turns, so that what lies between them can be left
    out of the loss as in a ``messages`` row; ``None`` otherwise (every token is trained).
    ``field`` names the completion in a ``RowTokenizationError``."""
    prompt_ids, ((ids, spans),) = tokenize_responses(prompt, [completion], tokenizer, (field,))
    return prompt_ids, ids, spans


def tokenize_messages(
    messages: Sequence[Message], tokenizer: Any, field: str = "messages"
) -> tuple[list[int], list[tuple[int, int]]]:
    """Untruncated ``(input_ids, assistant_spans)`` of a whole conversation.

    ``input_ids`` is ``apply_chat_template(messages, tokenize=False)`` tokenised with
    ``add_special_tokens=False``; each span ``(start, end)`` holds the tokens of one
    assistant turn: what the template renders for ``messages[:i + 1]`` beyond the generation
    prompt of ``messages[:i]`` (the turn's text and its end-of-turn tokens), i.e. what the
    model must generate. Every rendering must be a prefix of the whole text, else
    ``RowTokenizationError``; where a token would merge across a turn's start or end, the
    text is tokenised in pieces split there, so each span's ends are token boundaries.
    """
    messages = list(messages)
    _check_no_special_text(field, messages, tokenizer)
    full_text = _render(tokenizer, messages, field, generation_prompt=False)
    cuts = _assistant_turn_cuts(tokenizer, messages, full_text, field)
    ids, positions = _encode_with_cuts(tokenizer, full_text, cuts, field)
    return ids, list(zip(positions[0::2], positions[1::2], strict=True))


def _assistant_turn_cuts(
    tokenizer: Any, messages: list[Message], full_text: str, field: str, first: int = 0
) -> list[int]:
    """Text offsets of the start and end of every assistant turn from ``messages[first]``
    on: the renderings of the conversation before it (with the generation prompt) and up to
    it, each checked to be a prefix of ``full_text``. The rendering of ``messages[:first]``
    is the prompt's: its template error names field ``prompt``."""
    cuts: list[int] = []
    for i in range(first, len(messages)):
        if messages[i].get("role") != "assistant":
            continue
        where = f"message {i - first} (assistant)"
        for generation_prompt, upto in ((True, i), (False, i + 1)):
            name = "prompt" if first and upto == first else field
            text = _render(tokenizer, messages[:upto], name, generation_prompt)
            _check_text_prefix(field, text, full_text, where)
            cuts.append(len(text))
    return cuts


def _encode_with_cuts(
    tokenizer: Any, text: str, cuts: list[int], field: str
) -> tuple[list[int], list[int]]:
    """Tokens of ``text`` in which every offset of ``cuts`` (non-decreasing) is a token
    boundary, and the token index of each cut. The text is tokenised whole as long as the
    tokens of its beginning up to a cut are a prefix of the whole's; where a token would
    merge across a cut, the text is split there and the rest tokenised on its own (as
    :func:`_tokenize_conversation` does at the prompt/response boundary), so a turn keeps
    the tokens it has when the model generates it after its generation prompt. Cuts are
    checked one at a time, up to the first merge: each split re-reads only the rest."""
    ids: list[int] = []
    positions: list[int] = []
    start, k = 0, 0
    while True:
        (run,) = _encode(tokenizer, [text[start:]])
        kept: list[list[int]] = []
        head = None
        for c in cuts[k:]:
            (head,) = _encode(tokenizer, [text[start:c]])
            if run[: len(head)] != head:
                break
            kept.append(head)
        positions.extend(len(ids) + len(h) for h in kept)
        k += len(kept)
        if k == len(cuts):
            return ids + run, positions
        where = f"tokens merge across the turn boundary at character {cuts[k]}"
        _refuse_split_if_prepending(tokenizer, field, where)
        if any(head[: len(h)] != h for h in kept):  # the split moved an earlier boundary
            raise RowTokenizationError(
                field,
                "chat_template_prefix",
                f"{where}, and splitting the text there changes the tokens of an earlier turn",
            )
        ids += head
        positions.append(len(ids))
        start, k = cuts[k], k + 1


def _refuse_split_if_prepending(tokenizer: Any, field: str, where: str) -> None:
    """A tokenizer that prepends a space to any text it encodes (Llama-2's SentencePiece
    ``▁``, GPT-2's ``add_prefix_space``) would give the text after a split a space it does
    not have: such a row stays a bad row (``chat_template_prefix``)."""
    (ids,) = _encode(tokenizer, ["a"])
    pieces = "".join(tokenizer.convert_ids_to_tokens(ids))
    if pieces != "a" and pieces.lstrip("▁Ġ ") == "a":
        raise RowTokenizationError(
            field,
            "chat_template_prefix",
            f"{where}, and this tokenizer prepends a space to text it encodes on its own, so "
            "the text after the boundary cannot be tokenised apart without gaining one",
        )


def _check_text_prefix(field: str, text: str, full_text: str, where: str) -> None:
    if not full_text.startswith(text):
        k = _first_difference(text, full_text)
        raise RowTokenizationError(
            field,
            "chat_template_prefix",
            f"{where}: the chat template does not render the conversation as an extension of "
            f"its beginning (they differ at character {k}: {text[k : k + 30]!r} vs "
            f"{full_text[k : k + 30]!r})",
        )


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer(text)`` (special tokens on, its default) starts with its BOS token;
    a tokenizer without a BOS token never does."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    with_specials = list(tokenizer("a")["input_ids"])
    without = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    return with_specials[:1] == [bos] and without[:1] != [bos]


def tokenize_text(text: str, tokenizer: Any, add_bos: bool | None = None) -> list[int]:
    """Untruncated ids of one plain text (an SFT ``text`` row): tokenised with
    ``add_special_tokens=False``, then one BOS in front where ``add_bos`` (``None``: where
    :func:`tokenizer_adds_bos`) unless the text's own tokens start with it, and the EOS at the
    end unless they already end with it (as a response)."""
    (ids,) = _encode(tokenizer, [text])
    bos = tokenizer.bos_token_id
    if add_bos is None:
        add_bos = tokenizer_adds_bos(tokenizer)
    if add_bos and bos is not None and ids[:1] != [bos]:
        ids = [bos, *ids]
    eos = tokenizer.eos_token_id
    if ids[-1:] != [eos]:
        ids.append(eos)
    return ids


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
    prompt: str,
    responses_text: list[str],
    names: Sequence[str],
    tokenizer: Any,
    *,
    strict: bool = True,
) -> tuple[list[int], list[list[int]]]:
    n = len(responses_text)
    texts = [prompt, *responses_text, *(prompt + r for r in responses_text)]
    prompt_ids, *rest = _encode(tokenizer, texts)
    responses = []
    for name, alone, joint in zip(names, rest[:n], rest[n:], strict=True):
        in_context = joint[: len(prompt_ids)] == prompt_ids and len(joint) > len(prompt_ids)
        if not in_context and strict:  # a token merges across the boundary: the response alone,
            # unless that gains a space (a prompt ending in " " with Llama-2's tokenizer)
            _refuse_split_if_prepending(
                tokenizer,
                name,
                "a token merges across the prompt/response boundary (does the prompt end "
                "with a space? move it to the start of the response)",
            )
        responses.append(joint[len(prompt_ids) :] if in_context else alone)
    bos = tokenizer.bos_token_id
    if bos is not None and prompt_ids[:1] != [bos]:
        prompt_ids = [bos, *prompt_ids]
    eos = tokenizer.eos_token_id
    for ids in responses:
        if ids[-1:] != [eos]:
            ids.append(eos)
    return prompt_ids, responses


TEMPLATE_DATE = _dt.datetime(2024, 7, 26)
"""The date a chat template that writes today's date (Llama-3.x Instruct's ``strftime_now``)
renders into the data: one fixed date (the one Llama-3.1's template falls back to), so that
the same rows give the same tokens on any day: a resume the next day reads the tokens the
run was trained on, and its data fingerprint (``train.data_fingerprint``) agrees."""


class _FixedNow(_dt.datetime):
    @classmethod
    def now(cls, tz=None):  # noqa: ARG003 - datetime.now's signature
        return TEMPLATE_DATE


@contextlib.contextmanager
def fixed_template_date() -> Iterator[None]:
    """``strftime_now`` in transformers' chat templates reads :data:`TEMPLATE_DATE` while the
    data renders (transformers' chat-template module reads ``datetime.now()``; its renderer
    turns a callable passed as a template variable into text, so the clock is replaced
    where it is read). Where that module is not as expected, nothing is replaced."""
    try:
        from transformers.utils import chat_template_utils as ctu
    except ImportError:  # pragma: no cover - transformers without chat templates
        yield
        return
    previous = getattr(ctu, "datetime", None)
    if previous is None:  # another transformers: its clock is elsewhere
        yield
        return
    ctu.datetime = _FixedNow
    try:
        yield
    finally:
        ctu.datetime = previous


def _render(tokenizer: Any, messages: list[Message], field: str, generation_prompt: bool) -> str:
    try:
        with fixed_template_date():
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


def _check_no_special_text(field: str, messages: Sequence[Message], tokenizer: Any) -> None:
    """In conversational data the chat template owns every special token; a message whose
    content holds one as text (``"<|im_end|>"``) would be tokenised as that token, ending the
    turn in mid-message. That is a ``RowTokenizationError`` (``special_token_in_text``)."""
    specials = special_token_strings(tokenizer)
    for i, message in enumerate(messages):
        content = message.get("content")
        found = [s for s in specials if isinstance(content, str) and s in content]
        if found:
            raise RowTokenizationError(
                field,
                "special_token_in_text",
                f"message {i} ({message.get('role')}) contains {found[0]!r}, one of the "
                "tokenizer's special tokens, as text: it would be read as that token, not as "
                "text (the chat template places them); remove or escape it",
            )


WORD_JOINER = "\u2060"  # zero width, no line break: what escape_special_text inserts


def special_token_strings(tokenizer: Any) -> list[str]:
    """Every string the tokenizer reads as one special token: its named special tokens
    (``all_special_tokens``) and every added token marked special (``added_tokens_decoder``;
    SmolLM2 has 17 such, of which ``all_special_tokens`` names 3)."""
    found = {s for s in getattr(tokenizer, "all_special_tokens", ()) if s}
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found |= {t.content for t in added.values() if getattr(t, "special", False) and t.content}
    return sorted(found)


def escape_special_text(text: str, tokenizer: Any) -> str:
    """``text`` with every special-token string of ``tokenizer`` broken by a zero-width
    :data:`WORD_JOINER` after its first character, so that it is tokenised as text. For
    *generated* text (a model can spell ``<|im_end|>`` out of ordinary tokens, and decoding
    gives the string back), not for data, where such a string is a bad row."""
    for s in sorted(special_token_strings(tokenizer), key=len, reverse=True):
        if len(s) > 1 and s in text:
            text = text.replace(s, s[0] + WORD_JOINER + s[1:])
    return text


def _tokenize_conversation(
    prompt: list[Message], responses_msgs: list[list[Message]], names: Sequence[str], tokenizer: Any
) -> tuple[list[int], list[tuple[list[int], Spans | None]]]:
    _check_no_special_text("prompt", prompt, tokenizer)
    for name, response in zip(names, responses_msgs, strict=True):
        _check_no_special_text(name, response, tokenizer)
    prompt_text = _render(tokenizer, prompt, "prompt", generation_prompt=True)
    full_texts = [
        _render(tokenizer, prompt + response, name, generation_prompt=False)
        for name, response in zip(names, responses_msgs, strict=True)
    ]
    prompt_ids, *all_full_ids = _encode(tokenizer, [prompt_text, *full_texts])
    responses = []
    texts = zip(names, responses_msgs, full_texts, all_full_ids, strict=True)
    for name, response, full_text, full_ids in texts:
        if not full_text.startswith(prompt_text):
            k = _first_difference(prompt_text, full_text)
            raise RowTokenizationError(
                name,
                "chat_template_prefix",
                "the chat template does not render prompt+response as the rendered prompt "
                f"followed by the response (they differ at character {k}: "
                f"{prompt_text[k : k + 30]!r} vs {full_text[k : k + 30]!r})",
            )
        if len(response) > 1:  # other turns, or the next reply's generation prompt, between
            cut = len(prompt_text)
            responses.append(_response_turns(tokenizer, prompt, response, full_text, cut, name))
        elif full_ids[: len(prompt_ids)] == prompt_ids:
            responses.append((full_ids[len(prompt_ids) :], None))
        else:  # a token merges across the boundary: the response's text on its own, as the
            # plain-text path does (a model generating after the prompt never sees the merge)
            _refuse_split_if_prepending(tokenizer, name, "a token merges across the boundary")
            (tail,) = _encode(tokenizer, [full_text[len(prompt_text) :]])
            responses.append((tail, None))
    return prompt_ids, responses


def _response_turns(
    tokenizer: Any,
    prompt: list[Message],
    response: list[Message],
    full_text: str,
    prompt_end: int,
    field: str,
) -> tuple[list[int], Spans]:
    """The tokens of ``full_text`` (``prompt + response`` rendered) after ``prompt_end``
    (where the prompt's generation prompt ends), and the spans of the response's assistant
    turns in them: the prompt's end and every assistant turn's start and end are token
    boundaries (:func:`_encode_with_cuts`), so the prompt keeps its own tokens and each
    reply those it has when the model generates it after its generation prompt."""
    turns = _assistant_turn_cuts(tokenizer, prompt + response, full_text, field, len(prompt))
    ids, (start, *cuts) = _encode_with_cuts(tokenizer, full_text, [prompt_end, *turns], field)
    spans = [(a - start, b - start) for a, b in zip(cuts[0::2], cuts[1::2], strict=True)]
    return ids[start:], spans


def _first_difference(a: Sequence, b: Sequence) -> int:
    for k, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return k
    return min(len(a), len(b))
