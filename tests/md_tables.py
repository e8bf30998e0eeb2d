"""Markdown tables in the written reports: every row must have its header's cells. A cell
holding an unescaped ``|`` (the reward report's ``mean |r₁ − r₂|``) splits into more, and a
renderer then drops the values past the header's count."""

from __future__ import annotations

import re

_SEPARATOR = re.compile(r"\|(\s*:?-+:?\s*\|)+")
_PIPE = re.compile(r"(?<!\\)\|")  # a pipe that ends a cell (``\|`` is one inside a cell)


def cell_count(line: str) -> int:
    """Cells of the table row ``line`` (``| a | b |``: 2)."""
    parts = _PIPE.split(line.strip())
    return len(parts) - (parts[0] == "") - (parts[-1] == "")


def misaligned_rows(markdown: str) -> list[str]:
    """The rows of ``markdown``'s tables whose cell count differs from their header's."""
    lines = markdown.splitlines()
    bad, i = [], 0
    while i < len(lines) - 1:
        if not (lines[i].startswith("|") and _SEPARATOR.fullmatch(lines[i + 1].strip())):
            i += 1
            continue
        n, j = cell_count(lines[i]), i + 1
        while j < len(lines) and lines[j].startswith("|"):
            if cell_count(lines[j]) != n:
                bad.append(lines[j])
            j += 1
        i = j
    return bad


def tables(markdown: str) -> int:
    """How many tables ``markdown`` holds (a check that a test looked at one)."""
    lines = markdown.splitlines()
    return sum(
        lines[i].startswith("|") and bool(_SEPARATOR.fullmatch(lines[i + 1].strip()))
        for i in range(len(lines) - 1)
    )
