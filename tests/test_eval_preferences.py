"""``smoothalign eval preferences`` against independent references.

* the forecasts of a policy against a reference (or the data's precomputed reference
  log-probs) equal ``σ(β·Δ)`` computed by hand in float64 from ``model(ids).logits`` of
  config-built tiny models, with the token ids written from the tokenizer's definition (byte
  ``b`` is id ``b``, BOS 256 before the prompt, EOS 257 after each response);
* a DPO run folder brings its reference and β, and its forecasts on the run's eval rows give
  the numbers the run's own ``eval_results.json`` reports after training;
* a model that is not a run, without ``--reference``, and a bad row are refused with exit
  status 2 and a message naming the flag, or the row and field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tests.dpo_helpers import synthetic_rows, write_jsonl

from smoothalign.cli import main
from smoothalign.models.loading import build_tiny_model, build_tiny_tokenizer

BOS, EOS = 256, 257  # the tiny tokenizer's (models.loading.build_tiny_tokenizer)

# a handful of pairs of different lengths; a confidence on some of them only
ROWS = [
    {"prompt": "Say hi:", "chosen": " hello there", "rejected": " go away", "confidence": 0.8},
    {"prompt": "2+2=", "chosen": "4", "rejected": "five"},
    {"prompt": "Colour of the sky?", "chosen": " blue", "rejected": " green", "confidence": 0.6},
    {"prompt": "x", "chosen": "yz", "rejected": "zzzzzzzzzzzy"},
    {"prompt": "The cat sat on the", "chosen": " mat.", "rejected": " moon!", "confidence": 0.3},
]


def _eval(*args: str) -> int:
    return main(["eval", "preferences", "--no-progress", *map(str, args)])


def _refused(capsys) -> str:
    """What ``cli.main`` printed on stderr for a refused input; the traceback file it names is
    removed."""
    err = capsys.readouterr().err
    Path(err.split("(traceback: ")[1].split(";")[0]).unlink()
    return err


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@torch.no_grad()
def _logp64(model, prompt: str, response: str) -> float:
    """``log π(response | prompt)`` in float64, gathered by hand from the full logits."""
    prompt_ids = [BOS, *prompt.encode()]
    response_ids = [*response.encode(), EOS]
    ids = torch.tensor([prompt_ids + response_ids])
    logp = model(input_ids=ids).logits[0].double().log_softmax(-1)
    # the logits at position t predict token t + 1
    return sum(float(logp[len(prompt_ids) - 1 + j, tok]) for j, tok in enumerate(response_ids))


def _pair_logps64(model) -> list[tuple[float, float]]:
    """``(log π(y_w|x), log π(y_l|x))`` of every pair of ``ROWS``."""
    return [
        (_logp64(model, r["prompt"], r["chosen"]), _logp64(model, r["prompt"], r["rejected"]))
        for r in ROWS
    ]


def test_forecasts_equal_a_float64_brute_force(tmp_path, capsys):
    data = write_jsonl(ROWS, tmp_path / "pairs.jsonl")
    policy_dir = tmp_path / "policy"  # a local model folder: another seed than 'tiny'
    build_tiny_model(seed=1).save_pretrained(policy_dir)
    build_tiny_tokenizer().save_pretrained(policy_dir)
    beta = 0.3
    out = tmp_path / "out"
    assert _eval("--model", policy_dir, "--reference", "tiny", "--data", data, "--beta", beta,
                 "--batch-size", 2, "--output-dir", out) == 0  # fmt: skip

    pol = _pair_logps64(build_tiny_model(seed=1).double())
    ref = _pair_logps64(build_tiny_model(seed=0).double())  # 'tiny'
    h = [beta * ((pc - rc) - (pr - rr)) for (pc, pr), (rc, rr) in zip(pol, ref, strict=True)]
    assert min(abs(x) for x in h) > 1e-3  # the two models differ: no pair is a tie

    def check(out: Path) -> None:
        lines = _lines(out / "forecasts.jsonl")
        assert [x["row"] for x in lines] == list(range(len(ROWS)))
        for line, want, row in zip(lines, h, ROWS, strict=True):
            assert line["margin"] == pytest.approx(want, rel=1e-4, abs=1e-5)
            assert line["forecast"] == pytest.approx(1 / (1 + math.exp(-want)), abs=1e-5)
            assert line["label"] == 1
            assert line.get("confidence") == row.get("confidence")
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["n_pairs"] == metrics["metrics"]["n_pairs"] == len(lines) == len(ROWS)
        assert metrics["n_skipped"] == 0 and metrics["beta"] == beta
        assert metrics["metrics"]["accuracy"] == sum(x > 0 for x in h) / len(h)
        assert metrics["metrics"]["n_pairs_true"] == 3  # the rows with a confidence

    check(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reference"] == {"source": "option", "model": "tiny", "model_loaded": "tiny"}
    assert metrics["beta_source"] == "option"
    validation = json.loads((out / "validation.json").read_text())
    assert validation["data"]["n_rows"] == validation["data"]["n_kept"] == len(ROWS)
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "reference: tiny (--reference)" in report and "β 0.3 (--beta)" in report
    assert "![reliability](reliability.png)" in report and "Preference data" in report
    assert "5 pairs" in capsys.readouterr().out

    # the data's own reference log-probs stand in for the reference model (no --reference)
    with_ref = [
        {**r, "ref_chosen_logps": rc, "ref_rejected_logps": rr}
        for r, (rc, rr) in zip(ROWS, ref, strict=True)
    ]
    data_ref = write_jsonl(with_ref, tmp_path / "with_ref.jsonl")
    assert _eval("--model", policy_dir, "--data", data_ref, "--beta", beta,
                 "--output-dir", tmp_path / "out_ref") == 0  # fmt: skip
    check(tmp_path / "out_ref")
    metrics = json.loads((tmp_path / "out_ref" / "metrics.json").read_text())
    assert metrics["reference"]["source"] == "data" and metrics["reference"]["model"] is None


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-step LoRA DPO run on tiny (β 0.5, max length 32), evaluated on all its data."""
    from smoothalign.train import DPOConfig, run_dpo

    folder = tmp_path_factory.mktemp("run")
    data = write_jsonl(synthetic_rows(12, seed=1, flip_rate=0.25), folder / "pairs.jsonl")
    config = DPOConfig(
        model="tiny",
        data=str(data),
        eval_data=str(data),
        output_dir=str(folder / "run"),
        lora=True,
        beta=0.5,
        max_length=32,
        smoothing="none",
        batch_size=4,
        max_steps=2,
        learning_rate=5e-3,
        lr_warmup_steps=0,
        logging_steps=1,
        eval_samples=0,
        max_eval_pairs=0,
        report=False,
    )
    run_dpo(config)
    return folder / "run", data


def test_a_dpo_run_folder_brings_its_reference_and_beta(lora_run, tmp_path):
    run, data = lora_run
    after = json.loads((run / "eval_results.json").read_text())["after"]
    assert after["accuracy"] not in (0.5, 1.0)  # trained, and not trivially right
    for model, out in ((run, tmp_path / "run"), (run / "final", tmp_path / "final")):
        assert _eval("--model", model, "--data", data, "--output-dir", out) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["beta"] == 0.5 and metrics["beta_source"] == "run"
        assert metrics["reference"] == {"source": "run", "model": "tiny", "model_loaded": "tiny"}
        assert metrics["max_length"] == 32 and metrics["run"] == str(run)
        got = metrics["metrics"]
        assert got["n_pairs"] == after["n_pairs"] == 12
        for key in ("accuracy", "accuracy_true"):
            assert got[key] == after[key], key
        for key in ("ece", "rms", "ece_true", "kl_true", "margin_mean"):
            assert got[key] == pytest.approx(after[key], abs=1e-5), key
        assert len(_lines(out / "forecasts.jsonl")) == 12
        report = (out / "report.md").read_text()
        assert f"the model the DPO run {run} trained from" in report
        assert "β 0.5: the DPO run's" in report


def test_a_model_that_is_no_run_needs_a_reference(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    data = write_jsonl(ROWS, tmp_path / "pairs.jsonl")
    out = tmp_path / "out"
    assert _eval("--model", "tiny", "--data", data, "--output-dir", out) == 2
    err = _refused(capsys)
    assert err.startswith("smoothalign eval preferences: --reference: 'tiny' is not a")
    assert "pass the model the policy was trained from as --reference" in err
    assert not out.exists()  # refused before any work


def test_a_bad_row_is_named_by_row_and_field(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    rows = [dict(r) for r in ROWS]
    rows[2]["chosen"] = "   "
    data = write_jsonl(rows, tmp_path / "pairs.jsonl")
    out = tmp_path / "out"
    common = ("--model", "tiny", "--reference", "tiny", "--data", data, "--output-dir", out)
    assert _eval(*common) == 2
    err = _refused(capsys)
    assert "1 of 5 preference rows are invalid" in err
    assert "row 2, field 'chosen'" in err and "--on-bad-rows skip" in err
    assert not out.exists()

    assert _eval(*common, "--on-bad-rows", "skip", "--max-pairs", 3) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_pairs"] == 3 and metrics["n_skipped"] == 1
    assert metrics["n_not_scored"] == 1  # the fourth valid pair, past --max-pairs
    assert metrics["skipped_by_reason"] == {"empty_response": 1}
    lines = _lines(out / "forecasts.jsonl")
    assert [x["row"] for x in lines] == [0, 1, 3]
    # the policy is its own reference: every margin is exactly 0, every forecast ½
    assert all(x["margin"] == 0.0 and x["forecast"] == 0.5 for x in lines)
    (bad,) = json.loads((out / "validation.json").read_text())["data"]["bad_rows"]
    assert (bad["row"], bad["field"], bad["code"]) == (2, "chosen", "empty_response")
    assert "row 2, field 'chosen'" in (out / "report.md").read_text()


def test_the_data_reference_log_probs_must_cover_every_pair(tmp_path, capsys, monkeypatch):
    """Validation drops a truncated response's ``ref_*_logps`` (they are of the whole
    response): without --reference such a pair has no reference, which is said before the
    weights load."""
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    refs = {"ref_chosen_logps": -3.0, "ref_rejected_logps": -4.0}
    rows = [
        {"prompt": "a", "chosen": "b", "rejected": "c", **refs},
        {"prompt": "a", "chosen": "b", "rejected": "cccccccccc", **refs},  # cut at 6 tokens
    ]
    data = write_jsonl(rows, tmp_path / "pairs.jsonl")
    args = ("--model", "tiny", "--data", data, "--output-dir", tmp_path / "out")
    assert _eval(*args, "--max-length", 6) == 2
    err = _refused(capsys)
    assert "--reference: 1 of 2 pairs have no reference log-probs of their own" in err
    assert not (tmp_path / "out").exists()


def test_a_run_folder_scores_against_its_model_not_the_data_reference_columns(lora_run, tmp_path):
    """A LoRA dpo run trained against its base model, never the data's reference columns:
    evaluating the run on a file that carries them (wrong ones here) gives the run's numbers."""
    run, data = lora_run
    after = json.loads((run / "eval_results.json").read_text())["after"]
    refs = {"ref_chosen_logps": -3.0, "ref_rejected_logps": -40.0}
    rows = [{**row, **refs} for row in _lines(data)]
    with_columns = write_jsonl(rows, tmp_path / "with_columns.jsonl")
    out = tmp_path / "out"
    assert _eval("--model", run, "--data", with_columns, "--output-dir", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reference"]["source"] == "run"
    assert metrics["metrics"]["accuracy"] == after["accuracy"]
    assert metrics["metrics"]["ece"] == pytest.approx(after["ece"], abs=1e-5)
    assert "ref_rejected_logps are not read" in (out / "report.md").read_text()


def _full_run(folder: Path, rows: list[dict]) -> Path:
    """A 2-step full fine-tuning DPO run on tiny (reference auto: precomputed), on ``rows``."""
    from smoothalign.train import DPOConfig, run_dpo

    data = write_jsonl(rows, folder / "pairs.jsonl")
    config = DPOConfig(
        model="tiny", data=str(data), eval_data=str(data), output_dir=str(folder / "run"),
        lora=False, beta=0.5, max_length=32, smoothing="none", batch_size=4, max_steps=2,
        learning_rate=5e-3, lr_warmup_steps=0, logging_steps=1, eval_samples=0,
        max_eval_pairs=0, report=False,
    )  # fmt: skip
    run_dpo(config)
    return folder / "run"


def test_a_full_fine_tuning_run_scores_with_the_data_columns_it_read(tmp_path):
    """A full fine-tuning dpo run (reference auto) reads the data's reference columns where
    every pair has them: scored alike, its forecasts are the run's own numbers, although
    those columns (made up here) are not what the base model gives."""
    refs = {"ref_chosen_logps": -3.0, "ref_rejected_logps": -40.0}
    rows = [{**r, **refs} for r in synthetic_rows(12, seed=2, flip_rate=0.25)]
    run = _full_run(tmp_path, rows)
    after = json.loads((run / "eval_results.json").read_text())["after"]
    assert after["accuracy"] == 0.0  # the made-up reference: h ≈ β·(Δ log π − 37) < 0
    out = tmp_path / "out"
    assert _eval("--model", run, "--data", tmp_path / "pairs.jsonl", "--output-dir", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reference"] == {"source": "run", "model": None, "model_loaded": None}
    for key in ("accuracy", "ece", "rms", "margin_mean"):
        assert metrics["metrics"][key] == pytest.approx(after[key], abs=1e-5), key
    assert "as the DPO run read them" in (out / "report.md").read_text()

    # a file where some pair has none: the run would not read them; its model serves
    partial = write_jsonl(
        [rows[0], {k: v for k, v in rows[1].items() if k not in refs}],
        tmp_path / "partial.jsonl",
    )
    out2 = tmp_path / "out2"
    assert _eval("--model", run, "--data", partial, "--output-dir", out2) == 0
    metrics = json.loads((out2 / "metrics.json").read_text())
    assert metrics["reference"]["model"] == "tiny"
    assert "(1 of 2 pairs) are not read" in (out2 / "report.md").read_text()


def test_a_run_that_did_not_read_the_columns_is_not_scored_with_those_of_its_held_out_rows(
    tmp_path,
):
    """dpo reads the data's reference columns only where every training and held-out row
    has them; eval preferences decided from the rows it scores, so a run whose held-out
    rows had them (made up here) and training rows did not, trained against its model, was
    scored against the columns. The run's data fingerprint records what it read: followed."""
    from smoothalign.train import DPOConfig, run_dpo

    refs = {"ref_chosen_logps": -3.0, "ref_rejected_logps": -40.0}
    rows = [
        {**r, "split": "train"} if i < 12 else {**r, "split": "eval", **refs}
        for i, r in enumerate(synthetic_rows(16, seed=2, flip_rate=0.25))
    ]
    data = write_jsonl(rows, tmp_path / "pairs.jsonl")
    run_dpo(DPOConfig(
        model="tiny", data=str(data), output_dir=str(tmp_path / "run"), lora=False, beta=0.5,
        max_length=32, smoothing="none", batch_size=4, max_steps=2, learning_rate=5e-3,
        lr_warmup_steps=0, eval_samples=0, max_eval_pairs=0, report=False,
    ))  # fmt: skip
    run = tmp_path / "run"
    after = json.loads((run / "eval_results.json").read_text())["after"]
    assert after["accuracy"] > 0  # against the model; the columns would give 0
    out = tmp_path / "out"
    assert _eval("--model", run, "--data", data, "--split", "eval", "--output-dir", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_pairs"] == 4 and metrics["reference"]["model"] == "tiny"
    for key in ("accuracy", "ece", "rms", "margin_mean"):
        assert metrics["metrics"][key] == pytest.approx(after[key], abs=1e-5), key
    assert "not every row it trained on or held out had them" in (out / "report.md").read_text()


def test_skipped_rows_need_no_reference_columns(tmp_path):
    """The data's reference columns must cover the pairs scored, not the rows that
    --on-bad-rows skip drops."""
    refs = {"ref_chosen_logps": -3.0, "ref_rejected_logps": -4.0}
    rows = [
        {"prompt": "a", "chosen": "b", "rejected": "c", **refs},
        {"prompt": "a", "chosen": "  ", "rejected": "c"},  # bad, and without the columns
        {"prompt": "d", "chosen": "e", "rejected": "ff", **refs},
    ]
    data = write_jsonl(rows, tmp_path / "pairs.jsonl")
    out = tmp_path / "out"
    args = ("--model", "tiny", "--data", data, "--output-dir", out, "--on-bad-rows", "skip")
    assert _eval(*args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reference"]["source"] == "data"
    assert metrics["n_pairs"] == 2 and metrics["n_skipped"] == 1


def test_a_run_folder_is_refused_as_the_output_folder(lora_run, tmp_path, capsys, monkeypatch):
    """Writing the evaluation into a run's folder would replace its validation.json and
    report: refused before any work, the run's files untouched."""
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    run, data = lora_run
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert _eval("--model", run, "--data", data, "--output-dir", run) == 2
    assert "is a smoothalign run's folder" in _refused(capsys)
    assert _eval("--model", run, "--data", data, "--output-dir", run / "final") == 2
    assert "is a model folder" in _refused(capsys)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_data_folder_is_scored_by_its_held_out_files_and_split_chooses(tmp_path, capsys):
    """--data FOLDER read the folder's train files only: a user evaluating a policy on a
    data folder got the pairs it was trained on. Its held-out files (eval.*, as dpo reads
    them) are now the default, said in the printed summary; --split train / all read the
    others."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    train = [{"prompt": f"T{i}:", "chosen": " yes", "rejected": " no"} for i in range(4)]
    held = [{"prompt": f"E{i}:", "chosen": " yes", "rejected": " nope"} for i in range(3)]
    write_jsonl(train, folder / "train.jsonl")
    write_jsonl(held, folder / "eval.jsonl")

    def scored(*split: str) -> list[tuple[str, int]]:
        out = tmp_path / f"out_{'_'.join(split) or 'default'}"
        assert _eval("--model", "tiny", "--reference", "tiny", "--data", folder,
                     "--output-dir", out, *split) == 0  # fmt: skip
        return [(Path(x["file"]).name, x["row"]) for x in _lines(out / "forecasts.jsonl")]

    evals = [("eval.jsonl", i) for i in range(len(held))]
    trains = [("train.jsonl", i) for i in range(len(train))]
    assert scored() == evals
    said = capsys.readouterr().out
    assert "3 pairs" in said and "split: eval (--split auto, the default)" in said
    metrics = json.loads((tmp_path / "out_default" / "metrics.json").read_text())
    assert metrics["split"] == "eval" and metrics["config"]["split"] == "auto"
    assert "(eval split)" in (tmp_path / "out_default" / "report.md").read_text()
    assert scored("--split", "eval") == evals
    assert scored("--split", "train") == trains
    assert scored("--split", "all") == trains + evals


def test_split_picks_rows_by_a_split_column_and_refuses_what_the_data_lacks(tmp_path):
    from smoothalign.train.preference_eval import select_rows

    rows = [dict(r, split=s) for r, s in zip(ROWS, ["train", "eval", "train", "eval", "x"],
                                             strict=True)]  # fmt: skip
    data = write_jsonl(rows, tmp_path / "marked.jsonl")
    auto = select_rows(data)
    # the 'eval' rows, and the row with a bad value, which validation names as bad_split
    assert [r["_row"] for r in auto.rows] == [1, 3, 4] and auto.check_split
    assert auto.split == "eval" and "the 2 rows of 5 whose 'split' column says 'eval'" in auto.note
    assert [r["_row"] for r in select_rows(data, "train").rows] == [0, 2, 4]
    assert [r["_row"] for r in select_rows(data, "all").rows] == [0, 1, 2, 3, 4]
    assert not select_rows(data, "all").check_split

    plain = write_jsonl(ROWS, tmp_path / "plain.jsonl")  # marks no held-out rows
    assert select_rows(plain).split == "all" and len(select_rows(plain).rows) == len(ROWS)
    assert select_rows(plain, "train").split == "train"
    with pytest.raises(ValueError, match="split: eval, but .*plain.jsonl marks no held-out"):
        select_rows(plain, "eval")
    only_train = write_jsonl([dict(r, split="train") for r in ROWS], tmp_path / "t.jsonl")
    with pytest.raises(ValueError, match="no row of .*t.jsonl has split 'eval'"):
        select_rows(only_train, "eval")
    with pytest.raises(ValueError, match="split: 'test'; choose one of auto, eval, train, all"):
        select_rows(plain, "test")
    # a folder whose held-out set is ambiguous: its train files alone are no problem
    folder = tmp_path / "both"
    folder.mkdir()
    for name in ("train", "eval", "validation"):
        write_jsonl(ROWS, folder / f"{name}.jsonl")
    assert len(select_rows(folder, "train").rows) == len(ROWS)
    for split in ("auto", "eval", "all"):
        with pytest.raises(ValueError, match="both eval and validation files.*give it as --data"):
            select_rows(folder, split)


def test_a_bad_split_value_is_a_bad_row_named_by_row_and_field(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    rows = [dict(r, split=s) for r, s in zip(ROWS, ["train", "eval", "eval", "eval", "test"],
                                             strict=True)]  # fmt: skip
    data = write_jsonl(rows, tmp_path / "marked.jsonl")
    args = ("--model", "tiny", "--reference", "tiny", "--data", data)
    assert _eval(*args, "--output-dir", tmp_path / "o1") == 2
    assert "marked.jsonl row 4, field 'split'" in _refused(capsys)
    assert _eval(*args, "--output-dir", tmp_path / "o2", "--on-bad-rows", "skip") == 0
    lines = _lines(tmp_path / "o2" / "forecasts.jsonl")
    assert [x["row"] for x in lines] == [1, 2, 3]


def test_truncation_warnings_call_only_held_out_rows_held_out(tmp_path):
    """The console's truncation warning called every scored row held-out, the rows of
    --split train (the pairs the policy trained on) too: it now says held-out only where
    the rows scored are the held-out ones."""
    import warnings

    folder = tmp_path / "pairs"
    folder.mkdir()
    long = " and so on" * 4
    write_jsonl([{"prompt": f"T{i}:", "chosen": long, "rejected": " no"} for i in range(4)],
                folder / "train.jsonl")  # fmt: skip
    write_jsonl([{"prompt": f"E{i}:", "chosen": long, "rejected": " no"} for i in range(3)],
                folder / "eval.jsonl")  # fmt: skip

    def said(split: str) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert _eval("--model", "tiny", "--reference", "tiny", "--data", folder,
                         "--max-length", "20", "--split", split,
                         "--output-dir", tmp_path / f"out_{split}") == 0  # fmt: skip
        return [str(w.message) for w in caught if "cut to fit" in str(w.message)]

    (on_train,) = said("train")
    assert on_train.startswith("preference data: 4 of 4 kept pairs")
    (on_eval,) = said("eval")
    assert on_eval.startswith("held-out preference data: 3 of 3 kept pairs")


def test_rows_the_run_skipped_are_not_counted_as_trained_on(tmp_path, monkeypatch):
    """The warning on scored rows the run trained on counted every row of its --data not
    held out, the rows it skipped as bad (its validation.json's) too: a prompt too long
    for the run's max_length, scored here with a larger one, was called trained on."""
    from smoothalign.train import DPOConfig, run_dpo

    monkeypatch.chdir(tmp_path)
    rows = synthetic_rows(20, seed=3, flip_rate=0.25)
    rows.append({"prompt": "x" * 80, "chosen": " yes", "rejected": " no"})  # row 20
    data = write_jsonl(rows, tmp_path / "pairs.jsonl")
    run_dpo(DPOConfig(
        model="tiny", data="pairs.jsonl", output_dir="run", lora=False, max_length=32,
        smoothing="none", batch_size=4, max_steps=1, lr_warmup_steps=0, eval_samples=0,
        max_eval_pairs=0, eval_fraction=0.25, report=False, on_bad_rows="skip",
    ))  # fmt: skip
    skipped = json.loads((tmp_path / "run" / "validation.json").read_text())["train"]
    assert [b["row"] for b in skipped["bad_rows"]] == [20]
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="15 of the 21 rows scored are rows the run"):
        assert _eval("--model", tmp_path / "run", "--data", data, "--split", "all",
                     "--max-length", "128", "--output-dir", out) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_pairs"] == 21  # the skipped row is scored here, but was not trained on


def test_a_missing_reference_model_is_named_as_reference(tmp_path, capsys, monkeypatch):
    """A --reference that is no model was reported as "model '…'", as if --model were wrong."""
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    data = write_jsonl(ROWS, tmp_path / "pairs.jsonl")
    missing = tmp_path / "no-such-model"
    args = ("--model", "tiny", "--data", data, "--output-dir", tmp_path / "out")
    assert _eval(*args, "--reference", missing) == 2
    assert f"--reference: model '{missing}': not a built-in model" in _refused(capsys)


def test_a_run_folder_scores_the_rows_its_split_json_held_out(tmp_path, monkeypatch):
    """A run trained with the seeded holdout on the file given: --split auto and eval score
    exactly the rows its split.json lists as held out (the file named relative to the run's
    working_dir, here absolute), giving the run's own "after" numbers; --split all scores
    every row and warns how many the run trained on. Another copy of the file is scored by
    what it marks (nothing: every row), the rows trained on counted only for the run's file."""
    import shutil

    from smoothalign.train import DPOConfig, run_dpo

    monkeypatch.chdir(tmp_path)
    write_jsonl(synthetic_rows(20, seed=3, flip_rate=0.25), tmp_path / "pairs.jsonl")
    run_dpo(DPOConfig(
        model="tiny", data="pairs.jsonl", output_dir="run", lora=False, beta=0.5,
        max_length=32, smoothing="none", batch_size=4, max_steps=2, learning_rate=5e-3,
        lr_warmup_steps=0, logging_steps=1, eval_samples=0, max_eval_pairs=0,
        eval_fraction=0.25, report=False,
    ))  # fmt: skip
    run, data = tmp_path / "run", tmp_path / "pairs.jsonl"
    split = json.loads((run / "split.json").read_text())
    assert split["split"] == "seeded holdout" and split["n_held_out"] == 5
    held = sorted(x["row"] for x in split["held_out"])
    assert held != list(range(5))  # seeded: not simply the first rows
    after = json.loads((run / "eval_results.json").read_text())["after"]
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the data named otherwise than the run did
    for option in ("auto", "eval"):
        out = tmp_path / f"out-{option}"
        assert _eval("--model", run, "--data", data, "--split", option, "--output-dir", out) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["split"] == "eval" and "split.json" in metrics["split_note"]
        lines = _lines(out / "forecasts.jsonl")
        assert sorted(x["row"] for x in lines) == held
        assert {x["file"] for x in lines} == {str(data)}
        got = metrics["metrics"]
        assert got["n_pairs"] == after["n_pairs"] == 5
        for key in ("accuracy", "accuracy_true"):
            assert got[key] == after[key], key
        for key in ("ece", "rms", "ece_true", "kl_true", "margin_mean"):
            assert got[key] == pytest.approx(after[key], abs=1e-5), key
    out = tmp_path / "out-all"
    with pytest.warns(UserWarning, match="15 of the 20 rows scored are rows the run"):
        assert _eval("--model", run, "--data", data, "--split", "all", "--output-dir", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_pairs"] == 20 and any("trained on" in n for n in metrics["notes"])
    copy = shutil.copy(data, tmp_path / "copy.jsonl")  # other files: today's behaviour
    out = tmp_path / "out-copy"
    assert _eval("--model", run, "--data", copy, "--output-dir", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "all" and metrics["n_pairs"] == 20
    assert not any("trained on" in n for n in metrics["notes"])
