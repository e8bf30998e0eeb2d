"""What validation found: the bad rows, the counts, and a short summary for the run report."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from smoothalign._options import option
from smoothalign.data.loading import location, row_location
from smoothalign.data.tokenization import TokenizedPair


@dataclass(frozen=True)
class BadRow:
    """One rejected row and why.

    ``index`` is the row's position in the list given to validation; ``row`` its original
    0-based row in its file (they differ for folders); ``field`` is ``None`` when the problem
    is the whole row. ``code`` is a stable short name (see ``validation.BAD_ROW_CODES``).
    """

    index: int
    row: int
    file: str | None
    field: str | None
    code: str
    reason: str

    @property
    def location(self) -> str:
        return location(self.file, self.row)

    def __str__(self) -> str:
        where = self.location if self.field is None else f"{self.location}, field '{self.field}'"
        return f"{where}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "row": self.row,
            "file": self.file,
            "field": self.field,
            "code": self.code,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class DuplicateRow:
    """A kept row whose text fields are those of an earlier kept row (``first_*``): a copy.

    ``index`` / ``first_index`` are positions in the list given to validation, ``row`` /
    ``first_row`` rows in their files (as :class:`BadRow`'s)."""

    index: int
    row: int
    file: str | None
    first_index: int
    first_row: int
    first_file: str | None

    @property
    def location(self) -> str:
        return location(self.file, self.row)

    @property
    def first_location(self) -> str:
        return location(self.first_file, self.first_row)

    def __str__(self) -> str:
        first = f"row {self.first_row}" if self.file == self.first_file else self.first_location
        return f"{self.location} (= {first})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "row": self.row,
            "file": self.file,
            "first_index": self.first_index,
            "first_row": self.first_row,
            "first_file": self.first_file,
        }


def find_duplicates(examples: list[Any]) -> list[DuplicateRow]:
    """The examples (anything with ``index``, ``row``, ``file`` and ``content_key``) whose
    ``content_key`` an earlier one has, in order; each names the first of its copies.
    Examples without a key (``None``) are never copies."""
    first: dict[str, Any] = {}
    out = []
    for ex in examples:
        key = ex.content_key
        if key is None:
            continue
        if key in first:
            f = first[key]
            out.append(DuplicateRow(ex.index, ex.row, ex.file, f.index, f.row, f.file))
        else:
            first[key] = ex
    return out


def _duplicates_without(duplicates: list[DuplicateRow], gone: set[int]) -> list[DuplicateRow]:
    """``duplicates`` once the kept rows at ``gone`` are dropped: their entries go, and where
    the first of a set of copies went, the earliest kept copy is the first (no longer a
    duplicate) and the others name it."""
    out = []
    first_kept: dict[int, DuplicateRow] = {}  # a dropped first's index -> its new first
    for d in duplicates:  # in row order: a set's earliest kept copy comes first
        if d.index in gone:
            continue
        if d.first_index not in gone:
            out.append(d)
        elif d.first_index not in first_kept:
            first_kept[d.first_index] = d  # now the first of its copies
        else:
            f = first_kept[d.first_index]
            out.append(DuplicateRow(d.index, d.row, d.file, f.index, f.row, f.file))
    return out


@dataclass
class RowReport:
    """What a row validation kept and rejected: ``examples`` (the kept rows, in row order),
    ``bad_rows`` (every rejected row, one entry per row: its first problem, in row order),
    ``n_rows`` (rows given to validation) and ``duplicates`` (kept rows whose text fields,
    ``copied``, are an earlier kept row's: kept, but counted and warned about)."""

    examples: list[Any]
    bad_rows: list[BadRow]
    n_rows: int
    duplicates: list[DuplicateRow] = field(default_factory=list, kw_only=True)

    copied: ClassVar[str] = "text fields"  # what a duplicate row repeats of an earlier one

    @property
    def n_duplicates(self) -> int:
        """Kept rows that repeat an earlier kept row (the first of each set of copies is
        not counted)."""
        return len(self.duplicates)

    def drop(self, bad: Sequence[BadRow]) -> None:
        """Move the kept rows that ``bad`` names (by ``index``) to the bad rows: a check made
        after validation, such as the ``oracle-*`` policies' confidence, which only the
        training rows need, known once the split is. The row counts, the copies (a dropped
        row is no copy, and the copies of a dropped first one name the next kept copy) and
        the subclasses' counts of the kept rows (:meth:`_forget`) then agree with
        ``examples``."""
        gone = {b.index for b in bad}
        dropped = [ex for ex in self.examples if ex.index in gone]
        self.examples = [ex for ex in self.examples if ex.index not in gone]
        self.bad_rows = sorted([*self.bad_rows, *bad], key=lambda b: b.index)
        self.duplicates = _duplicates_without(self.duplicates, gone)
        self._forget(dropped)

    def _forget(self, dropped: list[Any]) -> None:
        """Take the examples :meth:`drop` dropped out of the subclass's counts of kept rows."""

    def duplicate_counts(self) -> dict[str, Any]:
        """``n_duplicate_rows`` and ``duplicate_rows`` (every copy), for a JSON report."""
        return {
            "n_duplicate_rows": self.n_duplicates,
            "duplicate_rows": [d.to_dict() for d in self.duplicates],
        }

    def duplicates_warning(self, listed: int = 3) -> str | None:
        """What :attr:`duplicates` means for the run (the first ``listed`` named), or
        ``None`` without any."""
        if not self.duplicates:
            return None
        first = ", ".join(str(d) for d in self.duplicates[:listed])
        more = f" and {self.n_duplicates - listed} more" if self.n_duplicates > listed else ""
        return (
            f"{self.n_duplicates} of {self.n_kept} kept rows repeat the {self.copied} of an "
            f"earlier row: {first}{more}. They are kept (a row given twice is trained on "
            "twice), and a seeded holdout keeps every copy of a row on the same side"
        )

    @property
    def n_kept(self) -> int:
        return len(self.examples)

    @property
    def n_skipped(self) -> int:
        return len(self.bad_rows)

    def row_counts(self) -> dict[str, int]:
        """``n_rows``, ``n_kept`` and ``n_skipped``, for a JSON report."""
        return {"n_rows": self.n_rows, "n_kept": self.n_kept, "n_skipped": self.n_skipped}

    def bad_row_counts(self) -> dict[str, int]:
        """How many rows each problem code rejected, most frequent first."""
        return dict(Counter(b.code for b in self.bad_rows).most_common())

    def bad_rows_markdown(self, max_listed: int, details: str = "validation.json") -> list[str]:
        """The report's bad-row section (none without bad rows): the counts by code and the
        first ``max_listed`` rows; ``details`` names where the rest are listed."""
        if not self.bad_rows:
            return []
        counts = ", ".join(f"{code} {n}" for code, n in self.bad_row_counts().items())
        lines = ["", f"Skipped rows by reason: {counts}.", ""]
        lines += [f"- {b}" for b in self.bad_rows[:max_listed]]
        if self.n_skipped > max_listed:
            lines.append(f"- ... and {self.n_skipped - max_listed} more (see {details})")
        return lines


@dataclass
class TokenizedRowsReport(RowReport):
    """A :class:`RowReport` of rows tokenised in one format within a token budget: the
    counts, the JSON and the Markdown section that preference and SFT data share.

    Subclasses name the section (``title``) and add their counts (``_counts``: after
    ``n_skipped`` in the JSON) and summary lines (``_summary_lines``: after the row counts).
    """

    kind: str  # "plain" | "conversational": the data set's format
    max_length: int  # the token budget per sequence
    # plain text read as special tokens (a kept row's field holding a special-token string
    # other than a leading BOS or a trailing EOS): each "row N, field 'x': '<|im_end|>'"
    special_text: list[str] = field(default_factory=list)

    title: ClassVar[str] = "Data"
    details: ClassVar[str] = "validation.json"  # where the bad rows past max_listed are

    def _counts(self) -> dict[str, Any]:
        return {}

    def _summary_lines(self) -> list[str]:
        return []

    def special_text_warning(self) -> str | None:
        """What :attr:`special_text` means for training, or ``None`` without any."""
        if not self.special_text:
            return None
        return (
            f"{len(self.special_text)} kept plain-text fields hold special-token strings, "
            f"which the tokenizer reads as those tokens (first: {self.special_text[0]}). A "
            "pre-rendered chat template is meant so; a turn marker or an EOS inside a "
            "response teaches the model to end its turn there. Give the rows as message "
            "lists to have such text refused, or remove it"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counts, every copied row and every bad row (the kept examples are not
        included)."""
        return {
            "kind": self.kind,
            "max_length": self.max_length,
            **self.row_counts(),
            **self.duplicate_counts(),
            **self._counts(),
            "n_special_text": len(self.special_text),
            "special_text": list(self.special_text),
            "bad_row_counts": self.bad_row_counts(),
            "bad_rows": [b.to_dict() for b in self.bad_rows],
        }

    def to_markdown(self, max_listed: int = 10) -> str:
        """A short Markdown section for the run report, listing the first ``max_listed`` bad rows."""
        lines = [
            f"### {self.title}",
            "",
            f"- format: {self.kind}; {option('max_length')} {self.max_length} tokens",
            f"- rows: {self.n_rows} read, {self.n_kept} kept, {self.n_skipped} skipped",
            *self._summary_lines(),
        ]
        if self.duplicates:
            lines.append(f"- **warning**: {self.duplicates_warning()} (all in {self.details})")
        warning = self.special_text_warning()
        if warning is not None:
            lines.append(f"- **warning**: {warning} (all listed in {self.details})")
        lines += self.bad_rows_markdown(max_listed, self.details)
        return "\n".join(lines) + "\n"


@dataclass
class ValidationReport(TokenizedRowsReport):
    """The result of ``validate_preference_rows``.

    Attributes:
        examples: the kept rows, tokenised and ready for ``PreferenceCollator``.
        bad_rows: every rejected row (one entry per row: its first problem), in row order.
        n_rows: rows given to validation.
        kind: ``"plain"`` or ``"conversational"`` (the data set's format).
        max_length: the token budget per sequence (prompt + response).
        n_truncated_chosen / n_truncated_rejected: kept responses cut from the end to fit.
        n_identical_after_truncation: kept pairs whose chosen and rejected scored tokens
            became identical after truncation (their margin is always 0: they teach
            nothing). DPO's are ``collate.scored_ids`` (up to the last reply's); a reward
            model's (``whole_text``) are the whole sequences, which a user turn left in the
            cut still tells apart.
        n_implicit_prompt: conversational rows whose prompt was taken as the common prefix
            of ``chosen`` and ``rejected`` (no ``prompt`` column).
        n_with_confidence: kept rows that carry a ``confidence``.
        n_ref_logps_dropped: kept rows whose ``ref_*_logps`` were dropped because a response
            was truncated or holds other turns than the assistant's (they are log-probs of
            the whole response, not of what is scored: the cut response, its assistant turns).
    """

    examples: list[TokenizedPair]
    n_truncated_chosen: int = 0
    n_truncated_rejected: int = 0
    n_identical_after_truncation: int = 0
    n_implicit_prompt: int = 0
    n_with_confidence: int = 0
    n_ref_logps_dropped: int = 0
    # the pairs are a reward model's, which reads every token (n_identical_after_truncation)
    whole_text: bool = field(default=False, repr=False)

    title: ClassVar[str] = "Preference data"

    def _forget(self, dropped: list[Any]) -> None:
        """The counts of kept pairs without ``dropped``: the truncated responses, those with a
        confidence, and the pairs truncation made identical. (A dropped pair's implicit
        prompt and dropped reference log-probs stay counted: what validation did to the rows
        it read, which the pair does not record.)"""
        from smoothalign.data.validation import identical_after_truncation  # imports this

        self.n_truncated_chosen -= sum(p.chosen_truncated for p in dropped)
        self.n_truncated_rejected -= sum(p.rejected_truncated for p in dropped)
        self.n_with_confidence -= sum(p.confidence is not None for p in dropped)
        self.n_identical_after_truncation -= sum(
            identical_after_truncation(p, self.whole_text) for p in dropped
        )

    @property
    def n_truncated(self) -> int:
        """Responses (not pairs) truncated to fit ``max_length``."""
        return self.n_truncated_chosen + self.n_truncated_rejected

    def _counts(self) -> dict[str, Any]:
        return {
            "n_truncated": self.n_truncated,
            "n_truncated_chosen": self.n_truncated_chosen,
            "n_truncated_rejected": self.n_truncated_rejected,
            "n_identical_after_truncation": self.n_identical_after_truncation,
            "n_implicit_prompt": self.n_implicit_prompt,
            "n_with_confidence": self.n_with_confidence,
            "n_ref_logps_dropped": self.n_ref_logps_dropped,
        }

    def _summary_lines(self) -> list[str]:
        lines = [
            f"- responses truncated to fit: {self.n_truncated} "
            f"({self.n_truncated_chosen} chosen, {self.n_truncated_rejected} rejected)",
            f"- rows with a confidence: {self.n_with_confidence}",
        ]
        if self.n_implicit_prompt:
            lines.append(f"- prompts taken as the common prefix: {self.n_implicit_prompt}")
        if self.n_ref_logps_dropped:
            lines.append(
                f"- **warning**: {self.n_ref_logps_dropped} rows' reference log-probs were "
                f"dropped: their responses were truncated (raise {option('max_length')} to keep "
                "them) or hold user/tool turns, which are not scored, so the data's values (of the "
                "whole responses) do not apply"
            )
        if self.n_identical_after_truncation:
            lines.append(
                f"- **warning**: {self.n_identical_after_truncation} kept pairs have identical "
                f"chosen and rejected scored tokens after truncation; raise {option('max_length')}"
            )
        return lines


class RefusedRowsError(ValueError):
    """Rows refused for their bad rows (``on_bad_rows="error"`` with any, or no row left to
    keep). The message lists the first few (:func:`format_bad_rows`); ``report``, the
    :class:`RowReport` of the rows, holds every one, for whoever writes them out (the runs:
    ``refused_validation.json``)."""

    def __init__(self, message: str, report: RowReport):
        super().__init__(message)
        self.report = report


def _split_lead(bad_rows: list[BadRow], rows: Sequence[Any], listed: int = 3) -> str | None:
    """What the data's ``split`` column did, where it made bad rows (``bad_split``), said
    before the rows are listed: the values other than ``train`` / ``eval`` and their rows
    first (the cause: a split column makes every row need one), then how many rows give
    none. ``rows``: the rows given to validation (``BadRow.index`` is a position there)."""
    split_bad = [b for b in bad_rows if b.code == "bad_split"]
    if not split_bad:
        return None

    def value(b: BadRow) -> Any:
        row = rows[b.index]
        return row.get("split") if isinstance(row, Mapping) else None

    by_value: dict[str, list[BadRow]] = {}
    for b in split_bad:
        if value(b) is not None:
            by_value.setdefault(repr(value(b)), []).append(b)
    n_none = sum(value(b) is None for b in split_bad)
    parts = []
    if by_value:
        said = []
        for shown, these in by_value.items():
            where = ", ".join(b.location for b in these[:listed])
            more = f" and {len(these) - listed} more" if len(these) > listed else ""
            said.append(f"{shown} ({where}{more})")
        parts.append(f"values other than 'train' or 'eval': {'; '.join(said)}")
    if n_none:
        needs = f"{n_none} rows give no split, which every row needs once a row has one"
        if not by_value:  # the rows that made the column: their values are fine
            givers = [
                (i, r) for i, r in enumerate(rows) if isinstance(r, Mapping) and r.get("split")
            ]
            some = ", ".join(f"{row_location(r, i)}: {r['split']!r}" for i, r in givers[:listed])
            more = f" and {len(givers) - listed} more" if len(givers) > listed else ""
            needs += f" ({len(givers)} do: {some}{more})"
        parts.append(needs)
    return (
        "The data's 'split' column: " + "; ".join(parts) + ". Give every row 'train' or "
        "'eval', or drop the column."
    )


def format_bad_rows(
    bad_rows: list[BadRow],
    n_rows: int,
    limit: int = 5,
    what: str = "preference rows",
    rows: Sequence[Any] | None = None,
) -> str:
    """The error message for ``on_bad_rows="error"`` (or for no valid row left): the first
    ``limit`` rows and the total. With ``rows`` (those given to validation), bad ``split``
    values come first: what the split column holds other than train / eval, by row, then
    the rows listed with those first (a split column makes every row without a split bad,
    and listing those alone would hide the row that made it one)."""
    lines = [f"{len(bad_rows)} of {n_rows} {what} are invalid:"]
    lead = None if rows is None else _split_lead(bad_rows, rows)
    if lead is not None:
        lines.append(lead)

        def given(b: BadRow) -> bool:  # a split value, not none at all
            row = rows[b.index]
            return (
                b.code == "bad_split" and isinstance(row, Mapping) and row.get("split") is not None
            )

        bad_rows = sorted(bad_rows, key=lambda b: not given(b))  # stable: row order within
    lines += [f"  {b}" for b in bad_rows[:limit]]
    if len(bad_rows) > limit:
        lines.append(f"  ... and {len(bad_rows) - limit} more")
    too_long = sum(b.code == "prompt_too_long" for b in bad_rows)
    longer = (
        f" {too_long} of them are too long for the token budget: raise {option('max_length')} "
        "if the model takes longer inputs."
        if too_long
        else ""
    )
    if len(bad_rows) < n_rows:
        lines.append(
            f"Fix the data, or pass {option('on_bad_rows', 'skip')} to drop these rows "
            "(they are then listed in the validation report)." + longer
        )
    else:  # skipping would leave nothing
        lines.append("Fix the data." + longer)
    return "\n".join(lines)
