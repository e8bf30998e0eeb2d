"""Check preference rows before training, tokenise the good ones, and report the bad ones.

Nothing is dropped silently: with ``on_bad_rows="error"`` any bad row raises a
``ValueError`` (a ``RefusedRowsError``, carrying every bad row) naming the first few
(``row 17, field 'chosen': empty response``) and the total; with ``"skip"`` every bad row
is listed in the returned ``ValidationReport``.

Row formats (TRL's):

* plain text: ``prompt``, ``chosen``, ``rejected`` are strings;
* conversational: ``prompt`` is a list of ``{"role", "content"}`` messages ending with the
  turn being answered (not an assistant message); ``chosen``/``rejected`` are message lists
  starting and ending with an assistant message (usually just one; one ending with a
  ``user`` or ``tool`` turn, which no reply answers, is ``malformed_messages``). Keys that are ``None`` inside a
  message (Parquet/``datasets`` fill absent struct fields with nulls) are dropped.
  A response may go on with other turns (a ``user`` or ``tool`` message, then the next
  reply) or hold several replies: such a response is scored on its assistant turns only, not
  on the other turns nor on the generation prompt the template puts before a reply
  (``TokenizedPair``'s ``chosen_spans``/``rejected_spans``; the collator's labels mask the
  rest), chosen and rejected alike, as SFT trains a ``messages`` row. The model reads those
  turns, it never writes them: counting them in ``log π(y|x)`` would make DPO raise or lower
  the probability that the model writes the user's side. With them masked,
  ``log π − log π_ref`` of a multi-turn response is that of the model's own moves (the other
  turns' probability is the same under both and cancels). Reward models read the whole text
  (see ``smoothalign.reward.data``). A blank reply is an ``empty_response`` bad row,
  whatever the response's other turns hold;
* implicit prompt (conversational only): no ``prompt`` (or ``None``); ``chosen`` and
  ``rejected`` hold whole conversations. The prompt is their longest common prefix of
  messages, shortened so that it does not end with an assistant message. A plain-text row
  without a prompt is rejected: a common string prefix would cut words in half.

Optional columns: ``confidence`` (probability that ``chosen`` really wins, a number in
``[0, 1]``; ``None``/absent means unknown, NaN is an error), ``ref_chosen_logps`` and
``ref_rejected_logps`` (precomputed reference log-probs, both or neither, finite and <= 0;
dropped, and counted, where a response is truncated or has more than one message: the
values are of whole responses, and other tools sum every token of such a response, not its
assistant turns only).
Every other column is kept as ``TokenizedPair.metadata``. The data set's format is the
majority format of its rows; rows of the other format, and rows mixing both (a message-list
prompt beside string responses), are bad (``mixed_formats``). A list of strings is not a
message list: a ``wrong_type`` in plain data, ``malformed_messages`` in conversational.
"""

from __future__ import annotations

import ast
import difflib
import functools
import hashlib
import json
import math
import numbers
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal, TypeVar

from tqdm.auto import tqdm

from smoothalign._options import option
from smoothalign._warn import main_process, warn_main
from smoothalign.data.collate import scored_ids
from smoothalign.data.loading import (
    FILE_KEY,
    ROW_KEY,
    PreferenceSource,
    load_preference_rows,
    location,
    not_an_object,
)
from smoothalign.data.report import (
    BadRow,
    RefusedRowsError,
    TokenizedRowsReport,
    ValidationReport,
    find_duplicates,
    format_bad_rows,
)
from smoothalign.data.tokenization import (
    Message,
    RowTokenizationError,
    Spans,
    TokenizedPair,
    fit_response,
    special_token_strings,
    tokenize_responses,
)
from smoothalign.progress import bar_disable

TEXT_FIELDS = ("prompt", "chosen", "rejected")
REF_FIELDS = ("ref_chosen_logps", "ref_rejected_logps")
RESERVED = {*TEXT_FIELDS, "confidence", *REF_FIELDS, ROW_KEY, FILE_KEY}

BAD_ROW_CODES = {
    "not_a_mapping": "the row is not an object",
    "missing_field": "prompt, chosen or rejected is absent or null",
    "wrong_type": "a field is neither a string nor a message list",
    "mixed_formats": "a plain-text field in conversational data, or the reverse, or a row "
    "mixing the two (a message-list prompt beside string responses)",
    "malformed_messages": "a message list, role or content is malformed",
    "no_common_prompt": "implicit prompt: chosen and rejected share no leading prompt turns",
    "empty_response": "a response (its assistant turns) is empty or whitespace only, or no "
    "token of its assistant turns is left after truncation",
    "identical_responses": "chosen and rejected are identical",
    "bad_confidence": "confidence is not a number in [0, 1] (or is NaN)",
    "bad_ref_logp": "a reference log-prob is missing its partner, non-finite or > 0",
    "missing_confidence": "no confidence, which the oracle-* smoothing policies read",
    "empty_prompt": "no prompt tokens (empty prompt, no BOS): the responses could not be scored",
    "prompt_too_long": "the prompt alone has >= max_length tokens",
    "chat_template_error": "the chat template raised an error",
    "bad_split": "the split column holds something other than 'train' or 'eval'",
    "chat_template_prefix": "the chat template breaks the prompt-prefix property",
    "special_token_in_text": "a message's content holds a special-token string of the tokenizer",
    "messages_as_text": "a text field holds a message list written out as text (a CSV's cell, "
    "or a string where the list was meant)",
}
"""Every ``BadRow.code``, with what it means."""


class BadRowError(Exception):
    """A row check failed: ``field`` (``None``: the whole row), ``code``, ``reason`` become
    its ``BadRow`` (see :func:`bad_row`). Other row validators (SFT) raise it too."""

    def __init__(self, field: str | None, code: str, reason: str):
        super().__init__(reason)
        self.field, self.code, self.reason = field, code, reason


_Bad = BadRowError


SPLIT_VALUES = ("train", "eval")


def has_split_column(rows: Sequence[Any]) -> bool:
    """Whether any row (an object) has a ``split`` field: then every row needs one."""
    return any(not_an_object(r) is None and "split" in r for r in rows)


def require_split(row: Mapping[str, Any]) -> None:
    """Raise the ``bad_split`` ``BadRowError`` unless ``row["split"]`` is ``train`` or
    ``eval`` (for data with a split column: a row without one is bad too). Checked before
    anything else of the row, so a bad row counts in no statistic of the kept ones."""
    value = row.get("split")
    if value not in SPLIT_VALUES:
        raise BadRowError(
            "split", "bad_split", f"{value!r}; every row's split must be 'train' or 'eval'"
        )


def missing_reason(row: Mapping[str, Any], name: str, known: Collection[str] = ()) -> str:
    """Why the required field ``name`` has no value in ``row``: ``null`` where the key holds
    a JSON null, else ``missing``, naming the row's key closest to ``name`` among those that
    are not ``known`` fields (a typo such as ``choosen``), where one is close. A key that
    holds ``name`` whole (``p_chosen``, ``prompt_id``) is another column, not a typo of it."""
    if name in row:
        return "null"
    unknown = [k for k in row if isinstance(k, str) and name not in k and k not in known]
    close = difflib.get_close_matches(name, unknown, n=1, cutoff=0.75)
    if close:
        return f"missing (did you mean {name!r}? the row has {close[0]!r})"
    return "missing"


def require_object(row: Any) -> None:
    """Raise the ``not_a_mapping`` ``BadRowError`` for a row that is not an object (or the
    stand-in loading leaves in its place)."""
    name = not_an_object(row)
    if name is not None:
        raise BadRowError(None, "not_a_mapping", f"expected an object/dict, got {name}")


def bad_row(index: int, row: Any, error: BadRowError | RowTokenizationError) -> BadRow:
    """The ``BadRow`` of the row at ``index`` that failed with ``error``; ``row``'s ``_row``
    / ``_file`` keys (from loading) name it, else its list position."""
    is_map = isinstance(row, Mapping)
    return BadRow(
        index=index,
        row=row.get(ROW_KEY, index) if is_map else index,
        file=row.get(FILE_KEY) if is_map else None,
        field=error.field,
        code=error.code,
        reason=error.reason,
    )


def validate_preference_rows(
    rows: Sequence[Mapping[str, Any]] | PreferenceSource,
    tokenizer: Any,
    max_length: int,
    on_bad_rows: Literal["error", "skip"] = "error",
    *,
    require_confidence: bool = False,
    held_out: bool = False,
    whole_text: bool = False,
    check_split: bool | None = None,
) -> ValidationReport:
    """Validate and tokenise preference rows.

    Args:
        rows: rows from ``load_preference_rows`` (or a list of dicts; anything else is passed
            through ``load_preference_rows`` first). A row's ``_row`` / ``_file`` keys name it
            in messages; without ``_row`` its list position is used.
        tokenizer: a ``transformers`` tokenizer; plain text needs an EOS token, conversational
            data a ``chat_template``.
        max_length: the token budget of one sequence, prompt + response.
        on_bad_rows: ``"error"`` raises on any bad row; ``"skip"`` drops and lists them.
        require_confidence: a row without a ``confidence`` is a bad row (the ``oracle-*``
            smoothing policies read it from every row).
        held_out: the rows are a held-out set (``--eval-data``): a ``split`` column is not
            read, so it is not checked either (the training data's must say train or eval),
            and the console's warnings call the rows held-out.
        check_split: whether a ``split`` column is read and checked (default: ``not
            held_out``): ``eval preferences`` scores the rows a split column picked, held
            out or not.
        whole_text: the pairs are for a consumer that reads each sequence's every token (a
            reward model), not the assistant turns' log-prob alone (DPO): a pair counts in
            ``n_identical_after_truncation`` only where its truncated token sequences are
            the same, a user turn that still tells them apart being read too.

    Returns:
        A ``ValidationReport`` whose ``examples`` are the kept rows as ``TokenizedPair`` s,
        each sequence at most ``max_length`` tokens (responses cut from the end if needed).

    Raises:
        ValueError: a bad argument, a tokenizer unfit for the data, no rows, a bad row in
            ``"error"`` mode (first five listed, with the total), or no row left to keep.
    """
    return validate_rows(
        rows,
        tokenizer,
        max_length,
        on_bad_rows,
        what="preference",
        load=load_preference_rows,
        kind_fields=("chosen", "rejected", "prompt"),
        eos_use="appended to every response so the policy learns to stop",
        report_type=functools.partial(ValidationReport, whole_text=whole_text),
        process_row=functools.partial(
            _process_row_with_confidence if require_confidence else _process_row,
            whole_text=whole_text,
        ),
        progress=True,
        check_split=not held_out if check_split is None else check_split,
        held_out=held_out,
    )


def _process_row_with_confidence(index, row, *args, **kwargs) -> TokenizedPair:
    pair = _process_row(index, row, *args, **kwargs)
    if pair.confidence is None:
        raise _Bad(
            "confidence",
            "missing_confidence",
            "missing; the oracle-* smoothing policies read each row's confidence",
        )
    return pair


R = TypeVar("R", bound=TokenizedRowsReport)


def validate_rows(
    rows: Sequence[Any] | Any,
    tokenizer: Any,
    max_length: int,
    on_bad_rows: str,
    *,
    what: str,
    load: Callable[[Any], list[dict[str, Any]]],
    kind_fields: Sequence[str],
    eos_use: str,
    report_type: Callable[..., R],
    process_row: Callable[[int, Mapping[str, Any], str, str, Any, int, R], Any],
    progress: bool = False,
    check_split: bool = True,
    held_out: bool | None = None,
) -> R:
    """The row-validation loop that preference and SFT data share.

    Checks the arguments, loads ``rows`` with ``load`` unless they are a list, finds the
    data set's format (:func:`data_kind` over ``kind_fields``), checks that ``tokenizer``
    fits it (:func:`check_tokenizer`), then runs ``process_row(index, row, kind, kind_note,
    tokenizer, max_length, report)`` on every row that is a mapping: its result is kept in
    ``report.examples``, a ``BadRowError`` / ``RowTokenizationError`` becomes a ``BadRow``.
    ``what`` names the data in messages (``"no valid SFT row is left"``); ``progress`` shows
    a progress bar from 2000 rows; ``check_split``: a ``split`` column is read, so every
    row must say train or eval; ``held_out``: the rows are held out, which the console's
    warnings say (default: ``not check_split``, a held-out set's split not being read).

    Raises:
        ValueError: a bad argument, a tokenizer unfit for the data, no rows, a bad row in
            ``"error"`` mode (first five listed, with the total), or no row left to keep.
    """
    if on_bad_rows not in ("error", "skip"):
        raise ValueError(f"on_bad_rows: expected 'error' or 'skip', got {on_bad_rows!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length: expected an int >= 2, got {max_length!r}")
    source = None if isinstance(rows, list) else rows
    if source is not None:
        rows = load(source)
    if not rows:
        where = f" in {source}" if isinstance(source, str | os.PathLike) else ""
        raise ValueError(f"no {what} rows to validate{where}")

    kind, kind_note = data_kind(rows, kind_fields)
    check_tokenizer(tokenizer, kind, what, eos_use)
    report = report_type(
        examples=[], bad_rows=[], n_rows=len(rows), kind=kind, max_length=max_length
    )
    if progress:
        rows_seen = tqdm(
            rows,
            desc=f"validating {what} rows",
            disable=bar_disable(len(rows) < 2000 or not main_process() or None),
        )
    else:
        rows_seen = rows
    split_column = check_split and has_split_column(rows)
    # plain text is tokenised as the tokenizer reads it (a pre-rendered chat template keeps
    # its special tokens), so special-token strings there are counted, not refused
    specials = special_token_strings(tokenizer) if kind == "plain" else []
    for index, row in enumerate(rows_seen):
        try:
            require_object(row)
            if split_column:
                require_split(row)
            example = process_row(index, row, kind, kind_note, tokenizer, max_length, report)
        except (BadRowError, RowTokenizationError) as bad:
            report.bad_rows.append(bad_row(index, row, bad))
            continue
        example.content_key = content_key(row, kind_fields)
        report.examples.append(example)
        if specials:
            report.special_text += _special_text(index, row, kind_fields, specials, tokenizer)
    if report.special_text:
        warn_main(f"{what} data: {report.special_text_warning()}", stacklevel=3)
    if warning := truncation_warning(report):
        prefix = "held-out " if (not check_split if held_out is None else held_out) else ""
        warn_main(f"{prefix}{what} data: {warning}", stacklevel=3)
    report.duplicates = find_duplicates(report.examples)
    if report.duplicates:
        warn_main(f"{what} data: {report.duplicates_warning()}", stacklevel=3)

    if report.bad_rows and (on_bad_rows == "error" or not report.examples):
        prefix = "" if report.examples else f"no valid {what} row is left. "
        listing = format_bad_rows(report.bad_rows, len(rows), what=f"{what} rows", rows=rows)
        raise RefusedRowsError(prefix + listing, report)
    return report


TRUNCATION_WARNING_SHARE = 0.1
"""The share of the kept rows cut to fit ``max_length`` from which validation warns on the
console: a few long outliers are normal (and counted in the report); a tenth of the data
read without its ends is a ``max_length`` too small for it."""


def truncation_warning(report: TokenizedRowsReport) -> str | None:
    """What truncation did to ``report``'s kept rows, where it cut at least
    :data:`TRUNCATION_WARNING_SHARE` of them (a pair: either response; an SFT row: its
    sequence); ``None`` below that. Names the option that fixes it as its reader types it
    (:func:`smoothalign._options.option`)."""
    kept = report.examples
    pairs = isinstance(report, ValidationReport)
    if pairs:
        cut = sum(ex.chosen_truncated or ex.rejected_truncated for ex in kept)
    else:
        cut = sum(bool(getattr(ex, "truncated", False)) for ex in kept)
    if not kept or cut < TRUNCATION_WARNING_SHARE * len(kept):
        return None
    share = f"{cut} of {len(kept)} kept {'pairs' if pairs else 'rows'} ({cut / len(kept):.0%})"
    if pairs:
        what = (
            f"{share} have a response cut to fit max_length {report.max_length} "
            f"({report.n_truncated_chosen} chosen, {report.n_truncated_rejected} rejected)"
        )
    else:
        what = f"{share} were cut to fit max_length {report.max_length}"
    return (
        f"{what}: their ends, and the end-of-sequence token, are never read. Raise "
        f"{option('max_length')} if the model takes longer inputs (warned from "
        f"{TRUNCATION_WARNING_SHARE:.0%} of the kept rows; every cut is counted in the "
        "validation report)"
    )


def content_key(row: Mapping[str, Any], fields: Sequence[str]) -> str:
    """A digest of ``row``'s text ``fields`` (an empty string counting as absent, a
    message's ``None``-valued keys dropped, as validation reads them): two rows with the same
    one are copies of each other as far as training and a held-out set go, whatever their
    other columns (a label, a confidence) say."""
    content = {}
    for name in fields:
        value = row.get(name)
        if value is None or (isinstance(value, str) and not value):
            continue
        if isinstance(value, list | tuple):
            value = [
                {k: v for k, v in m.items() if v is not None} if isinstance(m, Mapping) else m
                for m in value
            ]
        content[name] = value
    text = json.dumps(content, sort_keys=True, ensure_ascii=False, default=repr)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def _special_text(
    index: int, row: Mapping[str, Any], fields: Sequence[str], specials: list[str], tokenizer: Any
) -> list[str]:
    """``"row N, field 'x': '<s>'"`` for each of ``fields`` of a plain row whose text holds a
    special-token string, other than the BOS string the text may start with and the EOS
    string it may end with (the tokenisation takes those as the BOS / EOS it adds)."""
    bos, eos = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "eos_token", None)
    where = location(row.get(FILE_KEY), row.get(ROW_KEY, index))
    found = []
    for name in fields:
        text = row.get(name)
        if not isinstance(text, str):
            continue
        if bos and text.startswith(bos):
            text = text[len(bos) :]
        if eos and text.endswith(eos):
            text = text[: -len(eos)]
        hits = [s for s in specials if s in text]
        if hits:
            found.append(f"{where}, field '{name}': {', '.join(map(repr, hits))}")
    return found


def data_kind(rows: Sequence[Any], fields: Sequence[str]) -> tuple[str, str]:
    """The majority format (ties: the first row's) and a note for mixed-format messages.

    A row's format is that of its ``fields``: ``"plain"`` where they hold strings,
    ``"conversational"`` where they hold message lists (:func:`value_format`); an empty
    string counts only in a row with no other text. Rows with neither, or with both (a
    message-list prompt beside string responses: :func:`check_row_format` refuses them),
    do not count.
    """
    kinds = [k for k in (_row_kind(r, fields) for r in rows) if k is not None]
    if not kinds:
        return "plain", "no row is well formed"
    counts = Counter(kinds)  # insertion order breaks ties in favour of the first row's kind
    kind, n = counts.most_common(1)[0]
    return kind, f"{n} of {len(rows)} rows are {kind}"


def _row_kind(row: Any, fields: Sequence[str]) -> str | None:
    if not isinstance(row, Mapping):
        return None
    values = [row.get(name) for name in fields]
    formats = {value_format(v) for v in values if v != ""} - {None}
    if not formats and "" in values:
        return "plain"  # a CSV's empty cells
    return formats.pop() if len(formats) == 1 else None


def value_format(value: Any) -> str | None:
    """A text field's format: ``"plain"`` for a string, ``"conversational"`` for a message
    list (a non-empty list or tuple of objects), ``None`` for anything else (a list of
    strings is neither: a wrong type, or a malformed message list)."""
    if isinstance(value, str):
        return "plain"
    if isinstance(value, list | tuple) and value and all(isinstance(m, Mapping) for m in value):
        return "conversational"
    return None


def check_row_format(row: Mapping[str, Any], names: Sequence[str], kind: str) -> None:
    """Raise the ``mixed_formats`` ``BadRowError`` where the row's text fields ``names``
    mix message lists and strings (a message-list prompt beside string responses): a row is
    conversational or plain text as a whole. The field named is the first of those not of
    the data set's ``kind``. A string that is a message list written out as text does not
    count (:func:`check_type` names it)."""
    formats = {name: value_format(row.get(name)) for name in names}
    lists = [n for n, f in formats.items() if f == "conversational"]
    strings = [n for n, f in formats.items() if f == "plain"]
    if lists and strings:  # (rare: the text check below runs for mixed rows only)
        strings = [n for n in strings if not looks_like_messages_text(row[n])]
    if not (lists and strings):
        return
    odd, others = _fields_are(lists, True), _fields_are(strings, False)
    if kind == "conversational":
        odd, others = others, odd
    raise _Bad(
        strings[0] if kind == "conversational" else lists[0],
        "mixed_formats",
        f"{odd} but {others}: in conversational data every field is a message list, in plain "
        "data every field a string",
    )


def _fields_are(names: list[str], lists: bool) -> str:
    """``'prompt' is a message list``, ``'chosen'/'rejected' are plain strings``."""
    shown = "/".join(f"'{n}'" for n in names)
    if len(names) == 1:
        return f"{shown} is {'a message list' if lists else 'a plain string'}"
    return f"{shown} are {'message lists' if lists else 'plain strings'}"


def check_tokenizer(tokenizer: Any, kind: str, what: str, eos_use: str) -> None:
    """Refuse a tokenizer unfit for ``kind`` data: plain text needs an EOS (``eos_use``
    says why), conversations a chat template. ``what`` names the data."""
    if kind == "plain" and getattr(tokenizer, "eos_token_id", None) is None:
        raise ValueError(
            f"plain-text {what} data needs a tokenizer with an eos_token ({eos_use}); "
            "set tokenizer.eos_token"
        )
    if kind == "conversational" and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"conversational {what} data needs a tokenizer with a chat_template; "
            "set tokenizer.chat_template"
        )


def _process_row(
    index: int,
    row: Any,
    kind: str,
    kind_note: str,
    tokenizer: Any,
    max_length: int,
    report: ValidationReport,
    *,
    whole_text: bool = False,
) -> TokenizedPair:
    prompt, chosen, rejected, implicit = _check_texts(row, kind, kind_note)
    confidence = _check_confidence(row.get("confidence"))
    ref_chosen, ref_rejected = _check_ref_logps(row)

    prompt_ids, ((chosen_ids, chosen_spans), (rejected_ids, rejected_spans)) = tokenize_responses(
        prompt, [chosen, rejected], tokenizer
    )
    if not prompt_ids:
        raise _Bad(
            "prompt",
            "empty_prompt",
            "no prompt tokens (an empty prompt, and the tokenizer adds no BOS): nothing "
            "would predict the responses' first tokens, so they could not be scored",
        )
    if len(prompt_ids) >= max_length:
        raise _Bad(
            "prompt",
            "prompt_too_long",
            f"the prompt is {len(prompt_ids)} tokens, >= max_length {max_length}: "
            "no room for a response",
        )
    for name, ids, spans in (
        ("chosen", chosen_ids, chosen_spans),
        ("rejected", rejected_ids, rejected_spans),
    ):
        if not ids:
            raise _Bad(name, "empty_response", "empty response (no tokens after the prompt)")
        _refuse_unscored(name, ids, spans, "")
    if scored_ids(chosen_ids, chosen_spans) == scored_ids(rejected_ids, rejected_spans):
        # different texts, same scored tokens: the margin is always 0 (reward data is
        # refused alike). Responses end with a reply (_check_response_messages), so no turn
        # after the last one, unscored, can tell two apart
        raise _Bad(
            "rejected",
            "identical_responses",
            "scores the same tokens as 'chosen' (the tokenizer or chat template erases "
            "their difference)",
        )
    chosen_ids, chosen_cut = fit_response(chosen_ids, len(prompt_ids), max_length)
    rejected_ids, rejected_cut = fit_response(rejected_ids, len(prompt_ids), max_length)
    masked = chosen_spans is not None or rejected_spans is not None
    for name, ids, spans, cut in (
        ("chosen", chosen_ids, chosen_spans, chosen_cut),
        ("rejected", rejected_ids, rejected_spans, rejected_cut),
    ):
        if cut:
            _refuse_unscored(
                name, ids, spans, f" in the {len(ids)} tokens that fit max_length {max_length}"
            )

    if (chosen_cut or rejected_cut or masked) and (
        ref_chosen is not None or ref_rejected is not None
    ):
        # the data's values are log-probs of the whole responses, not of the cut ones nor
        # (as other tools compute them) of a response's assistant turns alone
        ref_chosen = ref_rejected = None
        report.n_ref_logps_dropped += 1
    report.n_truncated_chosen += chosen_cut
    report.n_truncated_rejected += rejected_cut
    report.n_implicit_prompt += implicit
    report.n_with_confidence += confidence is not None
    pair = TokenizedPair(
        prompt_ids=prompt_ids,
        chosen_ids=chosen_ids,
        rejected_ids=rejected_ids,
        index=index,
        row=row.get(ROW_KEY, index),
        file=row.get(FILE_KEY),
        confidence=confidence,
        ref_chosen_logp=ref_chosen,
        ref_rejected_logp=ref_rejected,
        chosen_truncated=chosen_cut,
        rejected_truncated=rejected_cut,
        metadata={k: v for k, v in row.items() if k not in RESERVED},
        chosen_spans=chosen_spans,
        rejected_spans=rejected_spans,
    )
    report.n_identical_after_truncation += identical_after_truncation(pair, whole_text)
    return pair


def identical_after_truncation(pair: TokenizedPair, whole_text: bool = False) -> bool:
    """Whether a kept pair's chosen and rejected are the same tokens where they are read:
    DPO's scored ones (``collate.scored_ids``, up to the last reply's), or with
    ``whole_text`` (a reward model, which reads every token, the user turns between replies
    too) the whole sequences. Validation refuses pairs alike before truncation, so a kept
    pair alike was made so by it: its margin is always 0."""
    if whole_text:
        return pair.chosen_ids == pair.rejected_ids
    return scored_ids(pair.chosen_ids, pair.chosen_spans) == scored_ids(
        pair.rejected_ids, pair.rejected_spans
    )


def _refuse_unscored(name: str, ids: list[int], spans: Spans | None, where: str) -> None:
    """A response whose assistant turns hold no token (in ``ids``, ``where``) has an empty
    ``log π(y|x)``: a bad row."""
    if spans is not None and not scored_ids(ids, spans):
        raise _Bad(
            name,
            "empty_response",
            f"no token of its assistant turns is left to score{where} (its other turns are "
            "not scored)",
        )


def _check_texts(row: Mapping[str, Any], kind: str, kind_note: str) -> tuple[Any, Any, Any, bool]:
    """``(prompt, chosen, rejected, implicit_prompt)``, normalised, or raise ``_Bad``."""
    conversational = kind == "conversational"
    given = []
    for name in TEXT_FIELDS:
        if row.get(name) is None:
            if name == "prompt" and conversational:
                continue  # the implicit-prompt form
            hint = (
                " (a plain-text row needs a prompt; only conversational rows may hold it "
                "inside chosen/rejected)"
                if name == "prompt"
                else ""
            )
            raise _Bad(name, "missing_field", missing_reason(row, name, RESERVED) + hint)
        given.append(name)
    check_row_format(row, given, kind)
    for name in given:
        check_type(name, row[name], kind, kind_note, row.get(FILE_KEY))

    if not conversational:
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        implicit = False
    else:
        chosen = check_messages("chosen", row["chosen"])
        rejected = check_messages("rejected", row["rejected"])
        implicit = row.get("prompt") is None
        if implicit:
            prompt, chosen, rejected = _split_common_prompt(chosen, rejected)
        else:
            prompt = check_messages("prompt", row["prompt"])
        if prompt[-1]["role"] == "assistant":
            raise _Bad(
                "prompt",
                "malformed_messages",
                "the prompt ends with an assistant message; it should end with the turn "
                "that the response answers",
            )
        for name, response in (("chosen", chosen), ("rejected", rejected)):
            _check_response_messages(name, response, prompt, len(prompt) if implicit else 0)

    for name, response in (("chosen", chosen), ("rejected", rejected)):
        if isinstance(response, str):
            if is_blank(response):
                raise _Bad(name, "empty_response", "empty response")
        else:  # (implicit prompt: the field's messages count from the row's, prompt first)
            first = len(prompt) if implicit else 0
            if reason := blank_reply_reason(response, "response", "not the model's", first):
                raise _Bad(name, "empty_response", reason)
    if chosen == rejected:
        raise _Bad("rejected", "identical_responses", "identical to 'chosen'")
    return prompt, chosen, rejected, implicit


MESSAGE_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
"""The roles of a chat message list, by which a message list written out as text is known."""


def looks_like_messages_text(value: Any) -> bool:
    """Whether ``value`` is a string that holds a list of chat messages written out as text:
    it reads back (as JSON, as a Python literal, or as numpy's repr of an array of dicts)
    into a non-empty list of dicts each with a ``role`` of :data:`MESSAGE_ROLES` and a
    ``content`` key. So pandas' ``to_csv`` writes a message-list cell
    (``"[{'role': 'user', 'content': 'hi'}]"``), and ``json.dumps`` one. Read as a plain
    prompt or response it would train a model on that text. Anything else is text, however
    it starts: ``[{"name": "Ana", "role": "engineer"}]`` is a JSON answer, not messages.
    Nothing is ever evaluated (``json.loads``, ``ast.literal_eval``)."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    # cheap gates first: most text is never parsed
    if not (_LIST_OF_DICTS.match(text) and _DICT_LIST_END.search(text)):
        return False
    if not _ROLE_KEY.search(text):
        return False
    if len(text) > MAX_PARSED_CHARS:  # parsing would cost ~0.5 KB of memory per character
        return bool(_ROLE_KEY.search(text, 0, 500))  # the shape: a role in the first message
    parsed = _literal(text)
    if not isinstance(parsed, list):  # numpy's repr of an array of dicts: "[{..} {..}]"
        parsed = _literal(re.sub(r"\}\s+\{", "}, {", text))
    return isinstance(parsed, list) and bool(parsed) and all(_message_shaped(m) for m in parsed)


_LIST_OF_DICTS = re.compile(r"\[\s*\{")
_DICT_LIST_END = re.compile(r"\}\s*\]\Z")
_ROLE_KEY = re.compile(r"""['"]role['"]\s*:""")
MAX_PARSED_CHARS = 1 << 20
"""Longer cells are judged by their shape alone (a message list opens with its first
message's ``role`` key), not parsed: ``ast.literal_eval`` of megabytes takes seconds and
gigabytes."""


def _literal(text: str) -> Any:
    """``text`` read as JSON, else as a Python literal (never evaluated), else ``None``."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _message_shaped(item: Any) -> bool:
    role = item.get("role") if isinstance(item, dict) else None
    return isinstance(role, str) and role in MESSAGE_ROLES and "content" in item


def messages_as_text_error(name: str, value: str, file: str | None = None) -> BadRowError:
    """The ``messages_as_text`` bad row of field ``name`` whose ``value``
    :func:`looks_like_messages_text`; ``file``: the row's file, whose format says how the
    text came to be (a CSV cannot hold a list; elsewhere the list was written as a string)."""
    shown = " ".join(value.split())
    shown = shown if len(shown) <= 40 else shown[:40] + "..."
    if file is not None and str(file).lower().endswith(".csv"):
        how = (
            "a CSV cannot hold message lists (pandas' to_csv writes their Python repr); save "
            "the data as JSONL or Parquet"
        )
    else:
        how = (
            "the field holds a message list as a string where a list was expected; write the "
            "list itself, not its text (a JSON array of {role, content} objects, not a string)"
        )
    return BadRowError(
        name,
        "messages_as_text",
        f"a message list written out as text ({shown!r}), not a list of messages: {how}",
    )


def check_type(name: str, value: Any, kind: str, kind_note: str, file: str | None = None) -> None:
    """``value`` of field ``name`` has ``kind``'s type (a string for plain data, a message list
    for conversational), or ``BadRowError``: ``messages_as_text`` for a string that is a
    message list written out as text (:func:`looks_like_messages_text`; ``file``, the row's,
    words its message), ``mixed_formats`` for the other type, ``wrong_type`` for anything
    else."""
    if looks_like_messages_text(value):
        raise messages_as_text_error(name, value, file)
    expected, other = (list, str) if kind == "conversational" else (str, list)
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, expected):
        return
    if value_format(value) is not None:  # a string, or a message list
        found = "a plain string" if other is str else "a message list"
        raise _Bad(name, "mixed_formats", f"{found} in {kind} data ({kind_note})")
    want = "a list of messages" if kind == "conversational" else "a string"
    raise _Bad(name, "wrong_type", f"expected {want}, got {describe_type(value)}")


def describe_type(value: Any) -> str:
    """``int``, ``an empty list``, ``a list of str`` (its items' types): what a text field
    holds in a ``wrong_type`` message."""
    if not isinstance(value, list | tuple):
        return type(value).__name__
    kind = type(value).__name__
    if not value:
        return f"an empty {kind}"
    items = sorted({type(v).__name__ for v in value})
    return f"a {kind} of {'/'.join(items)} (not a message list of {{'role', 'content'}} objects)"


def check_messages(name: str, messages: Sequence[Any]) -> list[Message]:
    """``messages`` as a list of dicts with a non-empty string ``role`` and a string
    ``content`` (``None``-valued keys dropped), or ``BadRowError`` naming field ``name``."""
    if len(messages) == 0:
        raise _Bad(name, "malformed_messages", "empty message list")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise _Bad(
                name,
                "malformed_messages",
                f"message {i} is a {type(message).__name__}, expected {{'role', 'content'}}",
            )
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise _Bad(
                name,
                "malformed_messages",
                f"message {i}: 'role' must be a non-empty string, got {role!r}",
            )
        if not isinstance(content, str):
            raise _Bad(
                name,
                "malformed_messages",
                f"message {i} ({role}): 'content' must be a string, got {type(content).__name__}",
            )
        out.append({k: v for k, v in message.items() if v is not None})
    return out


def _split_common_prompt(
    chosen: list[Message], rejected: list[Message]
) -> tuple[list[Message], list[Message], list[Message]]:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and chosen[n - 1]["role"] == "assistant":
        n -= 1  # the response starts at an assistant turn, never inside one
    if n == 0:
        raise _Bad(
            "prompt",
            "no_common_prompt",
            "missing, and chosen/rejected share no leading messages to use as the prompt "
            "(implicit-prompt form)",
        )
    return chosen[:n], chosen[n:], rejected[n:]


def _check_response_messages(
    name: str, response: list[Message], prompt: list[Message], first: int = 0
) -> None:
    """A response's messages start and end with an assistant reply, or ``_Bad`` naming
    field ``name`` (``first``: where the response starts in its field, after an implicit
    prompt)."""
    if not response:
        raise _Bad(name, "empty_response", "empty response (no message after the prompt)")
    if response[0]["role"] != "assistant":
        hint = ""
        if response[: len(prompt)] == prompt:
            hint = "; it repeats the prompt: drop the 'prompt' column for the implicit-prompt form"
        raise _Bad(
            name,
            "malformed_messages",
            f"the response starts with a {response[0]['role']!r} message, expected 'assistant'{hint}",
        )
    if reason := trailing_turn_reason(response, "response", first):
        raise _Bad(name, "malformed_messages", reason)


def trailing_turn_reason(messages: list[Message], noun: str, first: int = 0) -> str | None:
    """Why a preference ``response``'s messages are refused for their last message, which
    must be an assistant reply: a ``user`` or ``tool`` turn after the last reply is no part
    of what the model writes, and a preference or a reward read over it would be about a
    turn nothing answers (numbered from ``first``: where the messages start in their field);
    ``None`` when the last message is the assistant's. (SFT keeps such turns: they are
    context there, never trained on.)"""
    last = messages[-1]["role"]
    if last == "assistant":
        return None
    return (
        f"the {noun} ends with a {last!r} message (message {first + len(messages) - 1}), "
        f"expected 'assistant': a {noun} ends with the model's reply; drop the turns after "
        "it, or add the reply that answers them"
    )


def blank_reply_reason(
    messages: list[Message], noun: str, others_are: str, first: int = 0
) -> str | None:
    """Why a response (or SFT completion) of ``messages`` is refused for its replies: all
    of them blank (its other turns, ``others_are``, give nothing to score), or one of several
    blank, as a ``messages`` row's would be (numbered from ``first``: where the response
    starts in its field); ``None`` when every reply says something."""
    if is_blank([m for m in messages if m["role"] == "assistant"]):
        others = sorted({m["role"] for m in messages} - {"assistant"})
        return f"empty {noun}" + (
            f" (its {'/'.join(others)} turns are {others_are})" if others else ""
        )
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and not m["content"].strip():
            return f"message {first + i} (assistant) is empty"
    return None


def is_blank(response: str | list[Message]) -> bool:
    """A string of whitespace only, or messages whose contents all are."""
    if isinstance(response, str):
        return not response.strip()
    return all(not m["content"].strip() for m in response)


def _as_real(name: str, code: str, value: Any, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _Bad(name, code, f"expected {expected}, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value):
        raise _Bad(name, code, f"NaN (expected {expected}; leave it out or null if unknown)")
    return value


def _check_confidence(value: Any) -> float | None:
    if value is None:
        return None
    c = _as_real("confidence", "bad_confidence", value, "a number in [0, 1]")
    if not 0.0 <= c <= 1.0:
        raise _Bad("confidence", "bad_confidence", f"{c} is outside [0, 1]")
    return c


FLOAT32_MAX = 3.4028234663852886e38


def _check_ref_logps(row: Mapping[str, Any]) -> tuple[float | None, float | None]:
    values = [row.get(name) for name in REF_FIELDS]
    if all(v is None for v in values):
        return None, None
    out = []
    for name, other, value in zip(REF_FIELDS, reversed(REF_FIELDS), values, strict=True):
        if value is None:
            raise _Bad(name, "bad_ref_logp", f"missing while '{other}' is given")
        v = _as_real(name, "bad_ref_logp", value, "a finite log-probability <= 0")
        if not v <= 0.0 or math.isinf(v):
            raise _Bad(name, "bad_ref_logp", f"{v} is not a finite log-probability <= 0")
        if v < -FLOAT32_MAX:  # the batches hold them as float32, where this is -inf
            raise _Bad(name, "bad_ref_logp", f"{v} is below float32's range (-3.4e38)")
        out.append(v)
    return out[0], out[1]
