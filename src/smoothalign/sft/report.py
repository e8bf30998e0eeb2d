"""The SFT run report: ``report.md`` with training curves and the top-1 token reliability
diagram, from ``metrics.jsonl`` and the before/after evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from smoothalign.calibration.plots import reliability_diagram
from smoothalign.io import atomic_write_text, save_figure
from smoothalign.sft.trainer import token_reliability
from smoothalign.train.plots import plt
from smoothalign.train.report import read_metrics
from smoothalign.train.report_md import (
    before_after_table,
    config_section,
    model_note,
    report_head,
    section,
)

TABLE_ROWS = [
    ("loss", "label-smoothed loss (the objective, β of this run)", "{:.4f}"),
    ("nll", "NLL per completion token (nats)", "{:.4f}"),
    ("perplexity", "perplexity", "{:.3f}"),
    ("mean_token_accuracy", "token accuracy (top-1)", "{:.4f}"),
    ("entropy", "mean entropy of the predictive distribution (nats)", "{:.4f}"),
    ("confidence", "mean top-1 probability", "{:.4f}"),
    ("top1_ece", "ECE of the top-1 probability (15 bins)", "{:.4f}"),
    ("top1_rms", "RMS calibration error of the top-1 probability", "{:.4f}"),
    ("top1_brier", "Brier score of the top-1 probability", "{:.4f}"),
    ("n_tokens", "completion tokens scored", "{:.0f}"),
]
PANELS = [
    ("loss", "training loss (smoothed)"),
    ("nll", "NLL per completion token"),
    ("mean_token_accuracy", "token accuracy"),
    ("entropy", "predictive entropy (nats)"),
]


def plot_training_curves(records: list[dict[str, Any]]):
    """Training loss, NLL, token accuracy and entropy per logged step; the held-out values
    too where ``--eval-steps`` logged them."""
    train = [r for r in records if r["split"] == "train" and "loss" in r]
    evals = [r for r in records if r["split"] == "eval" and "eval_nll" in r]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(16, 3.6))
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        ax.plot(
            [r["step"] for r in train],
            [r.get(key, np.nan) for r in train],
            marker="o",
            ms=3,
            label="train",
        )
        if evals:
            ax.plot(
                [r["step"] for r in evals],
                [r.get(f"eval_{key}", np.nan) for r in evals],
                marker="s",
                ms=3,
                ls="--",
                label="eval",
            )
            ax.legend(fontsize=8)
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_sft_report(
    output_dir: str | Path,
    *,
    config: dict[str, Any],
    before: dict[str, float],
    after: dict[str, float],
    tokens_before: dict[str, np.ndarray],
    tokens_after: dict[str, np.ndarray],
    validation_markdown: str,
    notes: list[str],
) -> Path:
    out = Path(output_dir)
    records = read_metrics(out / "metrics.jsonl")
    save_figure(plot_training_curves(records), out / "training_curves.png")
    curves = {"before": token_reliability(tokens_before), "after": token_reliability(tokens_after)}
    fig = reliability_diagram(
        curves,
        title="Top-1 next-token probability on held-out completions",
        xlabel="top-1 probability",
    )
    save_figure(fig, out / "reliability.png")

    lines = report_head("smoothalign SFT run report", [model_note(config), *notes])
    lines += ["## Held-out completion tokens, before and after training", ""]
    lines += before_after_table(TABLE_ROWS, before, after)
    lines += [
        "",
        f"The loss is `(1 − β)·NLL + β·CE(uniform)` with β = {config['label_smoothing']:g} "
        "(SPEC §5); compare runs with different β by their NLL, not their loss. Calibration "
        "scores each completion token's top-1 probability against whether the top-1 token "
        "is the right one.",
        "",
        "![training curves](training_curves.png)",
        "",
        "![reliability](reliability.png)",
        "",
        *section("Data validation", validation_markdown),
        *config_section(config),
    ]
    return atomic_write_text(out / "report.md", "\n".join(lines))
