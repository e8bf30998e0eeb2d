"""The ``smoothalign`` command line. It only parses arguments and calls the library.

Each command lives in its own module, which exposes ``add_arguments(parser)`` and
``run(args) -> int``; this file wires them into sub-commands.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from smoothalign.data.validation import BadRowError

# What a user's input can raise (a missing file, a bad row, a value out of range): printed
# as one line naming the command, exit status 2, with the traceback saved to a file.
# SMOOTHALIGN_DEBUG=1 raises it instead.
INPUT_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, BadRowError)


def _input_errors() -> tuple[type[Exception], ...]:
    """INPUT_ERRORS plus what reading a user's model can raise: a truncated safetensors file,
    a pickle that ``weights_only`` loading refuses, a missing optional wheel (its message
    names the install command)."""
    import pickle

    extra: list[type[Exception]] = [pickle.UnpicklingError, ModuleNotFoundError]
    try:
        from safetensors import SafetensorError

        extra.append(SafetensorError)
    except ImportError:  # pragma: no cover
        pass
    return (*INPUT_ERRORS, *extra)


DEBUG_ENV = "SMOOTHALIGN_DEBUG"

# (command path, module, help); modules are imported lazily so `--help` stays fast and a
# command's heavy dependencies (transformers, ...) load only when it runs.
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("dpo",), "smoothalign.train.cli", "DPO training with CALS or a baseline loss (the main job)"),
    (("reward",), "smoothalign.reward.cli", "reward/preference models from soft labels (SPEC §6)"),
    (
        ("study", "logreg"),
        "smoothalign.experiments.logreg_cli",
        "logistic-regression study (SPEC §7)",
    ),
    (
        ("study", "reward"),
        "smoothalign.experiments.reward_study",
        "soft-label reward-model comparison",
    ),
    (
        ("study", "preference"),
        "smoothalign.experiments.preference_cli",
        "noisy-preference benchmark with a known oracle: CALS vs DPO, cDPO, rDPO, IPO",
    ),
    (
        ("study", "sft-calibration"),
        "smoothalign.experiments.sft_calibration",
        "label-smoothed SFT (beta grid, seeds) scored for multiple-choice calibration",
    ),
    (("sft",), "smoothalign.sft.cli", "SFT with token-level label smoothing (SPEC §5)"),
    (
        ("data", "confidence"),
        "smoothalign.data.confidence_cli",
        "each pair's label confidence from its annotators' votes (for --smoothing oracle-*)",
    ),
    (
        ("rank-calibrate",),
        "smoothalign.rank.cli",
        "calibrate a policy by ranking its samples with a preference model (SLiC)",
    ),
    (
        ("eval", "calibration"),
        "smoothalign.eval.calibration_cli",
        "multiple-choice accuracy and calibration (ECE, RMS) on MMLU, BIG-bench, JSONL",
    ),
    (
        ("eval", "preferences"),
        "smoothalign.train.preference_eval_cli",
        "a policy's preference forecasts σ(h): accuracy and calibration (ECE, RMS, KL) on a "
        "preference file, without training",
    ),
    (
        ("analyze", "head"),
        "smoothalign.analysis.head_cli",
        "LM-head entropy lower bound (SPEC §5) and what it implies for label smoothing",
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smoothalign",
        description="Align language models with noisy preferences, and make them calibrated.",
        allow_abbrev=False,  # `--seed 42` is no `--seeds 42`: an unknown option, with a hint
    )
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {
        (): parser.add_subparsers(dest="command", metavar="COMMAND")
    }
    parents: dict[tuple[str, ...], argparse.ArgumentParser] = {(): parser}
    for path, module, help_text in COMMANDS:
        for depth in range(1, len(path)):
            prefix = path[:depth]
            if prefix not in parents:
                sub = groups[prefix[:-1]].add_parser(
                    prefix[-1], help=f"{prefix[-1]} commands", allow_abbrev=False
                )
                sub.set_defaults(_help=sub.print_help)  # `smoothalign study`: the group's help
                parents[prefix] = sub
                groups[prefix] = sub.add_subparsers(dest=f"sub_{depth}", metavar="COMMAND")
        leaf = groups[path[:-1]].add_parser(
            path[-1],
            help=help_text,
            description=help_text,
            formatter_class=DefaultsHelpFormatter,
            allow_abbrev=False,
        )
        leaf.set_defaults(_module=module, _command=" ".join(path))
        importlib.import_module(module).add_arguments(leaf)
    return parser


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except a ``None`` default (the help says what
    happens then: "default 10; --quick: 2") and an empty help. A list default is shown as
    it is typed (``--tasks mmlu other``: "mmlu other"), not as a Python list."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or not action.help:
            return action.help
        if (
            isinstance(action.default, list | tuple)
            and action.option_strings
            and "%(default)" not in action.help
        ):
            shown = " ".join(str(v) for v in action.default).replace("%", "%%")
            return f"{action.help} (default: {shown})"
        return super()._get_help_string(action)


class CommandFailed(ValueError):
    """What :func:`invoke` raises where ``main`` would print one line: the command refused
    its input. ``command`` (``"eval calibration"``), ``message`` (that line's text, options
    named by the command's flags); the original error is the ``__cause__``."""

    def __init__(self, command: str, message: str) -> None:
        super().__init__(f"smoothalign {command}: {message}")
        self.command, self.message = command, message


def invoke(argv: list[str]) -> int:
    """Run one command for a command that runs another (``study sft-calibration`` runs ``eval
    calibration``): as ``main`` does, but an input error is raised as :class:`CommandFailed`
    rather than printed, so that the caller can say which of its steps failed and why, in
    one message; any other error propagates as it is. Returns the command's exit status."""
    parser = build_parser()
    args = parse_args(parser, argv)
    module = getattr(args, "_module", None)
    if module is None:
        raise ValueError(f"not a command: {' '.join(argv)}")
    try:
        return _run(module, parser, args)
    except _input_errors() as e:
        raise CommandFailed(args._command, _named_by_flag(_text(e), parser, args)) from e


def _run(module: str, parser: argparse.ArgumentParser, args) -> int:
    """Run the command of ``args`` (its ``module``'s ``run``), the messages said meanwhile
    naming its options by their flags (:func:`smoothalign._options.option`)."""
    from smoothalign._options import command_flags

    with command_flags(_flags(leaf_parser(parser, args._command.split()))):
        return int(importlib.import_module(module).run(args) or 0)


def _text(error: BaseException) -> str:
    """``str(error)``, or its type's name where that is empty."""
    return str(error) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` names (default ``sys.argv[1:]``) and return its exit status:
    2 for an input error, printed as one line; :data:`INTERRUPTED` (130) after Ctrl-C,
    likewise one line. The program's entry point is :func:`entry`, which calls this."""
    try:
        return _main(argv)
    except _Interrupted:
        return INTERRUPTED


def entry() -> NoReturn:
    """The ``smoothalign`` program (the console script, ``python -m smoothalign.cli``): exits
    with :func:`main`'s status, except after Ctrl-C, where the process dies by SIGINT, as an
    uncaught ``KeyboardInterrupt`` would have made it. A shell tells the two apart: it stops
    a script or a loop (``for s in 1 2; do smoothalign ...; done``) only where its child died
    by SIGINT, and carries on after a child that merely exited 130."""
    try:
        status = _main(None)
    except _Interrupted:
        _die_by_sigint()
    sys.exit(status)


class _Interrupted(Exception):
    """Raised by :func:`_main` once it has said that Ctrl-C interrupted the command."""


def _die_by_sigint() -> NoReturn:
    """End the process by SIGINT (POSIX), as CPython ends it after an uncaught
    ``KeyboardInterrupt``: the ``atexit`` handlers run first (log files flushed, worker
    processes ended), then SIGINT's default action; exit status 130 where there is none."""
    import atexit
    import contextlib
    import signal

    posix = os.name == "posix"
    if posix:  # from here a second Ctrl-C ends the process at once
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    atexit._run_exitfuncs()  # they would run at a normal exit; a death by signal skips them
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken pipe
            stream.flush()
    if posix:
        os.kill(os.getpid(), signal.SIGINT)
    sys.exit(INTERRUPTED)  # elsewhere, or if the signal did not end the process


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    module = getattr(args, "_module", None)
    if module is None:
        getattr(args, "_help", parser.print_help)()
        return 2
    from smoothalign._warn import command_line_warnings

    try:
        with command_line_warnings(f"smoothalign {args._command}"):
            return _run(module, parser, args)
    except KeyboardInterrupt as e:  # Ctrl-C: one line, not a traceback through the library
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        from smoothalign._warn import main_process

        _close_progress_bars()
        if main_process():  # every rank of a launch is interrupted alike
            print(
                f"smoothalign {args._command}: interrupted{_resume_hint(args)} (traceback: "
                f"{_save_traceback(e)}; {DEBUG_ENV}=1 raises it)",
                file=sys.stderr,
                flush=True,
            )
        raise _Interrupted from None
    except _input_errors() as e:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        # a ValueError can also be a bug deep in a long run: its traceback is kept in a file,
        # so nobody has to rerun hours of training to see it
        where = _save_traceback(e)
        print(
            f"smoothalign {args._command}: {_named_by_flag(_text(e), parser, args)}\n"
            f"(traceback: {where}; {DEBUG_ENV}=1 raises it)",
            file=sys.stderr,
        )
        return 2


INTERRUPTED = 130  # the shell's status for a command that SIGINT ended (128 + 2)


def _close_progress_bars() -> None:
    """Close the progress bars left open by an interrupted command, so that the line said
    after them starts a line of its own rather than following a half-drawn bar."""
    import contextlib

    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        with contextlib.suppress(Exception):  # a bar that cannot close is only cosmetic
            bar.close()


def _resume_hint(args) -> str:
    """For the training commands that checkpoint (``--save-steps``, ``--resume``): what
    ``--resume latest`` would continue from in ``--output-dir``, or that there is nothing
    to continue; empty for the other commands."""
    if not all(hasattr(args, k) for k in ("resume", "save_steps", "output_dir")):
        return ""
    try:
        from smoothalign.train.checkpoints import incomplete_checkpoints, latest_complete_checkpoint

        latest = latest_complete_checkpoint(args.output_dir)
        cut = incomplete_checkpoints(args.output_dir)
    except (OSError, ValueError, TypeError):
        latest, cut = None, []
    if latest is not None:
        return f"; --resume latest continues from its last checkpoint, {latest}"
    if cut:  # interrupted while saving: a rerun is refused until they go
        names = ", ".join(c.name for c in cut[-3:])
        return (
            f"; no complete checkpoint ({names}: its save did not complete): delete "
            f"{'it' if len(cut) == 1 else 'them'} to start the run over"
        )
    if args.save_steps:
        return f"; no checkpoint saved yet (one every {args.save_steps} steps): a rerun starts over"
    return "; no checkpoint was saved (--save-steps 0 saves none): a rerun starts over"


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, but an unknown option is reported by the command's own
    parser (``smoothalign dpo --bogus``: dpo's usage, and the option of dpo's closest to
    it), not by the top level's, which argparse leaves them to (its usage says nothing of
    dpo's options). An abbreviation is an unknown option too (the parsers have
    ``allow_abbrev=False``), named with the option it begins. Exits with status 2, as
    argparse does."""
    args, unknown = parser.parse_known_args(argv)
    if not unknown:
        return args
    path = [args.command] if args.command else []
    depth = 1
    while path and getattr(args, f"sub_{depth}", None):
        path.append(getattr(args, f"sub_{depth}"))
        depth += 1
    command = leaf_parser(parser, path)
    message = f"unrecognized arguments: {' '.join(unknown)}"
    # every long name an option answers to, and the name the help and messages give it:
    # an older alias (--warmup-steps) is matched, and its option's own name suggested
    # (--cals-warmup-steps), so a hint never teaches the name the option left behind
    own = {}
    for action in command._actions:
        long = [o for o in action.option_strings if o.startswith("--")]
        plain = [o for o in long if not o.startswith("--no-")]
        for o in long:
            own[o] = o if o.startswith("--no-") else (plain or long)[0]
    known = list(own)
    for arg in unknown:
        name = arg.split("=", 1)[0]
        # an abbreviation (no parser reads one: `--seed` is not `--seeds`) names the option
        # it begins, however short; any other name the option closest to it
        begun = [o for o in known if o.startswith(name)]
        close = difflib.get_close_matches(name, begun or known, n=1, cutoff=0 if begun else 0.75)
        if arg.startswith("--") and close:
            message += f" (did you mean {own[close[0]]}?)"
            break
    command.error(message)


def leaf_parser(parser: argparse.ArgumentParser, path: Sequence[str]) -> argparse.ArgumentParser:
    """The subparser of command ``path`` (``("eval", "calibration")``) under ``parser``."""
    for word in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def _named_by_flag(message: str, parser: argparse.ArgumentParser, args) -> str:
    """``message`` with a leading ``option_name:`` (how the library names an option, as the
    Python API sees it: ``lr_scheduler: ...``, ``eval_data: ...``) given as the command's flag
    (``--lr-scheduler: ...``), where the command has an option of that name."""
    name, sep, rest = message.partition(": ")
    if not sep or not name.isidentifier() or name.startswith("_"):
        return message
    flag = _flags(leaf_parser(parser, args._command.split())).get(name)
    return message if flag is None else f"{flag}: {rest}"


def _flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option of a command's ``parser`` (its ``dest``, as the Python API names it) and
    the flag that names it: the first long one, ``--lora`` rather than ``--no-lora``."""
    flags: dict[str, str] = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in flags or action.dest == "help":
            continue
        long = [o for o in action.option_strings if o.startswith("--")]
        plain = [o for o in long if not o.startswith("--no-")]  # --lora, not --no-lora
        flags[action.dest] = (plain or long or action.option_strings)[0]
    return flags


def _save_traceback(error: BaseException) -> str:
    """Write ``error``'s traceback to a new file in the temp folder; its path, or a note."""
    import tempfile
    import traceback

    try:
        with tempfile.NamedTemporaryFile(
            "w", prefix="smoothalign-error-", suffix=".txt", delete=False
        ) as f:
            f.write("".join(traceback.format_exception(error)))
        return f.name
    except OSError:
        return "not saved"


if __name__ == "__main__":
    entry()
