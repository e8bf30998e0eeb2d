"""``smoothalign data confidence``: write each pair's label confidence from its annotators'
votes (``votes_chosen`` of ``votes_total``, or a 0/1 ``votes`` list, read as ``smoothalign
reward`` reads them) into a JSONL file that ``smoothalign dpo
--smoothing oracle-l0|oracle-l2`` trains on (:mod:`smoothalign.data.vote_confidence`).

This module imports only ``argparse`` at load time, so ``smoothalign --help`` stays fast.
"""

from __future__ import annotations

import argparse

from smoothalign._checks import ON_BAD_ROWS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        required=True,
        help="preference rows with their votes, as `reward` reads them: votes_chosen and "
        "votes_total, or a votes list of 0/1 (1 = for chosen), or both (they must agree, and "
        "with any p_chosen; a p_chosen alone has no vote count and cannot be used): a "
        "JSONL/JSON/Parquet/CSV file or a folder (e.g. the output of `smoothalign study "
        "preference --export-votes`)",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="the .jsonl file to write (atomically; JSONL only); not a file --data reads",
    )
    parser.add_argument(
        "--prior",
        choices=("empirical", "uniform"),
        default="empirical",
        help="prior over q: 'empirical' (fitted to all the rows' votes, empirical Bayes) or "
        "'uniform' ((votes + 1) / (total + 2))",
    )
    parser.add_argument(
        "--relabel",
        action="store_true",
        help="swap chosen and rejected where the confidence is below 1/2 (the votes overrule "
        "the label); relabelled rows get relabelled: true",
    )
    parser.add_argument(
        "--field",
        dest="field_name",  # add_vote_confidence's keyword: messages name the option so
        default="confidence",
        help="the column to write (`smoothalign dpo --smoothing oracle-*` reads 'confidence'); "
        "not one of the rows' own fields (prompt, chosen, rejected, the votes, p_chosen, "
        "relabelled, any …chosen…/…rejected… field)",
    )
    parser.add_argument(
        "--on-bad-rows",
        default="error",
        choices=ON_BAD_ROWS,
        help="rows without usable votes: 'error' (stop, listing them; nothing is written) or "
        "'skip' (leave them out of --output, counted and listed on the console)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the column where a row already has it (the rows of `smoothalign study "
        "preference --export-votes` carry their true q as 'confidence': --overwrite replaces "
        "it, --field NAME keeps it)",
    )


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from smoothalign._warn import warn_main
    from smoothalign.data.loading import FILE_KEY, load_preference_rows
    from smoothalign.data.vote_confidence import add_vote_confidence, check_field_name
    from smoothalign.io import atomic_write_text, check_output_file

    check_field_name(args.field_name)  # before reading the data
    check_output_file(args.output, "--output")
    refuse_output_read(args.output, args.data)  # before reading
    rows = load_preference_rows(args.data, option="data")  # a missing path names --data
    if os.path.isdir(args.data):  # the output may be one of the folder's files it read
        refuse_output_read(args.output, args.data, sorted({r.get(FILE_KEY) for r in rows} - {None}))
    out, summary = add_vote_confidence(
        rows,
        prior=args.prior,
        relabel=args.relabel,
        field_name=args.field_name,
        overwrite=args.overwrite,
        on_bad_rows=args.on_bad_rows,
    )
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
    path = atomic_write_text(args.output, text)
    print(summary.to_text(with_warnings=False))
    # smoothalign's own warnings, which the command line says as every command's, one line
    # each on stderr: `smoothalign data confidence: warning: …` (cli.command_line_warnings)
    for warning in summary.warnings:
        warn_main(warning, stacklevel=1)
    print(f"wrote {path}")
    return 0


def refuse_output_read(output: str, data: str, files: list[str] | None = None) -> None:
    """A ``ValueError`` where ``--output`` is a file the command reads: the ``--data`` file,
    or one of ``files`` (those read from a ``--data`` folder), however either is spelt (a
    relative path, a link: the same file on disk). Writing it would replace the rows the
    votes are read from, which a rerun then could not read again."""
    import os
    from pathlib import Path

    out = Path(output)
    if not out.is_file():
        return  # nothing there yet: nothing to overwrite
    for given in [data] if files is None else files:
        try:
            same = Path(given).is_file() and os.path.samefile(out, given)
        except OSError:
            same = False
        if not same:
            continue
        what = f"the --data file {given}" if files is None else f"{given}, a file of --data {data}"
        alias = "" if str(given) == str(output) else " (the same file)"
        raise ValueError(
            f"--output {output} is {what}{alias}: writing it would replace the rows the votes "
            f"are read from; write to another file (e.g. {out.with_name(out.stem + '.confidence.jsonl')})"
        )
