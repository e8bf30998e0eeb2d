"""Training `rewards/accuracies` counts a tie (h = 0) as half right, as the held-out
`accuracy` does (`calibration.preference_metrics`): at step 0 with LoRA the policy is its
reference, every h is exactly 0, and both must read 0.5, not 0.0 against 0.5."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import torch

from dpo_helpers import synthetic_rows, write_jsonl
from smoothalign.calibration import preference_metrics
from smoothalign.train import DPOConfig, run_dpo
from smoothalign.train.trainer import SmoothDPOTrainer


def _recorded_accuracies(margins: list[float]) -> np.ndarray:
    """What the trainer buffers per pair for `rewards/accuracies` given these margins."""
    recorded = {}
    stub = SimpleNamespace(record=lambda split, values: recorded.update(values))
    h = torch.tensor(margins)
    terms = SimpleNamespace(
        margins=h, chosen_rewards=h, rejected_rewards=torch.zeros_like(h), alpha=h * 0
    )
    SmoothDPOTrainer._record(stub, "train", terms, h, h)
    return recorded["rewards/accuracies"].numpy()


def test_an_exact_tie_counts_half_as_in_the_held_out_accuracy():
    margins = [0.0, 0.7, -0.3, 0.0, 2.0, -0.0]
    per_pair = _recorded_accuracies(margins)
    np.testing.assert_array_equal(per_pair, [0.5, 1.0, 0.0, 0.5, 1.0, 0.5])
    # the same convention as the held-out metric on the same margins
    held_out = preference_metrics(np.array(margins), np.full(len(margins), np.nan))["accuracy"]
    assert per_pair.mean() == held_out == 3.5 / 6


def test_all_ties_read_one_half():
    assert _recorded_accuracies([0.0] * 4).tolist() == [0.5] * 4


def test_step_one_with_lora_logs_one_half_like_the_held_out_accuracy(tmp_path):
    """The first step's pairs are scored before any update: with LoRA (B = 0) the policy
    equals its adapter-disabled reference, so every h is exactly 0."""
    data = write_jsonl(synthetic_rows(16, seed=1), tmp_path / "train.jsonl")
    held_out = write_jsonl(synthetic_rows(8, seed=2), tmp_path / "eval.jsonl")
    out = tmp_path / "run"
    result = run_dpo(
        DPOConfig(
            model="tiny", data=str(data), eval_data=str(held_out), output_dir=str(out),
            lora=True, smoothing="none", batch_size=8, max_steps=1, logging_steps=1,
            eval_samples=0, max_length=32, report=False,
        )
    )  # fmt: skip
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["split"] == "train" and r["step"] == 1)
    assert first["rewards/margins"] == 0.0
    assert first["rewards/accuracies"] == 0.5
    assert result.before["accuracy"] == 0.5  # the held-out reading of the same ties
