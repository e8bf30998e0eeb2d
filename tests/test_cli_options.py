"""How the command line reads its options: full names only (no abbreviations), fixed
vocabularies checked by argparse and listed by --help, required options marked as such,
and the fused LM-head option under both its names."""

from __future__ import annotations

import argparse

import pytest

from smoothalign.cli import build_parser, main, parse_args


def _refused(argv, capsys) -> str:
    """The error argparse prints for ``argv`` (parsed only: before the fix some of these
    ran a whole study)."""
    with pytest.raises(SystemExit) as stop:
        parse_args(build_parser(), argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_no_parser_reads_an_abbreviation():
    parsers = list(_parsers(build_parser()))
    assert len(parsers) > 10
    assert all(not p.allow_abbrev for p in parsers), [p.prog for p in parsers if p.allow_abbrev]


@pytest.mark.parametrize(
    ("argv", "unknown", "meant"),
    [
        (["study", "preference", "--seed", "1"], "--seed 1", "--seeds"),
        (["study", "logreg", "--seed", "1"], "--seed 1", "--seeds"),
        (["dpo", "--max-step", "5"], "--max-step 5", "--max-steps"),
        (["dpo", "--warmup", "10"], "--warmup 10", "--cals-warmup-steps"),
    ],
)
def test_an_abbreviation_is_an_unknown_option_with_a_hint(argv, unknown, meant, capsys):
    """``study preference --seed 42`` was read as ``--seeds 42`` (42 seeds of the whole
    grid), ``dpo --max-step 5`` as ``--max-steps 5``: argparse's prefix matching."""
    err = _refused(argv, capsys)
    command = " ".join(a for a in argv[:2] if not a.startswith("-"))
    assert err.endswith(
        f"smoothalign {command}: error: unrecognized arguments: {unknown} (did you mean {meant}?)\n"
    ), err


def test_full_names_still_parse():
    parser = build_parser()
    assert parser.parse_args(["study", "preference", "--seeds", "3"]).seeds == 3
    args = parser.parse_args(["dpo", "--max-steps", "5", "--warmup-steps", "10"])
    assert (args.max_steps, args.warmup_steps) == (5, 10)


# (command, option, a word it refuses); the options whose words are a fixed list
FIXED = [
    ("dpo", "--loss", "kl"),
    ("dpo", "--reference", "none"),
    ("dpo", "--precision", "fp16"),
    ("dpo", "--fused-logps", "yes"),
    ("dpo", "--grad-filter", "on"),
    ("dpo", "--lean-layers", "yes"),
    ("dpo", "--oracle", "vader"),
    ("dpo", "--on-bad-rows", "drop"),
    ("sft", "--precision", "fp16"),
    ("sft", "--fused", "yes"),
    ("sft", "--grad-filter", "on"),
    ("sft", "--on-bad-rows", "drop"),
    ("reward", "--loss", "kl"),
    ("reward", "--precision", "fp16"),
    ("reward", "--on-bad-rows", "drop"),
    ("rank-calibrate", "--decoding", "greedy"),
    ("rank-calibrate", "--precision", "fp16"),
    ("rank-calibrate", "--on-bad-rows", "drop"),
]
RANK = ["--reward-model", "rm"]  # rank-calibrate's required option


def _action(parser: argparse.ArgumentParser, command: str, option: str) -> argparse.Action:
    sub = next(p for p in _parsers(parser) if p._defaults.get("_command") == command)
    return next(a for a in sub._actions if option in a.option_strings)


def _extra(command: str) -> list[str]:
    return RANK if command == "rank-calibrate" else []


@pytest.mark.parametrize(("command", "option", "bad"), FIXED)
def test_a_word_outside_an_options_vocabulary_is_an_argparse_error(command, option, bad, capsys):
    """It passed parsing and was refused later by the config; now argparse refuses it
    (status 2, the allowed words named) and --help lists them."""
    err = _refused([command, option, bad, *_extra(command)], capsys)
    assert f"argument {option}" in err, err  # --fused-logps/--fused: with its other name
    assert f": invalid choice: '{bad}' (choose from " in err, err
    choices = _action(build_parser(), command, option).choices
    with pytest.raises(SystemExit):
        main([command, "--help"])
    shown = capsys.readouterr().out
    assert f"{option} {{{','.join(choices)}}}" in shown or f"{option} [{{" in shown


def test_every_word_argparse_takes_is_one_the_config_takes():
    """The choices are the constants the configs check: each word parses to a valid config
    (the Python API keeps its own check: a bad word there is still refused)."""
    import importlib

    parser = build_parser()
    for command, option, _ in FIXED:
        action = _action(parser, command, option)
        module = importlib.import_module(parser.parse_args([command, *_extra(command)])._module)
        for word in action.choices:
            extra = ["--flip-rate", "0.1"] if (command, word) == ("dpo", "robust") else []
            args = parser.parse_args([command, option, word, *_extra(command), *extra])
            assert getattr(module.config_from_args(args), action.dest) == word
    from smoothalign.train.config import DPOConfig

    for field in ("loss", "reference", "precision", "fused_logps", "oracle", "on_bad_rows"):
        with pytest.raises(ValueError, match=field):
            DPOConfig(**{field: "bogus"})


def test_the_bare_lean_layers_flag_still_means_on():
    parser = build_parser()
    assert parser.parse_args(["dpo", "--lean-layers"]).lean_layers == "on"
    assert parser.parse_args(["sft", "--no-lean-layers"]).lean_layers == "off"
    assert parser.parse_args(["sft", "--lean-layers", "recompute"]).lean_layers == "recompute"


def test_rank_calibrate_says_its_reward_model_is_required(capsys):
    """--reward-model was shown as optional and refused only after parsing (by RankConfig,
    which still refuses its None for the Python API)."""
    err = _refused(["rank-calibrate", "--policy", "tiny"], capsys)
    assert err.startswith("usage: smoothalign rank-calibrate [-h] [--policy POLICY] --reward-model")
    assert "error: the following arguments are required: --reward-model" in err
    assert (
        build_parser().parse_args(["rank-calibrate", "--reward-model", "rm"]).reward_model == "rm"
    )
    from smoothalign.rank.config import RankConfig

    with pytest.raises(ValueError, match="reward_model: required"):
        RankConfig()


@pytest.mark.parametrize(
    ("command", "own", "other", "dest"),
    [
        ("dpo", "--fused-logps", "--fused", "fused_logps"),
        ("sft", "--fused", "--fused-logps", "fused"),
    ],
)
def test_the_fused_lm_head_option_takes_either_commands_name(command, own, other, dest, capsys):
    """The same kernel, the same words: `dpo --fused-logps` and `sft --fused`; `sft
    --fused-logps` was refused. Help, messages (_flags) and config.json keep each command's
    own name."""
    import importlib

    from smoothalign.cli import _flags, leaf_parser

    parser = build_parser()
    args = parser.parse_args([command, other, "off"])
    assert getattr(args, dest) == "off"
    module = importlib.import_module(args._module)
    assert module.config_from_args(args).to_dict()[dest] == "off"
    assert _flags(leaf_parser(parser, [command]))[dest] == own
    err = _refused([command, other, "yes"], capsys)
    assert f"argument {own}/{other}: invalid choice: 'yes'" in err, err
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert f"  {own} {{auto,on,off}}, {other} {{auto,on,off}}\n" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["dpo", "reward"])
def test_the_cals_options_are_prefixed_and_their_old_names_still_work(command, capsys):
    """``--cals-warmup-steps`` (α = a*(c₀) for that many micro-batches) beside the learning
    rate's ``--lr-warmup-steps``: ``--warmup-steps`` alone read as the latter to TRL users.
    The unprefixed names parse to the same options; messages and --help name the prefixed."""
    parser = build_parser()
    new = ["--cals-bins", "8", "--cals-momentum", "0.9", "--cals-init-confidence", "0.8",
           "--cals-prior-strength", "5", "--cals-warmup-steps", "3"]  # fmt: skip
    old = [a.replace("--cals-", "--") for a in new]
    for argv in (new, old):
        args = parser.parse_args([command, *argv])
        assert (args.bins, args.momentum, args.init_confidence) == (8, 0.9, 0.8)
        assert (args.prior_strength, args.warmup_steps) == (5.0, 3)
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--help"])
    assert "--cals-warmup-steps WARMUP_STEPS, --warmup-steps" in capsys.readouterr().out
    # a refusal names the prefixed flag: a calibrator option without a CALS policy
    assert main([command, "--smoothing", "none", "--cals-bins", "8", "--no-progress"]) == 2
    assert "--cals-bins: a CALS calibrator option" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, meant",
    [
        (["dpo", "--warm", "1"], "--cals-warmup-steps"),  # begins only the old alias
        (["dpo", "--bin", "8"], "--cals-bins"),
        (["sft", "--fused-log", "on"], "--fused"),  # sft's own name for the kernel
    ],
)
def test_a_hint_names_the_option_by_its_own_name_not_an_alias(argv, meant, capsys):
    """The "did you mean" hint matches an alias too, and suggests its option's own name:
    an abbreviation of --warmup-steps (the old name of the CALS warm-up) must not lead a
    user back to the name that read as the learning rate's warm-up."""
    err = _refused(argv, capsys)
    assert f"(did you mean {meant}?)" in err, err


def test_save_total_limit_says_its_word_for_every_checkpoint(capsys):
    err = _refused(["dpo", "--save-total-limit", "none"], capsys)
    assert "--save-total-limit: expected an integer or 'all', got 'none'" in err, err


def test_a_calibrator_option_under_a_loss_without_smoothing_says_so(capsys):
    """--loss ipo takes no smoothing: the refusal says so, rather than advising a cals-*
    policy that ipo refuses too."""
    assert main(["dpo", "--loss", "ipo", "--cals-momentum", "0.9", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the 'ipo' loss takes no label smoothing" in err and "--loss sigmoid" in err, err


@pytest.mark.parametrize(
    ("study", "own", "alias", "value", "dest"),
    [
        ("logreg", "--steps", "--max-steps", "7", "steps"),
        ("logreg", "--lr", "--learning-rate", "0.5", "lr"),
        ("reward", "--steps", "--max-steps", "7", "steps"),
        ("reward", "--lr", "--learning-rate", "0.5", "lr"),
        ("preference", "--steps", "--max-steps", "7", "steps"),
        ("preference", "--lr", "--learning-rate", "0.5", "lr"),
        ("sft-calibration", "--steps", "--max-steps", "7", "steps"),
    ],
)
def test_a_studys_steps_and_lr_take_the_training_commands_names(
    study, own, alias, value, dest, capsys
):
    """dpo/sft/reward say --max-steps and --learning-rate; a study's --steps and --lr take
    those names too (sft-calibration already said --learning-rate). Messages and --help keep
    the study's own name."""
    from smoothalign.cli import _flags, leaf_parser

    parser = build_parser()
    both = [getattr(parser.parse_args(["study", study, o, value]), dest) for o in (own, alias)]
    assert both[0] == both[1] == type(both[0])(value)
    assert _flags(leaf_parser(parser, ["study", study]))[dest] == own
    with pytest.raises(SystemExit):
        main(["study", study, "--help"])
    assert f"{own} {dest.upper()}, {alias} {dest.upper()}" in capsys.readouterr().out
