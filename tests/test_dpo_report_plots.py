"""training_curves.png draws the held-out evaluations (`--eval-steps`, and before/after
training) that metrics.jsonl records: accuracy markers beside the training accuracy, and a
panel of their calibration (ECE). Checked on the data of the figure's lines, not pixels."""

from __future__ import annotations

import json

import numpy as np

from smoothalign.train.report import held_out_points, plot_training_curves, read_metrics


def _train(step: int, acc: float) -> dict:
    return {"step": step, "split": "train", "loss": 0.69 - 0.01 * step,
            "rewards/margins": 0.1 * step, "rewards/chosen": 0.0, "rewards/rejected": 0.0,
            "rewards/accuracies": acc}  # fmt: skip


def _eval(step: int, acc: float, ece: float, **extra) -> dict:
    return {"step": step, "split": "eval", "eval_n_pairs": 8.0, "eval_accuracy": acc,
            "eval_ece": ece, **{f"eval_{k}": v for k, v in extra.items()}}  # fmt: skip


RECORDS = [
    _train(2, 0.5),
    _eval(2, 0.625, 0.20, ece_true=0.3, accuracy_true=0.5),
    _train(4, 0.75),
    _eval(4, 0.75, 0.10, ece_true=0.2, accuracy_true=0.625),
    _train(6, 0.875),
    {"step": 6, "split": "summary", "train_runtime": 1.0},
    {
        "step": 6,
        "split": "summary",
        "final_eval_accuracy": 0.875,
        "final_eval_ece": 0.05,
        "final_eval_ece_true": 0.1,
        "final_eval_accuracy_true": 0.75,
    },  # fmt: skip
]
BEFORE = {"accuracy": 0.5, "ece": 0.0, "ece_true": 0.4, "accuracy_true": 0.5}


def _lines(ax) -> dict[str, tuple[list, list]]:
    return {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
        for line in ax.get_lines()
    }


def test_the_held_out_evaluations_are_drawn_on_the_accuracy_and_a_calibration_panel(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    fig = plot_training_curves(read_metrics(path), BEFORE)
    accuracy, calibration = fig.axes[2], fig.axes[3]
    lines = _lines(accuracy)
    assert lines["train"] == ([2, 4, 6], [0.5, 0.75, 0.875])
    # before (step 0), every periodic evaluation, the final one (step 6: none periodic there)
    assert lines["held out"] == ([0, 2, 4, 6], [0.5, 0.625, 0.75, 0.875])
    assert lines["held out, true preference"] == ([0, 2, 4, 6], [0.5, 0.5, 0.625, 0.75])
    lines = _lines(calibration)
    assert lines["ECE vs labels"] == ([0, 2, 4, 6], [0.0, 0.20, 0.10, 0.05])
    assert lines["ECE vs the true q"] == ([0, 2, 4, 6], [0.4, 0.3, 0.2, 0.1])


def test_a_periodic_evaluation_at_the_last_step_is_drawn_once():
    records = [*RECORDS[:5], _eval(6, 0.875, 0.05), *RECORDS[5:]]
    steps = [step for step, _ in held_out_points(records)]
    assert steps == [2, 4, 6]


def test_without_periodic_evaluations_before_and_after_are_still_drawn():
    records = [r for r in RECORDS if r["split"] != "eval"]
    fig = plot_training_curves(records, BEFORE)
    assert _lines(fig.axes[3])["ECE vs labels"] == ([0, 6], [0.0, 0.05])


def test_no_held_out_evaluation_says_so():
    fig = plot_training_curves([_train(2, 0.5)])
    texts = [t.get_text() for t in fig.axes[3].texts]
    assert texts == ["no held-out evaluation"]
    assert not fig.axes[3].get_lines()
    assert np.isfinite(_lines(fig.axes[0])["loss"][1]).all()
