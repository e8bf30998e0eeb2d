"""Rows handed over as a Python list (``data=[{...}, ...]``), as the README's Python API
shows: each training command runs on them exactly as on the same rows in a file, and
``split.json`` names a held-out row by its index in the list (``file`` null)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from dpo_helpers import synthetic_rows, write_jsonl
from smoothalign.progress import progress_bars
from smoothalign.reward import RewardConfig, run_reward
from smoothalign.reward.data import oracle_text_rows
from smoothalign.sft import SFTConfig, run_sft
from smoothalign.train import DPOConfig, run_dpo


def _sft_rows(n: int) -> list[dict]:
    rng = random.Random(5)
    return [
        {
            "prompt": "".join(rng.choice("xyz") for _ in range(5)) + ":",
            "completion": "".join(rng.choice("ab") for _ in range(6)),
        }
        for _ in range(n)
    ]


COMMANDS = {
    "dpo": (run_dpo, DPOConfig, lambda: synthetic_rows(24, seed=4), {"eval_samples": 0}),
    "sft": (run_sft, SFTConfig, lambda: _sft_rows(24), {}),
    "reward": (run_reward, RewardConfig, lambda: oracle_text_rows(24, seed=4), {}),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_rows_as_a_list_train_as_the_same_rows_in_a_file(command, tmp_path):
    run, config_cls, make_rows, extra = COMMANDS[command]
    rows = make_rows()
    common = dict(
        model="tiny", batch_size=4, max_steps=2, lora=False, max_length=32, report=False,
        lr_warmup_steps=0, eval_fraction=0.25, **extra,
    )  # fmt: skip
    path = write_jsonl(rows, tmp_path / "rows.jsonl")
    with progress_bars(False):
        from_file = run(config_cls(data=str(path), output_dir=str(tmp_path / "f"), **common))
        from_list = run(config_cls(data=rows, output_dir=str(tmp_path / "l"), **common))
    assert from_list.after == pytest.approx(from_file.after, rel=1e-6, abs=1e-9, nan_ok=True)
    by_file = json.loads((tmp_path / "f" / "split.json").read_text())
    by_list = json.loads((tmp_path / "l" / "split.json").read_text())
    assert by_list["n_held_out"] == by_file["n_held_out"] > 0
    assert [r["row"] for r in by_list["held_out"]] == [r["row"] for r in by_file["held_out"]]
    assert {r["file"] for r in by_list["held_out"]} == {None}
    assert {Path(r["file"]).name for r in by_file["held_out"]} == {"rows.jsonl"}
