"""Every study refuses an --output-dir that is another study's, a run's or a model's folder
(its results.json, table.md and figures would replace or mix with the files there), and
reruns into its own. ``study logreg`` and ``study reward`` used to write over another
study's results.json and into a dpo run's folder; only preference and sft-calibration
refused (each in its own way)."""

from __future__ import annotations

import json

import pytest

from smoothalign.cli import main

STUDIES = {
    "logreg": ["study", "logreg", "--quick", "--no-progress"],
    "reward": ["study", "reward", "--quick", "--no-progress"],
    "preference": ["study", "preference", "--quick", "--no-progress"],
    "sft-calibration": ["study", "sft-calibration", "--model", "tiny", "--no-progress"],
}
OTHER = {
    "logreg": "smoothalign study preference",
    "reward": "smoothalign study logreg",
    "preference": "smoothalign study reward",
    "sft-calibration": "smoothalign eval calibration",
}


def _no_work(monkeypatch):
    """Any study that gets past its output-dir check fails the test at once."""

    def worked(*args, **kwargs):
        raise AssertionError("the study started its work in a refused folder")

    for target in (
        "smoothalign.experiments.logreg.run_study",
        "smoothalign.experiments.reward_study.run_study",
        "smoothalign.experiments.preference.run_study",
        "smoothalign.experiments.preference.finished_runs",
        "smoothalign.eval.mc_sources.load_tasks",
    ):
        monkeypatch.setattr(target, worked)


def _folder_contents(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.mark.parametrize("study", list(STUDIES))
def test_another_studys_results_are_refused_untouched(study, tmp_path, monkeypatch, capsys):
    _no_work(monkeypatch)
    out = tmp_path / "other"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"command": OTHER[study], "config": {}}))
    (out / "table.md").write_text("the other study's table\n")
    before = _folder_contents(out)
    assert main([*STUDIES[study], "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--output-dir: {out} holds the results of {OTHER[study]}" in err
    assert "choose another --output-dir" in err
    assert _folder_contents(out) == before


@pytest.mark.parametrize("study", list(STUDIES))
@pytest.mark.parametrize(
    ("config", "what"),
    [
        ({"output_dir": "runs/dpo", "model": "tiny", "beta": 0.1}, "a smoothalign run's folder"),
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "a model folder"),
    ],
)
def test_a_run_or_model_folder_is_refused(study, config, what, tmp_path, monkeypatch, capsys):
    _no_work(monkeypatch)
    out = tmp_path / "folder"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(config))
    (out / "report.md").write_text("the run's report\n")
    before = _folder_contents(out)
    assert main([*STUDIES[study], "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--output-dir: {out} is {what}" in err
    assert _folder_contents(out) == before


def test_an_unreadable_or_anonymous_results_json_is_refused(tmp_path):
    from smoothalign.experiments.study_dir import check_study_output_dir

    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"--output-dir: .* holds a results.json \(it cannot"):
        check_study_output_dir(tmp_path, "logreg", "results.json")
    (tmp_path / "results.json").write_text(json.dumps({"accuracy": 0.5}))
    with pytest.raises(ValueError, match="it does not say which command wrote it"):
        check_study_output_dir(tmp_path, "logreg", "results.json")


def test_a_studys_own_results_and_an_earlier_versions_are_its_own(tmp_path):
    """A rerun into its own folder goes on (preference and sft-calibration reuse what is
    there); results.json written before it named its command is told apart by its config."""
    from smoothalign.experiments.study_dir import check_study_output_dir, written_by

    for study, key in [
        ("logreg", "n_multipliers"),
        ("reward", "annotators"),
        ("preference", "flip_rates"),
        ("sft-calibration", "mmlu_limit"),
    ]:
        out = tmp_path / study
        out.mkdir()
        (out / "results.json").write_text(json.dumps({"config": {key: 1}, "runs": []}))
        assert written_by(json.loads((out / "results.json").read_text())) == (
            f"smoothalign study {study}"
        )
        assert check_study_output_dir(out, study, "results.json") == out
        (out / "results.json").write_text(json.dumps({"command": f"smoothalign study {study}"}))
        assert check_study_output_dir(out, study, "results.json") == out
        others = {"logreg", "reward", "preference", "sft-calibration"} - {study}
        for other in others:
            with pytest.raises(ValueError, match=f"holds the results of smoothalign study {study}"):
                check_study_output_dir(out, other, "results.json")


def test_logreg_reruns_into_its_own_folder_and_says_which_study_it_is(tmp_path):
    out = tmp_path / "logreg"
    argv = ["study", "logreg", "--quick", "--no-progress", "--steps", "5", "--seeds", "1"]
    assert main([*argv, "--output-dir", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["command"] == "smoothalign study logreg"
    assert main([*argv, "--output-dir", str(out)]) == 0  # its own folder: not refused
    # and another study is refused it
    assert main(["study", "reward", "--quick", "--no-progress", "--output-dir", str(out)]) == 2


def test_preference_from_results_of_another_study_is_refused(tmp_path, capsys):
    source = tmp_path / "results.json"
    source.write_text(json.dumps({"command": "smoothalign study logreg", "config": {}, "runs": []}))
    assert main(["study", "preference", "--from-results", str(source)]) == 2
    err = capsys.readouterr().err
    assert "not a preference study's results.json (those of smoothalign study logreg)" in err


# --------------------------------------------------------------------------------------------
# the commands that are not studies refuse a study's folder too
# --------------------------------------------------------------------------------------------

EVALS = {
    "eval calibration": ["eval", "calibration", "--model", "tiny", "--tasks", "quiz.jsonl",
                         "--no-progress"],
    "eval preferences": ["eval", "preferences", "--model", "tiny", "--data", "pairs.jsonl",
                         "--no-progress"],
    "analyze head": ["analyze", "head", "--model", "tiny", "--texts", "2"],
}  # fmt: skip


@pytest.mark.parametrize("command", list(EVALS))
@pytest.mark.parametrize(
    "results",
    [
        {"command": "smoothalign study preference", "config": {}},
        {"config": {"n_multipliers": [2, 5]}},  # a study's, written before it said so
    ],
)
def test_an_eval_command_refuses_a_studys_folder_untouched(
    command, results, tmp_path, monkeypatch, capsys
):
    """`eval calibration --output-dir <a study's folder>` wrote over the study's
    results.json (and eval preferences and analyze head mixed their files into its tables
    and figures): refused before any work, as a run's or a model's folder is."""
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)

    def loaded(*args, **kwargs):
        raise AssertionError("the command loaded a model for a refused folder")

    monkeypatch.setattr("smoothalign.models.load_model_and_tokenizer", loaded)
    out = tmp_path / "study"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(results))
    (out / "table.md").write_text("the study's table\n")
    before = _folder_contents(out)
    assert main([*EVALS[command], "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    study = results.get("command", "smoothalign study logreg")
    assert f"--output-dir: {out} holds the results of {study}" in err, err
    assert _folder_contents(out) == before


def test_eval_calibration_reruns_into_its_own_folder(tmp_path, monkeypatch):
    """eval calibration writes a results.json too, naming itself: a rerun into its folder
    is not taken for a study's, and replaces its own files."""
    monkeypatch.chdir(tmp_path)
    rows = [{"question": f"{i}?", "options": ["a", "b", "c"], "answer": i % 3} for i in range(4)]
    (tmp_path / "quiz.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    argv = [*EVALS["eval calibration"], "--batch-size", "4", "--output-dir", str(out)]
    assert main(argv) == 0
    first = json.loads((out / "results.json").read_text())
    assert first["command"] == "smoothalign eval calibration"
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["command"] == first["command"]
