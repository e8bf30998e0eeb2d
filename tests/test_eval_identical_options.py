"""Multiple-choice questions that list the same option text twice (nine in MMLU): their
identical options are one answer, scored as such by both scorers, never by position, and the
questions are counted and kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from smoothalign.eval.multiple_choice import option_probabilities, summarise


def _mmlu_row(q, answer, opts):
    return {
        "question": q,
        **{f"answer_{c}": o for c, o in zip("abcd", opts, strict=True)},
        "correct_answer": answer,
        "topic": "astronomy",
    }


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_scores_identical_options_as_one_answer_and_keeps_the_question(tmp_path, monkeypatch):
    """An MMLU question whose key is the second of two identical options: scored by position
    it was wrong whatever the model did (the option scorer's copies tie and the arg-max took
    the first; the letter scorer's A was not the key C). Both scorers now call it right, with
    the answer's whole probability, count it, and keep it."""
    import smoothalign.eval.multiple_choice as mc
    from smoothalign.cli import main

    rows = [
        _mmlu_row("Q0", "B", ("a", "b", "c", "d")),
        _mmlu_row("Q1", "C", ("x", "y", "x ", "z")),  # A and C are the same text
    ]
    mmlu = _write_jsonl(tmp_path / "mmlu.jsonl", rows)
    forced = {
        "letter": [np.array([-3.0, -1.0, -3.0, -3.0]), np.array([-1.0, -3.0, -1.2, -3.0])],
        "option": [np.array([-3.0, -1.0, -3.0, -3.0]), np.array([-0.5, -2.0, -0.5, -2.0])],
    }

    def forced_scores(scorer):
        def score(model, tokenizer, prompts, *args, **kwargs):
            assert len(prompts) == 2
            mass = [1.0, 1.0] if scorer == "letter" else None
            return mc.MCScores([s.copy() for s in forced[scorer]], [False, False], mass)

        return score

    monkeypatch.setattr(mc, "score_letters", forced_scores("letter"))
    monkeypatch.setattr(mc, "score_options", forced_scores("option"))
    out = tmp_path / "out"
    argv = ["eval", "calibration", "--model", "tiny", "--tasks", "mmlu", "--mmlu-file",
            str(mmlu), "--output-dir", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for scorer, (s0, s1) in forced.items():
        p0 = np.exp(s0) / np.exp(s0).sum()
        p1 = np.exp(s1) / np.exp(s1).sum()
        # the answer "x": letters A + C summed; the option scorer's one text counted once
        if scorer == "letter":
            x = p1[0] + p1[2]
        else:
            x = np.exp(-0.5) / (np.exp(-0.5) + 2 * np.exp(-2.0))
        for m in (
            results["results"][scorer]["overall"],
            results["results"][scorer]["tasks"]["mmlu"],
        ):
            assert m["n"] == 2 and m["accuracy"] == 1.0, (scorer, m)  # 0.5 scored by position
            assert m["mean_confidence"] == pytest.approx((p0[1] + x) / 2, abs=1e-12)
            assert m["nll"] == pytest.approx(-(np.log(p0[1]) + np.log(x)) / 2, rel=1e-12)
            assert m["chance"] == pytest.approx((1 / 4 + 1 / 3) / 2, abs=1e-12)
            assert m["n_identical_options"] == 1  # counted, and kept in n
        q1 = next(p for p in preds if p["scorer"] == scorer and p["source"].endswith(":2"))
        # the key's own copy is the prediction: prediction == answer agrees with correct
        assert (q1["answer"], q1["prediction"], q1["correct"]) == (2, 2, True)
        assert q1["confidence"] == pytest.approx(x, abs=1e-12)
        assert q1["answers"] == [[0, 2], [1], [3]]
        assert q1["answer_probabilities"][0] == pytest.approx(x, abs=1e-12)
        assert q1["probabilities"] == pytest.approx(p1.tolist(), abs=1e-12)  # per option
        q0 = next(p for p in preds if p["scorer"] == scorer and p["source"].endswith(":1"))
        assert "answers" not in q0 and q0["correct"] and q0["prediction"] == 1
    md = (out / "results.md").read_text()
    assert "1 question(s) list an option text twice" in md
    assert "letters' probabilities summed" in md and "counted once" in md


def test_option_groups_number_identical_texts_as_one_answer():
    from smoothalign.eval.mc_tasks import option_groups

    assert option_groups(["x", "y", " x", "z"]) == (0, 1, 0, 2)
    assert option_groups(["a", "b", "c"]) == (0, 1, 2)
    assert option_groups(["y", "y\n", "y"]) == (0, 0, 0)


def test_letter_scores_of_identical_options_are_summed_in_probability():
    """The letters are different tokens: the answer's probability is the total over them,
    so the right text named by its second letter counts as right."""
    from smoothalign.eval.multiple_choice import merge_identical_options

    raw = np.array([-1.0, -3.0, -1.2, -3.0])  # A and C show the same text; C is the key
    (merged,), (answer,) = merge_identical_options([raw], [2], [(0, 1, 0, 2)], "sum")
    p = np.exp(raw) / np.exp(raw).sum()
    assert answer == 0
    assert option_probabilities(merged) == pytest.approx([p[0] + p[2], p[1], p[3]], abs=1e-15)
    got = summarise([merged], [answer])
    assert got["accuracy"] == 1.0 and got["n"] == 1
    assert got["mean_confidence"] == pytest.approx(p[0] + p[2], abs=1e-15)
    assert got["nll"] == pytest.approx(-np.log(p[0] + p[2]), rel=1e-12)
    assert got["chance"] == pytest.approx(1 / 3)  # three distinct answers


def test_a_duplicated_distractor_wins_when_its_letters_hold_more_mass():
    """Position-by-position the key A has the top letter, but the model puts more probability
    on the other text, shown twice: that text is its forecast, and it is wrong."""
    from smoothalign.eval.multiple_choice import merge_identical_options

    raw = np.array([-1.0, -1.2, -1.2, -5.0])
    merged, answers = merge_identical_options([raw], [0], [(0, 1, 1, 2)], "sum")
    assert summarise(merged, answers)["accuracy"] == 0.0


def test_option_scores_of_identical_options_count_once():
    """The option scorer scores one continuation twice (equal up to rounding): counting it
    twice would double that text's probability."""
    from smoothalign.eval.multiple_choice import merge_identical_options

    raw = np.array([-0.5, -2.0, -0.5 + 1e-9, -2.5])
    (merged,), (answer,) = merge_identical_options([raw], [2], [(0, 1, 0, 2)], "once")
    assert answer == 0
    assert merged == pytest.approx([-0.5 + 5e-10, -2.0, -2.5], abs=1e-15)
    assert summarise([merged], [answer])["accuracy"] == 1.0


def test_questions_without_identical_options_are_passed_through_unchanged():
    from smoothalign.eval.multiple_choice import merge_identical_options

    raw = [np.array([0.3, -1.0, 2.0]), np.array([-np.inf, 0.0])]
    merged, answers = merge_identical_options(raw, [1, 0], [(0, 1, 2), (0, 1)], "sum")
    assert all(m is r for m, r in zip(merged, raw, strict=True)) and answers == [1, 0]
    # a group whose options all have no probability keeps none
    (m,), _ = merge_identical_options([np.array([-np.inf, 0.0, -np.inf])], [0], [(0, 1, 0)], "sum")
    assert m.tolist() == [-np.inf, 0.0]
    with pytest.raises(ValueError, match="skip an answer number"):
        merge_identical_options([np.zeros(3)], [0], [(0, 2, 2)], "sum")
    with pytest.raises(ValueError, match="rule"):
        merge_identical_options([np.zeros(2)], [0], [(0, 0)], "max")


def test_the_data_note_counts_the_evaluated_questions_with_identical_options(tmp_path):
    """``--limit``: the note on questions with identical options counts those evaluated, as
    ``n_identical_options`` does, not the whole file's (which it once said alone); dropped
    where none of those evaluated has any."""
    from smoothalign.cli import main
    from smoothalign.eval.mc_tasks import has_duplicate_options, subsample_indices

    rows = [_mmlu_row(f"Q{i}", "A", ("a", "b", "c", "d")) for i in range(8)]
    rows += [_mmlu_row(f"D{i}", "B", ("x", "y", "x", "z")) for i in range(4)]
    mmlu = _write_jsonl(tmp_path / "mmlu.jsonl", rows)
    for seed in range(20):  # a seed that picks some but not all of the four, and one none
        picked = subsample_indices(len(rows), 4, seed)
        if 0 < sum(i >= 8 for i in picked) < 4:
            some = seed
        if not any(i >= 8 for i in picked):
            none = seed
    for seed in (some, none):
        out = tmp_path / f"out{seed}"
        argv = ["eval", "calibration", "--model", "tiny", "--tasks", "mmlu", "--mmlu-file",
                str(mmlu), "--limit", "4", "--seed", str(seed), "--scorer", "option",
                "--output-dir", str(out), "--no-progress"]  # fmt: skip
        assert main(argv) == 0
        results = json.loads((out / "results.json").read_text())
        n = results["results"]["option"]["overall"]["n_identical_options"]
        assert n == sum(
            has_duplicate_options([rows[i][f"answer_{c}"] for c in "abcd"])
            for i in subsample_indices(len(rows), 4, seed)
        )
        notes = [x for x in results["tasks"][0]["notes"] if "identical options" in x]
        if n:
            assert notes == [
                f"{n} of the 4 evaluated question(s) have two identical options (4 in the "
                "whole task; kept, as in MMLU; the identical options are scored as one answer)"
            ]
        else:
            assert notes == []
        assert "4 question(s) have two identical" not in (out / "results.md").read_text()
