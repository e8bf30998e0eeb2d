"""Soft-label preference pairs for reward models: validate, tokenise, collate; and an oracle
world that simulates annotators.

**Rows.** TRL's ``prompt``/``chosen``/``rejected`` (plain or conversational, checked and
tokenised by :func:`smoothalign.data.validate_preference_rows`) plus a soft label: the
probability that ``chosen`` (the *first* response) wins, given in one of two forms:

* ``p_chosen``: a number in ``[0, 1]`` (e.g. the share of annotators preferring ``chosen``);
* per-annotator votes as counts, ``votes_chosen`` and ``votes_total`` (integers,
  ``0 <= votes_chosen <= votes_total``, ``votes_total >= 1``); the label is their ratio.
  Counts were picked over a list column because they fit every file format (CSV included).
  A list ``votes`` of 0/1 (1 = that annotator preferred ``chosen``) is accepted too and read
  as counts.

A row may carry several forms (the oracle world writes ``p_chosen`` and the counts); they
must then agree. Optional: ``pair_id`` (unique), ``confidence`` (the *true* probability that
``chosen`` wins, for studies: the ``*_true`` metrics), anything else (kept as metadata).
``p_chosen < ½`` is allowed: the data set's ``chosen`` is then the minority's choice.

**Labels in a separate file**, joined on ``pair_id``: one row per pair with ``pair_id`` and a
label form above, or one row per annotator vote, ``{"pair_id", "vote": 0 | 1}`` (long
format; counted into ``votes_chosen``/``votes_total``). Any problem in the labels file
(unknown, missing or duplicated ``pair_id``, a vote that is not 0/1) raises, naming its row
and field; a data row left without a label is a bad row (``missing_label``). One labels
file may label the held-out pairs too (:func:`share_labels`: ``--labels`` without
``--eval-labels``), each of its rows joined on whichever side holds its id.

**Responses with other turns.** A conversational ``chosen``/``rejected`` may hold ``user``
or ``tool`` turns between assistant replies; the rows are accepted and refused by the same
rule as DPO's (``validate_preference_rows``: a response starts and ends with an assistant
message, a ``malformed_messages`` bad row otherwise: a turn after the last reply is not the
model's, and a reward model scoring a new reply never sees one; a blank reply is an
``empty_response`` bad row), so one data set serves both. But where DPO masks those turns
out of ``log π(y|x)`` (the model does not write them), a reward model scores the whole text,
user turns included: its scalar, read at the last token, judges the conversation as a whole,
and no token is attributed to the model to mask.

Nothing is dropped silently: ``on_bad_rows="error"`` raises ``ValueError`` listing the first
bad rows (``row 3, field 'p_chosen': 1.3 is outside [0, 1]``) and the total; ``"skip"``
keeps the others and lists the bad ones in the report.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from smoothalign.data import (
    BadRow,
    PreferenceCollator,
    TokenizedPair,
    ValidationReport,
    load_preference_rows,
    validate_preference_rows,
)
from smoothalign.data.collate import ExampleDataset
from smoothalign.data.loading import file_label, not_an_object, row_location
from smoothalign.data.report import DuplicateRow, RefusedRowsError, RowReport, format_bad_rows
from smoothalign.data.validation import BadRowError, bad_row, require_object

LABEL_FIELDS = ("p_chosen", "votes_chosen", "votes_total", "votes")
SOFT_LABEL_CODES = {
    "missing_label": "no p_chosen, no votes_chosen/votes_total and no votes",
    "bad_p_chosen": "p_chosen is not a number in [0, 1] (or is NaN)",
    "bad_votes": "vote counts are not integers with 0 <= votes_chosen <= votes_total",
    "zero_annotators": "votes_total is 0, or the votes list is empty",
    "inconsistent_label": "two label forms of the row disagree",
    "duplicate_pair_id": "a pair_id seen on an earlier row",
}
"""Every ``BadRow.code`` that the soft-label checks add to ``data.BAD_ROW_CODES``."""
AGREEMENT_TOLERANCE = 1e-6


@dataclass
class RewardPair:
    """One validated soft-label pair: the tokenised texts and the label.

    ``p_chosen``: probability that the first (chosen) response wins; ``votes_chosen`` /
    ``votes_total``: the annotator counts when the label came from votes, else None.
    """

    pair: TokenizedPair
    p_chosen: float
    votes_chosen: int | None = None
    votes_total: int | None = None
    pair_id: Any = None

    @property
    def index(self) -> int:
        return self.pair.index

    @property
    def confidence(self) -> float | None:
        return self.pair.confidence


@dataclass
class RewardValidationReport(RowReport):
    """What :func:`validate_reward_rows` kept and rejected (``bad_rows`` in row order)."""

    examples: list[RewardPair]
    text: ValidationReport | None = None  # the prompt/chosen/rejected checks' report
    n_from_votes: int = 0
    labels_source: str | None = None
    notes: list[str] = field(default_factory=list)

    def drop(self, bad: Sequence[BadRow]) -> None:
        """:meth:`RowReport.drop`, in the text checks' report (``text``) too, whose kept
        pairs and bad rows are the same rows': its counts agree with the top level's."""
        super().drop(bad)
        if self.text is not None:
            self.text.drop(bad)
            self.duplicates = list(self.text.duplicates)
        self.n_from_votes = sum(e.votes_total is not None for e in self.examples)

    def label_stats(self) -> dict[str, float]:
        p = np.array([e.p_chosen for e in self.examples], dtype=np.float64)
        k = np.array([e.votes_total for e in self.examples if e.votes_total is not None])
        out = {
            "p_chosen_mean": float(p.mean()) if p.size else math.nan,
            "fraction_tied": float(np.mean(p == 0.5)) if p.size else math.nan,
            "fraction_unanimous": float(np.mean((p == 0) | (p == 1))) if p.size else math.nan,
            "fraction_chosen_minority": float(np.mean(p < 0.5)) if p.size else math.nan,
        }
        if k.size:
            out["annotators_mean"] = float(k.mean())
            out["annotators_min"] = float(k.min())
            out["annotators_max"] = float(k.max())
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.row_counts(),
            **self.duplicate_counts(),
            "n_from_votes": self.n_from_votes,
            "labels_source": self.labels_source,
            "label_stats": self.label_stats(),
            "text": None if self.text is None else self.text.to_dict(),
            "bad_rows": [b.to_dict() for b in self.bad_rows],
        }

    def to_markdown(self, max_listed: int = 10) -> str:
        s = self.label_stats()
        lines = [
            "### Soft-label preference data",
            "",
            f"- rows: {self.n_rows} read, {self.n_kept} kept, {self.n_skipped} skipped",
            f"- labels: {self.n_from_votes} from annotator votes, "
            f"{self.n_kept - self.n_from_votes} from p_chosen"
            + (f" (joined from {self.labels_source})" if self.labels_source else ""),
            f"- mean p_chosen {s['p_chosen_mean']:.3f}; tied votes {s['fraction_tied']:.1%}; "
            f"unanimous {s['fraction_unanimous']:.1%}; chosen is the minority's choice in "
            f"{s['fraction_chosen_minority']:.1%}",
        ]
        if "annotators_mean" in s:
            lines.append(
                f"- annotators per pair: mean {s['annotators_mean']:.2f} "
                f"(min {s['annotators_min']:g}, max {s['annotators_max']:g})"
            )
        if self.text is not None:
            t = self.text
            lines.append(
                f"- format: {t.kind}; max_length {t.max_length} tokens; responses truncated: "
                f"{t.n_truncated}; rows with a true confidence: {t.n_with_confidence}"
            )
        if self.duplicates:
            lines.append(f"- **warning**: {self.duplicates_warning()} (all in validation.json)")
        lines += [f"- {n}" for n in self.notes]
        lines += self.bad_rows_markdown(max_listed)
        return "\n".join(lines) + "\n"


_Bad = BadRowError


# ------------------------------------------------------------------------------- labels
def _number(name: str, code: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _Bad(name, code, f"expected a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if math.isnan(v):
        raise _Bad(name, code, "NaN (expected a number; leave the field out if unknown)")
    return v


def _count(name: str, value: Any) -> int:
    v = _number(name, "bad_votes", value)
    if math.isinf(v) or v != int(v) or v < 0:
        raise _Bad(name, "bad_votes", f"expected a whole number >= 0, got {value!r}")
    return int(v)


def soft_label(row: Mapping[str, Any]) -> tuple[float, int | None, int | None]:
    """``(p_chosen, votes_chosen, votes_total)`` of one row (counts None without votes).

    Raises:
        _Bad: (internal) with the field, a code of :data:`SOFT_LABEL_CODES` and the reason.
    """
    given = {k: row.get(k) for k in LABEL_FIELDS if row.get(k) is not None}
    if not given:
        raise _Bad(
            "p_chosen",
            "missing_label",
            "no soft label: give p_chosen, votes_chosen + votes_total, or votes "
            "(for hard-labelled pairs, whose chosen always wins: p_chosen = 1)",
        )
    shares: list[tuple[str, float]] = []
    chosen = total = None
    if "p_chosen" in given:
        p = _number("p_chosen", "bad_p_chosen", given["p_chosen"])
        if not 0.0 <= p <= 1.0:
            raise _Bad("p_chosen", "bad_p_chosen", f"{p:g} is outside [0, 1]")
        shares.append(("p_chosen", p))
    if "votes_chosen" in given or "votes_total" in given:
        for name, other in (("votes_chosen", "votes_total"), ("votes_total", "votes_chosen")):
            if name not in given:
                raise _Bad(name, "bad_votes", f"missing while '{other}' is given")
        chosen = _count("votes_chosen", given["votes_chosen"])
        total = _count("votes_total", given["votes_total"])
        if total == 0:
            raise _Bad("votes_total", "zero_annotators", "zero annotators (votes_total = 0)")
        if chosen > total:
            raise _Bad(
                "votes_chosen", "bad_votes", f"{chosen} votes for chosen out of only {total}"
            )
        shares.append(("votes_chosen", chosen / total))
    if "votes" in given:
        c, t = _vote_list(given["votes"])
        if chosen is not None and (c, t) != (chosen, total):
            raise _Bad(
                "votes",
                "inconsistent_label",
                f"{c} of {t} votes for chosen, but votes_chosen/votes_total say {chosen}/{total}",
            )
        chosen, total = c, t
        shares.append(("votes", c / t))
    first_name, first = shares[0]
    for name, value in shares[1:]:
        if abs(value - first) > AGREEMENT_TOLERANCE:
            raise _Bad(
                name,
                "inconsistent_label",
                f"gives P(chosen wins) = {value:.6g} but {first_name} = {first:.6g}",
            )
    return first, chosen, total


def _vote_list(votes: Any) -> tuple[int, int]:
    if isinstance(votes, str) or not isinstance(votes, Sequence | np.ndarray):
        raise _Bad(
            "votes", "bad_votes", f"expected a list of 0/1 votes, got {type(votes).__name__}"
        )
    if len(votes) == 0:
        raise _Bad("votes", "zero_annotators", "zero annotators (an empty votes list)")
    for i, v in enumerate(votes):
        # True/False count as 1/0; NaN, 2, "1" and nested lists or arrays do not
        if not isinstance(v, numbers.Real | np.bool_) or v not in (0, 1):
            raise _Bad("votes", "bad_votes", f"vote {i} is {v!r}; each vote must be 0 or 1")
    return int(sum(int(v) for v in votes)), len(votes)


def join_labels(
    rows: list[dict[str, Any]], label_rows: list[dict[str, Any]], source: str = "labels"
) -> list[dict[str, Any]]:
    """Copies of ``rows`` with the soft labels of ``label_rows`` joined on ``pair_id``.

    A data row without a matching label is returned unlabelled (validation then reports it
    as ``missing_label``). Raises ``ValueError`` naming the row and field for: a data row
    without ``pair_id`` or with a repeated one, a data row that already has a label, a labels
    row without ``pair_id``, with an id absent from the data, labelling a pair twice, mixing
    the long (``vote``) and per-pair forms for one pair, or a vote that is not 0/1.
    """
    errors: list[str] = []
    by_id: dict[Any, int] = {}
    for i, row in enumerate(rows):
        where = row_location(row, file="data")
        if not_an_object(row) is not None:
            continue  # validation reports it (not_a_mapping) and leaves it unlabelled
        pid = row.get("pair_id")
        if pid is None:
            errors.append(f"{where}, field 'pair_id': missing (labels are joined on it)")
        elif _key(pid) in by_id:
            first = row_location(rows[by_id[_key(pid)]], file="data")
            errors.append(f"{where}, field 'pair_id': {pid!r} repeats {first}")
        else:
            by_id[_key(pid)] = i
        present = [k for k in LABEL_FIELDS if row.get(k) is not None]
        if present:
            errors.append(
                f"{where}, field '{present[0]}': the row already has a label; give each "
                "pair's label in the data or in the labels file, not both"
            )
    per_pair: dict[int, dict[str, Any]] = {}
    long_votes: dict[int, list[int]] = {}
    first_label_row: dict[int, str] = {}
    for lrow in label_rows:
        where = row_location(lrow, file=source)
        if not_an_object(lrow) is not None:
            errors.append(f"{where}: expected an object/dict, got {not_an_object(lrow)}")
            continue
        pid = lrow.get("pair_id")
        if pid is None:
            errors.append(f"{where}, field 'pair_id': missing")
            continue
        if _key(pid) not in by_id:
            errors.append(f"{where}, field 'pair_id': no pair with id {pid!r} in the data")
            continue
        i = by_id[_key(pid)]
        is_vote = lrow.get("vote") is not None
        has_label = any(lrow.get(k) is not None for k in LABEL_FIELDS)
        if is_vote and has_label:
            errors.append(f"{where}, field 'vote': a row holds one vote or one pair's label")
            continue
        if not is_vote and not has_label:
            errors.append(
                f"{where}, field 'p_chosen': no label (p_chosen, votes_chosen + votes_total, "
                "votes, or one annotator's vote)"
            )
            continue
        seen = first_label_row.get(i)  # the first row accepted for this pair
        if is_vote:
            v = lrow["vote"]
            if v not in (0, 1):
                errors.append(f"{where}, field 'vote': expected 0 or 1, got {v!r}")
                continue
            if i in per_pair:
                errors.append(f"{where}, field 'pair_id': pair {pid!r} already labelled at {seen}")
                continue
            long_votes.setdefault(i, []).append(int(v))
        else:
            if i in per_pair or i in long_votes:
                errors.append(f"{where}, field 'pair_id': pair {pid!r} already labelled at {seen}")
                continue
            label = {k: lrow[k] for k in LABEL_FIELDS if lrow.get(k) is not None}
            try:  # a bad value is the labels file's, and named there (not at the data row)
                soft_label(label)
            except _Bad as bad:
                errors.append(f"{where}, field '{bad.field}': {bad.reason}")
                continue
            per_pair[i] = label
        first_label_row.setdefault(i, f"{where} ({'vote' if is_vote else 'label'})")
    if errors:
        head = f"{len(errors)} problem(s) joining the labels ({source}) to the data on pair_id:"
        more = [f"  ... and {len(errors) - 5} more"] if len(errors) > 5 else []
        raise ValueError("\n".join([head, *(f"  {e}" for e in errors[:5]), *more]))
    out = [dict(r) for r in rows]
    for i, label in per_pair.items():
        out[i].update(label)
    for i, votes in long_votes.items():
        out[i].update(votes_chosen=sum(votes), votes_total=len(votes))
    return out


@dataclass
class SharedLabels:
    """One labels file's rows split between the training pairs and the held-out pairs
    (:func:`share_labels`): ``data`` and ``held_out`` are the loaded rows, the held-out
    ones with the labels of theirs that the file names joined already; ``train_labels``
    are the file's rows that :func:`join_labels` joins to ``data``; ``n_held_out``: how
    many held-out pairs the file labelled."""

    data: list[dict[str, Any]]
    held_out: list[dict[str, Any]]
    train_labels: list[dict[str, Any]]
    n_held_out: int
    source: str


def share_labels(
    data: Any, held_out: Any, labels: Any, *, held_out_name: str = "--eval-data"
) -> SharedLabels:
    """Let one labels file (or list) label both the training pairs (``data``) and the
    held-out pairs (``held_out``: a data folder's eval rows, or ``--eval-data``), matched on
    ``pair_id`` per side, as ``--labels`` does without ``--eval-labels``.

    Each labels row goes to the side holding its id: the training pairs' as always, and
    the held-out pairs that carry no label in their row (those that do keep it, and the
    held-out pairs the file does not name are left as they are: their rows' labels, or a
    ``missing_label`` bad row). Rows without a ``pair_id``, or not objects, go to the
    training side, where :func:`join_labels` names them.

    Raises:
        ValueError: naming the labels row and field, for an id found on neither side, an id
            of a training pair and of an unlabelled held-out pair (which does it label? the
            held-out labels then need ``--eval-labels``), or one of a held-out pair whose
            row has a label already; and whatever :func:`join_labels` raises for the
            held-out pairs.
    """
    source = file_label(labels) if isinstance(labels, str | os.PathLike) else "labels"
    data_rows = load_preference_rows(data, option="data")
    held_rows = load_preference_rows(held_out, option="held_out")
    for given, loaded in ((data, data_rows), (held_out, held_rows)):
        if not loaded:  # validate_reward_rows's message, which names the file
            where = f" in {given}" if isinstance(given, str | os.PathLike) else ""
            raise ValueError(f"no preference rows to validate{where}")
    label_rows = load_preference_rows(labels, option="labels")
    train_ids: dict[Any, dict[str, Any]] = {}
    for row in data_rows:
        if not_an_object(row) is None and row.get("pair_id") is not None:
            train_ids.setdefault(_key(row["pair_id"]), row)
    open_ids: dict[Any, dict[str, Any]] = {}  # held-out pairs without a label: the file's
    labelled_ids: dict[Any, dict[str, Any]] = {}
    for row in held_rows:
        if not_an_object(row) is not None or row.get("pair_id") is None:
            continue
        has_label = any(row.get(k) is not None for k in LABEL_FIELDS)
        (labelled_ids if has_label else open_ids).setdefault(_key(row["pair_id"]), row)
    train_part: list[dict[str, Any]] = []
    held_part: list[dict[str, Any]] = []
    errors: list[str] = []
    for lrow in label_rows:
        pid = None if not_an_object(lrow) is not None else lrow.get("pair_id")
        where = row_location(lrow, file=source)
        key = None if pid is None else _key(pid)
        if pid is None:
            train_part.append(lrow)  # join_labels names it
        elif key in train_ids and key in open_ids:
            errors.append(
                f"{where}, field 'pair_id': {pid!r} names a training pair "
                f"({row_location(train_ids[key], file='data')}) and a held-out one "
                f"({row_location(open_ids[key], file=held_out_name)}): which does it label? "
                "Give the held-out pairs' labels as --eval-labels FILE"
            )
        elif key in train_ids:
            train_part.append(lrow)
        elif key in open_ids:
            held_part.append(lrow)
        elif key in labelled_ids:
            errors.append(
                f"{where}, field 'pair_id': labels the held-out pair at "
                f"{row_location(labelled_ids[key], file=held_out_name)}, whose row has a "
                "label already; give each pair's label in the data or in the labels file, "
                "not both"
            )
        else:
            errors.append(
                f"{where}, field 'pair_id': no pair with id {pid!r} in the data or in the "
                f"held-out pairs ({held_out_name})"
            )
    if errors:
        head = (
            f"{len(errors)} problem(s) joining the labels ({source}) to the data and the "
            "held-out pairs on pair_id:"
        )
        more = [f"  ... and {len(errors) - 5} more"] if len(errors) > 5 else []
        raise ValueError("\n".join([head, *(f"  {e}" for e in errors[:5]), *more]))
    if held_part:  # only the unlabelled held-out rows are joined: the others keep theirs
        at = [
            i
            for i, row in enumerate(held_rows)
            if not_an_object(row) is None and not any(row.get(k) is not None for k in LABEL_FIELDS)
        ]
        joined = join_labels([held_rows[i] for i in at], held_part, source=source)
        held_rows = list(held_rows)
        for i, row in zip(at, joined, strict=True):
            held_rows[i] = row
    n_held_out = len({_key(r["pair_id"]) for r in held_part})
    return SharedLabels(data_rows, held_rows, train_part, n_held_out, source)


def _key(pid: Any) -> Any:
    # 3 and "3" name the same pair (CSV reads ids as numbers, JSON may quote them)
    return str(pid)


# ------------------------------------------------------------------------------- validation
def validate_reward_rows(
    rows: Sequence[Mapping[str, Any]] | Any,
    tokenizer: Any,
    max_length: int,
    on_bad_rows: Literal["error", "skip"] = "error",
    *,
    labels: Any = None,
    labels_source: str | None = None,
    held_out: bool = False,
    missing_label_hint: str | None = None,
) -> RewardValidationReport:
    """Check the soft labels, then the texts (``validate_preference_rows``), and tokenise.

    Args:
        rows: rows from ``load_preference_rows`` or anything it reads (path, folder, list).
        tokenizer, max_length: as for ``validate_preference_rows``.
        on_bad_rows: ``"error"`` raises on any bad row; ``"skip"`` drops and lists them.
        labels: optional labels joined on ``pair_id`` (path, folder or list of dicts; see the
            module docstring).
        labels_source: how messages and the report name the labels (default: their path
            as given, or ``"labels"``); with ``labels=None``, the source of labels joined
            into ``rows`` already (:func:`share_labels`), for the report.
        missing_label_hint: said once after the rows, where pairs without a label make
            the error (where the rows came from, how to label them).

    Returns:
        The report; its ``examples`` are :class:`RewardPair` s whose ``pair.index`` is the
        row's position in ``rows``.
    """
    if on_bad_rows not in ("error", "skip"):
        raise ValueError(f"on_bad_rows: expected 'error' or 'skip', got {on_bad_rows!r}")
    source = rows
    rows = load_preference_rows(rows)  # labels every row with its "_row" (lists included)
    if not rows:
        where = f" in {source}" if isinstance(source, str | os.PathLike) else ""
        raise ValueError(f"no preference rows to validate{where}")
    source = labels_source
    if labels is not None:
        if source is None:
            source = file_label(labels) if isinstance(labels, str | os.PathLike) else "labels"
        rows = join_labels(rows, load_preference_rows(labels), source=source)

    bad: list[BadRow] = []
    kept_rows: list[Mapping[str, Any]] = []
    kept_at: list[int] = []  # position in ``rows`` of each kept row
    label_of: list[tuple[float, int | None, int | None]] = []
    seen_ids: dict[str, int] = {}
    for index, row in enumerate(rows):
        try:
            require_object(row)
            pid = row.get("pair_id")
            if pid is not None:
                if _key(pid) in seen_ids:
                    first = rows[seen_ids[_key(pid)]]
                    raise _Bad(
                        "pair_id",
                        "duplicate_pair_id",
                        f"{pid!r} already names {row_location(first)}",
                    )
                seen_ids[_key(pid)] = index
            label_of.append(soft_label(row))
        except _Bad as b:
            bad.append(bad_row(index, row, b))
            continue
        kept_rows.append(row)
        kept_at.append(index)

    text_report = None
    examples: list[RewardPair] = []
    if kept_rows:
        try:
            text_report = validate_preference_rows(
                kept_rows, tokenizer, max_length, "skip", held_out=held_out, whole_text=True
            )
        except RefusedRowsError as e:  # no row's text is valid: listed with the others below
            text_report = e.report
        text_report.bad_rows = [
            BadRow(kept_at[b.index], b.row, b.file, b.field, b.code, b.reason)
            for b in text_report.bad_rows
        ]
        bad += text_report.bad_rows
        text_report.duplicates = [
            DuplicateRow(kept_at[d.index], d.row, d.file, kept_at[d.first_index], d.first_row,
                         d.first_file)
            for d in text_report.duplicates
        ]  # fmt: skip
        for ex in text_report.examples:
            p, c, t = label_of[ex.index]
            ex.index = kept_at[ex.index]
            examples.append(RewardPair(ex, p, c, t, rows[ex.index].get("pair_id")))
    bad.sort(key=lambda b: b.index)
    report = RewardValidationReport(
        examples=examples,
        bad_rows=bad,
        n_rows=len(rows),
        text=text_report,
        n_from_votes=sum(e.votes_total is not None for e in examples),
        labels_source=source,
        duplicates=[] if text_report is None else list(text_report.duplicates),
    )
    if bad and (on_bad_rows == "error" or not examples):
        prefix = "" if examples else "no valid soft-label preference row is left. "
        hint = ""
        if missing_label_hint and any(b.code == "missing_label" for b in bad):
            hint = "\n" + missing_label_hint
        listing = format_bad_rows(bad, len(rows), rows=rows)
        raise RefusedRowsError(prefix + listing + hint, report)
    return report


# ------------------------------------------------------------------------------- batching
class RewardDataset(ExampleDataset[RewardPair]):
    """A map-style torch ``Dataset`` over :class:`RewardPair` s."""


class RewardCollator:
    """Collate ``B`` pairs into ``2B`` right-padded sequences (rows ``0..B-1`` prompt+chosen,
    ``B..2B-1`` prompt+rejected, same pair order) for a scalar-head model.

    Returns ``input_ids`` / ``attention_mask`` ``[2B, L]`` long, ``p_chosen`` ``[B]`` float32,
    ``votes_total`` ``[B]`` float32 (NaN where the label was a plain ``p_chosen``),
    ``confidence`` ``[B]`` float32 (the true P(chosen wins), NaN where unknown) and
    ``index`` ``[B]`` long. Each sequence is the whole prompt + response text, any user or
    tool turns of the response included (the labels that mask them for DPO are not read).
    The model must read padding from ``attention_mask`` or from its
    ``config.pad_token_id`` (the id written into padding here).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self._tokens = PreferenceCollator(pad_token_id, pad_to_multiple_of)

    def __call__(self, examples: Sequence[RewardPair]) -> dict[str, Tensor]:
        if not examples:
            raise ValueError("RewardCollator: empty batch")
        for e in examples:
            if not isinstance(e, RewardPair):
                raise ValueError(f"RewardCollator: expected RewardPair, got {type(e).__name__}")
        tokens = self._tokens([_without_ref(e.pair) for e in examples])
        return {
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "p_chosen": torch.tensor([e.p_chosen for e in examples], dtype=torch.float32),
            "votes_total": torch.tensor(
                [math.nan if e.votes_total is None else e.votes_total for e in examples],
                dtype=torch.float32,
            ),
            "confidence": tokens["confidence"],
            "index": tokens["index"],
        }


_PAIR_FIELDS = [f.name for f in fields(TokenizedPair)]


def _without_ref(pair: TokenizedPair) -> TokenizedPair:
    # reference log-probs (a DPO column) mean nothing to a reward model; never collate them
    if pair.ref_chosen_logp is None and pair.ref_rejected_logp is None:
        return pair
    values = {k: getattr(pair, k) for k in _PAIR_FIELDS}
    values.update(ref_chosen_logp=None, ref_rejected_logp=None)
    return TokenizedPair(**values)


# ------------------------------------------------------------------------------- oracle world
def simulate_votes(q: np.ndarray, annotators: int, rng: np.random.Generator) -> np.ndarray:
    """Votes for the first response ``[N]`` from ``annotators`` independent Bradley–Terry
    annotators per pair, each preferring it with probability ``q`` ``[N]``: Binomial(K, q)."""
    if isinstance(annotators, bool) or not isinstance(annotators, int) or annotators < 1:
        raise ValueError(f"annotators: expected an int >= 1, got {annotators!r}")
    q = np.asarray(q, dtype=np.float64)
    if not np.all((q >= 0) & (q <= 1)):
        raise ValueError("q: probabilities must lie in [0, 1]")
    return rng.binomial(annotators, q)


ORACLE_ALPHABET = "abcd"
ORACLE_WEIGHTS = {"a": 0.5, "b": 0.0, "c": 0.0, "d": -0.5}


def oracle_reward(text: str) -> float:
    """The oracle text world's true reward: ``0.5·(#a − #d)`` over the response's letters."""
    return sum(ORACLE_WEIGHTS.get(ch, 0.0) for ch in text)


def oracle_text_rows(
    n: int,
    *,
    annotators: int = 5,
    temperature: float = 1.0,
    seed: int = 0,
    length: int = 8,
) -> list[dict[str, Any]]:
    """``n`` soft-label pairs with a known truth, for the tiny-LM pipeline and its tests.

    Prompts are 3 random letters of ``xyz`` and ``":"``; responses ``length`` random letters
    of ``abcd``; the true reward is :func:`oracle_reward`, and ``annotators`` Bradley–Terry
    annotators with temperature ``τ`` prefer ``y₁`` with probability
    ``q = σ((r*(y₁) − r*(y₂)) / τ)``. Pairs are written majority first, as data sets label
    ``chosen``: the response most annotators preferred (a tie keeps the random order).
    Each row carries ``p_chosen``, ``votes_chosen``, ``votes_total``, ``confidence`` (the true
    ``q`` of ``chosen``), ``pair_id`` and the true rewards.
    """
    if n < 1:
        raise ValueError(f"n: expected >= 1, got {n}")
    if not temperature > 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    rng = np.random.default_rng([int(seed), 0x5EED])
    letters = np.array(list(ORACLE_ALPHABET))
    rows = []
    for i in range(n):
        prompt = "".join(rng.choice(list("xyz"), 3)) + ":"
        while True:
            y1, y2 = ("".join(rng.choice(letters, length)) for _ in range(2))
            if y1 != y2:
                break
        r1, r2 = oracle_reward(y1), oracle_reward(y2)
        q = 1.0 / (1.0 + math.exp(-(r1 - r2) / temperature))
        votes = int(simulate_votes(np.array([q]), annotators, rng)[0])
        if 2 * votes < annotators:  # majority first
            y1, y2, r1, r2, q, votes = y2, y1, r2, r1, 1.0 - q, annotators - votes
        rows.append(
            {
                "pair_id": f"oracle-{seed}-{i}",
                "prompt": prompt,
                "chosen": y1,
                "rejected": y2,
                "p_chosen": votes / annotators,
                "votes_chosen": votes,
                "votes_total": annotators,
                "confidence": q,
                "reward_chosen": r1,
                "reward_rejected": r2,
            }
        )
    return rows
