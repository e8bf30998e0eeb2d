"""--trust-remote-code / --no-trust-remote-code in the commands that load a model without
training it (eval preferences, eval calibration, analyze head, study sft-calibration), as
the training commands take it: off by default, passed to the model loader, recorded in the
results' config. A model trained with `dpo --trust-remote-code` needs it to be evaluated."""

from __future__ import annotations

import json

import pytest

from smoothalign.cli import build_parser, main


class _Loaded(Exception):
    """Raised by the stand-in loader: the command got as far as loading the model."""


@pytest.fixture
def loader_calls(monkeypatch):
    """Replace the model loader by one that records its keywords and stops the command."""
    import smoothalign.models

    calls = []

    def load(name, **kw):
        calls.append(kw)
        raise _Loaded(name)

    monkeypatch.setattr(smoothalign.models, "load_model_and_tokenizer", load)
    monkeypatch.setenv("SMOOTHALIGN_DEBUG", "1")  # the exception reaches the test
    return calls


def _quiz(tmp_path):
    path = tmp_path / "quiz.jsonl"
    path.write_text(json.dumps({"question": "1 + 1?", "options": ["2", "3"], "answer": 0}) + "\n")
    return path


def _pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "P:", "chosen": "ab", "rejected": "cd"}) + "\n")
    return path


def _argv(command, tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = ["--output-dir", str(tmp_path / "out")]
    if command == "eval preferences":
        return ["eval", "preferences", "--model", "tiny", "--reference", "tiny", "--data",
                str(_pairs(tmp_path)), "--no-progress", *out]  # fmt: skip
    if command == "eval calibration":
        return ["eval", "calibration", "--model", "tiny", "--tasks", str(_quiz(tmp_path)),
                "--no-progress", *out]  # fmt: skip
    return ["analyze", "head", "--model", "tiny", "--texts", "1", *out]


COMMANDS = ("eval preferences", "eval calibration", "analyze head")


@pytest.mark.parametrize("command", COMMANDS)
def test_the_flag_and_its_no_form_parse_default_off(command, tmp_path):
    argv = _argv(command, tmp_path)
    parse = build_parser().parse_args
    assert parse(argv).trust_remote_code is False
    assert parse([*argv, "--trust-remote-code"]).trust_remote_code is True
    assert (
        parse([*argv, "--trust-remote-code", "--no-trust-remote-code"]).trust_remote_code is False
    )


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("flag", [None, "--trust-remote-code", "--no-trust-remote-code"])
def test_the_flag_reaches_the_model_loader(command, flag, tmp_path, loader_calls):
    argv = _argv(command, tmp_path) + ([flag] if flag else [])
    with pytest.raises(_Loaded):
        main(argv)
    assert loader_calls and loader_calls[0]["trust_remote_code"] is (flag == "--trust-remote-code")


@pytest.mark.parametrize("flag", [None, "--trust-remote-code"])
def test_eval_calibration_and_analyze_head_record_it(flag, tmp_path):
    """The results' config says how the model was loaded ('tiny' has no custom code, so
    either setting loads it)."""
    extra = [flag] if flag else []
    assert main(_argv("eval calibration", tmp_path / "c") + ["--scorer", "option"] + extra) == 0
    results = json.loads((tmp_path / "c" / "out" / "results.json").read_text())
    assert results["config"]["trust_remote_code"] is bool(flag)
    assert main(_argv("analyze head", tmp_path / "h") + ["--max-tokens", "16"] + extra) == 0
    head = json.loads((tmp_path / "h" / "out" / "head.json").read_text())
    assert head["config"]["trust_remote_code"] is bool(flag)


@pytest.mark.parametrize("flag", [None, "--trust-remote-code", "--no-trust-remote-code"])
def test_the_sft_calibration_study_passes_it_to_its_sft_runs_and_evaluations(
    flag, tmp_path, monkeypatch
):
    from smoothalign.experiments import sft_calibration
    from test_sft_calibration_study import evaluated_argv

    on = flag == "--trust-remote-code"
    args = build_parser().parse_args(
        ["study", "sft-calibration", "--output-dir", str(tmp_path), "--seeds", "1"]
        + ([flag] if flag else [])
    )
    assert args.trust_remote_code is on
    runs = sft_calibration.sft_runs(args, tmp_path / "sft_train.jsonl")
    assert [config.trust_remote_code for *_, config in runs] == [on] * len(runs)

    argv = evaluated_argv(tmp_path, monkeypatch, args)
    assert ("--trust-remote-code" in argv) is on
    # how the model is read, not what is scored: an earlier evaluation's stamp still holds
    stamp = json.loads((tmp_path / "eval" / "evaluated_with.json").read_text())
    assert "--trust-remote-code" not in stamp["argv"]
