"""`--smoothing` left out follows `--loss` (SPEC §2: smoothing does not apply to robust, ipo
and hinge), is recorded resolved, and a resume compares it like with like; an explicit
smoothing the loss cannot take is still refused."""

from __future__ import annotations

import json

import pytest

from smoothalign.cli import build_parser, main
from smoothalign.train.checkpoints import check_resume_config
from smoothalign.train.cli import config_from_args
from smoothalign.train.config import DPOConfig

# SPEC §2: the losses smoothing applies to, and those it does not
SMOOTHED = ("sigmoid", "cals")
UNSMOOTHED = ("robust", "ipo", "hinge")


def _config(loss: str, **kw) -> DPOConfig:
    if loss == "robust":
        kw.setdefault("flip_rate", 0.1)
    return DPOConfig(loss=loss, **kw)


@pytest.mark.parametrize("loss", SMOOTHED + UNSMOOTHED)
def test_the_smoothing_left_out_follows_the_loss_and_is_recorded(loss):
    config = _config(loss)
    expected = "cals-l2" if loss in SMOOTHED else "none"
    assert config.smoothing == expected
    assert config.to_dict()["smoothing"] == expected  # what config.json holds
    assert config.smoothing_policy().name.startswith(expected)


@pytest.mark.parametrize("loss", UNSMOOTHED)
def test_the_cli_runs_a_loss_without_smoothing_by_itself(loss):
    argv = ["dpo", "--loss", loss] + (["--flip-rate", "0.1"] if loss == "robust" else [])
    config = config_from_args(build_parser().parse_args(argv))
    assert (config.loss, config.smoothing) == (loss, "none")


@pytest.mark.parametrize("loss", UNSMOOTHED)
@pytest.mark.parametrize("smoothing", ["cals-l2", "cals-l0", "constant:0.1", "oracle-l2"])
def test_an_explicit_smoothing_the_loss_cannot_take_is_refused(loss, smoothing):
    with pytest.raises(ValueError, match=rf"^smoothing: the '{loss}' loss has no label smoothing"):
        _config(loss, smoothing=smoothing)


def test_the_cli_refuses_an_explicit_smoothing_naming_the_flag(capsys, monkeypatch):
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    assert main(["dpo", "--loss", "ipo", "--smoothing", "cals-l2"]) == 2
    err = capsys.readouterr().err
    assert "--smoothing: the 'ipo' loss has no label smoothing" in err
    assert "got 'cals-l2'" in err


def test_explicit_smoothing_with_a_loss_it_applies_to_is_kept():
    assert DPOConfig(loss="sigmoid", smoothing="none").smoothing == "none"
    assert DPOConfig(loss="cals", smoothing="cals-l0").smoothing == "cals-l0"
    with pytest.raises(ValueError, match="loss='cals' needs"):
        DPOConfig(loss="cals", smoothing="none")


def test_a_resume_compares_the_resolved_smoothing(tmp_path):
    """A checkpoint of `--loss ipo --smoothing none` resumes with `--loss ipo` alone (the
    same run), and one of `--loss sigmoid` (CALS-ℓ2 by default) refuses a resume with
    `--loss ipo` (no smoothing by default), naming both changes and the flags to give."""
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps(DPOConfig(loss="ipo", smoothing="none").to_dict()))
    check_resume_config(saved, DPOConfig(loss="ipo").to_dict())  # no refusal
    saved.write_text(json.dumps(DPOConfig(loss="sigmoid").to_dict()))
    check_resume_config(saved, DPOConfig(loss="sigmoid", smoothing="cals-l2").to_dict())
    with pytest.raises(ValueError, match="smoothing 'cals-l2' -> 'none'") as refusal:
        check_resume_config(saved, DPOConfig(loss="ipo").to_dict())
    assert "--loss sigmoid --smoothing cals-l2" in str(refusal.value)


def test_a_run_with_ipo_alone_trains_and_reports_its_smoothing(tmp_path):
    from dpo_helpers import synthetic_rows, write_jsonl
    from smoothalign.train import run_dpo

    data = write_jsonl(synthetic_rows(16, seed=1), tmp_path / "train.jsonl")
    held_out = write_jsonl(synthetic_rows(8, seed=2), tmp_path / "eval.jsonl")
    out = tmp_path / "run"

    run_dpo(
        DPOConfig(
            model="tiny", data=str(data), eval_data=str(held_out), output_dir=str(out),
            loss="ipo", lora=False, batch_size=8, max_steps=1, logging_steps=1,
            eval_samples=0, max_length=32, max_eval_pairs=8, report=True,
        )
    )  # fmt: skip
    assert json.loads((out / "config.json").read_text())["smoothing"] == "none"
    head = (out / "report.md").read_text().split("## ")[0]
    assert "smoothing `none` (the default with --loss ipo)" in head
    assert "loss: `ipo`" in head
    assert "\n- model: tiny (random weights" in head


def test_the_report_says_when_the_smoothing_is_not_the_loss_default():
    from smoothalign.train.report import objective_note

    assert objective_note(DPOConfig(smoothing="none").to_dict()).endswith("smoothing `none`")
    assert objective_note(DPOConfig().to_dict()).endswith(
        "smoothing `cals-l2` (the default with --loss sigmoid)"
    )
