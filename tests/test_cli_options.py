"""How the command line reads its options: full names only (no abbreviations), fixed
vocabularies checked by argparse and listed by --help, required options marked as such,
and the fused LM-head option under both its names."""

from __future__ import annotations

import argparse

import pytest

from smoothalign.cli import build_parser, parse_args


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
        (["dpo", "--warmup", "10"], "--warmup 10", "--warmup-steps"),
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
