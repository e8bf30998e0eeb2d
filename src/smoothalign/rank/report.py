"""The ranking-calibration report: ``report.md`` with the loss curves and, before vs after,
the preference-model score of fresh samples and how well the policy's likelihood ranks them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from smoothalign.io import atomic_write_text, save_figure
from smoothalign.train.plots import plt
from smoothalign.train.report_md import before_after_table, config_section, report_head, section

TABLE_ROWS = [
    ("spearman_within", "Spearman(s̄, score) within a prompt, mean over prompts", "{:.3f}"),
    ("spearman_pooled", "Spearman(s̄, score) over all held-out samples", "{:.3f}"),
    ("pair_accuracy", "pairs that s̄ orders as the preference model does", "{:.3f}"),
    ("score_mean", "preference-model score of fresh samples (mean)", "{:.4f}"),
    ("score_sem", "… its standard error (over prompts)", "{:.4f}"),
    ("policy_top_score", "score of each prompt's most likely sample (mean)", "{:.4f}"),
    ("best_of_k_score", "score of each prompt's best sample (mean)", "{:.4f}"),
    ("logp_mean", "s̄: mean log-likelihood per token of the samples", "{:.4f}"),
    ("length_mean", "sample length in tokens (mean)", "{:.1f}"),
]


def plot_training_curves(records: list[dict[str, Any]]):
    train = [r for r in records if r.get("split") == "train" and "loss" in r]
    rounds = [r for r in records if r.get("split") == "candidates"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["loss"] for r in train], marker="o", ms=3, label="total")
    axes[0].plot(steps, [r.get("rank/loss", np.nan) for r in train], marker=".", label="ranking")
    axes[0].plot(steps, [r.get("rank/nll", np.nan) for r in train], ls="--", label="NLL (ref.)")
    axes[0].set(title="training loss", xlabel="optimizer step")
    axes[0].legend(fontsize=8)
    axes[1].plot(steps, [r.get("rank/pair_accuracy", np.nan) for r in train], marker="o", ms=3)
    axes[1].set(title="candidate pairs ordered right by s̄ (train)", xlabel="optimizer step")
    rs = [r["step"] for r in rounds]
    axes[2].plot(rs, [r.get("candidates/score_mean", np.nan) for r in rounds], "o-", label="mean")
    axes[2].plot(rs, [r.get("candidates/score_best", np.nan) for r in rounds], "s--", label="best")
    axes[2].set(title="preference score of each round's candidates", xlabel="step of the round")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_calibration(before: dict[str, np.ndarray], after: dict[str, np.ndarray]):
    """Held-out samples: the policy's ``s̄`` against the preference model's score, and the
    within-prompt rank agreement, before and after."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (name, a) in zip(axes, (("before", before), ("after", after)), strict=True):
        ax.scatter(a["scores"].ravel(), a["logps"].ravel(), s=8, alpha=0.5)
        ax.set(title=f"{name} calibration", xlabel="preference-model score")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("s̄ = log-likelihood per token")
    fig.suptitle("Held-out samples: the policy's likelihood against the preference model")
    fig.tight_layout()
    return fig


def write_rank_report(
    output_dir: str | Path,
    *,
    config: dict[str, Any],
    before: dict[str, float],
    after: dict[str, float],
    arrays_before: dict[str, np.ndarray],
    arrays_after: dict[str, np.ndarray],
    records: list[dict[str, Any]],
    prompts_markdown: str,
    notes: list[str],
) -> Path:
    out = Path(output_dir)
    save_figure(plot_training_curves(records), out / "training_curves.png")
    save_figure(plot_calibration(arrays_before, arrays_after), out / "calibration.png")
    k = config.get("num_candidates")
    setup = [
        f"policy `{config.get('policy')}`, preference model `{config.get('reward_model')}`",
        f"{k} candidates per prompt by `{config.get('decoding')}`"
        + (
            f" (temperature {config.get('temperature')})"
            if config.get("decoding") == "sample"
            else ""
        )
        + f", {config.get('max_new_tokens')} new tokens at most; "
        + ("regenerated every epoch" if config.get("regenerate") else "generated once"),
        f"loss: mean over ranked pairs i < j of max(0, {config.get('margin')}·(j − i) − "
        f"(s̄ᵢ − s̄ⱼ)) + {config.get('nll_weight')} · NLL per token of the reference",
    ]
    lines = report_head("smoothalign ranking-calibration report", [*setup, *notes])
    lines += [
        "## Held-out prompts, before and after calibration",
        "",
        f"Fresh samples ({k} per prompt, the same seed before and after) scored by the "
        "preference model; `s̄` is the policy's mean log-likelihood per response token. "
        "Calibration by ranking should raise the agreement between `s̄` and the score.",
        "",
        *before_after_table(TABLE_ROWS, before, after),
    ]
    n_sp = (before.get("n_spearman_prompts"), after.get("n_spearman_prompts"))
    lines += [
        "",
        f"Within-prompt Spearman averages over prompts whose `s̄` and scores both vary "
        f"({n_sp[0]:.0f} before, {n_sp[1]:.0f} after, of {after.get('n_prompts', 0):.0f}).",
        "",
        "![training curves](training_curves.png)",
        "",
        "![calibration](calibration.png)",
        "",
        *section("Prompts", prompts_markdown),
        *config_section(config),
    ]
    return atomic_write_text(out / "report.md", "\n".join(lines))
