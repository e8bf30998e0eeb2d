"""SFT rows: load → validate (row/field errors) → tokenise with a completion-only label mask
→ collate. The loading and tokenising conventions are :mod:`smoothalign.data`'s.

Row formats (TRL's):

* **prompt/completion, plain text**: ``prompt`` and ``completion`` are strings; the
  completion's tokens (with an EOS appended) are trained on, the prompt's are not;
* **prompt/completion, conversational**: ``prompt`` is a message list ending with the turn
  to answer, ``completion`` a message list starting with an assistant message; the loss is
  on everything the chat template renders after the prompt's generation prompt;
* **messages**: one conversation; the loss is on every assistant turn (its text and the
  template's end-of-turn tokens), never on system or user turns.

The two conversational forms may be mixed; plain and conversational rows may not (the data
set's format is its rows' majority, the others are ``mixed_formats``). Every other column is
kept as metadata (``split`` = ``train``/``eval`` selects the evaluation rows).

Nothing is dropped silently: ``on_bad_rows="error"`` raises a ``ValueError`` naming the
first bad rows (``row 3, field 'completion': empty completion``) and the total; ``"skip"``
lists them in the report. Sequences longer than ``max_length`` are cut from the end (the
prompt never is) and counted.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from smoothalign.data import IGNORE_INDEX, BadRow, RowTokenizationError, fit_response
from smoothalign.data.loading import FILE_KEY, ROW_KEY, load_preference_rows
from smoothalign.data.report import format_bad_rows
from smoothalign.data.tokenization import tokenize_messages, tokenize_prompt_completion
from smoothalign.data.validation import BadRowError, bad_row, check_messages, is_blank

TEXT_FIELDS = ("prompt", "completion", "messages")
RESERVED = {*TEXT_FIELDS, ROW_KEY, FILE_KEY}

SFT_BAD_ROW_CODES = {
    "not_a_mapping": "the row is not an object",
    "missing_field": "no 'messages', and 'prompt' or 'completion' is absent or null",
    "ambiguous_format": "the row has both 'messages' and 'prompt'/'completion'",
    "wrong_type": "a field is neither a string nor a message list",
    "mixed_formats": "a plain-text row in conversational data, or the reverse",
    "malformed_messages": "a message list, role or content is malformed, or turns are misplaced",
    "no_assistant_turn": "'messages' holds no assistant message: nothing to train on",
    "empty_completion": "the completion (or an assistant turn) is empty or whitespace only",
    "prompt_too_long": "no completion token fits in max_length after the prompt",
    "chat_template_error": "the chat template raised an error",
    "chat_template_prefix": "the chat template breaks the prefix property",
}
"""Every ``BadRow.code`` the SFT checks give, with what it means."""


@dataclass
class SFTExample:
    """One validated, tokenised SFT row.

    ``input_ids`` ``[T]`` (``T <= max_length``) and ``labels`` ``[T]``: the token where it is
    trained on (a completion / assistant token), ``-100`` elsewhere. ``index``: position in
    the rows given to validation; ``row``/``file``: where it came from; ``truncated``: cut to
    fit ``max_length``; ``metadata``: every other column.
    """

    input_ids: list[int]
    labels: list[int]
    index: int
    row: int
    file: str | None = None
    truncated: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_completion_tokens(self) -> int:
        return sum(t != IGNORE_INDEX for t in self.labels)


@dataclass
class SFTValidationReport:
    """What :func:`validate_sft_rows` kept and rejected (``bad_rows`` in row order)."""

    examples: list[SFTExample]
    bad_rows: list[BadRow]
    n_rows: int
    kind: str  # "plain" | "conversational"
    max_length: int
    n_truncated: int = 0
    n_messages_rows: int = 0
    n_completion_tokens: int = 0

    @property
    def n_kept(self) -> int:
        return len(self.examples)

    @property
    def n_skipped(self) -> int:
        return len(self.bad_rows)

    def bad_row_counts(self) -> dict[str, int]:
        return dict(Counter(b.code for b in self.bad_rows).most_common())

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "max_length": self.max_length,
            "n_rows": self.n_rows,
            "n_kept": self.n_kept,
            "n_skipped": self.n_skipped,
            "n_truncated": self.n_truncated,
            "n_messages_rows": self.n_messages_rows,
            "n_completion_tokens": self.n_completion_tokens,
            "bad_row_counts": self.bad_row_counts(),
            "bad_rows": [b.to_dict() for b in self.bad_rows],
        }

    def to_markdown(self, max_listed: int = 10) -> str:
        lines = [
            "### SFT data",
            "",
            f"- format: {self.kind}; max_length {self.max_length} tokens",
            f"- rows: {self.n_rows} read, {self.n_kept} kept, {self.n_skipped} skipped",
            f"- rows in the 'messages' form: {self.n_messages_rows}",
            f"- rows cut to fit max_length: {self.n_truncated}",
            f"- completion tokens trained on (kept rows): {self.n_completion_tokens}",
        ]
        if self.bad_rows:
            counts = ", ".join(f"{code} {n}" for code, n in self.bad_row_counts().items())
            lines += ["", f"Skipped rows by reason: {counts}.", ""]
            lines += [f"- {b}" for b in self.bad_rows[:max_listed]]
            if self.n_skipped > max_listed:
                lines.append(f"- ... and {self.n_skipped - max_listed} more (see validation.json)")
        return "\n".join(lines) + "\n"


def load_sft_rows(source: Any) -> list[dict[str, Any]]:
    """Rows from a JSONL/JSON/Parquet/CSV file, a folder, a ``datasets.Dataset`` or a list
    (``smoothalign.data.load_preference_rows`` with the SFT text columns)."""
    return load_preference_rows(source, text_fields=TEXT_FIELDS, what="SFT data")


def validate_sft_rows(
    rows: Sequence[Mapping[str, Any]] | Any,
    tokenizer: Any,
    max_length: int,
    on_bad_rows: Literal["error", "skip"] = "error",
) -> SFTValidationReport:
    """Validate and tokenise SFT rows (anything :func:`load_sft_rows` reads, or its output).

    Raises:
        ValueError: a bad argument, a tokenizer unfit for the data (plain text needs an EOS,
            conversations a chat template), no rows, a bad row in ``"error"`` mode (first
            five listed, with the total), or no row left.
    """
    if on_bad_rows not in ("error", "skip"):
        raise ValueError(f"on_bad_rows: expected 'error' or 'skip', got {on_bad_rows!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length: expected an int >= 2, got {max_length!r}")
    if not isinstance(rows, list):
        rows = load_sft_rows(rows)
    if not rows:
        raise ValueError("no SFT rows to validate")
    kind, kind_note = _data_kind(rows)
    _check_tokenizer(tokenizer, kind)
    report = SFTValidationReport([], [], n_rows=len(rows), kind=kind, max_length=max_length)
    for index, row in enumerate(rows):
        try:
            example = _process_row(index, row, kind, kind_note, tokenizer, max_length, report)
        except (BadRowError, RowTokenizationError) as err:
            report.bad_rows.append(bad_row(index, row, err))
            continue
        report.examples.append(example)
        report.n_truncated += example.truncated
        report.n_completion_tokens += example.n_completion_tokens
    if report.bad_rows and (on_bad_rows == "error" or not report.examples):
        prefix = "" if report.examples else "no valid SFT row is left. "
        message = format_bad_rows(report.bad_rows, len(rows), what="SFT rows")
        raise ValueError(prefix + message)
    return report


# ---------------------------------------------------------------------------- checks
def _row_kind(row: Any) -> str | None:
    if not isinstance(row, Mapping):
        return None
    for name in ("messages", "completion", "prompt"):
        value = row.get(name)
        if isinstance(value, str):
            return "plain"
        if isinstance(value, list | tuple):
            return "conversational"
    return None


def _data_kind(rows: Sequence[Any]) -> tuple[str, str]:
    kinds = [k for k in (_row_kind(r) for r in rows) if k is not None]
    if not kinds:
        return "plain", "no row is well formed"
    kind, n = Counter(kinds).most_common(1)[0]
    return kind, f"{n} of {len(rows)} rows are {kind}"


def _check_tokenizer(tokenizer: Any, kind: str) -> None:
    if kind == "plain" and getattr(tokenizer, "eos_token_id", None) is None:
        raise ValueError(
            "plain-text SFT data needs a tokenizer with an eos_token (appended to every "
            "completion so the model learns to stop); set tokenizer.eos_token"
        )
    if kind == "conversational" and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "conversational SFT data needs a tokenizer with a chat_template; set "
            "tokenizer.chat_template"
        )


def _check_type(name: str, value: Any, kind: str, kind_note: str) -> None:
    expected, other = (list, str) if kind == "conversational" else (str, list)
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, expected):
        return
    if isinstance(value, other):
        found = "a plain string" if other is str else "a message list"
        raise BadRowError(name, "mixed_formats", f"{found} in {kind} data ({kind_note})")
    want = "a list of messages" if kind == "conversational" else "a string"
    raise BadRowError(name, "wrong_type", f"expected {want}, got {type(value).__name__}")


def _process_row(
    index: int,
    row: Any,
    kind: str,
    kind_note: str,
    tokenizer: Any,
    max_length: int,
    report: SFTValidationReport,
) -> SFTExample:
    if not isinstance(row, Mapping):
        raise BadRowError(
            None, "not_a_mapping", f"expected an object/dict, got {type(row).__name__}"
        )
    has_pc = row.get("prompt") is not None or row.get("completion") is not None
    if row.get("messages") is not None:
        if has_pc:
            raise BadRowError(
                "messages",
                "ambiguous_format",
                "the row has both 'messages' and 'prompt'/'completion'; keep one form",
            )
        if not isinstance(row["messages"], list | tuple):
            raise BadRowError(
                "messages",
                "wrong_type",
                f"expected a list of messages, got {type(row['messages']).__name__}",
            )
        if kind != "conversational":
            raise BadRowError(
                "messages", "mixed_formats", f"a message list in {kind} data ({kind_note})"
            )
        input_ids, labels, truncated = _messages_example(row["messages"], tokenizer, max_length)
        report.n_messages_rows += 1
    else:
        for name in ("prompt", "completion"):
            if row.get(name) is None:
                hint = " (or give the whole conversation as 'messages')" if has_pc else ""
                raise BadRowError(name, "missing_field", f"missing{hint}")
            _check_type(name, row[name], kind, kind_note)
        input_ids, labels, truncated = _prompt_completion_example(
            row["prompt"], row["completion"], tokenizer, max_length
        )
    return SFTExample(
        input_ids=input_ids,
        labels=labels,
        index=index,
        row=row.get(ROW_KEY, index),
        file=row.get(FILE_KEY),
        truncated=truncated,
        metadata={k: v for k, v in row.items() if k not in RESERVED},
    )


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
        if is_blank(completion):
            raise BadRowError("completion", "empty_completion", "empty completion")
    prompt_ids, completion_ids = tokenize_prompt_completion(prompt, completion, tokenizer)
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
    completion_ids, truncated = fit_response(completion_ids, len(prompt_ids), max_length)
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    return prompt_ids + completion_ids, labels, truncated


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
class SFTDataset(Dataset):
    """A map-style ``Dataset`` over ``SFTExample`` s."""

    def __init__(self, examples: Sequence[SFTExample]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> SFTExample:
        return self.examples[i]


class SFTCollator:
    """Right-pad ``B`` examples into ``input_ids`` / ``attention_mask`` / ``labels`` ``[B, L]``
    (``labels`` = ``-100`` on prompt and padding, not shifted) and ``index`` ``[B]``.

    The first label of every row is always ``-100``: no hidden state predicts position 0,
    so the number of trained tokens is ``(labels != -100).sum()`` however it is counted.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
            raise ValueError(f"pad_token_id: expected an int, got {pad_token_id!r}")
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: Sequence[SFTExample]) -> dict[str, Tensor]:
        if not examples:
            raise ValueError("SFTCollator: empty batch")
        length = max(len(ex.input_ids) for ex in examples)
        if self.pad_to_multiple_of:
            length = math.ceil(length / self.pad_to_multiple_of) * self.pad_to_multiple_of
        b = len(examples)
        input_ids = torch.full((b, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((b, length), dtype=torch.long)
        labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
        for i, ex in enumerate(examples):
            n = len(ex.input_ids)
            input_ids[i, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
            attention_mask[i, :n] = 1
            labels[i, :n] = torch.tensor(ex.labels, dtype=torch.long)
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
