"""``save_total_limit`` rotation counts only complete checkpoints (their save certified by
``smoothalign_complete.json``), and runs once the new one is certified."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.dpo_helpers import synthetic_rows, write_jsonl

from smoothalign.train import DPOConfig, run_dpo
from smoothalign.train.checkpoints import COMPLETE_MARKER, latest_complete_checkpoint


def _folders(out: Path) -> dict[str, bool]:
    """Each checkpoint-N folder's name: whether it is complete."""
    found = sorted(out.glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[1]))
    return {c.name: (c / COMPLETE_MARKER).is_file() for c in found}


def _uncertified_copy(src: Path, dst: Path) -> None:
    """A crash mid-save: a checkpoint folder without its marker."""
    shutil.copytree(src, dst)
    (dst / COMPLETE_MARKER).unlink()


def test_a_resumed_runs_rotation_keeps_complete_checkpoints_not_a_crashed_saves(tmp_path):
    """A crash while saving checkpoint-9 left it uncertified (a run with another
    --save-steps), and another while saving checkpoint-3; the run resumes from checkpoint-4. Trainer's
    rotation kept checkpoint-9 as the newest and removed complete ones in its place (and
    rotated before the new one was certified); ours keeps the limit's count of complete
    checkpoints, removes the crashed save the run trained past (3) and leaves the one
    ahead of it (9), which it never counts."""
    data = write_jsonl(synthetic_rows(32, seed=1), tmp_path / "pairs.jsonl")
    out = tmp_path / "run"
    base = dict(
        model="tiny", data=str(data), eval_data=None, output_dir=str(out), batch_size=8,
        lora=False, logging_steps=2, eval_samples=0, max_length=32, report=False,
        lr_warmup_steps=0, smoothing="none", save_total_limit=2,
    )  # fmt: skip
    run_dpo(DPOConfig(**base, max_steps=4, save_steps=2))
    assert _folders(out) == {"checkpoint-2": True, "checkpoint-4": True}
    _uncertified_copy(out / "checkpoint-2", out / "checkpoint-3")
    _uncertified_copy(out / "checkpoint-4", out / "checkpoint-9")

    run_dpo(DPOConfig(**base, max_steps=8, save_steps=2, resume="latest"))
    assert _folders(out) == {"checkpoint-6": True, "checkpoint-8": True, "checkpoint-9": False}
    assert latest_complete_checkpoint(out).name == "checkpoint-8"


def _checkpoint(out: Path, step: int, complete: bool = True) -> Path:
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if complete:
        (folder / COMPLETE_MARKER).write_text("{}")
    return folder


def test_rotation_counts_only_complete_checkpoints_and_keeps_the_new_and_the_best(tmp_path):
    from smoothalign.train.checkpoints import rotate_checkpoints

    for step in (1, 2, 3, 5):
        _checkpoint(tmp_path, step)
    _checkpoint(tmp_path, 4, complete=False)
    _checkpoint(tmp_path, 8, complete=False)
    # the new one is kept whatever its step (a resume from an older checkpoint), the best too
    removed = rotate_checkpoints(
        tmp_path, 2, newest=tmp_path / "checkpoint-3", protected=(tmp_path / "checkpoint-1",)
    )
    assert [c.name for c in removed] == ["checkpoint-2", "checkpoint-5"]
    # the uncertified 4 and 8 are ahead of the new checkpoint-3: left, and not counted
    assert _folders(tmp_path) == {
        "checkpoint-1": True, "checkpoint-3": True, "checkpoint-4": False, "checkpoint-8": False,
    }  # fmt: skip
    # once the run has saved past them, they are saves that crashed: removed
    _checkpoint(tmp_path, 9)
    removed = rotate_checkpoints(tmp_path, 2, newest=tmp_path / "checkpoint-9")
    assert [c.name for c in removed] == ["checkpoint-1", "checkpoint-4", "checkpoint-8"]
    assert _folders(tmp_path) == {"checkpoint-3": True, "checkpoint-9": True}
    # no limit: nothing removed, an uncertified folder neither
    _checkpoint(tmp_path, 2, complete=False)
    assert rotate_checkpoints(tmp_path, None, newest=tmp_path / "checkpoint-3") == []
    assert rotate_checkpoints(tmp_path, 0, newest=tmp_path / "checkpoint-3") == []
    assert (tmp_path / "checkpoint-2").is_dir()


def test_a_save_limit_of_one_keeps_the_newest_complete_checkpoint_which_resumes(tmp_path):
    """Rotation runs once the new checkpoint is certified, so ``save_total_limit=1`` is
    safe: each save removes the one before only after the new one is complete, and the run
    ends with its newest checkpoint alone, which ``--resume latest`` continues from."""
    data = write_jsonl(synthetic_rows(32, seed=1), tmp_path / "pairs.jsonl")
    out = tmp_path / "run"
    base = dict(
        model="tiny", data=str(data), eval_data=None, output_dir=str(out), batch_size=8,
        lora=False, logging_steps=2, eval_samples=0, max_length=32, report=False,
        lr_warmup_steps=0, smoothing="none", save_total_limit=1, save_steps=2,
    )  # fmt: skip
    run_dpo(DPOConfig(**base, max_steps=6))
    assert _folders(out) == {"checkpoint-6": True}

    result = run_dpo(DPOConfig(**base, max_steps=8, resume="latest"))
    assert f"resumed from {out / 'checkpoint-6'}" in result.notes
    assert _folders(out) == {"checkpoint-8": True}
    assert latest_complete_checkpoint(out).name == "checkpoint-8"
