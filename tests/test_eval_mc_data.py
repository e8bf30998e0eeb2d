"""Multiple-choice data: bad rows named (file, row, field) and never skipped silently,
BIG-bench tasks mixing multiple-choice and free-text subtasks, few-shot prompts that never
contain the scored question, and the run's notes on what it could not do as asked."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from smoothalign.eval.mc_prompts import build_prompt, few_shot_indices
from smoothalign.eval.mc_sources import load_bigbench_task, load_mmlu, load_tasks
from smoothalign.eval.mc_tasks import MCQuestion, load_jsonl_questions

GOOD = {"question": "fine", "options": ["x", "y"], "answer": 0}


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------------------------
# bad rows
# --------------------------------------------------------------------------------------------


def test_a_letter_answer_outside_a_to_z_is_a_named_bad_row(tmp_path):
    """'é' and 'ß' are letters (``str.isalpha``) but not option labels; every bad row is
    still counted, not only the first."""
    rows = [GOOD, {**GOOD, "answer": "é"}, {**GOOD, "answer": "ß"}, {**GOOD, "answer": 7}]
    with pytest.raises(ValueError, match=r"3 bad row\(s\)") as err:
        load_jsonl_questions(_write_jsonl(tmp_path / "q.jsonl", rows))
    msg = str(err.value)
    assert "row 2, field 'answer': letter 'é' is not one of A-Z" in msg
    assert "row 3, field 'answer': letter 'ß'" in msg and "row 4, field 'answer'" in msg


@pytest.mark.parametrize("options", [["4", " 4"], ["Paris", "Paris "], ["a", "b", "\tb\n"]])
def test_options_equal_up_to_surrounding_whitespace_are_duplicates(tmp_path, options):
    """Prompts show options stripped: two such options would be the same continuation."""
    rows = [GOOD, {"question": "q", "options": options, "answer": 0}]
    with pytest.raises(ValueError, match=r"row 2, field 'options': two options are identical"):
        load_jsonl_questions(_write_jsonl(tmp_path / "q.jsonl", rows))


def test_mmlu_keeps_and_counts_options_equal_up_to_whitespace(tmp_path):
    rows = [
        {"question": "Q1", **{f"answer_{c}": c for c in "abcd"}, "correct_answer": "B",
         "topic": "astronomy"},
        {"question": "Q2", "answer_a": "x", "answer_b": "x ", "answer_c": "y", "answer_d": "z",
         "correct_answer": "C", "topic": "astronomy"},
    ]  # fmt: skip
    data = load_mmlu(_write_jsonl(tmp_path / "mmlu.jsonl", rows))
    assert len(data.questions) == 2
    assert any(n.startswith("1 question(s) have two identical options (kept") for n in data.notes)


def test_mmlu_counts_duplicate_options_among_the_kept_subjects_only(tmp_path):
    rows = [
        {"question": "Q1", **{f"answer_{c}": c for c in "abcd"}, "correct_answer": "B",
         "topic": "astronomy"},
        {"question": "Q2", "answer_a": "x", "answer_b": "x", "answer_c": "y", "answer_d": "z",
         "correct_answer": "C", "topic": "virology"},
    ]  # fmt: skip
    data = load_mmlu(_write_jsonl(tmp_path / "mmlu.jsonl", rows), subjects=["astronomy"])
    assert len(data.questions) == 1
    assert not any("identical options" in n for n in data.notes)


def test_overlapping_task_specs_are_refused(tmp_path):
    rows = [
        {"question": f"Q{i}", **{f"answer_{c}": c for c in "abcd"}, "correct_answer": "B",
         "topic": topic}
        for i, topic in enumerate(["astronomy", "virology"])
    ]  # fmt: skip
    path = _write_jsonl(tmp_path / "mmlu.jsonl", rows)
    with pytest.raises(ValueError, match="tasks: mmlu and mmlu:astronomy overlap"):
        load_tasks(["mmlu", "mmlu:astronomy"], mmlu=str(path))
    assert len(load_tasks(["mmlu:astronomy", "mmlu:virology"], mmlu=str(path))) == 2
    # two files of one name in different folders share no question
    for folder, task in (("a", "arith"), ("b", "geo")):
        (tmp_path / folder).mkdir()
        _write_jsonl(
            tmp_path / folder / "quiz.jsonl",
            [{"question": f"{task}?", "options": ["x", "y"], "answer": 0, "task": task}],
        )
    quizzes = [str(tmp_path / f / "quiz.jsonl") for f in ("a", "b")]
    assert [t.name for t in load_tasks(quizzes)] == ["arith", "geo"]


def test_files_of_one_stem_in_different_folders_are_named_apart(tmp_path, monkeypatch):
    """`--tasks data/quiz.jsonl d2/quiz.jsonl` was refused ("['quiz'] named more than
    once"): two files, one stem. Their tasks are named by as much of their path as tells them
    apart, questions included, and say so; a file alone keeps its stem. A name that still
    collides is refused naming the files: one file given twice, or two files' rows giving
    one 'task'."""
    for folder in ("data", "d2", "x/data"):
        (tmp_path / folder).mkdir(parents=True)
        _write_jsonl(tmp_path / folder / "quiz.jsonl", [GOOD, {**GOOD, "question": folder}])
    a, b, c = (str(tmp_path / f / "quiz.jsonl") for f in ("data", "d2", "x/data"))
    tasks = load_tasks([a, b])
    assert [t.name for t in tasks] == ["data/quiz", "d2/quiz"]
    assert [{q.task for q in t.questions} for t in tasks] == [{"data/quiz"}, {"d2/quiz"}]
    assert tasks[0].notes == [f"named 'data/quiz' after its file, not 'quiz': {b} also gives a "
                              "task 'quiz'"]  # fmt: skip
    assert [t.name for t in load_tasks([a, c])] == [f"{tmp_path.name}/data/quiz", "x/data/quiz"]
    (alone,) = load_tasks([a])
    assert alone.name == "quiz" and alone.notes == []  # no collision: the names as before

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"'quiz' is named more than once: .* given twice"):
        load_tasks([a, "data/quiz.jsonl"])  # one file, two spellings
    for folder in ("data", "d2"):
        _write_jsonl(tmp_path / folder / "arith.jsonl", [{**GOOD, "task": "sums"}])
    sums = [str(tmp_path / f / "arith.jsonl") for f in ("data", "d2")]
    with pytest.raises(ValueError, match=r"'sums' names a task of each of .*data/arith.jsonl, "
                       r".*d2/arith.jsonl; .* a JSONL row's 'task' field"):  # fmt: skip
        load_tasks(sums)


def test_a_line_that_is_not_utf8_is_a_named_bad_row(tmp_path):
    good = json.dumps(GOOD).encode() + b"\n"
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(good + good + b'{"question": "caf\xe9?", "options": ["a", "b"], "answer": 0}\n'
                     + good + b"{oops\n")  # fmt: skip
    with pytest.raises(ValueError, match=r"2 bad row\(s\)") as err:
        load_jsonl_questions(path)
    msg = str(err.value)
    assert "latin1.jsonl row 3: not valid UTF-8 (byte 0xe9" in msg
    assert "row 5: not valid JSON" in msg
    mmlu = tmp_path / "mmlu.jsonl"
    mmlu.write_bytes(b'{"question": "\xff"}\n')
    with pytest.raises(ValueError, match=r"mmlu.jsonl row 1: not valid UTF-8 \(byte 0xff"):
        load_mmlu(mmlu)


def test_a_byte_order_mark_on_the_first_line_is_dropped(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(GOOD) + "\n").encode() * 2)
    assert len(load_jsonl_questions(path)) == 2


# --------------------------------------------------------------------------------------------
# BIG-bench: subtasks that are not all multiple choice
# --------------------------------------------------------------------------------------------

MC = [
    {"input": "Is fire hot?", "target_scores": {"Yes": 1, "No": 0}},
    {"input": "Is ice hot?", "target_scores": {"Yes": 0, "No": 1}},
]
FREE = [{"input": "Say hi", "target": "hi"}]


def _task(folder: Path, examples: list | None, **extra) -> None:
    folder.mkdir(parents=True)
    body = {"name": folder.name, **extra} | ({} if examples is None else {"examples": examples})
    (folder / "task.json").write_text(json.dumps(body))


def _mixed_tree(root: Path) -> Path:
    tasks = root / "bigbench" / "benchmark_tasks"
    _task(tasks / "mixed", None, subtasks=[])
    _task(tasks / "mixed" / "choice", MC)
    _task(tasks / "mixed" / "freetext", FREE)
    _task(tasks / "mixed" / "words", FREE * 3)
    _task(tasks / "prose", None, subtasks=[])
    _task(tasks / "prose" / "a", FREE)
    _task(tasks / "prose" / "b", FREE)
    spaced = [{"input": "Same?", "target_scores": {"Yes": 1, "Yes ": 0}}, *MC]
    _task(tasks / "spaced", spaced)
    return root


def test_bigbench_task_mixing_choice_and_free_text_subtasks(tmp_path, monkeypatch):
    root = _mixed_tree(tmp_path / "src")
    (choice,) = load_bigbench_task("mixed", root)
    assert choice.name == "bigbench:mixed/choice" and len(choice.questions) == 2
    assert choice.skipped["subtask without multiple-choice examples"] == 2
    note = choice.notes[0]
    assert "skipped 2 subtask(s)" in note and "freetext (" in note and "words (" in note
    assert "'no target_scores (not multiple choice)': 3" in note
    with pytest.raises(ValueError, match=r"'prose': none of its 2 subtasks has multiple-choice"):
        load_bigbench_task("prose", root)
    with pytest.raises(ValueError, match="no multiple-choice examples"):  # asked for by name
        load_bigbench_task("mixed/freetext", root)
    # the same from an archive, through the task list
    archive = tmp_path / "bigbench-9.9.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "bigbench", arcname="bigbench-9.9/bigbench")
    monkeypatch.setenv("SMOOTHALIGN_CACHE", str(tmp_path / "cache"))
    (again,) = load_tasks(["bigbench:mixed"], bigbench=archive)
    assert again.questions == choice.questions and again.skipped == choice.skipped


def test_a_malformed_bigbench_task_file_is_a_named_error(tmp_path):
    tasks = tmp_path / "bigbench" / "benchmark_tasks"
    (tasks / "listed").mkdir(parents=True)
    (tasks / "listed" / "task.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"listed/task\.json: expected a JSON object .* got list"):
        load_bigbench_task("listed", tmp_path)
    _task(tasks / "mapped", {})
    with pytest.raises(ValueError, match=r"field 'examples': expected a list, got dict"):
        load_bigbench_task("mapped", tmp_path)
    # a NaN score (Python's json reads it) is skipped and counted like a non-numeric one
    (tasks / "nan").mkdir()
    (tasks / "nan" / "task.json").write_text(
        '{"examples": [{"input": "q", "target_scores": {"a": NaN, "b": 1}}, '
        + json.dumps(MC[0])[1:-1].join("{}")
        + "]}"
    )
    (task,) = load_bigbench_task("nan", tmp_path)
    assert len(task.questions) == 1
    assert task.skipped == {"a non-numeric or non-finite target score": 1}


def test_bigbench_example_with_options_equal_up_to_whitespace_is_skipped_and_counted(tmp_path):
    """Two such keys occur in real BIG-bench (real_or_fake_text): the example is skipped and
    counted, the task still loads."""
    (task,) = load_bigbench_task("spaced", _mixed_tree(tmp_path / "src"))
    assert len(task.questions) == 2
    assert task.skipped == {"two options identical up to surrounding whitespace": 1}


# --------------------------------------------------------------------------------------------
# few-shot prompts
# --------------------------------------------------------------------------------------------


def test_few_shot_never_shows_a_copy_of_the_scored_question():
    """MMLU repeats some (question, options) rows: a copy among the shots would print the
    answer into the prompt. Copies up to surrounding whitespace count."""
    qs = [MCQuestion(f"q{i}", ("a", "b"), i % 2, "t", subject="s") for i in range(8)]
    qs[5] = MCQuestion(" q0 ", ("a ", "b"), 1, "t", subject="s")  # a copy of q0
    qs[6] = MCQuestion("q0", ("a", "b"), 0, "t", subject="s")  # and another
    copies = {0, 5, 6}
    for seed in range(40):
        shots = few_shot_indices(qs, 3, seed=seed)
        for i, s in enumerate(shots):
            assert len(s) == 3 and i not in s
            if i in copies:
                assert not copies & set(s), (seed, i, s)
                assert build_prompt(qs[i], "cloze", [qs[j] for j in s]).count("q0") == 1


# --------------------------------------------------------------------------------------------
# the command: notes and named errors
# --------------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    from smoothalign.cli import main

    return main(["eval", "calibration", "--model", "tiny", "--no-progress", *argv])


def test_fewer_shots_than_asked_are_recorded_in_the_notes(tmp_path):
    rows = [{**GOOD, "question": f"Q{i}?", "subject": "big" if i < 5 else "small"}
            for i in range(7)]  # fmt: skip
    data = _write_jsonl(tmp_path / "quiz.jsonl", rows)
    out = tmp_path / "out"
    argv = ["--tasks", str(data), "--shots", "3", "--scorer", "letter", "--output-dir", str(out)]
    assert _cli(argv) == 0
    (task,) = json.loads((out / "results.json").read_text())["tasks"]
    short = [n for n in task["notes"] if "fewer than the 3 shots" in n]
    assert short == [
        "2 of 7 evaluated question(s) got fewer than the 3 shots asked for (as few as 1): "
        "their (task, subject) pool holds too few other questions"
    ]
    assert "fewer than the 3 shots" in (out / "results.md").read_text()


def test_an_option_too_long_for_max_length_is_skipped_and_named(tmp_path):
    """The option scorer skips a question with an option too long for any prompt and names
    it by task, question (its file line) and option, each counted from 1; where a task has
    no other question, its row shows no metrics and the run still writes its results."""
    rows = [GOOD, {**GOOD, "options": ["a", "a much longer option text here"]}]
    data = _write_jsonl(tmp_path / "long.jsonl", rows)
    alone = _write_jsonl(tmp_path / "alone.jsonl", rows[1:])
    out = tmp_path / "out"
    argv = ["--tasks", str(data), str(alone), "--scorer", "option", "--max-length", "16",
            "--output-dir", str(out)]  # fmt: skip
    assert _cli(argv) == 0
    results = json.loads((out / "results.json").read_text())
    tasks = results["results"]["option"]["tasks"]
    assert (tasks["long"]["n"], tasks["long"]["n_skipped"]) == (1, 1)
    assert tasks["alone"] == {"n": 0, "n_truncated": 0, "n_identical_options": 0, "n_skipped": 1}
    assert results["results"]["option"]["overall"]["n"] == 1
    notes = {t["name"]: t["notes"] for t in results["tasks"]}
    assert f"{data}:2 (option 2 of 2: a continuation of" in notes["long"][0]
    assert "max_length 16" in notes["long"][0]
    md = (out / "results.md").read_text()
    assert "| alone | 0 | – | – | – | – | – | – | 0 | 1 |" in md
