"""``save_total_limit`` rotation counts only complete checkpoints (their save certified by
``smoothalign_complete.json``), and runs once the new one is certified."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from tests.dpo_helpers import synthetic_rows, write_jsonl

from smoothalign.train import DPOConfig, run_dpo
from smoothalign.train.checkpoints import COMPLETE_MARKER, latest_complete_checkpoint


def _folders(out: Path) -> dict[str, bool]:
    """Each checkpoint-N folder's name: whether it is complete."""
    found = [c for c in out.glob("checkpoint-*") if re.fullmatch(r"checkpoint-[0-9]+", c.name)]
    found.sort(key=lambda c: int(c.name.split("-")[1]))
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
    ahead of it (9), which it never counts; the end of the run removes that one too."""
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
    assert _folders(out) == {"checkpoint-6": True, "checkpoint-8": True}
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


def test_a_finished_run_removes_the_incomplete_checkpoints_it_never_saved_over(tmp_path, recwarn):
    """A crash while saving checkpoint-999 (a run with another --max-steps) left it
    uncertified; the resumed run ends at step 6, never saves over it, and the rotation
    (none here: every checkpoint kept) leaves it. Once the run has finished it is removed,
    and said; complete checkpoints and folders not named as checkpoints stay."""
    data = write_jsonl(synthetic_rows(32, seed=1), tmp_path / "pairs.jsonl")
    out = tmp_path / "run"
    base = dict(
        model="tiny", data=str(data), eval_data=None, output_dir=str(out), batch_size=8,
        lora=False, logging_steps=2, eval_samples=0, max_length=32, report=False,
        lr_warmup_steps=0, smoothing="none", save_total_limit=None, save_steps=2,
    )  # fmt: skip
    run_dpo(DPOConfig(**base, max_steps=4))
    _uncertified_copy(out / "checkpoint-4", out / "checkpoint-999")
    (out / "checkpoint-999-old").mkdir()  # not named as Trainer names a checkpoint
    recwarn.clear()

    result = run_dpo(DPOConfig(**base, max_steps=6, resume="latest"))
    assert _folders(out) == {"checkpoint-2": True, "checkpoint-4": True, "checkpoint-6": True}
    assert (out / "checkpoint-999-old").is_dir()
    said = [str(w.message) for w in recwarn if "checkpoint-999" in str(w.message)]
    assert said == [
        f"output_dir: removed checkpoint-999 from {out}: a save that did not complete (no "
        f"{COMPLETE_MARKER}, a crash while saving), which nothing resumes from"
    ]
    assert said[0] in result.notes


def test_removing_incomplete_checkpoints_touches_only_uncertified_checkpoint_folders(tmp_path):
    from smoothalign.train.checkpoints import (
        incomplete_checkpoint_names,
        remove_incomplete_checkpoints,
    )

    for step in (2, 4):
        _checkpoint(tmp_path, step)
    for step in (3, 999):
        (_checkpoint(tmp_path, step, complete=False) / "model.safetensors").write_text("x")
    for name in ("checkpoint-5-partial", "checkpoints-6", "my-checkpoint-7", "checkpoint-"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-8").write_text("a file, not a folder")
    elsewhere = _checkpoint(tmp_path / "other", 9, complete=False)
    (tmp_path / "checkpoint-9").symlink_to(elsewhere, target_is_directory=True)

    found = incomplete_checkpoint_names(tmp_path)  # as a run starts
    assert found == {"checkpoint-3", "checkpoint-999"}
    # a save begun since (another process's, in progress) is not the run's to remove
    (_checkpoint(tmp_path, 1000, complete=False) / "optimizer.pt").write_text("x")
    removed = remove_incomplete_checkpoints(tmp_path, found)
    assert [c.name for c in removed] == ["checkpoint-3", "checkpoint-999"]
    assert (tmp_path / "checkpoint-1000" / "optimizer.pt").is_file()
    shutil.rmtree(tmp_path / "checkpoint-1000")
    assert _folders(tmp_path) == {
        "checkpoint-2": True, "checkpoint-4": True, "checkpoint-8": False, "checkpoint-9": False,
    }  # fmt: skip
    assert elsewhere.is_dir() and (tmp_path / "checkpoint-9").is_symlink()
    for name in ("checkpoint-5-partial", "checkpoints-6", "my-checkpoint-7", "checkpoint-"):
        assert (tmp_path / name).is_dir()
    assert incomplete_checkpoint_names(tmp_path / "nothing-here") == frozenset()
    assert remove_incomplete_checkpoints(tmp_path / "nothing-here", found) == []


def _sft_and_reward_runs(tmp_path: Path) -> dict[str, tuple[Any, Any]]:
    """Per command, its run function and a 4-step config saving at step 4, on tiny data."""
    from smoothalign.reward import RewardConfig, run_reward
    from smoothalign.sft import SFTConfig, run_sft

    prompts = ["".join("xyz"[i // 3**k % 3] for k in range(3)) + ":" for i in range(24)]
    rows = [{"prompt": p, "completion": "ab"[i % 2] * 3} for i, p in enumerate(prompts)]
    data = write_jsonl(rows, tmp_path / "sft.jsonl")
    common = dict(
        model="tiny", batch_size=8, logging_steps=2, max_length=32, lr_warmup_steps=0,
        max_steps=4, save_steps=4, report=False,
    )  # fmt: skip
    return {
        "sft": (run_sft, lambda **kw: SFTConfig(data=str(data), lora=False, **common, **kw)),
        "reward": (run_reward, lambda **kw: RewardConfig(oracle_pairs=48, **common, **kw)),
    }


@pytest.mark.parametrize("command", ["sft", "reward"])
def test_sft_and_reward_runs_remove_the_incomplete_checkpoints_when_they_finish(tmp_path, command):
    """As DPO's: a resume that finishes the run (here one at --max-steps, which trains
    nothing) removes a crashed save's checkpoint-999, and keeps the complete ones."""
    run, config = _sft_and_reward_runs(tmp_path)[command]
    out = tmp_path / "run"
    run(config(output_dir=str(out)))
    _uncertified_copy(out / "checkpoint-4", out / "checkpoint-999")

    result = run(config(output_dir=str(out), resume="latest"))
    assert _folders(out) == {"checkpoint-4": True}
    assert any(note.startswith("output_dir: removed checkpoint-999 ") for note in result.notes)


def test_a_checkpoints_training_arguments_record_the_runs_save_limit(tmp_path):
    """Trainer saves a checkpoint's ``training_args.bin`` while its own rotation is switched
    off (``save_total_limit=None``); the file holds the run's limit, as ``final/``'s does."""
    import torch

    data = write_jsonl(synthetic_rows(16, seed=1), tmp_path / "pairs.jsonl")
    out = tmp_path / "run"
    result = run_dpo(
        DPOConfig(
            model="tiny", data=str(data), eval_data=None, output_dir=str(out), batch_size=8,
            lora=False, logging_steps=1, eval_samples=0, max_length=32, report=False,
            smoothing="none", max_steps=2, save_steps=1, save_total_limit=3,
        )
    )  # fmt: skip
    assert _folders(out) == {"checkpoint-1": True, "checkpoint-2": True}
    for folder in (out / "checkpoint-1", out / "checkpoint-2", out / "final"):
        args = torch.load(folder / "training_args.bin", weights_only=False)
        assert args.save_total_limit == 3, folder.name
    assert result.trainer.args.save_total_limit == 3


def test_the_rotation_says_the_incomplete_checkpoints_it_removes(tmp_path, recwarn):
    """The crashed saves the rotation removes (below the checkpoint just saved) are said in
    one warning naming them, as the end of a run says those it removes; the complete ones
    the limit removes are the rotation's documented work and go unsaid, as does all of it
    on a process other than the main one."""
    from smoothalign._warn import SmoothalignWarning
    from smoothalign.train.checkpoints import rotate_checkpoints

    def said() -> list[str]:
        found = [str(w.message) for w in recwarn if issubclass(w.category, SmoothalignWarning)]
        recwarn.clear()
        return found

    for step in (1, 2, 5):
        _checkpoint(tmp_path, step)
    rotate_checkpoints(tmp_path, 2, newest=tmp_path / "checkpoint-5")
    assert said() == [] and _folders(tmp_path) == {"checkpoint-2": True, "checkpoint-5": True}
    for step in (3, 4, 9):
        _checkpoint(tmp_path, step, complete=False)
    _checkpoint(tmp_path, 6)
    removed = rotate_checkpoints(tmp_path, 2, newest=tmp_path / "checkpoint-6")
    assert [c.name for c in removed] == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]
    assert said() == [
        f"output_dir: removed checkpoint-3, checkpoint-4 from {tmp_path}, below checkpoint-6 "
        f"just saved: saves that did not complete (no {COMPLETE_MARKER}, a crash while "
        "saving), which nothing resumes from"
    ]
    _checkpoint(tmp_path, 7, complete=False)
    _checkpoint(tmp_path, 8)
    with pytest.MonkeyPatch.context() as m:
        m.setenv("RANK", "1")
        rotate_checkpoints(tmp_path, 2, newest=tmp_path / "checkpoint-8")
    assert said() == [] and not (tmp_path / "checkpoint-7").exists()
