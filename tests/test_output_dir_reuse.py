"""What the training commands do with the folder given as --output-dir: a new run into a
finished run's folder replaces its outputs, and says so; a model folder is refused before
anything loads; ``--resume checkpoint-N`` names the checkpoint in --output-dir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.dpo_helpers import synthetic_rows, write_jsonl

from smoothalign.train import DPOConfig, run_dpo
from smoothalign.train.checkpoints import COMPLETE_MARKER, resolve_resume


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prefs")
    return write_jsonl(synthetic_rows(32, seed=1), folder / "pairs.jsonl")


def _config(data: Path, out: Path, **overrides) -> DPOConfig:
    base = dict(
        model="tiny", data=str(data), eval_data=None, output_dir=str(out), batch_size=8,
        lora=False, logging_steps=1, eval_samples=0, max_length=32, report=False,
        lr_warmup_steps=0, smoothing="none", max_steps=1,
    )  # fmt: skip
    return DPOConfig(**{**base, **overrides})


def _replaced(said: list[str]) -> list[str]:
    return [line for line in said if "this new run replaces" in line]


def _warned(recwarn) -> list[str]:
    """The messages of the SmoothalignWarnings recorded so far, which are then cleared."""
    from smoothalign._warn import SmoothalignWarning

    said = [str(w.message) for w in recwarn if issubclass(w.category, SmoothalignWarning)]
    recwarn.clear()
    return said


def _shown_as_python_shows_them(monkeypatch) -> None:
    """Warnings written to stderr through ``warnings.formatwarning``, as Python's default
    ``showwarning`` writes them (pytest records them instead)."""
    import sys
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)


def test_a_new_run_over_a_finished_run_says_what_it_removes(pairs, tmp_path, recwarn):
    """The default --output-dir takes one run after another: the second replaces the
    first's model and results, said once in a warning and in the new run's report, naming
    the folder and what went. A first run into a new folder says nothing of the kind."""
    out = tmp_path / "run"
    run_dpo(_config(pairs, out, report=True))
    assert _replaced(_warned(recwarn)) == []
    assert (out / "final" / "model.safetensors").is_file()

    result = run_dpo(_config(pairs, out, report=True))
    said = _replaced(_warned(recwarn))
    assert said == [
        f"output_dir: this new run replaces the earlier run's outputs in {out}: removed "
        "final/ (its trained model), metrics.jsonl, report.md, eval_results.json, 3 plots; "
        "its config.json is now this run's (to keep a run's outputs, give each run its own "
        "output_dir)"
    ]
    assert said[0] in result.notes
    assert said[0] in (out / "report.md").read_text(encoding="utf-8")
    assert (out / "final" / "model.safetensors").is_file()  # this run's


def test_the_cli_names_its_flag_when_a_run_replaces_another(pairs, tmp_path, capsys, monkeypatch):
    """The command line says it as its own warnings: ``smoothalign dpo: warning: ...``."""
    from smoothalign.cli import main

    out = tmp_path / "run"
    argv = ["dpo", "--model", "tiny", "--data", str(pairs), "--output-dir", str(out),
            "--max-steps", "1", "--max-length", "32", "--batch-size", "8", "--no-report"]  # fmt: skip
    _shown_as_python_shows_them(monkeypatch)
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    said = _replaced(capsys.readouterr().err.splitlines())
    assert len(said) == 1
    assert said[0].startswith(
        "smoothalign dpo: warning: --output-dir: this new run replaces the earlier run's "
        f"outputs in {out}"
    )
    assert said[0].endswith("give each run its own --output-dir)")


def test_a_refused_data_check_alone_is_removed_without_a_word(tmp_path, recwarn):
    from smoothalign.train.checkpoints import clear_for_new_run

    (tmp_path / "refused_validation.json").write_text("{}")
    notes: list[str] = []
    assert clear_for_new_run(tmp_path, notes) == ["refused_validation.json"]
    assert notes == [] and _replaced(_warned(recwarn)) == []
    assert not (tmp_path / "refused_validation.json").exists()


def _no_model(monkeypatch):
    import smoothalign.train.run as run_module

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(run_module, "load_checked", refuse)


def test_a_model_folder_as_output_dir_is_refused_before_anything_loads(
    pairs, tmp_path, monkeypatch, tiny_preference_model
):
    """Training into a model's folder would replace its config.json with the run's
    options: refused, naming the option, whether a model saved elsewhere or a run's own
    final/; the run's folder itself still takes a new run and a resume."""
    model = tmp_path / "model"
    shutil.copytree(tiny_preference_model, model)
    config_before = (model / "config.json").read_text()
    out = tmp_path / "run"
    run_dpo(_config(pairs, out, save_steps=1))
    final_config = (out / "final" / "config.json").read_text()

    with monkeypatch.context() as m:
        _no_model(m)
        for folder in (model, out / "final"):
            with pytest.raises(
                ValueError, match=r"^output_dir: .* is a model folder; .*config\.json"
            ):
                run_dpo(_config(pairs, folder))
            with pytest.raises(ValueError, match=r"^output_dir: .* is a model folder"):
                run_dpo(_config(pairs, folder, resume="latest"))
    assert (model / "config.json").read_text() == config_before
    assert (out / "final" / "config.json").read_text() == final_config
    assert not (model / "final").exists() and not (out / "final" / "final").exists()

    result = run_dpo(_config(pairs, out, resume="latest", max_steps=2, save_steps=1))
    assert f"resumed from {out / 'checkpoint-1'}" in result.notes


@pytest.mark.parametrize("command", ["sft", "reward", "rank-calibrate"])
def test_every_training_command_refuses_a_model_folder_as_output_dir(
    command, tmp_path, tiny_preference_model
):
    from smoothalign.rank import RankConfig
    from smoothalign.rank.run import run_rank_calibration
    from smoothalign.reward import RewardConfig, run_reward
    from smoothalign.sft import SFTConfig, run_sft

    model = tmp_path / "model"
    shutil.copytree(tiny_preference_model, model)
    before = sorted(p.name for p in model.iterdir())
    data = write_jsonl([{"prompt": "q:", "completion": "a"}] * 8, tmp_path / "sft.jsonl")
    run, config = {
        "sft": (run_sft, SFTConfig(model="tiny", data=str(data), output_dir=str(model))),
        "reward": (run_reward, RewardConfig(model="tiny", output_dir=str(model))),
        "rank-calibrate": (
            run_rank_calibration,
            RankConfig(
                policy="tiny", reward_model=str(tiny_preference_model), output_dir=str(model)
            ),
        ),
    }[command]
    with pytest.raises(ValueError, match=r"^output_dir: .* is a model folder"):
        run(config)
    assert sorted(p.name for p in model.iterdir()) == before


def test_a_bare_checkpoint_name_resumes_from_the_output_dir(pairs, tmp_path, monkeypatch):
    """README's ``--resume checkpoint-N`` from any directory: a relative path that is not
    there as given is the checkpoint of that name in --output-dir."""
    out = tmp_path / "run"
    run_dpo(_config(pairs, out, save_steps=1, max_steps=2))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = run_dpo(_config(pairs, out, save_steps=1, max_steps=3, resume="checkpoint-1"))
    assert f"resumed from {out / 'checkpoint-1'}" in result.notes
    assert (out / "checkpoint-3" / COMPLETE_MARKER).is_file()
    with pytest.raises(
        ValueError,
        match=f"resume: no checkpoint folder at checkpoint-9 nor at {out / 'checkpoint-9'}",
    ):
        run_dpo(_config(pairs, out, max_steps=9, resume="checkpoint-9"))


def test_a_relative_resume_path_that_exists_as_given_is_used_as_given(tmp_path, monkeypatch):
    def checkpoint(folder: Path) -> Path:
        folder.mkdir(parents=True)
        (folder / COMPLETE_MARKER).write_text(json.dumps({"global_step": 1}))
        return folder

    out = tmp_path / "out"
    inside = checkpoint(out / "checkpoint-1")
    monkeypatch.chdir(tmp_path)
    assert resolve_resume("checkpoint-1", out) == out / "checkpoint-1"
    assert resolve_resume("out/checkpoint-1", out) == Path("out/checkpoint-1")
    here = checkpoint(tmp_path / "checkpoint-1")
    assert resolve_resume("checkpoint-1", out).resolve() == here.resolve() != inside.resolve()
    with pytest.raises(ValueError, match="no checkpoint folder at /nope/checkpoint-1$"):
        resolve_resume("/nope/checkpoint-1", out)


def test_resume_latest_into_a_finished_run_without_checkpoints_is_refused(
    pairs, tmp_path, monkeypatch, capsys, recwarn
):
    """A run with the default --save-steps 0 finished in the folder: --resume latest asks to
    continue it, which cannot be, and a new run there would replace its trained model. So it
    is refused before anything loads, saying how to start over or keep it; the run's
    outputs stay. An empty or new folder still starts a new run (a job's first launch)."""
    from smoothalign.cli import main

    out = tmp_path / "run"
    run_dpo(_config(pairs, out))
    weights = (out / "final" / "model.safetensors").read_bytes()
    refusal = (
        f"{out} holds a run that finished without saving a checkpoint (final/, "
        "eval_results.json; no checkpoint-N/): there is nothing to resume. To start over in "
        "this folder, run without {resume} (the new run replaces that run's outputs, and says "
        "so); to keep them, pass another {output_dir}"
    )
    with monkeypatch.context() as m:
        _no_model(m)
        with pytest.raises(ValueError) as err:
            run_dpo(_config(pairs, out, resume="latest"))
    assert str(err.value) == "resume='latest': " + refusal.format(
        resume="resume", output_dir="output_dir"
    )
    argv = ["dpo", "--model", "no-such-model", "--data", str(pairs), "--output-dir", str(out),
            "--resume", "latest"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first == "smoothalign dpo: --resume latest: " + refusal.format(
        resume="--resume", output_dir="--output-dir"
    )
    assert (out / "final" / "model.safetensors").read_bytes() == weights
    assert (out / "eval_results.json").is_file()

    recwarn.clear()
    for folder in (tmp_path / "new", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        result = run_dpo(_config(pairs, folder, resume="latest"))
        assert result.trainer.state.global_step == 1
        assert any("starting a new run" in line for line in _warned(recwarn))


def test_resuming_an_incomplete_checkpoint_says_what_else_there_is(pairs, tmp_path, capsys):
    """A named checkpoint whose save did not complete is refused with advice by what the
    folder holds: the complete checkpoints to resume instead, or, where none is, how to
    start over (not --resume latest, which is refused there too)."""
    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(ValueError) as err:
        resolve_resume("checkpoint-2", out)
    assert str(err.value) == (
        f"resume: {out / 'checkpoint-2'} has no {COMPLETE_MARKER}; its save did not complete, "
        f"so it is not trusted. {out} holds no complete checkpoint: none can be resumed. To "
        f"start over in this folder, delete them (rm -r {out / 'checkpoint-2'}) and run "
        "without resume; or pass another output_dir."
    )
    # --resume latest there: refused, its flag said once (not "--resume: --resume latest")
    from smoothalign.cli import main

    argv = ["dpo", "--model", "no-such-model", "--data", str(pairs), "--output-dir", str(out),
            "--resume", "latest"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith(f"smoothalign dpo: --resume latest: {out} holds no complete ")
    for step in (1, 3):
        (out / f"checkpoint-{step}").mkdir()
        (out / f"checkpoint-{step}" / COMPLETE_MARKER).write_text(json.dumps({"global_step": 1}))
    with pytest.raises(ValueError) as err:
        resolve_resume("checkpoint-2", out)
    assert str(err.value).endswith(
        "so it is not trusted. Resume from a complete one (checkpoint-1, checkpoint-3; "
        "resume='latest' takes checkpoint-3)."
    )


def test_a_folder_of_no_run_with_files_a_run_would_remove_is_refused(pairs, tmp_path, monkeypatch):
    """A data folder with the user's own report.md (or another tool's metrics.jsonl, eval
    calibration's reliability.png, a final/) is no run's folder: a fresh run there would
    delete those files as an earlier run's outputs. Refused before anything loads, the files
    kept; a folder holding only unrelated files, or a run's own folder, still takes a run."""

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the folder was checked")

    for name in ("report.md", "metrics.jsonl", "reliability.png", "final"):
        folder = tmp_path / f"mine-{name}"
        folder.mkdir()
        (folder / name).mkdir() if name == "final" else (folder / name).write_text("mine")
        with monkeypatch.context() as m:
            m.setattr("smoothalign.models.load_model_and_tokenizer", no_load)
            with pytest.raises(ValueError, match=r"^output_dir: .* holds .* but is no smoothalign"):
                run_dpo(_config(pairs, folder))
        assert (folder / name).exists() and not (folder / "config.json").exists()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    run_dpo(_config(pairs, other))
    assert (other / "notes.txt").read_text() == "mine" and (other / "config.json").is_file()
    run_dpo(_config(pairs, other))  # the run's own folder now: replaced, as before


def test_an_incomplete_checkpoint_of_another_folder_is_not_advised_for_deletion(tmp_path):
    """Resuming an incomplete checkpoint of another run's folder is refused without the
    advice to delete that folder's checkpoints: that does nothing for this run and may be
    someone else's work. In the run's own folder the advice stays."""
    other, own = tmp_path / "old", tmp_path / "new"
    (other / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(ValueError) as err:
        resolve_resume(str(other / "checkpoint-3"), own)
    assert "holds no complete checkpoint" in str(err.value) and "rm -r" not in str(err.value)
    (own / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(ValueError, match="rm -r"):
        resolve_resume(str(own / "checkpoint-3"), own)
