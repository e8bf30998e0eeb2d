"""The reward run's report: ``report.md`` plus PNGs, from ``metrics.jsonl`` and the held-out
evaluation before and after training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from smoothalign.calibration import PAIRWISE_BINS, reliability_curve
from smoothalign.calibration.plots import reliability_diagram
from smoothalign.io import atomic_write_text, save_figure
from smoothalign.reward.objective import METRIC_RKL_FLOOR, MONITORED
from smoothalign.train.plots import plt
from smoothalign.train.report import read_metrics
from smoothalign.train.report_md import (
    accuracy_nan_text,
    before_after_table,
    config_section,
    model_note,
    report_head,
    section,
    tied_votes_note,
    true_rows,
)

TABLE_ROWS = [
    ("accuracy", "pairwise accuracy vs the majority vote", "{:.3f}"),
    ("accuracy_true", "pairwise accuracy vs the true preference", "{:.3f}"),
    (
        "ece",
        f"ECE of σ(r₁ − r₂) vs held-out vote shares (both orders, {PAIRWISE_BINS} bins)",
        "{:.4f}",
    ),
    ("rms", "RMS calibration error vs vote shares", "{:.4f}"),
    ("ece_true", "ECE vs the true q", "{:.4f}"),
    ("rms_true", "RMS calibration error vs the true q", "{:.4f}"),
    ("kl_true", "mean KL(q ‖ σ(r₁ − r₂))", "{:.4f}"),
    ("fkl", "forward KL(vote share ‖ model)", "{:.4f}"),
    (
        "rkl",
        f"reverse KL(model ‖ vote share), the share floored at {METRIC_RKL_FLOOR:g} in every run",
        "{:.4f}",
    ),
    ("jsd", "Jensen–Shannon(vote share, model)", "{:.4f}"),
    ("margin_abs_mean", "mean |r₁ − r₂|", "{:.3f}"),
]
TITLES = {
    "fkl": "forward KL(p ‖ q_θ)",
    "rkl": "reverse KL(q_θ ‖ p)",
    "jsd": "Jensen–Shannon(p, q_θ)",
}


def plot_divergences(records: list[dict[str, Any]], loss: str | None = None):
    """The three divergences of the model from the vote shares, side by side: training
    (mean over each logging window) and held-out (at each evaluation)."""
    train = [r for r in records if r["split"] == "train" and "divergence/fkl" in r]
    evals = [r for r in records if r["split"] == "eval" and "eval_fkl" in r]
    fig, axes = plt.subplots(1, len(MONITORED), figsize=(13, 3.6))
    for ax, name in zip(axes, MONITORED, strict=True):
        ax.plot(
            [r["step"] for r in train],
            [r.get(f"divergence/{name}", np.nan) for r in train],
            marker="o",
            ms=3,
            label="train",
        )
        ax.plot(
            [r["step"] for r in evals],
            [r.get(f"eval_{name}", np.nan) for r in evals],
            marker="s",
            ms=4,
            ls="--",
            label="held out",
        )
        trained = " (trained on)" if name == loss else ""
        ax.set(title=TITLES[name] + trained, xlabel="step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Divergence of the model [σ(d), σ(−d)] from the vote share [p, 1 − p]")
    fig.tight_layout()
    return fig


def plot_training_curves(records: list[dict[str, Any]]):
    train = [r for r in records if r["split"] == "train" and "loss" in r]
    evals = [r for r in records if r["split"] == "eval" and "eval_accuracy" in r]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["loss"] for r in train], marker="o", ms=3)
    axes[0].set(title="training loss", xlabel="step")
    axes[1].plot(steps, [r.get("rewards/chosen", np.nan) for r in train], label="chosen")
    axes[1].plot(steps, [r.get("rewards/rejected", np.nan) for r in train], label="rejected")
    axes[1].plot(steps, [r.get("rewards/margins", np.nan) for r in train], label="margin")
    axes[1].set(title="rewards (train)", xlabel="step")
    axes[1].legend(fontsize=8)
    axes[2].plot(steps, [r.get("rewards/accuracies", np.nan) for r in train], label="train")
    es = [r["step"] for r in evals]
    axes[2].plot(es, [r["eval_accuracy"] for r in evals], ls="--", marker="s", label="held out")
    if any("eval_accuracy_true" in r for r in evals):
        axes[2].plot(
            es,
            [r.get("eval_accuracy_true", np.nan) for r in evals],
            ls=":",
            marker="^",
            label="held out, true preference",
        )
    axes[2].set(title="accuracy vs the majority vote", xlabel="step")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_reliability(before: dict[str, np.ndarray], after: dict[str, np.ndarray]):
    """``σ(d)`` against the vote shares (and the true ``q`` where known), before and after."""
    curves = {}
    for name, f in (("before", before), ("after", after)):
        s = 1 / (1 + np.exp(-np.asarray(f["margins"], dtype=float)))
        p = np.asarray(f["p_chosen"], dtype=float)
        curves[f"{name}, vs vote share"] = reliability_curve(
            np.concatenate([s, 1 - s]), np.concatenate([p, 1 - p]), PAIRWISE_BINS
        )
    q = np.asarray(after["confidence"], dtype=float)
    if not np.isnan(q).any():
        s = 1 / (1 + np.exp(-np.asarray(after["margins"], dtype=float)))
        curves["after, vs true q"] = reliability_curve(
            np.concatenate([s, 1 - s]), np.concatenate([q, 1 - q]), PAIRWISE_BINS
        )
    return reliability_diagram(
        curves, title="σ(r₁ − r₂) on held-out pairs", xlabel="forecast σ(r₁ − r₂)"
    )


def write_reward_report(
    output_dir: str | Path,
    *,
    config: dict[str, Any],
    before: dict[str, float],
    after: dict[str, float],
    forecasts_before: dict[str, np.ndarray],
    forecasts_after: dict[str, np.ndarray],
    validation_markdown: str,
    notes: list[str],
) -> Path:
    out = Path(output_dir)
    records = read_metrics(out / "metrics.jsonl")
    save_figure(plot_divergences(records, config.get("loss")), out / "divergences.png")
    save_figure(plot_training_curves(records), out / "training_curves.png")
    save_figure(plot_reliability(forecasts_before, forecasts_after), out / "reliability.png")

    tied = tied_votes_note(after)
    head = [model_note(config), describe_loss(config), *([tied] if tied else []), *notes]
    lines = report_head("smoothalign reward-model run report", head)
    lines += ["## Held-out evaluation, before and after training", ""]
    lines += before_after_table(
        true_rows(TABLE_ROWS, after), before, after, accuracy_nan_text(after)
    )
    lines += [
        "",
        "Calibration reads each pair in both orders, `(σ(d), p)` and `(1 − σ(d), 1 − p)`, with "
        "`d = r₁ − r₂` and `p` the held-out vote share; `*_true` rows use the true preference "
        "probability where the data carries one (`confidence`).",
        "",
        "![divergences](divergences.png)",
        "",
        "![training curves](training_curves.png)",
        "",
        "![reliability](reliability.png)",
        "",
        *section("Data validation", validation_markdown),
        *config_section(config),
    ]
    return atomic_write_text(out / "report.md", "\n".join(lines))


def describe_loss(config: dict[str, Any]) -> str:
    """The report's line on what the loss trains against."""
    if config.get("loss") == "bt":
        target = "the majority vote (a tied vote carries no weight)"
    elif config.get("posterior"):
        target = "the posterior target (SPEC §6)"
    else:
        target = "the vote share"
    return f"loss: `{config.get('loss')}` against {target}; smoothing `{config.get('smoothing')}`"
