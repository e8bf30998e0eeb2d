"""A missing input file, or a folder where a file is read, is said in one shape by every
command: ``<option>: not found: PATH`` and ``<option>: PATH is a folder, not a file``, the
option as its reader types it (the flag on the command line, the keyword from Python).
They used to differ: ``preference data not found: PATH`` (no option named) from dpo,
eval preferences and data confidence; ``--reward-model: no such path 'PATH'``; a bare
``[Errno 2]`` / ``[Errno 21]`` from eval calibration's --mmlu-file; ``--from-results PATH:
[Errno 2] ...``."""

from __future__ import annotations

import pytest

from smoothalign.cli import main


def _first_line(capsys) -> str:
    return capsys.readouterr().err.splitlines()[0]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["dpo", "--model", "tiny", "--max-steps", "1", "--data", "MISSING"], "--data"),
        (["sft", "--model", "tiny", "--max-steps", "1", "--data", "MISSING"], "--data"),
        (["eval", "preferences", "--model", "tiny", "--data", "MISSING"], "--data"),
        (["data", "confidence", "--data", "MISSING", "--output", "OUT/c.jsonl"], "--data"),
        (["rank-calibrate", "--policy", "tiny", "--reward-model", "MISSING"], "--reward-model"),
        (["eval", "calibration", "--model", "tiny", "--tasks", "mmlu", "--mmlu-file", "MISSING"],
         "--mmlu-file"),
        (["study", "preference", "--from-results", "MISSING"], "--from-results"),
    ],
)  # fmt: skip
def test_a_missing_file_is_said_in_one_shape(argv, flag, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    missing = tmp_path / "nope.jsonl"
    argv = [str(missing) if a == "MISSING" else a.replace("OUT", str(tmp_path)) for a in argv]
    if "--output-dir" not in argv and argv[0] != "data" and "--from-results" not in argv:
        argv += ["--output-dir", str(tmp_path / "out")]
    assert main(argv) == 2
    first = _first_line(capsys)
    assert first.endswith(f": {flag}: not found: {missing}"), first


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["eval", "calibration", "--model", "tiny", "--tasks", "mmlu", "--mmlu-file", "DIR",
          "--output-dir", "OUT"], "--mmlu-file"),
        (["study", "preference", "--from-results", "DIR", "--output-dir", "OUT"],
         "--from-results"),
    ],
)  # fmt: skip
def test_a_folder_where_a_file_is_read_is_said_in_one_shape(
    argv, flag, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    argv = [str(folder) if a == "DIR" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    first = _first_line(capsys)
    assert first.endswith(f": {flag}: {folder} is a folder, not a file"), first


def test_python_callers_see_the_keyword(tmp_path):
    from smoothalign.data import load_preference_rows
    from smoothalign.eval.mc_sources import load_tasks
    from smoothalign.io import check_input_file

    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=f"^data: not found: {missing}$"):
        load_preference_rows(missing, option="data")
    with pytest.raises(FileNotFoundError, match=f"^source: not found: {missing}$"):
        load_preference_rows(missing)
    with pytest.raises(FileNotFoundError, match=f"^mmlu: not found: {missing}$"):
        load_tasks(["mmlu"], mmlu=str(missing))
    with pytest.raises(IsADirectoryError, match=f"^results: {tmp_path} is a folder, not a file$"):
        check_input_file(tmp_path, "results")
