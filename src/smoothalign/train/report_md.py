"""The markdown pieces every run report shares: the title with its notes, the before/after
table (or one column of values), a titled section and the resolved configuration."""

from __future__ import annotations

import json
import math
from typing import Any

from smoothalign.io import md_cell

# (metric key, label, format) rows of a before/after table
TableRows = list[tuple[str, str, str]]


def report_head(title: str, notes: list[str]) -> list[str]:
    """``# title`` and the notes as a bullet list."""
    return [f"# {title}", "", *[f"- {n}" for n in notes], ""]


def model_note(config: dict[str, Any]) -> str:
    """The report header's line naming the model a run trained (its ``config.json``'s
    ``model``, as typed where the record keeps it): a built-in says what it is, ``tiny``
    that its weights are random (:func:`~smoothalign.models.loading.model_label`)."""
    from smoothalign.models.loading import model_label

    given = config.get("model_as_given", config.get("model"))
    return f"model: {model_label(given)}" if given is not None else "model: not recorded"


ALL_VOTES_TIED = "n/a (every held-out pair tied)"
"""What a reward run's accuracy reads as where every held-out pair's votes tied."""


def tied_votes_note(metrics: dict[str, float]) -> str | None:
    """A reward evaluation's note on the held-out pairs whose votes tied (``p_chosen = ½``:
    no majority for the accuracy to agree with, so they are left out of it): ``None`` where
    there are none (or ``metrics`` does not count them)."""
    n_tied, n = metrics.get("n_tied_votes"), metrics.get("n_pairs")
    if not n_tied:
        return None
    if n_tied == n:
        return (
            f"accuracy: n/a, all {n:.0f} held-out pairs have tied votes (p_chosen = ½): "
            "no majority to agree with"
        )
    return (
        f"accuracy: {n_tied:.0f} of {n:.0f} held-out pairs left out, their votes tied "
        "(p_chosen = ½: no majority to agree with)"
    )


def accuracy_nan_text(metrics: dict[str, float]) -> dict[str, str]:
    """``{"accuracy": ALL_VOTES_TIED}`` where every held-out pair tied (the NaN's reason)."""
    n_tied, n = metrics.get("n_tied_votes"), metrics.get("n_pairs")
    return {"accuracy": ALL_VOTES_TIED} if n_tied and n_tied == n else {}


def before_after_table(
    rows: TableRows,
    before: dict[str, float],
    after: dict[str, float],
    nan_text: dict[str, str] | None = None,
) -> list[str]:
    """``| metric | before | after |``: a row per key either side has, ``–`` where one lacks it,
    ``nan_text[key]`` where its value is NaN and the reason is known."""
    lines = ["| metric | before | after |", "|---|---|---|"]
    for key, label, fmt in rows:
        if key in before or key in after:
            b, a = (_cell(m, key, fmt, (nan_text or {}).get(key)) for m in (before, after))
            lines.append(f"| {md_cell(label)} | {b} | {a} |")
    return lines


def _cell(metrics: dict[str, float], key: str, fmt: str, nan_text: str | None) -> str:
    if key not in metrics:
        return "–"
    value = metrics[key]
    if nan_text is not None and isinstance(value, float) and math.isnan(value):
        return md_cell(nan_text)
    return fmt.format(value)


def metrics_table(rows: TableRows, metrics: dict[str, float]) -> list[str]:
    """``| metric | value |``: a row per key ``metrics`` has (one evaluation, no before/after)."""
    lines = ["| metric | value |", "|---|---|"]
    lines += [
        f"| {md_cell(label)} | {fmt.format(metrics[key])} |"
        for key, label, fmt in rows
        if key in metrics
    ]
    return lines


def true_rows(rows: TableRows, metrics: dict[str, float]) -> TableRows:
    """``rows`` with each ``*_true`` label naming the pairs it covers when that is not all of
    them (``n_pairs_true`` of ``n_pairs``: only some held-out pairs carry a ``confidence``)."""
    n, n_true = metrics.get("n_pairs"), metrics.get("n_pairs_true")
    if n is None or n_true is None or n_true == n:
        return rows
    note = f" (the {n_true:.0f} of {n:.0f} pairs with a confidence)"
    return [
        (key, label + note if key.endswith("_true") else label, fmt) for key, label, fmt in rows
    ]


def section(title: str, body: str) -> list[str]:
    """``## title`` and its markdown body."""
    return [f"## {title}", "", body, ""]


def config_section(config: dict[str, Any]) -> list[str]:
    """The resolved configuration as a JSON block, the last section of every report."""
    return ["## Resolved configuration", "", "```json", json.dumps(config, indent=2), "```", ""]
