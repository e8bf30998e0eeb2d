"""pyplot for the run reports, on the Agg backend (no display needed), chosen once before
pyplot loads: ``from smoothalign.train.plots import plt``."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt"]
