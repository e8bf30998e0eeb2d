"""``--no-progress`` on the training commands (dpo, sft, reward, rank-calibrate): no
progress bar on stderr, the Trainer's nor smoothalign's, and no change to the run: the
flag is not a config option, so a resume may differ in it."""

from __future__ import annotations

import json
import re

import pytest
import torch
from tests.dpo_helpers import synthetic_rows, write_jsonl

from smoothalign.cli import main

# what a tqdm bar leaves in its output: "12%|█▎ |", "3/8 [", "it/s]", "s/it]"
BAR = re.compile(r"\d+%\||\d+/\d+ \[|it/s\]|s/it\]")


def _bars(err: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]", err) if BAR.search(line)]


def test_dpo_without_bars_and_a_resume_may_change_the_flag(tmp_path, capfd):
    data = write_jsonl(synthetic_rows(16, seed=3), tmp_path / "pairs.jsonl")
    out = tmp_path / "run"
    argv = ["dpo", "--model", "tiny", "--data", str(data), "--output-dir", str(out),
            "--batch-size", "4", "--max-length", "48", "--max-eval-pairs", "4",
            "--eval-samples", "0", "--save-steps", "1", "--no-report"]  # fmt: skip
    assert main([*argv, "--max-steps", "1"]) == 0
    assert _bars(capfd.readouterr().err)  # bars by default: the check below can see them
    assert main([*argv, "--max-steps", "2", "--resume", "latest", "--no-progress"]) == 0
    err = capfd.readouterr().err
    assert not _bars(err), err
    assert "no_progress" not in json.loads((out / "config.json").read_text())


def test_sft_without_bars(tmp_path, capfd):
    rows = [{"prompt": f"q{i}:", "completion": " abc"} for i in range(12)]
    data = write_jsonl(rows, tmp_path / "sft.jsonl")
    argv = ["sft", "--model", "tiny", "--data", str(data), "--output-dir", str(tmp_path / "o"),
            "--max-steps", "2", "--batch-size", "4", "--max-length", "32", "--no-report",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    err = capfd.readouterr().err
    assert not _bars(err), err


def test_reward_without_bars(tmp_path, capfd):
    argv = ["reward", "--oracle-pairs", "24", "--output-dir", str(tmp_path / "o"),
            "--max-steps", "2", "--batch-size", "4", "--max-length", "32", "--no-report",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    err = capfd.readouterr().err
    assert not _bars(err), err


@pytest.fixture
def reward_dir(tmp_path):
    from smoothalign.reward.run import build_reward_model

    torch.manual_seed(0)
    model, tok = build_reward_model("tiny")
    model.save_pretrained(tmp_path / "rm", safe_serialization=True)
    tok.save_pretrained(tmp_path / "rm")
    return tmp_path / "rm"


def test_rank_calibrate_without_bars(tmp_path, reward_dir, capfd):
    rows = [{"prompt": f"q{i}:", "chosen": "abc"} for i in range(8)]
    prompts = write_jsonl(rows, tmp_path / "p.jsonl")
    argv = ["rank-calibrate", "--policy", "tiny", "--reward-model", str(reward_dir),
            "--prompts", str(prompts), "--output-dir", str(tmp_path / "o"),
            "--num-candidates", "2", "--max-new-tokens", "4", "--batch-size", "4",
            "--max-length", "32", "--no-report", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    err = capfd.readouterr().err
    assert not _bars(err), err
