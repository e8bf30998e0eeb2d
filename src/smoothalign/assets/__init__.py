"""Data that ships inside the package: the controlled-sentiment preference set.

``embedded_dataset_path()`` locates ``sentiment_pairs.jsonl`` (see this folder's README.md,
the data card, for how it was made). The constants below are the generation parameters the
card documents; tests check the file against them.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = [
    "EMBEDDED_DATASET",
    "EMBEDDED_EPSILON",
    "EMBEDDED_TAU",
    "embedded_dataset_path",
]

EMBEDDED_DATASET = "sentiment_pairs.jsonl"
EMBEDDED_TAU = 0.25  # Bradley–Terry temperature: q = σ((r_A − r_B)/τ)
EMBEDDED_EPSILON = 0.1  # exact fraction of rows per split with chosen/rejected swapped


def embedded_dataset_path() -> Path:
    """Filesystem path of the shipped ``sentiment_pairs.jsonl``.

    The package is installed as plain files (editable or wheel), so the resource is a real
    file; a zipped install is refused rather than silently extracted to a temp file.
    """
    resource = files(__name__) / EMBEDDED_DATASET
    if not isinstance(resource, Path):
        raise RuntimeError(
            f"smoothalign is installed in a zip ({resource!r}); install it unzipped to read "
            f"{EMBEDDED_DATASET}"
        )
    if not resource.is_file():
        raise FileNotFoundError(
            f"{resource}: missing from the installed smoothalign package; reinstall it (the "
            "wheel must include package data: *.jsonl under smoothalign/assets)"
        )
    return resource
