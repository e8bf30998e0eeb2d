"""What the dpo, sft and reward runs record of their data in the run folder, checked against
the data itself: which rows the held-out set holds (``split.json``, each row's file and row
in the order scored), whether those are the rows the held-out metrics scored, and the
console summary's counts of rows withheld from training and rows scored."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from tests.dpo_helpers import write_jsonl

from smoothalign.cli import main

BOS, EOS = 256, 257  # the tiny tokenizer's: byte b is id b (models.loading.build_tiny_tokenizer)


def _pairs(n: int, seed: int = 0, **extra) -> list[dict]:
    """Pairs whose prompts ``P<i>:`` name their row; better responses of a/b, worse of c/d."""
    rng = random.Random(seed)
    return [
        {
            "prompt": f"P{i}:",
            "chosen": "".join(rng.choice("ab") for _ in range(5)),
            "rejected": "".join(rng.choice("cd") for _ in range(5)),
            **extra,
        }
        for i in range(n)
    ]


def _prompt(ids: list[int]) -> str:
    """The text of a prompt's tiny-tokenizer ids (BOS, then one id per byte)."""
    assert ids[0] == BOS
    return bytes(ids[1:]).decode()


def _split(out: Path) -> dict:
    return json.loads((out / "split.json").read_text())


# ---------------------------------------------------------------------------- dpo
def test_dpo_lists_its_held_out_pairs_and_they_are_the_ones_scored(tmp_path):
    """A seeded 30% holdout of 20 pairs, 4 of its 6 scored (--max-eval-pairs): split.json
    lists the 6 rows, and `eval preferences` of the trained run on the first 4 of them, read
    from the data file, gives the run's own held-out metrics; the console line says 6 were
    withheld from training and 4 scored."""
    from smoothalign.train import DPOConfig, run_dpo

    rows = _pairs(20)
    data = write_jsonl(rows, tmp_path / "pairs.jsonl")
    out = tmp_path / "run"
    config = DPOConfig(model="tiny", data=str(data), output_dir=str(out), eval_fraction=0.3,
                       max_eval_pairs=4, lora=False, smoothing="none", max_steps=2,
                       batch_size=4, learning_rate=5e-3, lr_warmup_steps=0, logging_steps=1,
                       eval_samples=0, max_length=32, report=False)  # fmt: skip
    result = run_dpo(config)

    split = _split(out)
    assert split["split"] == "seeded holdout" and split["held_out_from"] == "--data"
    assert (split["eval_fraction"], split["seed"]) == (0.3, 0)
    assert (split["n_train"], split["n_held_out"], split["n_scored"]) == (14, 6, 4)
    assert split["scored_limit"] == "--max-eval-pairs"
    held = [(r["file"], r["row"]) for r in split["held_out"]]
    assert len(held) == 6 and {f for f, _ in held} == {str(data)}
    listed = [r for _, r in held]
    assert listed == sorted(listed)  # in row order, as scored
    # the prompts trained on are the others (each prompt names its row)
    trained = {_prompt(ex.prompt_ids) for ex in result.trainer.train_dataset.examples}
    assert trained == {rows[i]["prompt"] for i in range(20) if i not in listed}

    # the rows listed first are those scored: evaluating the run on them alone, read from
    # the data file, gives the run's held-out metrics after training
    scored = write_jsonl([rows[i] for i in listed[:4]], tmp_path / "scored.jsonl")
    assert main(["eval", "preferences", "--no-progress", "--model", str(out), "--data",
                 str(scored), "--output-dir", str(tmp_path / "again")]) == 0  # fmt: skip
    after = json.loads((out / "eval_results.json").read_text())["after"]
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())["metrics"]
    assert after["n_pairs"] == again["n_pairs"] == 4
    assert again["accuracy"] == after["accuracy"]
    assert again["margin_mean"] == pytest.approx(after["margin_mean"], abs=1e-5)
    assert after["margin_mean"] != 0.0  # trained: the margins tell the rows apart
    # the console: withheld from training and scored
    headline = result.summary().splitlines()[0]
    assert "14 train / 6 held-out pairs (4 scored: --max-eval-pairs)" in headline


def test_dpo_records_a_split_column_and_a_held_out_set(tmp_path):
    """The data's own split column, and --eval-data: split.json says which, and lists the
    rows the data marks 'eval' / every row of the held-out file; all scored."""
    from smoothalign.train import DPOConfig, run_dpo

    rows = _pairs(10)
    marks = ["train", "eval", "train", "train", "eval", "train", "train", "train", "eval", "train"]
    data = write_jsonl([dict(r, split=s) for r, s in zip(rows, marks, strict=True)],
                       tmp_path / "marked.jsonl")  # fmt: skip
    held_out = write_jsonl(_pairs(3, seed=1), tmp_path / "held_out.jsonl")
    kw = dict(model="tiny", lora=False, smoothing="none", max_steps=1, batch_size=4,
              lr_warmup_steps=0, eval_samples=0, max_length=32, report=False)  # fmt: skip
    result = run_dpo(DPOConfig(data=str(data), output_dir=str(tmp_path / "a"), **kw))
    split = _split(tmp_path / "a")
    assert split["split"] == "split column" and split["held_out_from"] == "--data"
    assert [r["row"] for r in split["held_out"]] == [i for i, s in enumerate(marks) if s == "eval"]
    assert split["n_scored"] == split["n_held_out"] == 3 and split["scored_limit"] is None
    assert "7 train / 3 held-out pairs (all scored)" in result.summary()

    run_dpo(DPOConfig(data=str(data), eval_data=str(held_out), output_dir=str(tmp_path / "b"),
                      **kw))  # fmt: skip
    split = _split(tmp_path / "b")
    assert split["split"] == "held-out set" and split["held_out_from"] == "--eval-data"
    assert [(r["file"], r["row"]) for r in split["held_out"]] == [(str(held_out), i)
                                                                   for i in range(3)]  # fmt: skip
    assert split["n_train"] == 7  # the rows marked 'eval' are not trained on


# ---------------------------------------------------------------------------- sft
@torch.no_grad()
def _completion_nll(rows: list[dict]) -> tuple[float, int]:
    """The mean NLL of ``rows``' completion tokens (and EOS) under the 'tiny' model, in
    float64 from its full logits, with the tiny tokenizer's ids written by hand; the count."""
    from smoothalign.models.loading import build_tiny_model

    model = build_tiny_model().double().eval()
    total, n = 0.0, 0
    for row in rows:
        prompt = [BOS, *row["prompt"].encode()]
        target = [*row["completion"].encode(), EOS]
        logp = model(input_ids=torch.tensor([prompt + target])).logits[0].log_softmax(-1)
        total -= sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(target))
        n += len(target)
    return total / n, n


def test_sft_lists_its_held_out_rows_and_they_are_the_ones_scored(tmp_path):
    """SFT's seeded holdout: split.json lists the held-out rows; the held-out NLL before
    training is that of the first --max-eval-rows of them, computed by hand from the data
    file's rows; the console line says withheld vs scored."""
    from smoothalign.sft import SFTConfig, run_sft

    rng = random.Random(2)
    rows = [{"prompt": f"P{i}:", "completion": "".join(rng.choice("ab") for _ in range(i % 5 + 2))}
            for i in range(20)]  # fmt: skip
    data = write_jsonl(rows, tmp_path / "sft.jsonl")
    out = tmp_path / "run"
    result = run_sft(SFTConfig(model="tiny", data=str(data), output_dir=str(out),
                               eval_fraction=0.3, max_eval_rows=4, lora=False, max_steps=1,
                               batch_size=4, lr_warmup_steps=0, max_length=32,
                               report=False))  # fmt: skip
    split = _split(out)
    assert split["split"] == "seeded holdout"
    assert (split["n_train"], split["n_held_out"], split["n_scored"]) == (14, 6, 4)
    assert split["scored_limit"] == "--max-eval-rows"
    assert {r["file"] for r in split["held_out"]} == {str(data)}
    listed = [r["row"] for r in split["held_out"]]
    trained = {  # the prompt: the tokens the loss does not read
        _prompt([t for t, label in zip(ex.input_ids, ex.labels, strict=True) if label == -100])
        for ex in result.trainer.train_dataset.examples
    }
    assert trained == {rows[i]["prompt"] for i in range(20) if i not in listed}
    before = json.loads((out / "eval_results.json").read_text())["before"]
    nll, n_tokens = _completion_nll([rows[i] for i in listed[:4]])
    assert before["n_rows"] == 4 and before["n_tokens"] == n_tokens
    assert before["nll"] == pytest.approx(nll, rel=1e-5)
    assert "14 train / 6 held-out rows (4 scored: --max-eval-rows)" in result.summary()


# ---------------------------------------------------------------------------- reward
def test_reward_lists_its_held_out_pairs_and_they_are_the_ones_scored(tmp_path):
    """The reward run's seeded holdout: split.json lists the held-out pairs; the held-out
    metrics count the pairs listed (all of them: reward scores every held-out pair by
    default) and, of those, the ones whose row in the data file carries a confidence
    (*_true)."""
    from smoothalign.reward import RewardConfig, run_reward

    rows = _pairs(20, p_chosen=0.8)
    for i, row in enumerate(rows):
        if i % 3 == 0:
            row["confidence"] = 0.7
    data = write_jsonl(rows, tmp_path / "votes.jsonl")
    out = tmp_path / "run"
    result = run_reward(RewardConfig(model="tiny", data=str(data), output_dir=str(out),
                                     eval_fraction=0.3, max_steps=1, batch_size=4,
                                     lr_warmup_steps=0, max_length=32,
                                     report=False))  # fmt: skip
    split = _split(out)
    assert split["split"] == "seeded holdout"
    assert (split["n_train"], split["n_held_out"], split["n_scored"]) == (14, 6, 6)
    assert {r["file"] for r in split["held_out"]} == {str(data)}
    listed = [r["row"] for r in split["held_out"]]
    scored = [_prompt(ex.pair.prompt_ids) for ex in result.trainer.eval_dataset.examples]
    assert scored == [rows[i]["prompt"] for i in listed]
    trained = {_prompt(ex.pair.prompt_ids) for ex in result.trainer.train_dataset.examples}
    assert trained == {rows[i]["prompt"] for i in range(20) if i not in listed}
    after = json.loads((out / "eval_results.json").read_text())["after"]
    assert after["n_pairs"] == 6
    assert after.get("n_pairs_true", 0) == sum("confidence" in rows[i] for i in listed)
    assert "14 train / 6 held-out pairs (all scored)" in result.summary()


# ---------------------------------------------------------------------------- refusals
def _refused(argv: list, capsys, monkeypatch) -> str:
    """Run the CLI on ``argv``, which must be refused as bad input (exit status 2): what it
    printed on stderr (the traceback file it names is removed)."""
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    Path(err.split("(traceback: ")[1].split(";")[0]).unlink()
    return err


def _bad_rows(out: Path, part: str = "train") -> list[tuple]:
    record = json.loads((out / "refused_validation.json").read_text())
    return [(b["file"], b["row"], b["field"], b["code"]) for b in record[part]["bad_rows"]]


def test_a_dpo_run_refused_for_bad_rows_lists_every_one_in_its_folder(tmp_path, capsys,
                                                                      monkeypatch):  # fmt: skip
    """The review's case: 11 rows, 7 bad. The console lists 5; refused_validation.json, which
    the message names, lists all 7 with file, row, field, code and reason. A folder holding
    a finished run keeps that run's results untouched, and a run that then starts there
    removes the refused run's file."""
    bad = [1, 3, 4, 6, 7, 8, 10]
    rows = [dict(r, chosen="") if i in bad else r for i, r in enumerate(_pairs(11))]
    data = write_jsonl(rows, tmp_path / "bad.jsonl")
    out = tmp_path / "runs" / "b1"
    err = _refused(["dpo", "--model", "tiny", "--data", data, "--output-dir", out], capsys,
                   monkeypatch)  # fmt: skip
    assert "7 of 11 preference rows are invalid" in err and "... and 2 more" in err
    path = out / "refused_validation.json"
    assert f"Every bad row (7), with its file, row, field, code and reason, is in {path}" in err
    assert _bad_rows(out) == [(str(data), i, "chosen", "empty_response") for i in bad]
    record = json.loads(path.read_text())
    assert all(b["reason"] for b in record["train"]["bad_rows"])
    assert record["refused"].startswith("7 of 11 preference rows are invalid")
    assert sorted(p.name for p in out.iterdir()) == ["refused_validation.json"]

    # a folder holding a finished run: its results stay as they were
    good = write_jsonl(_pairs(12), tmp_path / "good.jsonl")
    done = tmp_path / "runs" / "done"
    kw = ["--model", "tiny", "--no-lora", "--max-steps", "1", "--batch-size", "4",
          "--eval-samples", "0", "--no-report", "--output-dir", done]  # fmt: skip
    assert main(["dpo", "--data", str(good), *map(str, kw)]) == 0
    before = {p.name: p.read_bytes() for p in done.iterdir() if p.is_file()}
    assert "validation.json" in before and "split.json" in before
    _refused(["dpo", "--data", data, *kw], capsys, monkeypatch)
    assert {p.name: p.read_bytes() for p in done.iterdir() if p.is_file() and
            p.name != "refused_validation.json"} == before  # fmt: skip
    assert _bad_rows(done) == _bad_rows(out)
    # a run that starts there clears the refused run's data check with the earlier results
    assert main(["dpo", "--data", str(good), *map(str, kw)]) == 0
    assert not (done / "refused_validation.json").exists()


def test_a_split_column_refusal_names_the_unexpected_value_and_its_row_first(
    tmp_path, capsys, monkeypatch
):
    """One row says split 'test', the ten others none: every row is bad. The message names
    'test' and its row before the rows without a split (which the column's existence made
    bad), and the folder's refused_validation.json lists all eleven."""
    rows = _pairs(11)
    rows[8]["split"] = "test"
    data = write_jsonl(rows, tmp_path / "split.jsonl")
    out = tmp_path / "b2"
    err = _refused(["dpo", "--model", "tiny", "--data", data, "--output-dir", out], capsys,
                   monkeypatch)  # fmt: skip
    lines = err.splitlines()
    assert "11 of 11 preference rows are invalid" in lines[0]
    assert lines[1].startswith("The data's 'split' column: values other than 'train' or "
                               f"'eval': 'test' ({data} row 8); 10 rows give no split")  # fmt: skip
    assert lines[2] == f"  {data} row 8, field 'split': 'test'; every row's split must be " \
        "'train' or 'eval'"  # fmt: skip
    assert f"{data} row 0, field 'split'" in lines[3]
    assert _bad_rows(out) == [(str(data), i, "split", "bad_split") for i in range(11)]

    # the rows that made the split column say valid values: those are named instead
    rows[8]["split"] = "eval"
    write_jsonl(rows, data)
    err = _refused(["dpo", "--model", "tiny", "--data", data, "--output-dir", out], capsys,
                   monkeypatch)  # fmt: skip
    assert "10 rows give no split, which every row needs once a row has one (1 do: " \
        f"{data} row 8: 'eval')" in err  # fmt: skip


def test_sft_refused_for_no_training_row_left_lists_the_skipped_rows(tmp_path, capsys,
                                                                    monkeypatch):  # fmt: skip
    """--on-bad-rows skip drops 2 of 3 rows and the holdout takes the last: no training row
    is left. The two skipped rows, the cause, are listed in refused_validation.json."""
    rows = [{"prompt": "a:", "completion": " x"}, {"prompt": "b:", "completion": "  "},
            {"prompt": "c:"}]  # fmt: skip
    data = write_jsonl(rows, tmp_path / "sft.jsonl")
    out = tmp_path / "out"
    err = _refused(["sft", "--model", "tiny", "--data", data, "--on-bad-rows", "skip",
                    "--output-dir", out], capsys, monkeypatch)  # fmt: skip
    assert "no training rows left after validation and the eval split" in err
    assert f"Every bad row (2), with its file, row, field, code and reason, is in {out}" in err
    assert [(f, r, field) for f, r, field, _ in _bad_rows(out)] == [
        (str(data), 1, "completion"),
        (str(data), 2, "completion"),
    ]
    # the default (--on-bad-rows error) too
    err = _refused(["sft", "--model", "tiny", "--data", data, "--output-dir", out], capsys,
                   monkeypatch)  # fmt: skip
    assert "2 of 3 SFT rows are invalid" in err and "refused_validation.json" in err


def test_reward_refused_in_both_parts_lists_each(tmp_path, capsys, monkeypatch):
    """Bad labels and bad texts in the data, a bad row in --eval-data: one message for both,
    and refused_validation.json lists each part's bad rows, as validation.json would."""
    rows = _pairs(6, p_chosen=0.8)
    rows[1]["p_chosen"] = 3.0
    rows[4]["chosen"] = ""
    held_out = _pairs(3, seed=1, p_chosen=0.6)
    held_out[2]["rejected"] = held_out[2]["chosen"]
    data = write_jsonl(rows, tmp_path / "votes.jsonl")
    eval_data = write_jsonl(held_out, tmp_path / "held_out.jsonl")
    out = tmp_path / "out"
    err = _refused(["reward", "--model", "tiny", "--data", data, "--eval-data", eval_data,
                    "--output-dir", out], capsys, monkeypatch)  # fmt: skip
    assert "2 of 6 preference rows are invalid" in err
    assert "The held-out set (--eval-data): 1 of 3 preference rows are invalid" in err
    assert "Every bad row (3)" in err
    assert _bad_rows(out) == [(str(data), 1, "p_chosen", "bad_p_chosen"),
                              (str(data), 4, "chosen", "empty_response")]  # fmt: skip
    assert _bad_rows(out, "eval") == [(str(eval_data), 2, "rejected", "identical_responses")]


def test_the_oracle_policies_refusal_lists_the_rows_without_a_confidence(tmp_path, capsys,
                                                                        monkeypatch):  # fmt: skip
    """--smoothing oracle-l2 reads each training row's confidence: the rows without one are
    refused, and refused_validation.json lists every one of them (the console, five)."""
    rows = _pairs(12, confidence=0.8)
    missing = [0, 2, 3, 5, 6, 7, 9]
    for i in missing:
        del rows[i]["confidence"]
    data = write_jsonl(rows, tmp_path / "pairs.jsonl")
    held_out = write_jsonl(_pairs(2, seed=1), tmp_path / "held_out.jsonl")
    out = tmp_path / "out"
    err = _refused(["dpo", "--model", "tiny", "--data", data, "--eval-data", held_out,
                    "--smoothing", "oracle-l2", "--output-dir", out], capsys,
                   monkeypatch)  # fmt: skip
    assert "... and 2 more" in err and "refused_validation.json" in err
    assert _bad_rows(out) == [(str(data), i, "confidence", "missing_confidence") for i in missing]


def test_reward_rows_with_no_valid_text_list_the_label_problems_with_the_text_ones(tmp_path):
    """Some rows' labels are bad and every other row's text is: one listing of both, in row
    order, and the refusal's report holds every bad row (the runs write it out)."""
    from smoothalign.data import RefusedRowsError
    from smoothalign.models.loading import build_tiny_tokenizer
    from smoothalign.reward.data import validate_reward_rows

    rows = _pairs(4, p_chosen=0.8)
    rows[0]["p_chosen"] = -1
    for i in (1, 2, 3):
        rows[i]["rejected"] = rows[i]["chosen"]
    with pytest.raises(RefusedRowsError) as err:
        validate_reward_rows(rows, build_tiny_tokenizer(), 32)
    assert str(err.value).startswith("no valid soft-label preference row is left. 4 of 4")
    listed = [line.strip() for line in str(err.value).splitlines()[1:5]]
    assert [x.split(",")[0] for x in listed] == ["row 0", "row 1", "row 2", "row 3"]
    codes = [(b.row, b.code) for b in err.value.report.bad_rows]
    assert codes == [(0, "bad_p_chosen")] + [(i, "identical_responses") for i in (1, 2, 3)]


def test_identical_after_truncation_names_a_data_folders_eval_files(tmp_path, recwarn):
    """A held-out set read from a data folder's eval file (no --eval-data given) whose pairs
    truncation made identical is named as that file in the warning, not as --eval-data,
    which the user never passed."""
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(_pairs(8), folder / "train.jsonl")
    same = [{"prompt": f"Q{i}:", "chosen": "a" * 20 + "b", "rejected": "a" * 20 + "c"}
            for i in range(3)]  # fmt: skip
    write_jsonl(_pairs(3, seed=1) + same, folder / "eval.jsonl")
    out = tmp_path / "run"
    argv = ["dpo", "--model", "tiny", "--data", folder, "--output-dir", out, "--max-steps",
            1, "--batch-size", 2, "--max-length", 12, "--no-report", "--no-lora"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    said = [
        str(w.message) for w in recwarn.list if "identical chosen and rejected" in str(w.message)
    ]
    assert len(said) == 1, said
    assert said[0].startswith("the data folder's eval.jsonl: 3 of "), said[0]
    assert "--eval-data" not in said[0]


def test_reward_max_eval_pairs_scores_the_first_n_held_out_pairs(tmp_path):
    """--max-eval-pairs in reward, as in dpo: the first N of the held-out pairs are scored
    (before, during --eval-steps and after training), split.json says so and still lists
    every held-out pair; 0 (the default) scores all of them, as a run with a cap above
    their count does, with the same results."""
    from smoothalign.reward import RewardConfig, run_reward

    assert RewardConfig().max_eval_pairs == 0  # no cap by default: reward's results unchanged
    with pytest.raises(ValueError, match="max_eval_pairs"):
        RewardConfig(max_eval_pairs=-1)
    rows = _pairs(20, p_chosen=0.8)
    data = write_jsonl(rows, tmp_path / "votes.jsonl")
    kw = dict(model="tiny", data=str(data), eval_fraction=0.3, max_steps=2, batch_size=4,
              lr_warmup_steps=0, max_length=32, eval_steps=1, logging_steps=1,
              report=False)  # fmt: skip
    out = tmp_path / "cut"
    result = run_reward(RewardConfig(output_dir=str(out), max_eval_pairs=4, **kw))
    split = _split(out)
    assert (split["n_train"], split["n_held_out"], split["n_scored"]) == (14, 6, 4)
    assert split["scored_limit"] == "--max-eval-pairs"
    listed = [r["row"] for r in split["held_out"]]
    scored = [_prompt(ex.pair.prompt_ids) for ex in result.trainer.eval_dataset.examples]
    assert scored == [rows[i]["prompt"] for i in listed[:4]]
    results = json.loads((out / "eval_results.json").read_text())
    assert results["before"]["n_pairs"] == results["after"]["n_pairs"] == 4
    periodic = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval_n_pairs"] for r in periodic if r.get("split") == "eval"] == [4, 4]
    assert "14 train / 6 held-out pairs (4 scored: --max-eval-pairs)" in result.summary()
    assert any("the first 4 of 6 held-out pairs (max_eval_pairs)" in n for n in result.notes)

    # 0: every held-out pair, and the results of a run whose cap leaves every pair in
    every = {}
    for limit in (0, 6):
        out = tmp_path / f"all{limit}"
        result = run_reward(RewardConfig(output_dir=str(out), max_eval_pairs=limit, **kw))
        split = _split(out)
        assert split["n_scored"] == split["n_held_out"] == 6 and split["scored_limit"] is None
        assert "14 train / 6 held-out pairs (all scored)" in result.summary()
        every[limit] = json.loads((out / "eval_results.json").read_text())
    assert every[0] == every[6] and every[0]["after"]["n_pairs"] == 6


def test_a_reward_resume_may_change_max_eval_pairs(tmp_path):
    """As in dpo, --max-eval-pairs says what the report scores, not what is trained: a
    resume may change it, and the resumed run scores the pairs it now gives."""
    from smoothalign.reward import RewardConfig, run_reward

    data = write_jsonl(_pairs(20, p_chosen=0.8), tmp_path / "votes.jsonl")
    kw = dict(model="tiny", data=str(data), output_dir=str(tmp_path / "run"), eval_fraction=0.3,
              batch_size=4, lr_warmup_steps=0, max_length=32, eval_steps=0, save_steps=1,
              report=False)  # fmt: skip
    run_reward(RewardConfig(max_steps=1, **kw))
    result = run_reward(RewardConfig(max_steps=2, max_eval_pairs=3, resume="latest", **kw))
    assert result.trainer.state.global_step == 2
    split = _split(tmp_path / "run")
    assert (split["n_held_out"], split["n_scored"]) == (6, 3)
    assert "(3 scored: --max-eval-pairs)" in result.summary()
