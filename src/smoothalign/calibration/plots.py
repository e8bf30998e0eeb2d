"""Reliability diagrams. Functions return matplotlib figures; saving is the caller's
(see :func:`smoothalign.io.save_figure`)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from smoothalign.calibration.metrics import ReliabilityCurve  # noqa: E402


def reliability_diagram(
    curves: dict[str, ReliabilityCurve],
    title: str = "Reliability diagram",
    *,
    xlabel: str = "forecast",
):
    """One line per curve (accuracy vs mean forecast, dot size ∝ bin count), the diagonal,
    and a histogram of the forecasts underneath."""
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(5.2, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    for label, c in curves.items():
        ok = c.counts > 0
        size = 10 + 90 * c.counts[ok] / max(c.counts.max(), 1)
        (line,) = ax.plot(c.confidence[ok], c.accuracy[ok], marker="", lw=1.5, label=label)
        ax.scatter(c.confidence[ok], c.accuracy[ok], s=size, color=line.get_color(), zorder=3)
        centers = 0.5 * (c.bin_edges[:-1] + c.bin_edges[1:])
        width = np.diff(c.bin_edges)
        hist.bar(centers, c.counts, width=width, alpha=0.45, color=line.get_color())
    ax.set(ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left", fontsize=8)
    hist.set(xlabel=xlabel, ylabel="count")
    fig.tight_layout()
    return fig
