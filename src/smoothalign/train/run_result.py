"""What every run returns: its folder, the held-out metrics before and after training, the
counts and notes, and a short printable summary (what the CLIs print at the end)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


def metric_rows(
    before: dict[str, float],
    after: dict[str, float],
    keys: tuple[str, ...],
    *,
    key_width: int = 15,
    value_width: int = 8,
    only_after: bool = True,
    nan_text: dict[str, str] | None = None,
) -> list[str]:
    """``  key  before x   after y`` per key (a missing value prints as nan, or as
    ``nan_text[key]`` where given: why the metric has no value); with ``only_after``, the
    keys ``after`` lacks are left out."""
    rows = []
    for key in keys:
        if only_after and key not in after:
            continue
        b, a = before.get(key, float("nan")), after.get(key, float("nan"))
        shown = [_value(v, value_width, (nan_text or {}).get(key)) for v in (b, a)]
        rows.append(f"  {key:<{key_width}} before {shown[0]}   after {shown[1]}")
    return rows


def _value(value: float, width: int, nan_text: str | None) -> str:
    if nan_text is not None and math.isnan(value):
        return f"{nan_text:>{width}}"
    return f"{value:{width}.4f}"


@dataclass
class BaseRunResult:
    """The fields every run's result shares; subclasses add theirs and set the class
    attributes that shape :meth:`summary`."""

    output_dir: Path
    before: dict[str, float]
    after: dict[str, float]
    train_seconds: float
    n_train: int
    n_eval: int

    SUMMARY_KEYS: ClassVar[tuple[str, ...]] = ()
    KEY_WIDTH: ClassVar[int] = 15
    VALUE_WIDTH: ClassVar[int] = 8
    ONLY_AFTER: ClassVar[bool] = True

    def headline(self) -> str:
        raise NotImplementedError

    def summary_notes(self) -> list[str]:
        """Lines after the headline (each printed indented): what the metrics need said."""
        return []

    def nan_text(self) -> dict[str, str]:
        """Per metric, what a NaN value prints as instead (why it has none)."""
        return {}

    def summary(self) -> str:
        rows = [self.headline(), *[f"  {note}" for note in self.summary_notes()]]
        rows += metric_rows(
            self.before,
            self.after,
            self.SUMMARY_KEYS,
            key_width=self.KEY_WIDTH,
            value_width=self.VALUE_WIDTH,
            only_after=self.ONLY_AFTER,
            nan_text=self.nan_text(),
        )
        report = self.output_dir / "report.md"
        if report.exists():  # not with --no-report (a fresh run removes an earlier one's)
            rows.append(f"  report: {report}")
        return "\n".join(rows)


@dataclass
class TrainerRunResult(BaseRunResult):
    """A run on ``transformers.Trainer`` (DPO, reward, SFT): rows validated and skipped, the
    trainer kept (model and smoothing state) for whoever called the run.

    ``n_eval`` counts the held-out rows scored, ``n_held_out`` those withheld from training
    (``None``: the same), which are more where ``EVAL_LIMIT`` (the option capping the rows
    scored) cut them."""

    n_skipped: int
    notes: list[str] = field(default_factory=list)
    trainer: Any = field(default=None, repr=False)
    n_held_out: int | None = None
    model: str | None = None  # the --model option as given, which the summary names

    COMMAND: ClassVar[str] = ""
    UNIT: ClassVar[str] = "pairs"
    EVAL_LIMIT: ClassVar[str | None] = None  # the option that caps the held-out rows scored

    def headline(self) -> str:
        held_out = self.n_eval if self.n_held_out is None else self.n_held_out
        if held_out > self.n_eval:  # withheld from training, but not all of them scored
            scored = f"{self.n_eval} scored: {self.EVAL_LIMIT or 'a cap'}"
        else:
            scored = "all scored"
        return (
            f"smoothalign {self.COMMAND}: {self.n_train} train / {held_out} held-out "
            f"{self.UNIT} ({scored}), {self.n_skipped} bad rows skipped, "
            f"{self.train_seconds:.0f} s of training"
        )

    def summary_notes(self) -> list[str]:
        from smoothalign.train.report_md import tied_votes_note

        notes = []
        if self.model is not None:
            from smoothalign.models.loading import model_label

            notes.append(f"model: {model_label(self.model)}")
        tied = tied_votes_note(self.after)  # a reward run's held-out pairs with tied votes
        return notes + ([tied] if tied else [])

    def nan_text(self) -> dict[str, str]:
        from smoothalign.train.report_md import accuracy_nan_text

        return accuracy_nan_text(self.after)
