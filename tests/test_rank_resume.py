"""rank-calibrate's checkpoints and --resume, as dpo's, sft's and reward's: a run interrupted
and resumed with --resume latest ends as the uninterrupted one; a resume that changes an
option defining the run, or whose prompts were edited, is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from smoothalign.rank import RankConfig
from smoothalign.rank.run import run_rank_calibration
from smoothalign.rank.trainer import RankTrainer
from smoothalign.train.checkpoints import COMPLETE_MARKER, latest_complete_checkpoint


@pytest.fixture(scope="module")
def reward_dir(tiny_preference_model) -> Path:
    return tiny_preference_model


def _prompts(path: Path, n: int = 10) -> Path:
    rows = [
        {"prompt": f"q{i}:", "chosen": "abc", "split": "eval" if i % 5 == 0 else "train"}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(reward_dir: Path, prompts: Path, out: Path, **kw) -> RankConfig:
    # 8 training prompts, 2 a step: 4 steps a round, 2 rounds (candidates made again for
    # the second); a checkpoint every 3 steps, logged every 2: checkpoint-3 holds an open
    # logging window and the first round's candidates
    options = dict(
        policy="tiny", reward_model=str(reward_dir), prompts=str(prompts), output_dir=str(out),
        num_candidates=3, max_new_tokens=5, epochs=2, batch_size=2, learning_rate=1e-3,
        logging_steps=2, save_steps=3, max_length=48, report=False,
    )  # fmt: skip
    return RankConfig(**{**options, **kw})


def _crash_after(monkeypatch, at: int) -> None:
    """Interrupt the run after its optimizer step ``at`` (after any checkpoint there)."""
    original = RankTrainer.train_epoch

    def train_epoch(self, ranked, epoch, *, start=0, after_step=None):
        def step(n: int) -> None:
            if after_step is not None:
                after_step(n)
            if self.global_step == at:
                raise KeyboardInterrupt(f"simulated crash after step {at}")

        return original(self, ranked, epoch, start=start, after_step=step)

    monkeypatch.setattr(RankTrainer, "train_epoch", train_epoch)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _crashed_run(reward_dir, prompts, out, monkeypatch, **kw) -> None:
    with monkeypatch.context() as m:
        _crash_after(m, 5)
        with pytest.raises(KeyboardInterrupt):
            run_rank_calibration(_config(reward_dir, prompts, out, **kw))
    assert latest_complete_checkpoint(out).name == "checkpoint-3"


def test_resume_latest_ends_as_the_uninterrupted_run(tmp_path, reward_dir, monkeypatch):
    """Crashed after step 5 (in the second round, its candidates made), resumed from
    checkpoint-3 (in the first round, mid logging window): the same weights, held-out
    metrics, training records and second-round candidates as the run never interrupted."""
    prompts = _prompts(tmp_path / "p.jsonl")
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    run_rank_calibration(_config(reward_dir, prompts, straight))
    assert sorted(p.name for p in straight.glob("checkpoint-*")) == [
        "checkpoint-6", "checkpoint-8"  # every 3 steps and the last, 2 kept
    ]  # fmt: skip
    _crashed_run(reward_dir, prompts, crashed, monkeypatch)
    assert (crashed / "checkpoint-3" / COMPLETE_MARKER).is_file()
    # a later checkpoint whose save never completed is not trusted
    shutil.copytree(crashed / "checkpoint-3", crashed / "checkpoint-5")
    (crashed / "checkpoint-5" / COMPLETE_MARKER).unlink()
    shutil.copytree(crashed / "checkpoint-5", crashed / "checkpoint-99")  # above the last step
    result = run_rank_calibration(_config(reward_dir, prompts, crashed, resume="latest"))
    assert any("resumed from" in n and "checkpoint-3" in n for n in result.notes)
    # ... and removed: checkpoint-5 by the rotation once a later one is certified, and
    # checkpoint-99, which no save of the run reaches, when it finishes (said), as dpo,
    # sft and reward do
    assert not (crashed / "checkpoint-5").exists() and not (crashed / "checkpoint-99").exists()
    assert any("removed checkpoint-99" in n for n in result.notes)

    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(crashed / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # the same computation, on one machine
    want = json.loads((straight / "eval_results.json").read_text())
    got = json.loads((crashed / "eval_results.json").read_text())
    for side in ("before", "after"):
        assert got[side] == pytest.approx(want[side], rel=1e-9, abs=1e-12, nan_ok=True)
    assert result.after == pytest.approx(want["after"], rel=1e-9, abs=1e-12, nan_ok=True)
    # every record once, as the uninterrupted run's (metrics.jsonl continued, not appended)
    for r, s in zip(_records(crashed), _records(straight), strict=True):
        assert r.keys() == s.keys()
        for key, value in s.items():
            if isinstance(value, float):
                assert r[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key
            else:
                assert r[key] == value, key
    for name in ("candidates-epoch-1.jsonl", "candidates-epoch-2.jsonl"):
        assert (crashed / name).read_text() == (straight / name).read_text(), name
    assert (crashed / "data_fingerprint.json").read_text() == (
        straight / "data_fingerprint.json"
    ).read_text()


def test_a_resume_that_changes_an_option_defining_the_run_is_refused(
    tmp_path, reward_dir, monkeypatch
):
    """Naming the flag that gives the saved value again, before the models load; and
    --max-new-tokens, which elsewhere sets an evaluation's sampling and may change, here
    sets the candidates trained on and may not. Resumable options (--logging-steps, and
    --no-save-model, which like --no-report only leaves an output unwritten) may."""
    prompts = _prompts(tmp_path / "p.jsonl")
    out = tmp_path / "run"
    _crashed_run(reward_dir, prompts, out, monkeypatch)

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the resume was checked")

    with monkeypatch.context() as m:
        m.setattr("smoothalign.models.load_model_and_tokenizer", no_load)
        with pytest.raises(
            ValueError, match=r"learning_rate 0\.001 -> 0\.01.*--learning-rate 0\.001"
        ):
            run_rank_calibration(
                _config(reward_dir, prompts, out, resume="latest", learning_rate=1e-2)
            )
        with pytest.raises(ValueError, match=r"max_new_tokens 5 -> 6.*--max-new-tokens 5"):
            run_rank_calibration(
                _config(reward_dir, prompts, out, resume="latest", max_new_tokens=6)
            )
    result = run_rank_calibration(
        _config(reward_dir, prompts, out, resume="latest", logging_steps=4, save_model=False)
    )
    assert any("checkpoint-3" in n for n in result.notes)
    assert not (out / "final").exists()


def test_a_resume_on_edited_prompts_is_refused(tmp_path, reward_dir, monkeypatch):
    """The checkpoint's data fingerprint: a training prompt edited since is refused, saying
    which side differs, before any weights load (as dpo's, sft's and reward's); the run's
    outputs stay as the interrupted run left them."""
    prompts = _prompts(tmp_path / "p.jsonl")
    out = tmp_path / "run"
    _crashed_run(reward_dir, prompts, out, monkeypatch)
    rows = prompts.read_text().splitlines()
    rows[3] = json.dumps({"prompt": "q3 edited:", "chosen": "abc", "split": "train"})
    prompts.write_text("\n".join(rows) + "\n")
    config_before = (out / "config.json").read_text()

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the resumed run's data was checked")

    monkeypatch.setattr("smoothalign.models.load_model_and_tokenizer", no_load)
    monkeypatch.setattr("smoothalign.rank.run.load_preference_model", no_load)
    with pytest.raises(ValueError, match=r"resume: this run's data differs.*training rows"):
        run_rank_calibration(_config(reward_dir, prompts, out, resume="latest"))
    assert (out / "config.json").read_text() == config_before
    assert latest_complete_checkpoint(out).name == "checkpoint-3"


def test_a_resume_from_the_last_steps_checkpoint_finishes_the_run(
    tmp_path, reward_dir, monkeypatch
):
    """A run that crashed after training (here saving final/), its checkpoint at the last
    step: --resume latest trains no step and writes what comes after, as the run would
    have. The data check is written as validation.json, and as prompts.json (its name
    before) for the scripts that read that."""
    prompts = _prompts(tmp_path / "p.jsonl")
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    run_rank_calibration(_config(reward_dir, prompts, straight))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash while saving final/")

    with monkeypatch.context() as m:
        m.setattr("smoothalign.rank.run.save_model_atomically", crash)
        with pytest.raises(KeyboardInterrupt):
            run_rank_calibration(_config(reward_dir, prompts, crashed))
    assert latest_complete_checkpoint(crashed).name == "checkpoint-8"
    steps = []
    with monkeypatch.context() as m:
        original = RankTrainer.train_epoch

        def counted(self, ranked, epoch, *, start=0, after_step=None):
            original(self, ranked, epoch, start=start, after_step=lambda n: steps.append(n))

        m.setattr(RankTrainer, "train_epoch", counted)
        result = run_rank_calibration(_config(reward_dir, prompts, crashed, resume="latest"))
    assert steps == [] and any("checkpoint-8" in n for n in result.notes)
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(crashed / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()
    assert (crashed / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()
    validation = json.loads((crashed / "validation.json").read_text())
    assert validation == json.loads((crashed / "prompts.json").read_text())
    assert validation["train"]["n_kept"] == 10
