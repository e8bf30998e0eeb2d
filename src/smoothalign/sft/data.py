"""SFT rows: load → validate (row/field errors) → tokenise with a completion-only label mask
→ collate. The loading and tokenising conventions are :mod:`smoothalign.data`'s.

Row formats (TRL's):

* **prompt/completion, plain text**: ``prompt`` and ``completion`` are strings; the
  completion's tokens (with an EOS appended) are trained on, the prompt's are not;
* **prompt/completion, conversational**: ``prompt`` is a message list ending with the turn
  to answer, ``completion`` a message list starting with an assistant message; the loss is
  on everything the chat template renders after the prompt's generation prompt, except
  what it renders for a non-assistant turn in the completion (a ``user`` or ``tool``
  message between two replies) and the next reply's generation prompt: those are masked
  as in a ``messages`` row, so a conversation trains on the same tokens wherever it is
  split into prompt and completion. (TRL trains on them unless ``assistant_only_loss``;
  we mask them always: they are text the model reads, never generates, and training on a
  user's turn teaches the model to write the user's side; to train on every token of a
  conversation, render it into a ``text`` row.) A completion whose assistant turns are all
  empty is an ``empty_completion`` bad row, whatever its other turns hold;
* **messages**: one conversation; the loss is on every assistant turn (its text and the
  template's end-of-turn tokens), never on system, user or tool turns;
* **text**: a plain string (continued pre-training, plain language modelling); the loss is
  on every token but the first (which has no context), with an EOS appended and a BOS in
  front only where the tokenizer adds one itself (``tokenizer(text)``).

A row holds one form: ``text`` beside ``prompt``/``completion``/``messages`` is
``ambiguous_format``. The two conversational forms may be mixed, and so may the plain ones
(plain prompt/completion and ``text``); plain and conversational rows may not (the data
set's format is its rows' majority, the others are ``mixed_formats``), nor may one row's
fields (a message-list prompt beside a string completion: ``mixed_formats``, naming both;
a list of strings is no message list: ``wrong_type``, or ``malformed_messages`` where only
messages fit). An empty string
beside another form's field counts as absent, so a CSV can mix forms (its empty cells read
as ""). Every other column is
kept as metadata (``split`` = ``train``/``eval`` selects the evaluation rows).

Nothing is dropped silently: ``on_bad_rows="error"`` raises a ``ValueError`` naming the
first bad rows (``row 3, field 'completion': empty completion``) and the total; ``"skip"``
lists them in the report. Sequences longer than ``max_length`` are cut from the end (the
prompt never is) and counted; a ``text`` row is cut like a completion.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from smoothalign.data import IGNORE_INDEX, fit_response
from smoothalign.data.collate import ExampleDataset, PaddingCollator, response_labels
from smoothalign.data.loading import FILE_KEY, ROW_KEY, load_preference_rows
from smoothalign.data.report import TokenizedRowsReport
from smoothalign.data.tokenization import (
    tokenize_messages,
    tokenize_prompt_completion,
    tokenize_text,
    tokenizer_adds_bos,
)
from smoothalign.data.validation import (
    BadRowError,
    blank_reply_reason,
    check_messages,
    check_row_format,
    check_type,
    is_blank,
    looks_like_messages_text,
    messages_as_text_error,
    missing_reason,
    validate_rows,
)

TEXT_FIELDS = ("prompt", "completion", "messages", "text")
RESERVED = {*TEXT_FIELDS, ROW_KEY, FILE_KEY}

SFT_BAD_ROW_CODES = {
    "not_a_mapping": "the row is not an object",
    "missing_field": "no 'messages' or 'text', and 'prompt' or 'completion' is absent or null",
    "ambiguous_format": "the row mixes forms: 'messages' or 'text' beside another form's fields",
    "wrong_type": "a field is neither a string nor a message list ('text': not a string)",
    "mixed_formats": "a plain-text row (prompt/completion or text) in conversational data, "
    "or the reverse, or a message-list prompt beside a string completion (or the reverse)",
    "malformed_messages": "a message list, role or content is malformed, or turns are misplaced",
    "no_assistant_turn": "'messages' holds no assistant message: nothing to train on",
    "empty_completion": "the completion (its assistant turns), or an assistant turn, is empty "
    "or whitespace only, or no token of the row is left to train on",
    "empty_text": "'text' is empty or whitespace only, or has under two tokens",
    "prompt_too_long": "no completion token fits in max_length after the prompt",
    "chat_template_error": "the chat template raised an error",
    "bad_split": "the split column holds something other than 'train' or 'eval'",
    "chat_template_prefix": "the chat template breaks the prefix property",
    "special_token_in_text": "a message's content holds a special-token string of the tokenizer",
    "messages_as_text": "a message-list field holds a message list written out as text (a CSV's "
    "cell, or a string where the list was meant)",
}
"""Every ``BadRow.code`` the SFT checks give, with what it means."""


@dataclass
class SFTExample:
    """One validated, tokenised SFT row.

    ``input_ids`` ``[T]`` (``T <= max_length``) and ``labels`` ``[T]``: the token where it is
    trained on (a completion / assistant token, or any but the first of a ``text`` row),
    ``-100`` elsewhere. ``index``: position in the rows given to validation; ``row``/``file``:
    where it came from; ``truncated``: cut to fit ``max_length``; ``metadata``: every other
    column; ``content_key``: a digest of its text fields (copies of a row share it).
    """

    input_ids: list[int]
    labels: list[int]
    index: int
    row: int
    file: str | None = None
    truncated: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    content_key: str | None = field(default=None, compare=False, repr=False)

    @property
    def n_completion_tokens(self) -> int:
        return sum(t != IGNORE_INDEX for t in self.labels)


@dataclass
class SFTValidationReport(TokenizedRowsReport):
    """What :func:`validate_sft_rows` kept and rejected (``bad_rows`` in row order)."""

    examples: list[SFTExample]
    n_truncated: int = 0
    n_messages_rows: int = 0
    n_text_rows: int = 0
    # the tokens the loss reads (completion / assistant / text tokens) in every kept row, held
    # out or not: the split comes later (the run's report gives the training rows' own count)
    n_completion_tokens: int = 0

    title: ClassVar[str] = "SFT data"
    details: ClassVar[str] = "validation.json"

    def _counts(self) -> dict[str, Any]:
        return {
            "n_truncated": self.n_truncated,
            "n_messages_rows": self.n_messages_rows,
            "n_text_rows": self.n_text_rows,
            "n_completion_tokens": self.n_completion_tokens,
        }

    def _summary_lines(self) -> list[str]:
        return [
            f"- rows in the 'messages' form: {self.n_messages_rows}",
            f"- rows in the 'text' form: {self.n_text_rows}",
            f"- rows cut to fit max_length: {self.n_truncated}",
            f"- tokens the loss reads, in the kept rows: {self.n_completion_tokens}",
        ]


def load_sft_rows(source: Any) -> list[dict[str, Any]]:
    """Rows from a JSONL/JSON/Parquet/CSV file, a folder, a ``datasets.Dataset`` or a list
    (``smoothalign.data.load_preference_rows`` with the SFT text columns)."""
    return load_preference_rows(source, text_fields=TEXT_FIELDS, what="SFT data")


def validate_sft_rows(
    rows: Sequence[Mapping[str, Any]] | Any,
    tokenizer: Any,
    max_length: int,
    on_bad_rows: Literal["error", "skip"] = "error",
    *,
    held_out: bool = False,
) -> SFTValidationReport:
    """Validate and tokenise SFT rows (anything :func:`load_sft_rows` reads, or its output).

    Raises:
        ValueError: a bad argument, a tokenizer unfit for the data (plain text needs an EOS,
            conversations a chat template), no rows, a bad row in ``"error"`` mode (first
            five listed, with the total), or no row left.
    """
    # whether text rows get a BOS: asked of the tokenizer once, at the first text row
    text_bos = functools.cache(lambda: tokenizer_adds_bos(tokenizer))
    return validate_rows(
        rows,
        tokenizer,
        max_length,
        on_bad_rows,
        what="SFT",
        load=load_sft_rows,
        kind_fields=("messages", "completion", "prompt", "text"),
        eos_use="appended to every completion and text so the model learns to stop",
        report_type=SFTValidationReport,
        process_row=functools.partial(_process_row, text_bos=text_bos),
        check_split=not held_out,  # a held-out set's split column is not read
    )


# ---------------------------------------------------------------------------- checks
def _process_row(
    index: int,
    row: Mapping[str, Any],
    kind: str,
    kind_note: str,
    tokenizer: Any,
    max_length: int,
    report: SFTValidationReport,
    *,
    text_bos: Callable[[], bool],
) -> SFTExample:
    has_pc = row.get("prompt") is not None or row.get("completion") is not None
    # an empty string beside another form's field counts as absent: a CSV cannot leave a
    # cell out, so a file mixing text and prompt/completion rows has "" in the other form
    given = [name for name in TEXT_FIELDS[:3] if row.get(name) not in (None, "")]
    if row.get("text") is not None and (row["text"] != "" or not given):
        others = given
        if others:
            found = "/".join(f"'{name}'" for name in others)
            raise BadRowError(
                "text", "ambiguous_format", f"the row has both 'text' and {found}; keep one form"
            )
        input_ids, labels, truncated = _text_example(
            row["text"], kind, kind_note, tokenizer, max_length, text_bos
        )
        form = "text"
    elif row.get("messages") is not None:
        if any(row.get(k) not in (None, "") for k in ("prompt", "completion")):
            raise BadRowError(
                "messages",
                "ambiguous_format",
                "the row has both 'messages' and 'prompt'/'completion'; keep one form",
            )
        if looks_like_messages_text(row["messages"]):
            raise messages_as_text_error("messages", row["messages"], row.get(FILE_KEY))
        if not isinstance(row["messages"], list | tuple):
            raise BadRowError(
                "messages",
                "wrong_type",
                f"expected a list of messages, got {type(row['messages']).__name__}",
            )
        if kind != "conversational":
            check_messages("messages", row["messages"])  # a list of strings is malformed
            raise BadRowError(
                "messages", "mixed_formats", f"a message list in {kind} data ({kind_note})"
            )
        input_ids, labels, truncated = _messages_example(row["messages"], tokenizer, max_length)
        form = "messages"
    else:
        for name in ("prompt", "completion"):
            if row.get(name) is None:
                hint = (
                    " (or give the whole conversation as 'messages')"
                    if has_pc
                    else " (no 'prompt'/'completion', 'messages' or 'text' field)"
                )
                reason = missing_reason(row, name, RESERVED)
                raise BadRowError(name, "missing_field", reason + hint)
        check_row_format(row, ("prompt", "completion"), kind)
        for name in ("prompt", "completion"):
            check_type(name, row[name], kind, kind_note, row.get(FILE_KEY))
        input_ids, labels, truncated = _prompt_completion_example(
            row["prompt"], row["completion"], tokenizer, max_length
        )
        form = "completion"
    example = SFTExample(
        input_ids=input_ids,
        labels=labels,
        index=index,
        row=row.get(ROW_KEY, index),
        file=row.get(FILE_KEY),
        truncated=truncated,
        metadata={k: v for k, v in row.items() if k not in RESERVED},
    )
    if not example.n_completion_tokens:  # each form refuses its own empty cases first, by
        raise BadRowError(  # name; whatever else leaves nothing to train on is caught here
            form,
            "empty_completion",
            "nothing to train on: no token of the row is trained (after masking and truncation)",
        )
    report.n_text_rows += form == "text"
    report.n_messages_rows += form == "messages"
    report.n_truncated += example.truncated
    report.n_completion_tokens += example.n_completion_tokens
    return example


def _prompt_completion_example(
    prompt: Any, completion: Any, tokenizer: Any, max_length: int
) -> tuple[list[int], list[int], bool]:
    if isinstance(prompt, str):
        if is_blank(completion):
            raise BadRowError("completion", "empty_completion", "empty completion")
    else:
        prompt = check_messages("prompt", prompt)
        completion = check_messages("completion", completion)
        if prompt[-1]["role"] == "assistant":
            raise BadRowError(
                "prompt",
                "malformed_messages",
                "the prompt ends with an assistant message; it should end with the turn "
                "that the completion answers",
            )
        if completion[0]["role"] != "assistant":
            raise BadRowError(
                "completion",
                "malformed_messages",
                f"the completion starts with a {completion[0]['role']!r} message, expected "
                "'assistant'",
            )
        if reason := blank_reply_reason(completion, "completion", "not trained on"):
            raise BadRowError("completion", "empty_completion", reason)
    # more than one message: each reply's span, so that what the template puts between two
    # (another turn, the next reply's generation prompt) is masked as in 'messages'
    prompt_ids, completion_ids, spans = tokenize_prompt_completion(prompt, completion, tokenizer)
    if not completion_ids:
        raise BadRowError(
            "completion", "empty_completion", "empty completion (no tokens after the prompt)"
        )
    if len(prompt_ids) >= max_length:
        raise BadRowError(
            "prompt",
            "prompt_too_long",
            f"the prompt is {len(prompt_ids)} tokens, >= max_length {max_length}: no room "
            "for the completion",
        )
    trained = response_labels(completion_ids, spans)
    completion_ids, truncated = fit_response(completion_ids, len(prompt_ids), max_length)
    labels = [IGNORE_INDEX] * len(prompt_ids) + trained[: len(completion_ids)]
    if not prompt_ids:  # an empty prompt and no BOS: nothing predicts the first token, as in
        labels[0] = IGNORE_INDEX  # a text row; so it is not counted as trained either
        if len(labels) == 1:
            raise BadRowError(
                "completion",
                "empty_completion",
                "nothing to train on: with an empty prompt and no BOS token nothing predicts "
                "the completion's only token",
            )
    return prompt_ids + completion_ids, labels, truncated


def _text_example(
    text: Any,
    kind: str,
    kind_note: str,
    tokenizer: Any,
    max_length: int,
    text_bos: Callable[[], bool],
) -> tuple[list[int], list[int], bool]:
    if not isinstance(text, str):
        raise BadRowError("text", "wrong_type", f"expected a string, got {type(text).__name__}")
    if kind != "plain":
        raise BadRowError("text", "mixed_formats", f"a plain-text row in {kind} data ({kind_note})")
    if is_blank(text):
        raise BadRowError("text", "empty_text", "empty text")
    input_ids = tokenize_text(text, tokenizer, text_bos())
    if len(input_ids) < 2:
        raise BadRowError(
            "text",
            "empty_text",
            f"{len(input_ids)} token(s) with the EOS: nothing to train on (the first token "
            "has no context)",
        )
    truncated = len(input_ids) > max_length  # cut from the end, as a completion is
    input_ids = input_ids[:max_length]
    return input_ids, [IGNORE_INDEX, *input_ids[1:]], truncated


def _messages_example(
    messages: Sequence[Any], tokenizer: Any, max_length: int
) -> tuple[list[int], list[int], bool]:
    messages = check_messages("messages", messages)
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise BadRowError(
            "messages",
            "no_assistant_turn",
            f"no assistant message (roles: {roles}): nothing to train on",
        )
    if roles[0] == "assistant":
        raise BadRowError(
            "messages",
            "malformed_messages",
            "the conversation starts with an assistant message; it should start with the "
            "system or user turn it answers",
        )
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and not m["content"].strip():
            raise BadRowError("messages", "empty_completion", f"message {i} (assistant) is empty")
    input_ids, spans = tokenize_messages(messages, tokenizer)
    labels = [IGNORE_INDEX] * len(input_ids)
    for start, end in spans:
        labels[start:end] = input_ids[start:end]
    first = spans[0][0]
    if first >= max_length:
        raise BadRowError(
            "messages",
            "prompt_too_long",
            f"the first assistant turn starts at token {first}, >= max_length {max_length}",
        )
    truncated = len(input_ids) > max_length
    return input_ids[:max_length], labels[:max_length], truncated


# ---------------------------------------------------------------------------- batches
class SFTDataset(ExampleDataset[SFTExample]):
    """A map-style ``Dataset`` over ``SFTExample`` s."""


class SFTCollator(PaddingCollator):
    """Right-pad ``B`` examples into ``input_ids`` / ``attention_mask`` / ``labels`` ``[B, L]``
    (``labels`` = ``-100`` on prompt and padding, not shifted) and ``index`` ``[B]``.

    The first label of every row is always ``-100``: no hidden state predicts position 0,
    so the number of trained tokens is ``(labels != -100).sum()`` however it is counted.
    """

    def __call__(self, examples: Sequence[SFTExample]) -> dict[str, Tensor]:
        if not examples:
            raise ValueError("SFTCollator: empty batch")
        input_ids, attention_mask, labels = self.pad(
            [ex.input_ids for ex in examples], [ex.labels for ex in examples]
        )
        labels[:, 0] = IGNORE_INDEX
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "index": torch.tensor([ex.index for ex in examples], dtype=torch.long),
        }


# ---------------------------------------------------------------------------- default data
def embedded_sft_rows() -> list[dict[str, Any]]:
    """The default SFT data: the shipped controlled-sentiment set
    (``smoothalign.assets``), one conversational prompt/completion row per pair, the
    labelled ``chosen`` response as the completion (the 'SFT on chosen' recipe). The
    ``split`` column (640 train / 160 eval) and ``id``/``category`` are kept."""
    from smoothalign.assets import embedded_dataset_path

    rows = load_preference_rows(embedded_dataset_path())
    return [
        {
            "prompt": r["prompt"],
            "completion": r["chosen"],
            "split": r["split"],
            "id": r["id"],
            "category": r["category"],
            ROW_KEY: r[ROW_KEY],
        }
        for r in rows
    ]
