"""Figures of the smoothing theory (SPEC §3), drawn from the library's own functions.

* ``optimal_alpha.png``: ``a*(q)`` for the ℓ2 and ℓ0 metrics.
* ``equilibrium.png``: the forecast a model settles at under optimal smoothing, against the
  true confidence ``q``, with the diagonal (an unsmoothed, calibrated fit).
* ``update_dynamics.png``: how fast the margin of a labelled winner moves,
  ``|∂loss/∂h| = |σ(h) − (1 − α)|`` with ``α = a*(c)``, over the forecast ``σ(h)`` and the
  label confidence ``c``, for DPO (``α = 0``), CALS-ℓ0 and CALS-ℓ2.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from smoothalign import equilibrium_forecast, optimal_alpha  # noqa: E402
from smoothalign.io import save_figure  # noqa: E402

METRIC_STYLE = {
    "l2": dict(color="tab:blue", label="ℓ2: a* = 2q(1 − q)"),
    "l0": dict(color="tab:orange", label="ℓ0: a* = min(q, 1 − q)"),
}

UPDATE_CAPTION = (
    "Colour: |∂loss/∂h| = |σ(h) − (1 − α)| for the labelled winner, α = a*(c); dashed: where it "
    "vanishes (σ(h) = 1 − a*(c)).\n"
    "DPO ignores c: updates are fastest when the model contradicts the label (σ(h) → 0) and "
    "stop only as σ(h) → 1, so it keeps sharpening\n"
    "even labels with c ≈ 1/2. CALS updates are slow near the dashed curve and fast far from it; "
    "beyond it the sign flips and confident\n"
    "forecasts are pulled back. For c → 1 (or 0) CALS is DPO; near c = 1/2 the target is 1/2. "
    "ℓ2 smooths more than ℓ0 (a*ℓ2 ≥ a*ℓ0), so it stops earlier."
)


def plot_optimal_alpha(points: int = 401):
    """``a*(q)`` for both metrics on ``q ∈ [0, 1]``."""
    q = np.linspace(0.0, 1.0, points)
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    for metric, style in METRIC_STYLE.items():
        ax.plot(q, optimal_alpha(q, metric), lw=2, **style)
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set(
        xlabel="true confidence q of the labelled winner",
        ylabel="optimal smoothing a*(q)",
        xlim=(0, 1),
        ylim=(0, 0.55),
        title="Optimal per-pair smoothing (SPEC §3)",
    )
    ax.grid(alpha=0.25)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def plot_equilibrium(points: int = 401):
    """Equilibrium forecast ``q + a*(q)(1 − 2q)`` for both metrics, with the diagonal."""
    q = np.linspace(0.0, 1.0, points)
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.plot(q, q, color="grey", ls="--", lw=1.2, label="no smoothing (forecast = q)")
    for metric, style in METRIC_STYLE.items():
        p = equilibrium_forecast(q, metric)
        ax.plot(q, p, lw=2, color=style["color"], label=f"ℓ{metric[1]}-optimal α")
        p08 = equilibrium_forecast(0.8, metric)
        ax.plot([0.8], [p08], "o", color=style["color"], ms=5)
        ax.annotate(
            f"q = 0.8 → {p08:.3f}",
            (0.8, p08),
            xytext=(8, -14 if metric == "l2" else 4),
            textcoords="offset points",
            fontsize=8,
            color=style["color"],
        )
    ax.set(
        xlabel="true confidence q of the labelled winner",
        ylabel="equilibrium forecast σ(h)",
        xlim=(0, 1),
        ylim=(0, 1),
        title="Smoothing pulls the learned forecast toward 1/2",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def update_magnitude(
    forecast: np.ndarray, confidence: np.ndarray, metric: str | None
) -> np.ndarray:
    """``|σ(h) − (1 − a*(c))|`` on a grid (``metric=None``: DPO, ``α = 0``).

    ``forecast`` ``[F]`` and ``confidence`` ``[C]``; returns ``[C, F]``.
    """
    p = np.asarray(forecast, dtype=np.float64)[None, :]
    c = np.asarray(confidence, dtype=np.float64)
    alpha = np.zeros_like(c) if metric is None else optimal_alpha(c, metric)
    return np.abs(p - (1.0 - alpha)[:, None])


def plot_update_dynamics(points: int = 201):
    """Three heatmaps (DPO, CALS-ℓ0, CALS-ℓ2) of ``|∂loss/∂h|`` over forecast × confidence."""
    p = np.linspace(0.0, 1.0, points)
    c = np.linspace(0.0, 1.0, points)
    panels = [
        ("DPO (α = 0)", None),
        ("CALS-ℓ0 (α = a*ℓ0(c))", "l0"),
        ("CALS-ℓ2 (α = a*ℓ2(c))", "l2"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(14.0, 4.9), sharey=True)
    image = None
    for ax, (title, metric) in zip(axes, panels, strict=True):
        g = update_magnitude(p, c, metric)
        image = ax.imshow(
            g,
            origin="lower",
            extent=(0, 1, 0, 1),
            aspect="auto",
            cmap="magma",
            vmin=0.0,
            vmax=1.0,
        )
        if metric is not None:
            ax.plot(1 - optimal_alpha(c, metric), c, color="white", ls="--", lw=1.3)
        ax.contour(p, c, g, levels=[0.1, 0.3, 0.5], colors="white", linewidths=0.5, alpha=0.6)
        ax.axhline(0.5, color="cyan", ls=":", lw=0.8)
        ax.set(title=title, xlabel="forecast σ(h) that the labelled winner wins")
    axes[0].set_ylabel("label confidence c")
    cbar = fig.colorbar(image, ax=axes, fraction=0.025, pad=0.01)
    cbar.set_label("|∂loss/∂h| (update speed)")
    fig.suptitle("How fast a pair's margin moves under DPO and CALS (SPEC §2–§4)", y=0.99)
    fig.text(0.01, -0.02, UPDATE_CAPTION, fontsize=8.5, va="top", ha="left")
    return fig


THEORY_PLOTS = {
    "optimal_alpha.png": plot_optimal_alpha,
    "equilibrium.png": plot_equilibrium,
    "update_dynamics.png": plot_update_dynamics,
}


def write_theory_plots(output_dir: str | os.PathLike) -> list[Path]:
    """Render every theory figure into ``output_dir``; returns the paths written."""
    out = Path(output_dir)
    return [save_figure(make(), out / name) for name, make in THEORY_PLOTS.items()]
