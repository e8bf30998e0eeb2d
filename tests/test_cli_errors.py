"""What a user sees when the input is wrong: one line naming the command and the problem,
exit status 2, no traceback — and the input is checked before any model is loaded."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from smoothalign.cli import main

MISSING = "/no/such/file.jsonl"

# (argv, text the message must contain). Every model here is a path that does not exist
# either: if the command loaded its model first, the error would name the model instead.
CASES = [
    # an option's refusal names its flag and the range it must lie in
    (["dpo", "--beta", "-1"], "--beta: must be > 0, got -1.0"),
    (["dpo", "--sft-weight", "-1"], "--sft-weight: must be >= 0, got -1.0"),
    (["dpo", "--eval-fraction", "1.5"], "--eval-fraction: must be in [0, 1), got 1.5"),
    (["sft", "--max-steps", "0"], "--max-steps: must be > 0, got 0"),
    (["reward", "--save-total-limit", "0"], "--save-total-limit: must be >= 1, got 0"),
    (["dpo", "--loss", "robust", "--smoothing", "none"], "--flip-rate: the 'robust' loss"),
    (["dpo", "--model", "/no/such/model", "--data", MISSING], MISSING),
    (["dpo", "--model", "/no/such/model", "--eval-data", MISSING], MISSING),
    (["reward", "--model", "/no/such/model", "--data", MISSING], MISSING),
    (["sft", "--model", "/no/such/model", "--data", MISSING], MISSING),
    (["sft", "--label-smoothing", "2"], "--label-smoothing: must be in [0, 1], got 2.0"),
    # the policy's constant α is named by the flag that set it, not as "alpha"
    (
        ["dpo", "--model", "/no/such/model", "--smoothing", "constant:0.6"],
        "--smoothing: 'constant:0.6': the constant α must lie in [0, 0.5], got 0.6",
    ),
    (
        ["reward", "--model", "/no/such/model", "--smoothing", "constant:nan"],
        "--smoothing: 'constant:nan': the constant α must lie in [0, 0.5], got nan",
    ),
    (["dpo", "--beta", "inf"], "--beta: must be a finite number"),
    (
        ["dpo", "--loss", "robust", "--smoothing", "none", "--flip-rate", "0.7"],
        "--flip-rate: must lie",
    ),
    (
        ["rank-calibrate", "--reward-model", "/no/such/reward_model", "--learning-rate", "inf"],
        "--learning-rate: must be a finite number",
    ),
    (["rank-calibrate", "--reward-model", "/no/such/reward_model"], "/no/such/reward_model"),
    (["eval", "calibration", "--model", "/no/such/model", "--tasks", MISSING], MISSING),
    (["sft", "--model", "/no/such/model", "--seed", "-1"], "--seed: must be in [0, 2**32), got -1"),
    # LoRA options that would change nothing
    (["dpo", "--model", "/no/such/model", "--no-lora", "--lora-r", "8"], "--lora-r: a LoRA option"),
    (["reward", "--model", "/no/such/model", "--lora-alpha", "8"], "--lora-alpha: a LoRA option"),
    # schedules the run could not build: refused before the model (and the earlier results)
    (
        ["dpo", "--model", "/no/such/model", "--lr-scheduler", "warmup_stable_decay"],
        "--lr-scheduler: 'warmup_stable_decay' cannot be used here",
    ),
    (
        ["sft", "--model", "/no/such/model", "--lr-scheduler", "cosine_with_min_lr"],
        "--lr-scheduler: 'cosine_with_min_lr' cannot be used here",
    ),
    (
        [
            "reward",
            "--model",
            "/no/such/model",
            "--lr-scheduler",
            "polynomial",
            "--learning-rate",
            "1e-8",
        ],
        "must be smaller than initial lr",
    ),
    (
        [
            "dpo",
            "--model",
            "/no/such/model",
            "--lr-scheduler",
            "constant",
            "--lr-warmup-steps",
            "3",
        ],
        "'constant' ignores --lr-warmup-steps (3)",
    ),
]


@pytest.mark.parametrize(("argv", "needle"), CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_bad_input_is_one_line_and_status_2(argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    code = main([*argv, "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    command = " ".join(a for a in argv[:2] if not a.startswith("-"))
    first = err.splitlines()[0]
    assert first.startswith(f"smoothalign {command}: "), err
    assert needle in err
    assert "Traceback" not in err
    assert "/no/such/model" not in err  # the model was never touched
    assert not (tmp_path / "out").exists()  # a refused run leaves no output folder behind
    saved = err.split("(traceback: ")[1].split(";")[0]
    text = Path(saved).read_text()
    # the saved exception names an option as the library does (lr_scheduler:), the one
    # line above as the command's flag (--lr-scheduler:)
    assert text.startswith("Traceback") and needle.split(": ", 1)[-1] in text
    Path(saved).unlink()


def test_debug_env_shows_the_exception(tmp_path, monkeypatch):
    monkeypatch.setenv("SMOOTHALIGN_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="file.jsonl"):
        main(["dpo", "--model", "/no/such/model", "--data", MISSING, "--output-dir", str(tmp_path)])


def test_a_bug_is_not_disguised_as_bad_input(monkeypatch, tmp_path):
    """Only input errors (OSError, ValueError, bad rows) become one line; anything else
    keeps its traceback."""
    import smoothalign.train.run as dpo_run

    def broken(config, **_):
        raise RuntimeError("internal bug")

    monkeypatch.setattr(dpo_run, "run_dpo", broken)
    with pytest.raises(RuntimeError, match="internal bug"):
        main(["dpo", "--output-dir", str(tmp_path)])


def test_a_command_group_alone_prints_its_own_commands(capsys):
    assert main(["data"]) == 2
    out = capsys.readouterr().out
    assert "confidence" in out and "rank-calibrate" not in out
    assert main([]) == 2
    assert "rank-calibrate" in capsys.readouterr().out


def test_an_empty_data_file_is_named(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["dpo", "--eval-data", str(empty), "--output-dir", str(tmp_path / "o")]) == 2
    assert f"--eval-data: {empty} holds no rows" in capsys.readouterr().err
    assert main(["sft", "--data", str(empty), "--output-dir", str(tmp_path / "o")]) == 2
    assert f"no SFT rows to validate in {empty}" in capsys.readouterr().err
    assert main(["reward", "--data", str(empty), "--output-dir", str(tmp_path / "o")]) == 2
    assert f"no preference rows to validate in {empty}" in capsys.readouterr().err


def test_an_empty_path_is_refused_not_read_as_the_current_folder(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["dpo", "--data", ""])
    assert exit_.value.code == 2
    assert "argument --data: an empty value" in capsys.readouterr().err


def test_a_truncated_safetensors_model_is_bad_input(tmp_path, capsys, monkeypatch):
    """A damaged model file is the user's input: one line and status 2, not a traceback."""
    from smoothalign.models.loading import build_tiny_model, build_tiny_tokenizer

    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    folder = tmp_path / "model"
    build_tiny_model().save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code = main(["dpo", "--model", str(folder), "--output-dir", str(tmp_path / "out"),
                 "--max-steps", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert any(line.startswith("smoothalign dpo: ") for line in err.splitlines()), err
    assert "Traceback" not in err
    Path(err.split("(traceback: ")[1].split(";")[0]).unlink()


@pytest.mark.parametrize("command", ["dpo", "sft", "reward"])
def test_bad_rows_are_reported_before_the_weights_load(command, tmp_path, capsys, monkeypatch):
    """The tokenizer loads without the weights, so the data is checked first: with the
    model's weights missing altogether, the error is still about the bad row."""
    import json

    from smoothalign.models.loading import build_tiny_model, build_tiny_tokenizer

    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    folder = tmp_path / "model"
    build_tiny_model().save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    (folder / "model.safetensors").unlink()  # loading the weights would fail
    good = {"prompt": "q:", "chosen": " a", "rejected": " b", "completion": " a"}
    bad = {"prompt": "q:", "chosen": "  ", "rejected": " b", "completion": "  "}
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in (good, bad, good)))
    code = main([command, "--model", str(folder), "--data", str(data),
                 "--output-dir", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert "rows.jsonl row 1" in err and "model.safetensors" not in err, err
    Path(err.split("(traceback: ")[1].split(";")[0]).unlink()


@pytest.mark.parametrize("command", ["dpo", "reward"])
def test_pairs_all_made_identical_by_truncation_are_refused(command, tmp_path, capsys, monkeypatch):
    """Every pair differs only past --max-length: each one's margin would be 0 at every
    step, so there is nothing to learn; the run is refused as bad data (before the
    weights load), naming the cause and the option to raise."""
    import json

    from smoothalign.models.loading import build_tiny_model, build_tiny_tokenizer

    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    folder = tmp_path / "model"
    build_tiny_model().save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    (folder / "model.safetensors").unlink()  # loading the weights would fail
    shared = " the same long prefix here, then "
    rows = [
        {"prompt": f"P{i}:", "chosen": shared + "good", "rejected": shared + "bad", "p_chosen": 0.8}
        for i in range(10)
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main([command, "--model", str(folder), "--data", str(data), "--max-length", "20",
                 "--output-dir", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(
        f"smoothalign {command}: --data: all [0-9]+ training pairs have identical", err
    )
    assert "after truncation to max_length 20" in err and "--max-length" in err, err
    Path(err.split("(traceback: ")[1].split(";")[0]).unlink()


def test_rank_reports_bad_prompts_before_any_weights_load(tmp_path, capsys, monkeypatch):
    """rank-calibrate checks its prompts with the policy's tokenizer alone, before the
    preference model or the policy loads: with both models' weights missing, the error is
    about the bad prompt."""
    import json

    from smoothalign.models.loading import build_tiny_model, build_tiny_tokenizer

    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    folder = tmp_path / "model"
    build_tiny_model().save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "q: a"}, {"prompt": "   "}, {"prompt": "q: b"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["rank-calibrate", "--policy", str(folder), "--reward-model", str(folder),
                 "--prompts", str(prompts), "--output-dir", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert "prompts.jsonl row 1" in err and "model.safetensors" not in err, err
    Path(err.split("(traceback: ")[1].split(";")[0]).unlink()


def test_rank_refuses_a_causal_lm_as_preference_model_before_the_policy_loads(
    tmp_path, capsys, monkeypatch
):
    """The preference model's class is read from its config, after the prompts and before
    any weights: the policy's weights are missing here, and the error is still about the
    preference model."""
    import json

    from smoothalign.models.loading import build_tiny_model, build_tiny_tokenizer

    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    policy, lm = tmp_path / "policy", tmp_path / "lm"
    for folder in (policy, lm):
        build_tiny_model().save_pretrained(folder)
        build_tiny_tokenizer().save_pretrained(folder)
    (policy / "model.safetensors").unlink()  # loading the policy's weights would fail
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"q: {c}", "reference": f" {c}"} for c in "abcd"]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["rank-calibrate", "--policy", str(policy), "--reward-model", str(lm),
                 "--prompts", str(prompts), "--output-dir", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert "LlamaForCausalLM, not a preference model" in err, err
    Path(err.split("(traceback: ")[1].split(";")[0]).unlink()


def test_devices_this_machine_lacks_are_refused_by_name():
    import torch

    from smoothalign._checks import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    for bad, words in (("mps", "use auto, cpu, cuda"), ("bogus", "is not a device")):
        with pytest.raises(ValueError, match=words):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no usable CUDA device"):
            resolve_device("cuda:0")


def test_the_reward_study_lets_option_errors_reach_the_cli(monkeypatch):
    """SMOOTHALIGN_DEBUG=1 raises a bad option's error, as for every other command."""
    monkeypatch.setenv("SMOOTHALIGN_DEBUG", "1")
    with pytest.raises(ValueError, match="n_train"):
        main(["study", "reward", "--quick", "--n-train", "-5"])


def test_a_constant_schedule_alone_is_accepted(tmp_path):
    """The default warm-up is not an ask: only an explicit one is refused with constant."""
    from smoothalign.train.common import check_scheduler
    from smoothalign.train.config import DPOConfig

    config = DPOConfig(lr_scheduler="constant")
    check_scheduler(config)
    assert config.lr_warmup_steps == 0  # recorded as what runs: constant has no warm-up
    with pytest.raises(ValueError, match="'constant' ignores lr_warmup_steps .*lr_warmup_steps=0"):
        check_scheduler(DPOConfig(lr_scheduler="constant", lr_warmup_steps=3))


@pytest.mark.parametrize(
    "make, python, cli",
    [
        (lambda: _dpo(loss="robust"), "needs flip_rate ε", "needs --flip-rate ε"),
        (
            lambda: _dpo(loss="cals", smoothing="none"),
            "loss='cals' needs smoothing='cals-l0'",
            "--loss cals needs --smoothing cals-l0",
        ),
        (
            lambda: _dpo(loss="ipo", smoothing="cals-l2"),
            "leave smoothing out (or give none), or use loss='sigmoid'",
            "leave --smoothing out (or give none), or use --loss sigmoid",
        ),
        (lambda: _dpo(reference="adapter-disabled", lora=False), "needs lora=True", "needs --lora"),
        (
            lambda: _dpo(lora=False, lora_r=4),
            "LoRA is off (pass lora=True",
            "LoRA is off (pass --lora",
        ),
        (
            lambda: _reward(posterior_grad=True),
            "only meaningful with posterior=True",
            "only meaningful with --posterior",
        ),
        (
            lambda: _reward(labels="x.jsonl"),
            "a labels file needs data ",
            "a labels file needs --data ",
        ),
    ],
)
def test_config_refusals_name_options_as_their_reader_types_them(make, python, cli):
    """The configs' refusals name a Python keyword from the API and a flag from the command
    line (``_options.option``): "--flip-rate" means nothing to a caller of ``DPOConfig``."""
    from smoothalign._options import command_flags

    with pytest.raises(ValueError) as from_python:
        make()
    assert python in str(from_python.value), str(from_python.value)
    flags = {
        "flip_rate": "--flip-rate",
        "smoothing": "--smoothing",
        "loss": "--loss",
        "lora": "--lora",
        "posterior": "--posterior",
        "data": "--data",
    }
    with command_flags(flags), pytest.raises(ValueError) as from_cli:
        make()
    assert cli in str(from_cli.value), str(from_cli.value)


def _dpo(**kw):
    from smoothalign.train.config import DPOConfig

    return DPOConfig(**kw)


def _reward(**kw):
    from smoothalign.reward.config import RewardConfig

    return RewardConfig(**kw)


def test_help_never_shows_a_none_default():
    """A None default means "see the help text" (e.g. "default 10; --quick: 2"); printing
    "(default: None)" beside it contradicted it."""

    from smoothalign.cli import COMMANDS, build_parser, leaf_parser

    parser = build_parser()
    for path, _, _ in COMMANDS:
        sub = leaf_parser(parser, path)
        text = sub.format_help()
        assert "(default: None)" not in text, path
        if path == ("dpo",):  # real defaults are still shown
            assert "(default: 0.1)" in " ".join(text.split())


def test_help_shows_list_defaults_as_they_are_typed():
    """`--tasks` / `--betas` showed their defaults as Python literals (`['mmlu']`,
    `(0.0, 0.1)`), which a user cannot type back."""

    from smoothalign.cli import COMMANDS, build_parser, leaf_parser

    parser = build_parser()
    helps = {}
    for path, _, _ in COMMANDS:
        sub = leaf_parser(parser, path)
        helps[path] = " ".join(sub.format_help().split())
        assert "(default: [" not in helps[path] and "(default: (" not in helps[path], path
    study = helps[("study", "sft-calibration")]
    assert "(default: phrase_relatedness similarities_abstraction)" in study
    assert "(default: 0,0.1)" in study
    assert "(default: letter option)" in helps[("eval", "calibration")]
    args = parser.parse_args(["study", "sft-calibration"])
    assert args.betas == (0.0, 0.1)  # the str default is parsed like a typed value


# Two runs' files share a base name: a bad row's message must say which of them is bad,
# by the path as the user gave it (relative here), for every command and file option.
_PAIR = {"prompt": "q:", "chosen": " a", "rejected": " b", "completion": " a"}
_BLANK = {"prompt": "q:", "chosen": "  ", "rejected": " b", "completion": "  "}
_PAIRS = [{**_PAIR, "pair_id": f"p{i}"} for i in range(3)]
_BAD_PAIRS = [_PAIRS[0], {**_BLANK, "pair_id": "p1"}, _PAIRS[2]]
_LABELS = [{"pair_id": f"p{i}", "p_chosen": 0.7} for i in range(3)]
_BAD_LABELS = [_LABELS[0], {"pair_id": "p1", "vote": 2}, _LABELS[2]]
_VOTES = [{**_PAIR, "votes_chosen": 2, "votes_total": 3} for _ in range(3)]
_BAD_VOTES = [_VOTES[0], {**_PAIR, "votes_chosen": 4, "votes_total": 3}, _VOTES[2]]
_PROMPTS = [{"prompt": "q: a"}, {"prompt": "q: b"}, {"prompt": "q: c"}]
_BAD_PROMPTS = [_PROMPTS[0], {"prompt": "   "}, _PROMPTS[2]]
_MODEL = "{model}"  # a tiny model folder without its weights: the data is read first

SAME_NAME_CASES = {
    "dpo --eval-data": (
        ["dpo", "--model", _MODEL, "--data", "runs/a/data.jsonl",
         "--eval-data", "runs/b/data.jsonl"],
        "runs/b/data.jsonl row 1, field 'chosen'",
    ),
    "dpo --data": (
        ["dpo", "--model", _MODEL, "--data", "runs/b/data.jsonl",
         "--eval-data", "runs/a/data.jsonl"],
        "runs/b/data.jsonl row 1, field 'chosen'",
    ),
    "dpo --data folder": (
        ["dpo", "--model", _MODEL, "--data", "runs/b"], "runs/b/data.jsonl row 1, field 'chosen'"
    ),
    "sft --eval-data": (
        ["sft", "--model", _MODEL, "--data", "runs/a/data.jsonl",
         "--eval-data", "runs/b/data.jsonl"],
        "runs/b/data.jsonl row 1, field 'completion'",
    ),
    "reward --eval-data": (
        ["reward", "--model", _MODEL, "--data", "runs/a/data.jsonl", "--labels",
         "runs/a/labels.jsonl", "--eval-data", "runs/b/data.jsonl", "--eval-labels",
         "runs/a/labels.jsonl"],
        "runs/b/data.jsonl row 1, field 'chosen'",
    ),
    "reward --labels": (
        ["reward", "--model", _MODEL, "--data", "runs/a/data.jsonl", "--labels",
         "runs/b/labels.jsonl"],
        "runs/b/labels.jsonl row 1, field 'vote'",
    ),
    "reward --eval-labels": (
        ["reward", "--model", _MODEL, "--data", "runs/a/data.jsonl", "--labels",
         "runs/a/labels.jsonl", "--eval-data", "runs/a/data.jsonl", "--eval-labels",
         "runs/b/labels.jsonl"],
        "runs/b/labels.jsonl row 1, field 'vote'",
    ),
    "rank-calibrate --eval-prompts": (
        ["rank-calibrate", "--policy", _MODEL, "--reward-model", _MODEL, "--prompts",
         "runs/a/prompts.jsonl", "--eval-prompts", "runs/b/prompts.jsonl"],
        "runs/b/prompts.jsonl row 1, field 'prompt'",
    ),
    "eval preferences --data": (
        ["eval", "preferences", "--model", _MODEL, "--reference", _MODEL, "--data",
         "runs/b/data.jsonl"],
        "runs/b/data.jsonl row 1, field 'chosen'",
    ),
    "data confidence --data": (
        ["data", "confidence", "--data", "runs/b/votes.jsonl", "--output", "out.jsonl"],
        "runs/b/votes.jsonl row 1, field 'votes_chosen'",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SAME_NAME_CASES))
def test_a_bad_row_names_its_file_by_path_not_base_name(case, tmp_path, capsys, monkeypatch):
    import json

    from smoothalign.models.loading import build_tiny_model, build_tiny_tokenizer

    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "model"
    build_tiny_model().save_pretrained(folder)
    build_tiny_tokenizer().save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    for run, bad in (("a", False), ("b", True)):
        files = {
            "data": _BAD_PAIRS if bad else _PAIRS,
            "labels": _BAD_LABELS if bad else _LABELS,
            "prompts": _BAD_PROMPTS if bad else _PROMPTS,
            "votes": _BAD_VOTES if bad else _VOTES,
        }
        (tmp_path / "runs" / run).mkdir(parents=True)
        for name, rows in files.items():
            text = "".join(json.dumps(r) + "\n" for r in rows)
            path = tmp_path / "runs" / run / f"{name}.jsonl"
            if case == "dpo --data folder" and name != "data":
                path = tmp_path / "elsewhere" / run / f"{name}.jsonl"  # one file in the folder
                path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    argv, needle = SAME_NAME_CASES[case]
    argv = [str(folder) if a == _MODEL else a for a in argv]
    if argv[0] != "data":
        argv += ["--output-dir", "out"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err, err
    assert "model.safetensors" not in err, err
    Path(err.split("(traceback: ")[1].split(";")[0]).unlink()


def test_eval_calibration_names_a_question_by_its_file_path(tmp_path, monkeypatch):
    """A question that cannot be scored is named by its file as given, not its base name
    (here in the data notes: the option scorer skips a question with an option too long)."""
    import json

    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "b").mkdir(parents=True)
    rows = [{"question": "Q?", "options": ["a", "b"], "answer": 0},
            {"question": "Q?", "options": ["a", "a much longer option text here"], "answer": 0}]  # fmt: skip
    Path("runs/b/long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["eval", "calibration", "--model", "tiny", "--tasks", "runs/b/long.jsonl",
            "--scorer", "option", "--max-length", "16", "--output-dir", "out", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    (note,) = json.loads(Path("out/results.json").read_text())["tasks"][0]["notes"]
    assert "not scored" in note and "runs/b/long.jsonl:2 (option 2 of 2: " in note, note


@pytest.mark.parametrize("command", ["dpo", "sft", "reward"])
def test_an_output_dir_that_is_a_file_is_named_before_the_model_loads(command, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    for out, said in ((afile, ""), (afile / "run", f" lies under {afile}, which")):
        argv = [command, "--model", "/no/such/model", "--output-dir", str(out)]
        assert main(argv) == 2
        first = capsys.readouterr().err.splitlines()[0]
        assert first == (
            f"smoothalign {command}: --output-dir {out}{said} is a file, not a folder; pass "
            "a folder (it is created if it does not exist)"
        )
    assert afile.read_text() == "not a folder\n"


@pytest.mark.parametrize("command", [["dpo"], ["sft"], ["reward"], ["analyze", "head"]])
def test_a_run_folder_without_final_as_model_says_so(command, tmp_path, capsys):
    """A run folder's config.json holds its options, not a model's: passed as --model before
    its training finished, it is named as such, not as a tokenizer that cannot be built."""
    import json

    run = tmp_path / "run"
    run.mkdir()
    record = {"model": "tiny", "output_dir": str(run), "working_dir": str(tmp_path), "lora": True}
    (run / "config.json").write_text(json.dumps(record))
    assert main([*command, "--model", str(run), "--output-dir", str(tmp_path / "out")]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith(f"smoothalign {' '.join(command)}: model '{run}': a smoothalign run ")
    assert "without final/" in first and "--resume latest" in first


@pytest.mark.parametrize(
    "command",
    [["study", "preference", "--quick"], ["study", "logreg", "--quick"],
     ["study", "reward", "--quick"], ["study", "preference", "--from-results", "R"],
     ["study", "sft-calibration", "--model", "tiny", "--steps", "1"]],
)  # fmt: skip
def test_a_study_output_dir_that_is_a_file_is_named_before_any_work(command, tmp_path, capsys):
    """Not `[Errno 17] File exists` / `Not a directory` from mkdir: the option, the path and
    the file in the way, before anything runs."""
    import json

    results = tmp_path / "results.json"
    study = {"command": "smoothalign study preference"}  # --from-results: the study's own
    results.write_text(json.dumps({**study, "runs": [], "config": {}}))
    command = [str(results) if a == "R" else a for a in command]
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    name = " ".join(command[:2])
    for out, said in ((afile, ""), (afile / "sub", f" lies under {afile}, which")):
        assert main([*command, "--output-dir", str(out)]) == 2
        first = capsys.readouterr().err.splitlines()[0]
        assert first == (
            f"smoothalign {name}: --output-dir {out}{said} is a file, not a folder; pass a "
            "folder (it is created if it does not exist)"
        )
    assert afile.read_text() == "not a folder\n"


@pytest.mark.parametrize(
    "command",
    [["eval", "calibration", "--model", "tiny", "--tasks", "/no/such/tasks.jsonl"],
     ["analyze", "head", "--model", "tiny"],
     ["rank-calibrate", "--reward-model", "/no/such/reward_model"]],
)  # fmt: skip
def test_an_output_dir_that_is_a_file_is_named_first_by_the_other_commands(
    command, tmp_path, capsys
):
    """eval calibration, analyze head and rank-calibrate check --output-dir as the
    training and study commands do: before the model, the data or the reward model."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    assert main([*command, "--output-dir", str(afile)]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert f"--output-dir {afile} is a file, not a folder" in first, first
    assert afile.read_text() == "not a folder\n"


@pytest.mark.parametrize(
    "command",
    [["data", "confidence", "--data", "V", "--output"], ["study", "preference", "--export-votes"]],
)
def test_an_output_file_that_is_a_folder_or_under_a_file_is_named(command, tmp_path, capsys):
    """Not the atomic writer's `'.adir.xxxx.tmp' -> 'adir'` or `Not a directory`."""
    import json

    votes = tmp_path / "votes.jsonl"
    row = {"prompt": "p", "chosen": "a", "rejected": "b", "votes_chosen": 1, "votes_total": 2}
    votes.write_text(json.dumps(row) + "\n")
    command = [str(votes) if a == "V" else a for a in command]
    adir, afile = tmp_path / "adir", tmp_path / "afile"
    adir.mkdir()
    afile.write_text("x\n")
    name = " ".join(command[:2])
    option = command[-1]
    assert main([*command, str(adir)]) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"smoothalign {name}: {option} {adir} is a folder, not a file; pass a file path (e.g. "
        f"{adir / 'out.jsonl'})"
    )
    out = afile / "x.jsonl"
    assert main([*command, str(out)]) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"smoothalign {name}: {option} {out} lies under {afile}, which is a file, not a "
        "folder; pass a path in a folder"
    )
    assert list(adir.iterdir()) == [] and afile.read_text() == "x\n"


def test_study_sft_calibration_refuses_an_unknown_model_before_writing(tmp_path, capsys):
    """The study wrote its data files (and read BIG-bench) before its first run found that
    --model named nothing."""
    out = tmp_path / "out"
    argv = ["study", "sft-calibration", "--model", "/no/such/model", "--output-dir", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "model '/no/such/model': not a built-in model" in err.splitlines()[0]
    assert not out.exists()


def test_an_input_error_without_a_message_is_named_by_its_type(tmp_path, capsys, monkeypatch):
    """An input error whose text is empty (a bare ``FileNotFoundError()`` from a library)
    still says what it was: its type, not "smoothalign dpo: " and nothing."""
    import smoothalign.train.cli as dpo_cli

    def fail(args):
        raise FileNotFoundError()

    monkeypatch.setattr(dpo_cli, "run", fail)
    assert main(["dpo", "--output-dir", str(tmp_path / "o")]) == 2
    assert "smoothalign dpo: FileNotFoundError\n" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["sft"], "; no checkpoint was saved (--save-steps 0 saves none): a rerun starts over"),
        (
            ["dpo", "--save-steps", "50"],
            "; no checkpoint saved yet (one every 50 steps): a rerun starts over",
        ),
        (
            ["reward", "--save-steps", "2"],
            "; --resume latest continues from its last checkpoint, {out}/checkpoint-4",
        ),
        (
            ["dpo", "--save-steps", "3"],  # interrupted while saving its first checkpoint
            "; no complete checkpoint (checkpoint-3: its save did not complete): delete it to "
            "start the run over",
        ),
        (
            ["rank-calibrate", "--reward-model", "rm", "--save-steps", "2"],
            "; --resume latest continues from its last checkpoint, {out}/checkpoint-4",
        ),
        (["eval", "calibration", "--model", "tiny"], ""),
    ],
    ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else None,
)
def test_ctrl_c_is_one_line_and_status_130(argv, hint, tmp_path, capsys, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) ends a command with one line, not a traceback through the
    library, and the shell's status for SIGINT; a training command that checkpoints says
    what --resume latest would continue from. SMOOTHALIGN_DEBUG=1 raises it."""
    import importlib

    from smoothalign.cli import COMMANDS

    module = next(m for path, m, _ in COMMANDS if list(path) == argv[: len(path)])
    command = " ".join(next(p for p, m, _ in COMMANDS if m == module))

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), "run", interrupted)
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    out = tmp_path / "out"
    for step in (2, 4, 6) if "{out}" in hint else ():  # 2 and 4 certified, not 6
        (out / f"checkpoint-{step}").mkdir(parents=True)
        if step < 6:
            (out / f"checkpoint-{step}" / "smoothalign_complete.json").write_text("{}")
    if "checkpoint-3" in hint:
        (out / "checkpoint-3").mkdir(parents=True)
    argv = [*argv, "--output-dir", str(out)]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"smoothalign {command}: interrupted{hint.format(out=out)} (traceback: ")
    Path(err.split("(traceback: ")[1].split(";")[0]).unlink()
    monkeypatch.setenv("SMOOTHALIGN_DEBUG", "1")
    with pytest.raises(KeyboardInterrupt):
        main(argv)


# The program as a shell runs it, its command stubbed by one that says it is ready and sleeps;
# started through the console script's function or as `python -m smoothalign.cli`.
_SLEEPER = """
import sys, time
import smoothalign.sft.cli as command

def run(args):
    print("ready", flush=True)
    time.sleep(60)

command.run = run
how, out = sys.argv[1:]
sys.argv = ["smoothalign", "sft", "--model", "tiny", "--output-dir", out]
if how in ("module", "package"):  # python -m smoothalign.cli, python -m smoothalign
    import runpy
    runpy.run_module("smoothalign.cli" if how == "module" else "smoothalign", run_name="__main__")
else:  # what pip's console script does with pyproject's "module:function"
    import importlib
    module, _, function = how.partition(":")
    sys.exit(getattr(importlib.import_module(module), function)())
"""


def _console_script() -> str:
    """pyproject's ``smoothalign`` console script: ``module:function``."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    return pyproject["project"]["scripts"]["smoothalign"]


def _sleeper(tmp_path: Path, how: str) -> str:
    """The command line that runs the stubbed program, for a shell."""
    import shlex
    import sys

    (tmp_path / "sleeper.py").write_text(_SLEEPER)
    args = [sys.executable, str(tmp_path / "sleeper.py"), how, str(tmp_path / "out")]
    return shlex.join(args)


def _interrupted(shell_line: str, temp_dir: Path, ready_lines: int = 1):
    """Run ``shell_line`` in a session of its own, send SIGINT to its process group once
    ``ready_lines`` lines said ``ready`` (what a terminal's Ctrl-C does), and return the
    finished process, its stdout and its stderr. Its temporary files (the saved traceback)
    go to ``temp_dir`` (``TMPDIR``), not the system's: conftest's fixture reaches only this
    process."""
    import os
    import signal
    import subprocess

    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    env.pop("SMOOTHALIGN_DEBUG", None)
    env["TMPDIR"] = str(temp_dir)
    proc = subprocess.Popen(
        ["bash", "-c", shell_line],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # SIGINT not ignored, as a non-interactive shell leaves it in a background job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        said = [proc.stdout.readline() for _ in range(ready_lines)]
        assert said == ["ready\n"] * ready_lines, said
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("not ended by Ctrl-C")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc, out, err


def test_console_script_is_the_entry_point():
    """The ``smoothalign`` console script runs :func:`entry` (which dies by SIGINT after
    Ctrl-C), not ``main`` (which returns 130 to its caller)."""
    import smoothalign.cli as cli

    module, _, function = _console_script().partition(":")
    assert (module, function) == ("smoothalign.cli", "entry")
    assert callable(getattr(cli, function))


def test_python_m_smoothalign_runs_the_program(tmp_path):
    """``python -m smoothalign`` is the program (``smoothalign.__main__``): its usage, and an
    input error's one line and exit status 2, as the console script gives them."""
    import os
    import subprocess
    import sys

    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    env.pop("SMOOTHALIGN_DEBUG", None)
    env["TMPDIR"] = str(tmp_path)  # the saved traceback: conftest's fixture is this process's

    def run(*argv):
        return subprocess.run(
            [sys.executable, "-m", "smoothalign", *argv],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    proc = run("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: smoothalign ")
    proc = run("dpo", "--beta", "-1")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("smoothalign dpo: --beta: must be > 0, got -1.0\n")
    _saved_traceback_removed(proc.stderr, tmp_path)


def test_a_refused_command_saves_its_traceback_in_the_tests_folder(tmp_path, capsys, monkeypatch):
    """conftest's fixture sends the traceback of a refused command to the test's own
    folder: the suite refuses hundreds of commands and left a file in /tmp for each."""
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    assert main(["dpo", "--beta", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smoothalign dpo: --beta: must be > 0, got -1.0\n"), err
    _saved_traceback_removed(err, tmp_path)


def _saved_traceback_removed(err: str, temp_dir: Path) -> None:
    """The traceback a child process saved lies in the test's ``temp_dir`` (whatever the
    test asserts first, nothing is left in the system's temp folder); removed."""
    saved = Path(err.split("(traceback: ")[1].split(";")[0])
    assert saved.parent == temp_dir, saved
    saved.unlink()


@pytest.mark.skipif(__import__("os").name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("how", ["script", "module", "package"])
def test_ctrl_c_ends_the_program_by_sigint(how, tmp_path):
    """The program (``main`` called as a function returns 130) dies by SIGINT after Ctrl-C,
    having said its one line, as an uncaught KeyboardInterrupt would have ended it."""
    import signal

    how = _console_script() if how == "script" else how
    proc, out, err = _interrupted(f"exec {_sleeper(tmp_path, how)}", tmp_path)
    assert proc.returncode == -signal.SIGINT, (proc.returncode, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("smoothalign sft: interrupted; no checkpoint was saved")
    _saved_traceback_removed(err, tmp_path)


@pytest.mark.skipif(__import__("os").name != "posix", reason="POSIX signals")
def test_ctrl_c_stops_a_shell_loop(tmp_path):
    """``for s in 1 2; do smoothalign ...; done``: one Ctrl-C stops the loop, not only the run
    it interrupts (bash goes on after a child that exited 130 but did not die by SIGINT)."""
    import signal

    line = _sleeper(tmp_path, _console_script())
    loop = f'for i in 1 2; do {line}; echo "run $i exited $?"; done; echo "loop finished"'
    proc, out, err = _interrupted(loop, tmp_path)
    assert out == "", out  # neither "run 1 exited 130" nor a second "ready"
    assert proc.returncode == -signal.SIGINT, (proc.returncode, err)
    assert err.count("smoothalign sft: interrupted") == 1, err
    _saved_traceback_removed(err, tmp_path)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["dpo", "--bogus"], "dpo"),
        (["eval", "calibration", "--bogus", "x"], "eval calibration"),
        (["study", "--bogus"], "study"),
    ],
)
def test_an_unknown_option_is_reported_by_its_command(argv, command, capsys):
    """Argparse leaves a subcommand's unknown options to the top-level parser, whose usage
    (`smoothalign [-h] COMMAND ...`) says nothing of the command's options: the command's
    own parser reports them, with its usage."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: smoothalign {command} ")
    unknown = " ".join(argv[len(command.split()) :])
    assert err.endswith(f"smoothalign {command}: error: unrecognized arguments: {unknown}\n")


def test_an_unknown_option_close_to_one_names_it(capsys):
    with pytest.raises(SystemExit):
        main(["sft", "--max-lenght", "8"])
    assert capsys.readouterr().err.endswith(
        "smoothalign sft: error: unrecognized arguments: --max-lenght 8 (did you mean "
        "--max-length?)\n"
    )


def test_bad_rows_advice_names_the_flag_on_the_command_line_and_the_keyword_in_python(
    tmp_path, capsys, monkeypatch
):
    """The advice to skip bad rows names what its reader types: ``--on-bad-rows skip`` on the
    command line, ``on_bad_rows='skip'`` in Python, not both in one message."""
    import json

    import data_helpers
    from smoothalign.data import validate_preference_rows

    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    rows = [{"prompt": "1+1=", "chosen": " 2", "rejected": " 3"}] * 3
    rows.append({"prompt": "x", "chosen": "", "rejected": "b"})
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["dpo", "--model", "tiny", "--data", str(data), "--output-dir", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Fix the data, or pass --on-bad-rows skip to drop these rows" in err, err
    assert "on_bad_rows" not in err
    Path(err.split("(traceback: ")[1].split(";")[0]).unlink()
    with pytest.raises(ValueError) as raised:
        validate_preference_rows(data, data_helpers.make_byte_tokenizer(), 64)
    assert "Fix the data, or pass on_bad_rows='skip' to drop these rows" in str(raised.value)
    assert "--on-bad-rows" not in str(raised.value)


@pytest.mark.parametrize("command", ["dpo", "sft", "reward", "rank-calibrate"])
def test_save_total_limit_all_keeps_every_checkpoint_from_the_command_line(command):
    """``--save-total-limit all`` is the Python API's None (keep every checkpoint), which the
    command line could not give; a number still parses as one, and other words are refused
    by argparse."""
    from smoothalign.cli import build_parser

    parser = build_parser()
    required = {"rank-calibrate": ["--reward-model", "rm"]}  # its required option
    command = [command, *required.get(command, [])]
    assert parser.parse_args([*command, "--save-total-limit", "all"]).save_total_limit is None
    assert parser.parse_args([*command, "--save-total-limit", "ALL"]).save_total_limit is None
    assert parser.parse_args([*command, "--save-total-limit", "1"]).save_total_limit == 1
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--save-total-limit", "none"])
