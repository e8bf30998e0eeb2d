"""The run report: ``report.md`` plus PNGs, from ``metrics.jsonl`` and the before/after evaluation."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from smoothalign.calibration import pairwise_reliability_curve
from smoothalign.calibration.plots import reliability_diagram
from smoothalign.io import atomic_write_text, save_figure
from smoothalign.train.plots import plt
from smoothalign.train.report_md import (
    before_after_table,
    config_section,
    model_note,
    report_head,
    section,
    true_rows,
)

# (metric key, label, format) for the before/after table
TABLE_ROWS = [
    ("accuracy", "preference accuracy vs the (noisy) labels", "{:.3f}"),
    ("accuracy_true", "preference accuracy vs the true preference", "{:.3f}"),
    ("ece", "ECE of σ(h) vs labels (both orders, 20 bins)", "{:.4f}"),
    ("rms", "RMS calibration error vs labels", "{:.4f}"),
    ("ece_true", "ECE of σ(h) vs the true q", "{:.4f}"),
    ("rms_true", "RMS calibration error vs the true q", "{:.4f}"),
    ("kl_true", "mean KL(q ‖ σ(h))", "{:.4f}"),
    ("margin_mean", "mean margin h", "{:.4f}"),
    ("oracle_reward", "oracle reward of generations (mean)", "{:.4f}"),
    ("oracle_reward_sem", "… its standard error", "{:.4f}"),
]
MIRRORED_NOTE = (
    "Calibration reads each pair in both orders — `(σ(h), 1)` and `(1 − σ(h), 0)` — so a chosen-first "
    "data set still has two outcomes; `*_true` rows score the forecasts against each pair's true "
    "preference probability where the data carries one."
)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The logged records, one per (step, split); a step logged twice (after a resume)
    keeps the later values."""
    path = Path(path)
    if not path.is_file():
        return []
    by_key: dict[tuple[int, str], dict[str, Any]] = {}
    broken = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            key = (r["step"], r["split"])
        except (json.JSONDecodeError, KeyError, TypeError):
            broken.append(line_no)  # e.g. a record a crash cut short: the report goes on
            continue
        by_key.setdefault(key, {}).update(r)
    if broken:
        from smoothalign._warn import SmoothalignWarning

        warnings.warn(
            f"{path}: skipped {len(broken)} unreadable record(s) at line(s) {broken[:10]}",
            SmoothalignWarning,
            stacklevel=2,
        )
    return [by_key[k] for k in sorted(by_key)]


def held_out_points(
    records: list[dict[str, Any]], before: dict[str, float] | None = None
) -> list[tuple[int, dict[str, float]]]:
    """The held-out evaluations over training, ``(step, {metric: value})`` in step order:
    ``before`` (the evaluation before training) at step 0, every periodic one
    (``--eval-steps``: the ``eval`` records of ``metrics.jsonl``, ``eval_*`` keys) and the
    final one (the ``final_eval_*`` keys of its ``summary`` record) where no periodic one
    has its step. Keys lose their prefix (``accuracy``, ``ece``, ...)."""
    points: dict[int, dict[str, float]] = {}
    if before:
        points[0] = dict(before)
    for r in records:
        if r["split"] == "eval":
            prefix = "eval_"
        elif r["split"] == "summary" and "final_eval_accuracy" in r:
            if r["step"] in points:
                continue  # a periodic evaluation at the last step: the same model
            prefix = "final_eval_"
        else:
            continue
        values = {k[len(prefix) :]: v for k, v in r.items() if k.startswith(prefix)}
        if values:
            points[r["step"]] = values
    return sorted(points.items())


def plot_training_curves(records: list[dict[str, Any]], before: dict[str, float] | None = None):
    """Training loss, margins and accuracy against the step, with the held-out evaluations
    (:func:`held_out_points`: before training, every ``--eval-steps``, after) as markers on
    the accuracy panel and in a fourth panel of their calibration (ECE, and against the
    true ``q`` where the data has it)."""
    train = [r for r in records if r["split"] == "train" and "loss" in r]
    held = held_out_points(records, before)
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    steps = [r["step"] for r in train]
    panels = [
        ("loss", "training loss", "loss"),
        ("rewards/margins", "reward margin h", "margin"),
        ("rewards/accuracies", "accuracy vs labels (a tie h = 0 counts ½)", "train"),
    ]
    for ax, (key, title, label) in zip(axes, panels, strict=False):
        ax.plot(steps, [r.get(key, np.nan) for r in train], marker="o", ms=3, label=label)
        ax.set(title=title, xlabel="step")
    axes[1].plot(steps, [r.get("rewards/chosen", np.nan) for r in train], ls="--", label="chosen")
    axes[1].plot(
        steps, [r.get("rewards/rejected", np.nan) for r in train], ls=":", label="rejected"
    )
    axes[1].legend(fontsize=8)
    held_steps = [step for step, _ in held]
    for ax, series in (
        (axes[2], (("accuracy", "held out", "s"), ("accuracy_true", "held out, true preference", "^"))),
        (axes[3], (("ece", "ECE vs labels", "s"), ("ece_true", "ECE vs the true q", "^"))),
    ):  # fmt: skip
        for key, label, marker in series:
            if any(key in m for _, m in held):
                values = [m.get(key, np.nan) for _, m in held]
                ax.plot(held_steps, values, ls="--", marker=marker, ms=5, label=label)
        if held:
            ax.legend(fontsize=8)
    axes[3].set(title="held-out calibration", xlabel="step")
    if not held:
        axes[3].text(0.5, 0.5, "no held-out evaluation", ha="center", transform=axes[3].transAxes)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_alpha(records: list[dict[str, Any]]):
    train = [r for r in records if r["split"] == "train" and "cals/alpha_hist" in r]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.6))
    if not train:
        ax0.text(0.5, 0.5, "no α logged", ha="center")
        return fig
    hist = np.array([r["cals/alpha_hist"] for r in train], dtype=float)
    hist = hist / np.maximum(hist.sum(1, keepdims=True), 1)
    steps = [r["step"] for r in train]
    im = ax0.imshow(
        hist.T,
        origin="lower",
        aspect="auto",
        cmap="viridis",
        extent=(min(steps), max(steps) + 1e-9, 0, 0.5),
    )
    fig.colorbar(im, ax=ax0, label="fraction of pairs")
    ax0.set(title="α distribution over training", xlabel="step", ylabel="α")
    ax1.plot(steps, [r.get("cals/alpha_mean", np.nan) for r in train], marker="o", ms=3)
    ax1.set(title="mean α", xlabel="step", ylim=(0, 0.5))
    ax1.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_pairwise_reliability(
    forecasts: dict[str, dict[str, np.ndarray]], where: str = "the eval split"
):
    """The reliability diagram of preference forecasts (``pair_forecasts``' ``margins`` and
    ``confidence``), one curve per entry of ``forecasts``, each pair read in both orders
    against its true ``q`` where known, else its label
    (:func:`~smoothalign.calibration.pairwise_reliability_curve`); ``where`` names the data."""
    curves = {
        name: pairwise_reliability_curve(f["margins"], f["confidence"])
        for name, f in forecasts.items()
    }
    last = list(forecasts.values())[-1]
    known = not np.isnan(np.asarray(last["confidence"], dtype=float)).all()
    ylabel = "true q" if known else "label"
    return reliability_diagram(curves, title=f"Forecasts σ(h) on {where} vs the {ylabel}")


def plot_reliability_before_after(before: dict[str, np.ndarray], after: dict[str, np.ndarray]):
    return plot_pairwise_reliability({"before": before, "after": after})


def write_report(
    output_dir: str | Path,
    *,
    config: dict[str, Any],
    before: dict[str, float],
    after: dict[str, float],
    forecasts_before: dict[str, np.ndarray],
    forecasts_after: dict[str, np.ndarray],
    validation_markdown: str,
    notes: list[str],
    samples: list[dict[str, Any]] | None = None,
) -> Path:
    out = Path(output_dir)
    records = read_metrics(out / "metrics.jsonl")
    save_figure(plot_training_curves(records, before), out / "training_curves.png")
    save_figure(plot_alpha(records), out / "alpha.png")
    save_figure(
        plot_reliability_before_after(forecasts_before, forecasts_after), out / "reliability.png"
    )

    lines = report_head(
        "smoothalign DPO run report", [model_note(config), objective_note(config), *notes]
    )
    lines += ["## Held-out evaluation, before and after training", ""]
    lines += before_after_table(true_rows(TABLE_ROWS, after), before, after)
    lines += [
        "",
        MIRRORED_NOTE,
        "",
        "![training curves](training_curves.png)",
        "",
        "![alpha](alpha.png)",
        "",
        "![reliability](reliability.png)",
        "",
        *section("Data validation", validation_markdown),
    ]
    if samples:
        lines += ["## Sample generations (after training)", ""]
        for s in samples[:5]:
            lines.append(f"- **{s['prompt']}** → {s['response']!r} (reward {s['reward']:.3f})")
        lines.append("")
    lines += config_section(config)
    return atomic_write_text(out / "report.md", "\n".join(lines))


def objective_note(config: dict[str, Any]) -> str:
    """The report header's line on the objective: the loss and the smoothing that ran, and
    when that smoothing is what the loss takes without ``--smoothing``, that it is its
    default (:func:`~smoothalign.train.config.default_smoothing`)."""
    from smoothalign.train.config import default_smoothing

    loss, smoothing = config.get("loss"), config.get("smoothing")
    line = f"loss: `{loss}`, β = {config.get('beta')}; smoothing `{smoothing}`"
    if isinstance(loss, str) and smoothing == default_smoothing(loss):
        line += f" (the default with --loss {loss})"
    return line
