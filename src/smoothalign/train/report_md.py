"""The markdown pieces every run report shares: the title with its notes, the before/after
table (or one column of values), a titled section and the resolved configuration."""

from __future__ import annotations

import json
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


def before_after_table(
    rows: TableRows, before: dict[str, float], after: dict[str, float]
) -> list[str]:
    """``| metric | before | after |``: a row per key either side has, ``–`` where one lacks it."""
    lines = ["| metric | before | after |", "|---|---|---|"]
    for key, label, fmt in rows:
        if key in before or key in after:
            b = fmt.format(before[key]) if key in before else "–"
            a = fmt.format(after[key]) if key in after else "–"
            lines.append(f"| {md_cell(label)} | {b} | {a} |")
    return lines


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
