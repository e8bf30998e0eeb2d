"""Every table row of a written report has its header's cells: a label or name holding a
``|`` is escaped (``io.md_cell``), or the row's values shift out of their columns and a
Markdown renderer drops them (the reward report's ``mean |r₁ − r₂|`` row lost both)."""

from __future__ import annotations

import pytest
from tests.md_tables import cell_count, misaligned_rows, tables

from smoothalign.eval.calibration_report import markdown_report
from smoothalign.experiments import preference_report, sft_calibration
from smoothalign.rank import report as rank_report
from smoothalign.reward import report as reward_report
from smoothalign.sft import report as sft_report
from smoothalign.train import report as dpo_report
from smoothalign.train.report_md import before_after_table, metrics_table, true_rows


def test_md_cell_escapes_what_would_end_a_cell_or_a_row():
    from smoothalign.io import md_cell

    assert md_cell("mean |r₁ − r₂|") == r"mean \|r₁ − r₂\|"
    assert md_cell("two\nlines") == "two lines"
    assert md_cell(3) == "3"
    assert cell_count(f"| {md_cell('a|b')} | 1 | 2 |") == 3


@pytest.mark.parametrize("module", [dpo_report, reward_report, rank_report, sft_report])
def test_every_trainer_report_table_keeps_its_columns(module):
    """The before/after table (DPO, reward, rank-calibrate, SFT) and the one-column table
    (eval preferences: DPO's rows) with every row present, the ``*_true`` labels noted."""
    values = {key: 0.5 for key, _, _ in module.TABLE_ROWS} | {"n_pairs": 4, "n_pairs_true": 2}
    rows = true_rows(module.TABLE_ROWS, values)
    for lines in (before_after_table(rows, values, values), metrics_table(rows, values)):
        md = "\n".join(lines)
        assert len(lines) == len(module.TABLE_ROWS) + 2 and tables(md) == 1
        assert misaligned_rows(md) == []


def test_eval_calibration_results_table_keeps_its_columns():
    """A task is named after its file (``quiz|v2.jsonl``): any character a file name holds."""
    m = {"n": 3, "accuracy": 0.5, "chance": 0.5, "ece": 0.1, "rms": 0.1,
         "mean_confidence": 0.6, "nll": 0.7, "n_truncated": 0, "n_skipped": 1}  # fmt: skip
    results = {
        "model": "tiny",
        "config": {"shots": 0, "limit": None, "seed": 0, "bins": 15},
        "results": {"option": {"tasks": {"quiz|v2": m, "empty": {**m, "n": 0}}, "overall": m}},
        "tasks": [],
        "timing": {"total_s": 1.0, "model_load_s": 0.5},
    }
    del results["results"]["option"]["tasks"]["empty"]["accuracy"]  # no question scored
    md = markdown_report(results)
    assert tables(md) == 1 and misaligned_rows(md) == []
    assert r"| quiz\|v2 | 3 |" in md


def test_study_tables_keep_their_columns():
    rows = [{"model": "SFT β=0.1", "data": "mmlu", "n": 5, "runs": 2}]
    for k in ("accuracy", "ece", "rms", "mean_confidence"):
        rows[0] |= {f"{k}_mean": 0.5, f"{k}_std": 0.1}
    results = {"n_sft_rows": 1, "n_heldout": 1, "config": {"tasks": ["x"], "mmlu_limit": 5, "seeds": 2},
               "aggregates": rows}  # fmt: skip
    md = sft_calibration.markdown(results)
    agg = {"flip_rate": 0.2, "method": "dpo", "seeds": 2}
    agg |= {f"{k}_{s}": 0.5 for k, _, _ in preference_report.COLUMNS for s in ("mean", "std")}
    md += "\n" + preference_report.method_table({"aggregates": [agg]}, 0.2) + "\n"
    assert tables(md) == 2 and misaligned_rows(md) == []
