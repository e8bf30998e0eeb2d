"""`smoothalign data confidence`: votes → a confidence column (and relabelling), then DPO."""

from __future__ import annotations

import json

import pytest

from smoothalign._warn import SmoothalignWarning
from smoothalign.cli import main
from smoothalign.data.vote_confidence import add_vote_confidence


def _rows():
    return [
        {"prompt": "p0", "chosen": "a", "rejected": "b", "votes_chosen": 3, "votes_total": 3,
         "p_chosen": 1.0, "reward_chosen": 1.0, "reward_rejected": 0.0},
        {"prompt": "p1", "chosen": "c", "rejected": "d", "votes_chosen": 0, "votes_total": 3,
         "p_chosen": 0.0, "reward_chosen": 0.0, "reward_rejected": 1.0},
        {"prompt": "p2", "chosen": "e", "rejected": "f", "votes_chosen": 2, "votes_total": 5,
         "p_chosen": 0.4, "reward_chosen": 0.5, "reward_rejected": 0.5},
    ]  # fmt: skip


def test_uniform_prior_writes_laplace_and_keeps_every_field():
    out, summary = add_vote_confidence(_rows(), prior="uniform")
    assert [r["confidence"] for r in out] == pytest.approx([4 / 5, 1 / 5, 3 / 7])
    for before, after in zip(_rows(), out, strict=True):
        assert {k: v for k, v in after.items() if k != "confidence"} == before
    assert summary.rows == 3 and summary.relabelled == 0
    assert summary.mean_confidence == pytest.approx((4 / 5 + 1 / 5 + 3 / 7) / 3)


def test_relabel_swaps_the_pair_where_the_votes_overrule_the_label():
    out, summary = add_vote_confidence(_rows(), prior="uniform", relabel=True)
    assert summary.relabelled == 2  # 0 of 3 and 2 of 5
    r1, r2 = out[1], out[2]
    assert (r1["chosen"], r1["rejected"]) == ("d", "c")
    assert (r1["votes_chosen"], r1["votes_total"], r1["p_chosen"]) == (3, 3, 1.0)
    assert (r1["reward_chosen"], r1["reward_rejected"]) == (1.0, 0.0)
    assert r1["confidence"] == pytest.approx(4 / 5) and r1["relabelled"] is True
    assert (r2["chosen"], r2["votes_chosen"]) == ("f", 3)
    assert r2["confidence"] == pytest.approx(4 / 7)
    assert "relabelled" not in out[0] and out[0]["chosen"] == "a"
    assert all(r["confidence"] >= 0.5 for r in out)


def test_empirical_prior_reports_its_mass_and_is_monotone_in_the_votes():
    rows = [
        {"prompt": f"p{i}", "chosen": "a", "rejected": "b", "votes_chosen": v, "votes_total": 5}
        for i, v in enumerate([0, 0, 5, 5, 5, 4, 1, 2, 3, 5] * 5)
    ]
    out, summary = add_vote_confidence(rows)
    assert sum(summary.prior_mass.values()) == pytest.approx(1.0)
    by_votes = {r["votes_chosen"]: r["confidence"] for r in out}
    assert [by_votes[v] for v in range(6)] == sorted(by_votes[v] for v in range(6))


def test_bad_rows_are_all_named_and_nothing_is_written(tmp_path, capsys):
    rows = _rows()
    rows[0]["votes_chosen"] = 4  # more than the 3 votes
    rows[1]["votes_total"] = True
    rows[2]["confidence"] = 0.3
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    argv = ["data", "confidence", "--data", str(data), "--output", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "3 of 3 rows cannot be used" in err
    assert "row 0, field 'votes_chosen': 4 votes for chosen out of only 3" in err
    assert "row 1, field 'votes_total'" in err
    assert "row 2, field 'confidence': already present" in err
    assert not out.exists()
    data.write_text(json.dumps(_rows()[0]) + "\n[3, 1]\n")
    assert main(argv) == 2
    assert f"{data} row 1: not a JSON object" in capsys.readouterr().err
    with pytest.raises(ValueError, match="field 'score_chosen': cannot relabel"):
        add_vote_confidence(
            [{"chosen": "a", "rejected": "b", "votes_chosen": 0, "votes_total": 2,
              "score_chosen": 1.0}],
            relabel=True, prior="uniform",
        )  # fmt: skip


def test_votes_to_confidence_to_dpo_end_to_end(tmp_path, capsys):
    """The study's exported votes → `data confidence --relabel` → `dpo --smoothing oracle-l2`:
    the oracle policy trains on the vote posterior."""
    votes = tmp_path / "votes.jsonl"
    assert main(["study", "preference", "--export-votes", str(votes), "--annotators", "3",
                 "--train-pairs", "64", "--export-flip-rate", "0.2"]) == 0  # fmt: skip
    conf = tmp_path / "conf.jsonl"
    argv = ["data", "confidence", "--data", str(votes), "--output", str(conf), "--relabel"]
    with pytest.warns(SmoothalignWarning, match="replaced the 'confidence' value"):
        assert main([*argv, "--overwrite"]) == 0  # the export's true q
    assert "relabelled" in capsys.readouterr().out
    rows = [json.loads(line) for line in conf.read_text().splitlines()]
    assert len(rows) == 64 and all(0.5 <= r["confidence"] < 1 for r in rows)
    run = tmp_path / "run"
    code = main(["dpo", "--model", "tiny", "--data", str(conf), "--smoothing", "oracle-l2",
                 "--max-steps", "2", "--batch-size", "4", "--eval-samples", "0", "--logging-steps", "1",
                 "--output-dir", str(run)])  # fmt: skip
    assert code == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    alphas = [m["cals/alpha_mean"] for m in metrics if "cals/alpha_mean" in m]
    assert alphas and all(0 < a < 0.5 for a in alphas)


def test_relabel_mirrors_every_form_of_the_label_and_names_what_it_cannot():
    row = {"prompt": "p", "chosen": "a", "rejected": "b", "votes_chosen": 0, "votes_total": 3,
           "votes": [0, 0, 0], "p_chosen": 0.0, "confidence": 0.1}  # fmt: skip
    (out,), _ = add_vote_confidence([row], prior="uniform", relabel=True, field_name="vote_q")
    assert (out["chosen"], out["rejected"]) == ("b", "a")
    assert out["votes"] == [1, 1, 1] and out["votes_chosen"] == 3 and out["p_chosen"] == 1.0
    assert out["confidence"] == pytest.approx(0.9)  # the true q of the new chosen
    assert out["vote_q"] == pytest.approx(4 / 5)
    kept = dict(row, p_chosen=None)
    (out,), _ = add_vote_confidence([kept], prior="uniform", relabel=True, field_name="vote_q")
    assert out["p_chosen"] is None
    bad = [
        dict(row, rejected_model="m1"),  # no chosen_model partner
        dict(row, confidence=False),
        dict(row, confidence=1.5),
        # not relabelled: untouched, fine
        dict(row, votes_chosen=3, votes=[1, 1, 1], p_chosen=1.0, rejected_model="m2"),
    ]
    with pytest.raises(ValueError) as err:
        add_vote_confidence(bad, prior="uniform", relabel=True, field_name="vote_q")
    message = str(err.value)
    assert "3 of 4 rows cannot be relabelled" in message
    assert "row 0, field 'rejected_model'" in message
    assert "row 1, field 'confidence'" in message
    assert "row 2, field 'confidence'" in message
    # a label form that is not a vote (a p_chosen of False, a vote of 2) is refused as
    # `reward` refuses it, before any relabelling
    with pytest.raises(ValueError) as err:
        add_vote_confidence(
            [dict(row, p_chosen=False), dict(row, votes=[0, 2, 0])],
            prior="uniform", relabel=True, field_name="vote_q",
        )  # fmt: skip
    message = str(err.value)
    assert "2 of 2 rows cannot be used" in message
    assert "row 1, field 'p_chosen'" not in message and "field 'p_chosen'" in message
    assert "row 1, field 'votes': vote 1 is 2" in message


def test_empirical_prior_on_too_little_data_warns():
    rows = [{"chosen": "a", "rejected": "b", "votes_chosen": v, "votes_total": 1} for v in (0, 1)]
    _, summary = add_vote_confidence(rows * 30)
    assert summary.warnings and "consider prior='uniform'" in summary.to_text()
    _, summary = add_vote_confidence(rows * 30, prior="uniform")
    assert not summary.warnings


@pytest.mark.parametrize(
    "name",
    ["chosen", "prompt", "rejected", "votes_total", "votes_chosen", "votes", "p_chosen",
     "relabelled", "_row", "ref_chosen_logps", "score_rejected", "", " "],
)  # fmt: skip
def test_field_refuses_the_rows_own_fields_and_empty_names(tmp_path, capsys, name):
    data = tmp_path / "votes.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    out = tmp_path / "out.jsonl"
    argv = ["data", "confidence", "--data", str(data), "--output", str(out), "--prior", "uniform"]
    assert main([*argv, "--field", name, "--overwrite", "--relabel"]) == 2
    err = capsys.readouterr().err
    assert f"smoothalign data confidence: --field {name!r}: " in err and "field_name" not in err
    assert not out.exists()
    with pytest.raises(ValueError, match=f"^field_name {name!r}: ") as raised:
        add_vote_confidence(_rows(), prior="uniform", field_name=name, overwrite=True)
    assert "--field" not in str(raised.value)
    assert main([*argv, "--field", "vote_q"]) == 0  # another name is fine


def _readme_command(start: str) -> list[str]:
    """The README's example command line that starts with ``smoothalign {start}`` (its
    arguments, the comment left off)."""
    import shlex
    from pathlib import Path

    readme = Path(__file__).resolve().parents[1] / "README.md"
    for line in readme.read_text(encoding="utf-8").splitlines():
        if line.startswith(f"smoothalign {start}"):
            return shlex.split(line.split("#")[0])[1:]
    raise AssertionError(f"README has no `smoothalign {start}` example")


def test_readme_votes_to_confidence_pipeline_runs_as_written(tmp_path, capsys, monkeypatch):
    """README's export → `data confidence` example works as written; without --overwrite the
    export's true q (its `confidence`) is one file-level error that names both ways out."""
    monkeypatch.chdir(tmp_path)
    export = _readme_command("study preference --export-votes")
    assert main([*export, "--train-pairs", "64"]) == 0  # the README's --quick, smaller
    command = _readme_command("data confidence --data votes.jsonl")
    assert "--overwrite" in command
    capsys.readouterr()
    # a warning of smoothalign's own (the command line: `smoothalign data confidence:
    # warning: …` on stderr; test_the_command_line_says_its_warnings_as_every_command_does)
    with pytest.warns(SmoothalignWarning, match="replaced the 'confidence' value that 64 of 64"):
        assert main(command) == 0
    rows = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert len(rows) == 64 and all(r["confidence"] >= 0.5 for r in rows)

    kept = [a for a in command if a != "--overwrite"]
    assert main(kept) == 2
    err = capsys.readouterr().err
    assert "votes.jsonl: every row already has a 'confidence' field (64 rows" in err
    assert "Pass --overwrite to replace it" in err
    assert "or another --field (e.g. --field vote_confidence) to write" in err
    assert "overwrite=True" not in err and "field_name" not in err
    assert "row 0" not in err and "rows cannot be used" not in err
    # --field keeps the true q beside the estimate
    assert main([*kept, "--field", "vote_confidence"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text().splitlines()]
    assert all("confidence" in r and "vote_confidence" in r for r in rows)


@pytest.mark.parametrize("name", ["o.csv", "o.parquet", "o.json", "o"])
def test_output_that_is_not_jsonl_is_refused_before_writing(tmp_path, capsys, name):
    """Both writers write JSONL whatever the name says; a .csv that holds JSONL would be
    misread by every loader, so another extension is refused with nothing written."""
    data = tmp_path / "votes.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    out = tmp_path / name
    argv = ["data", "confidence", "--data", str(data), "--output", str(out), "--prior", "uniform"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--output {out}: the file is written as JSONL; name it with .jsonl" in err
    assert not out.exists()
    argv = ["study", "preference", "--export-votes", str(out), "--train-pairs", "8"]
    assert main(argv) == 2
    assert f"--export-votes {out}: the file is written as JSONL" in capsys.readouterr().err
    assert not out.exists()


def test_an_output_that_is_the_input_is_refused_and_the_input_kept(tmp_path, capsys, monkeypatch):
    """``--output`` naming the ``--data`` file (however spelt), or a file the ``--data``
    folder reads, would replace the rows the votes come from: refused, naming both."""
    monkeypatch.chdir(tmp_path)
    text = "".join(json.dumps(r) + "\n" for r in _rows())
    (tmp_path / "rw.jsonl").write_text(text)
    (tmp_path / "votes").mkdir()
    (tmp_path / "votes" / "train.jsonl").write_text(text)
    cases = [
        ("rw.jsonl", "rw.jsonl", "--output rw.jsonl is the --data file rw.jsonl: "),
        (
            "rw.jsonl",
            str(tmp_path / "rw.jsonl"),
            f"--output {tmp_path / 'rw.jsonl'} is the --data file rw.jsonl (the same file): ",
        ),
        (
            "votes",
            "./votes/train.jsonl",
            "--output ./votes/train.jsonl is votes/train.jsonl, a file of --data votes (the "
            "same file): ",
        ),
    ]
    for data, output, said in cases:
        argv = ["data", "confidence", "--data", data, "--output", output, "--prior", "uniform"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert said + "writing it would replace the rows the votes are read from" in err, err
    assert (tmp_path / "rw.jsonl").read_text() == text
    assert (tmp_path / "votes" / "train.jsonl").read_text() == text
    # another file in the folder is fine
    argv = ["data", "confidence", "--data", "votes", "--output", "votes/conf.jsonl"]
    assert main([*argv, "--prior", "uniform"]) == 0


def test_the_python_api_names_its_keywords_not_the_command_s_flags():
    rows = [{**r, "confidence": 0.5} for r in _rows()]
    with pytest.raises(ValueError) as raised:
        add_vote_confidence(rows, prior="uniform")
    message = str(raised.value)
    assert "Pass overwrite=True to replace it" in message
    assert "or another field_name (e.g. field_name='vote_confidence')" in message
    assert "--" not in message.replace("--export-votes", "").replace("--smoothing", "")
    _, summary = add_vote_confidence(rows, prior="uniform", overwrite=True)
    assert "another field_name keeps it" in summary.to_text()


def _vote_list_rows():
    return [
        {"prompt": "p0", "chosen": "a", "rejected": "b", "votes": [1, 0, 1]},
        {"prompt": "p1", "chosen": "c", "rejected": "d", "votes": [0, 0, 1, 0]},
        {"prompt": "p2", "chosen": "e", "rejected": "f", "votes": [True, True]},
    ]


def test_a_votes_list_is_read_as_reward_reads_it(tmp_path, capsys):
    """A file with a 0/1 `votes` list (which `reward` accepts) is scored, not refused for a
    missing votes_total: the uniform posterior (v + 1) / (K + 2) by hand."""
    data = tmp_path / "votes.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _vote_list_rows()))
    out = tmp_path / "out.jsonl"
    argv = ["data", "confidence", "--data", str(data), "--output", str(out)]
    assert main([*argv, "--prior", "uniform", "--relabel"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["confidence"] for r in rows] == pytest.approx([3 / 5, 1 - 2 / 6, 3 / 4])
    assert rows[1]["votes"] == [1, 1, 0, 1] and rows[1]["relabelled"] is True
    assert "votes_total" not in rows[1]  # the row's own form kept, mirrored
    # and the empirical prior reads the same counts as the same rows given as counts
    counts = [
        dict(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"],
             votes_chosen=int(sum(r["votes"])), votes_total=len(r["votes"]))
        for r in _vote_list_rows()
    ]  # fmt: skip
    a, _ = add_vote_confidence(_vote_list_rows())
    b, _ = add_vote_confidence(counts)
    assert [r["confidence"] for r in a] == pytest.approx([r["confidence"] for r in b])


def test_votes_that_contradict_the_counts_are_refused_as_reward_refuses_them(tmp_path, capsys):
    from smoothalign.data.validation import BadRowError
    from smoothalign.reward.data import soft_label

    row = {"prompt": "p", "chosen": "a", "rejected": "b", "votes": [1, 0, 1],
           "votes_chosen": 4, "votes_total": 5}  # fmt: skip
    with pytest.raises(BadRowError):  # what reward says of it
        soft_label(row)
    data = tmp_path / "votes.jsonl"
    rows = [*_vote_list_rows(), row, dict(row, votes_chosen=None, votes_total=None, p_chosen=0.4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    argv = ["data", "confidence", "--data", str(data), "--output", str(out), "--prior", "uniform"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "2 of 5 rows cannot be used" in err
    assert (
        f"{data} row 3, field 'votes': 2 of 3 votes for chosen, but votes_chosen/votes_total say 4/5"
        in err
    )
    assert f"{data} row 4, field 'votes': gives P(chosen wins) = 0.666667 but p_chosen = 0.4" in err
    assert "a votes list of 0/1" in err and "votes_chosen of votes_total" in err
    assert not out.exists()


def test_a_p_chosen_without_votes_is_refused_saying_why_and_the_forms(tmp_path, capsys):
    data = tmp_path / "shares.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "p_chosen": 0.8}) + "\n"
                    + json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")  # fmt: skip
    out = tmp_path / "out.jsonl"
    assert main(["data", "confidence", "--data", str(data), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "row 0, field 'p_chosen': a vote share without its vote count" in err
    assert "row 1, field 'votes_total': no votes" in err
    assert "got None" not in err
    assert "p_chosen alone carries no vote count" in err
    assert not out.exists()


def test_on_bad_rows_skip_writes_the_good_rows_and_says_which_it_left_out(tmp_path, capsys):
    rows = [*_vote_list_rows(), {"prompt": "p", "chosen": "a", "rejected": "b", "votes": []}]
    data = tmp_path / "votes.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    argv = ["data", "confidence", "--data", str(data), "--output", str(out), "--prior", "uniform"]
    assert main(argv) == 2
    assert "--on-bad-rows skip leaves the bad rows out" in capsys.readouterr().err
    with pytest.warns(SmoothalignWarning) as said:
        assert main([*argv, "--on-bad-rows", "skip"]) == 0
    assert "3 rows (1 bad row skipped)" in capsys.readouterr().out
    assert any(f"{data} row 3, field 'votes': zero annotators" in str(w.message) for w in said)
    assert len(out.read_text().splitlines()) == 3
    data.write_text(json.dumps(rows[-1]) + "\n")
    assert main([*argv, "--on-bad-rows", "skip"]) == 2
    assert "no row is left" in capsys.readouterr().err


def test_the_command_line_says_its_warnings_as_every_command_does(tmp_path, monkeypatch, capsys):
    """`data confidence` printed its warnings on stdout as a bare `warning: …` inside the
    summary, where every other command says smoothalign's own warnings on stderr as
    `smoothalign <command>: warning: …` (README); the Python API's summary keeps them."""
    import sys
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):  # as Python's default
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)  # pytest records them instead
    rows = [{"prompt": f"P{i}", "chosen": "a", "rejected": "b", "votes_chosen": i % 3,
             "votes_total": 2} for i in range(6)]  # fmt: skip
    rows.append({"prompt": "bad", "chosen": "a", "rejected": "b"})  # no votes: skipped
    data = tmp_path / "votes.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["data", "confidence", "--data", str(data), "--output", str(tmp_path / "c.jsonl"),
            "--on-bad-rows", "skip"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("always", SmoothalignWarning)
        assert main(argv) == 0
    captured = capsys.readouterr()
    said = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(said) == 2, captured.err  # the skipped row, and too few votes for the prior
    assert all(line.startswith("smoothalign data confidence: warning: ") for line in said)
    assert "skipped 1 of 7 rows" in said[0] and "consider --prior uniform" in said[1]
    assert "warning" not in captured.out and "6 rows (1 bad row skipped)" in captured.out
    assert "UserWarning" not in captured.err and "SmoothalignWarning" not in captured.err

    from smoothalign.data.loading import load_preference_rows
    from smoothalign.data.vote_confidence import add_vote_confidence

    _, summary = add_vote_confidence(load_preference_rows(str(data)), on_bad_rows="skip")
    assert summary.to_text().count("\nwarning: ") == 2  # the Python API's text: unchanged
