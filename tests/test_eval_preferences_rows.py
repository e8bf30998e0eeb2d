"""``evaluate_preferences`` on rows handed over as a Python list (``data=[{...}, ...]``), as
``run_dpo`` takes them: scored as the same rows in a file (``--split`` read alike), a bad
row named by its index in the list, ``forecasts.jsonl`` saying ``file`` null; with a DPO run
trained on such a list as the model, its held-out rows found by their index (its
``split.json``: ``file`` null), and where they cannot be (a list of other rows, a run that
read a file), a note saying why the data decides instead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpo_helpers import synthetic_rows, write_jsonl
from smoothalign.models.loading import build_tiny_model, build_tiny_tokenizer
from smoothalign.progress import progress_bars
from smoothalign.train.preference_eval import PreferenceEvalConfig, evaluate_preferences
from test_eval_preferences import ROWS  # the same pairs as the file-based tests


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _evaluate(out: Path, **options):
    with progress_bars(False):
        return evaluate_preferences(PreferenceEvalConfig(output_dir=str(out), **options))


def test_a_list_of_rows_scores_as_the_same_rows_in_a_file(tmp_path):
    policy = tmp_path / "policy"  # another seed than 'tiny', its reference: no margin is 0
    build_tiny_model(seed=1).save_pretrained(policy)
    build_tiny_tokenizer().save_pretrained(policy)
    rows = [dict(r, split=s) for r, s in zip(ROWS, ["train", "eval", "eval", "train", "eval"],
                                             strict=True)]  # fmt: skip
    path = write_jsonl(rows, tmp_path / "pairs.jsonl")
    common = dict(model=str(policy), reference="tiny", beta=0.3, batch_size=2)
    for split, scored in (("auto", [1, 2, 4]), ("train", [0, 3]), ("all", [0, 1, 2, 3, 4])):
        from_file = _evaluate(tmp_path / f"f-{split}", data=str(path), split=split, **common)
        for data in (rows, tuple(rows)):
            out = tmp_path / f"{type(data).__name__}-{split}"
            from_list = _evaluate(out, data=data, split=split, **common)
            assert from_list.split == from_file.split
            assert from_list.metrics == from_file.metrics
            by_file = _lines(tmp_path / f"f-{split}" / "forecasts.jsonl")
            by_list = _lines(out / "forecasts.jsonl")
            assert [x["row"] for x in by_list] == scored
            assert {x["file"] for x in by_list} == {None}
            assert {x.pop("file") for x in by_file} == {str(path)}
            assert [{k: v for k, v in x.items() if k != "file"} for x in by_list] == by_file
            metrics = json.loads((out / "metrics.json").read_text())
            assert metrics["data"] == f"<builtins.{type(data).__name__} of 5 rows>"
            assert metrics["n_pairs"] == len(scored)
            if split == "auto":
                assert "the 3 rows of 5 whose 'split' column says 'eval'" in from_list.split_note


def test_a_bad_row_of_a_list_is_named_by_its_index_and_field(tmp_path):
    rows = [dict(r, split="eval") for r in ROWS]
    rows[2]["chosen"] = "   "
    rows[3]["split"] = "test"  # read as a file's split column is: a bad split value
    out = tmp_path / "out"
    common = dict(model="tiny", reference="tiny", data=rows)
    with pytest.raises(ValueError, match="2 of 5 preference rows are invalid") as refused:
        _evaluate(out, **common)
    said = str(refused.value)
    assert "  row 2, field 'chosen': empty response" in said
    assert "  row 3, field 'split'" in said and "None row" not in said
    assert not out.exists()
    _evaluate(out, on_bad_rows="skip", **common)
    bad = json.loads((out / "validation.json").read_text())["data"]["bad_rows"]
    assert [(b["file"], b["row"], b["field"]) for b in bad] == [
        (None, 2, "chosen"),
        (None, 3, "split"),
    ]
    assert [x["row"] for x in _lines(out / "forecasts.jsonl")] == [0, 1, 4]
    for data, match in (
        ([], "data: the list of rows is empty"),
        ({"prompt": "a"}, "data: expected a file or folder, or the rows as a"),
    ):
        with pytest.raises(ValueError, match=match):
            PreferenceEvalConfig(model="tiny", data=data)


def test_a_run_trained_on_a_list_finds_its_held_out_rows_in_that_list(tmp_path):
    """run_dpo(data=rows) names its held-out rows by index (split.json: file null): given the
    same list, eval preferences scores exactly those, with the run's own numbers; --split
    all counts the rows it trained on. A list of other rows (another length) or the same
    rows in a file cannot be matched: the data decides, and a note says why. A run that
    read a file cannot be matched to a list either."""
    from smoothalign.train import DPOConfig, run_dpo

    rows = synthetic_rows(20, seed=3, flip_rate=0.25)
    common = dict(
        model="tiny", lora=False, beta=0.5, max_length=32, smoothing="none", batch_size=4,
        max_steps=2, learning_rate=5e-3, lr_warmup_steps=0, logging_steps=1, eval_samples=0,
        max_eval_pairs=0, eval_fraction=0.25, report=False,
    )  # fmt: skip
    run = tmp_path / "run"
    with progress_bars(False):
        run_dpo(DPOConfig(data=rows, output_dir=str(run), **common))
    split = json.loads((run / "split.json").read_text())
    held = sorted(x["row"] for x in split["held_out"])
    assert {x["file"] for x in split["held_out"]} == {None} and len(held) == 5
    assert held != list(range(5))
    after = json.loads((run / "eval_results.json").read_text())["after"]

    for option in ("auto", "eval"):
        out = tmp_path / f"out-{option}"
        result = _evaluate(out, model=str(run), data=rows, split=option)
        assert result.split == "eval" and "split.json" in result.split_note
        lines = _lines(out / "forecasts.jsonl")
        assert [x["row"] for x in lines] == held and {x["file"] for x in lines} == {None}
        assert result.metrics["n_pairs"] == after["n_pairs"] == 5
        for key in ("accuracy", "accuracy_true"):
            assert result.metrics[key] == after[key], key
        for key in ("ece", "rms", "ece_true", "kl_true", "margin_mean"):
            assert result.metrics[key] == pytest.approx(after[key], abs=1e-5), key

    with pytest.warns(UserWarning, match="15 of the 20 rows scored are rows the run"):
        result = _evaluate(tmp_path / "out-all", model=str(run), data=rows, split="all")
    assert result.n_pairs == 20

    # another list (its first 12 rows): not the run's; every row scored, and said why
    with pytest.warns(UserWarning, match="the list of 12 rows is not that list"):
        result = _evaluate(tmp_path / "out-other", model=str(run), data=rows[:12])
    assert result.split == "all" and result.n_pairs == 12
    assert any("trained on a list of 20 rows" in note for note in result.notes)
    with pytest.raises(ValueError, match="marks no held-out rows.*is not that list"):
        _evaluate(tmp_path / "out-other-eval", model=str(run), data=rows[:12], split="eval")

    # the same rows in a file: the run's indices are not looked for in it
    path = write_jsonl(rows, tmp_path / "pairs.jsonl")
    with pytest.warns(UserWarning, match="held out rows of a list handed over from Python"):
        result = _evaluate(tmp_path / "out-file", model=str(run), data=str(path))
    assert result.split == "all" and result.n_pairs == 20

    # a run that read the file: its held-out rows are by file, not in a list
    file_run = tmp_path / "file_run"
    with progress_bars(False):
        run_dpo(DPOConfig(data=str(path), output_dir=str(file_run), **common))
    with pytest.warns(UserWarning, match=r"names its held-out rows by file \(pairs.jsonl\)"):
        result = _evaluate(tmp_path / "out-list", model=str(file_run), data=rows)
    assert result.split == "all" and result.n_pairs == 20
