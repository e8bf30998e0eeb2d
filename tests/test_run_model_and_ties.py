"""What a run says about its model and about accuracies it cannot compute.

* dpo, sft and reward name the model they train in the report's header and in the console
  summary; ``tiny`` says its weights are random (``smoothalign reward`` defaults to it, and
  says so on the console before it trains).
* A reward model's held-out accuracy leaves out the pairs whose votes tied (no majority):
  the console and the report say how many, and where that is every pair the accuracy reads
  "n/a (every held-out pair tied)", not a bare nan.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from smoothalign.cli import main
from smoothalign.reward.trainer import reward_metrics
from smoothalign.train.report_md import before_after_table

ALL_TIED = "n/a (every held-out pair tied)"


def _head(report: Path) -> str:
    """The report's header: its title and notes, before the first section."""
    return report.read_text(encoding="utf-8").split("\n## ")[0]


def test_the_model_label_says_what_a_built_in_is(tmp_path):
    from smoothalign.models.loading import model_label

    assert model_label("tiny").startswith("tiny (random weights")
    assert model_label("smollm2-135m").startswith("smollm2-135m (SmolLM2-135M-Instruct, pretrained")
    assert model_label("path/to/model") == "path/to/model"
    run = tmp_path / "run"  # a smoothalign run folder stands for its final/
    (run / "final").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "tiny", "output_dir": str(run)}))
    (run / "final" / "config.json").write_text("{}")
    (run / "final" / "model.safetensors").write_bytes(b"")
    assert model_label(str(run)) == f"{run} (the model in {run / 'final'})"


def _reward_rows(p_chosen: list[float], seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "prompt": "".join(rng.choice("xyz") for _ in range(4)) + ":",
            "chosen": "".join(rng.choice("ab") for _ in range(4)),
            "rejected": "".join(rng.choice("cd") for _ in range(4)),
            "p_chosen": p,
        }
        for p in p_chosen
    ]


def _write(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _reward(tmp_path: Path, eval_p: list[float], capsys) -> tuple[str, str, Path]:
    train = _write(_reward_rows([0.8, 0.6, 1.0, 0.7] * 4, seed=1), tmp_path / "train.jsonl")
    held_out = _write(_reward_rows(eval_p, seed=2), tmp_path / "eval.jsonl")
    out = tmp_path / "run"
    argv = ["reward", "--data", str(train), "--eval-data", str(held_out), "--max-steps", "2",
            "--batch-size", "8", "--eval-steps", "0", "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err, out


def test_reward_names_its_default_model_and_counts_tied_pairs(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    stdout, stderr, out = _reward(tmp_path, [0.5, 0.5, 0.8, 0.2, 1.0, 0.0, 0.7, 0.3], capsys)
    # said before training, on stderr, and in the summary
    assert "smoothalign reward: model tiny (random weights" in stderr
    assert "--model smollm2-135m" in stderr
    assert "\n  model: tiny (random weights" in stdout
    left_out = "accuracy: 2 of 8 held-out pairs left out, their votes tied"
    assert left_out in stdout
    head = _head(out / "report.md")
    assert "\n- model: tiny (random weights" in head
    assert left_out in head
    after = json.loads((out / "eval_results.json").read_text())["after"]
    assert after["n_tied_votes"] == 2 and not math.isnan(after["accuracy"])


def test_reward_accuracy_over_only_tied_pairs_reads_n_a(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    stdout, _, out = _reward(tmp_path, [0.5] * 6, capsys)
    row = next(line for line in stdout.splitlines() if line.strip().startswith("accuracy "))
    assert row.split() == ["accuracy", "before", "n/a", "after", "n/a"], row
    # the reason is said once on the console: in the note above the row, not again in it
    assert stdout.count("all 6 held-out pairs have tied votes") == 1
    assert "every held-out pair tied" not in stdout
    report = (out / "report.md").read_text()
    table_row = next(
        line
        for line in report.splitlines()
        if line.startswith("| pairwise accuracy vs the majority")
    )
    assert table_row.count(ALL_TIED) == 2 and "nan" not in table_row
    assert "all 6 held-out pairs have tied votes" in _head(out / "report.md")


def test_reward_metrics_count_the_tied_pairs_left_out():
    d = np.array([0.3, -0.2, 0.0, 1.0])
    m = reward_metrics(d, np.array([0.5, 0.5, 0.5, 0.5]))
    assert math.isnan(m["accuracy"]) and m["n_tied_votes"] == 4
    m = reward_metrics(d, np.array([0.5, 0.2, 0.9, 0.5]))
    assert m["n_tied_votes"] == 2 and m["accuracy"] == (1 + 0.5) / 2  # d=-0.2 vs p=0.2; d=0


def test_no_tie_note_without_ties():
    from smoothalign.train.report_md import tied_votes_note

    assert tied_votes_note({"n_pairs": 4.0, "n_tied_votes": 0.0, "accuracy": 1.0}) is None
    assert tied_votes_note({"n_pairs": 4.0, "accuracy": 1.0}) is None  # a DPO evaluation
    rows = [("accuracy", "acc", "{:.3f}")]
    nan = {"accuracy": float("nan")}
    assert before_after_table(rows, nan, nan)[-1] == "| acc | nan | nan |"  # no reason given


@pytest.mark.parametrize("command", ["dpo", "sft"])
def test_dpo_and_sft_name_their_model(command, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)

    def rows(start: int) -> list[dict]:
        return [
            {"prompt": f"p{i}:", "chosen": "ab", "rejected": "cd", "completion": "ab"}
            for i in range(start, start + 8)
        ]

    data = _write(rows(0), tmp_path / "data.jsonl")
    held_out = _write(rows(8), tmp_path / "eval.jsonl")
    out = tmp_path / "run"
    argv = [command, "--model", "tiny", "--data", str(data), "--eval-data", str(held_out),
            "--max-steps", "1", "--batch-size", "8", "--max-length", "32", "--no-lora",
            "--output-dir", str(out)]  # fmt: skip
    if command == "dpo":
        argv += ["--eval-samples", "0"]
    assert main(argv) == 0
    assert "\n  model: tiny (random weights" in capsys.readouterr().out
    assert "\n- model: tiny (random weights" in _head(out / "report.md")


def test_reward_help_gives_each_switch_one_default(capsys):
    with pytest.raises(SystemExit):
        main(["reward", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    start = text.index("--posterior-grad, --no-posterior-grad")
    entry = text[start : text.index("--margin MARGIN", start)]
    assert entry.count("(default:") == 1, entry
