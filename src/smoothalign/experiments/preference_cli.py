"""``smoothalign study preference``: the noisy-preference benchmark with a known oracle.

Writes into ``--output-dir``: ``results.json`` (config, every run, aggregates, the claim
check, run info), ``table.md``, ``accuracy_vs_flip.png``, ``ece_vs_flip.png``,
``reward_vs_kl.png`` and ``alpha_histograms.png``; prints the table. While it runs, each
finished ``(seed, flip rate)`` group (every method of it) is kept in
``finished_groups/`` there, so that an interrupted study loses at most the groups under way;
the folder is deleted once ``results.json`` is written. A rerun into the same folder reuses
the runs there (``finished_groups/``, ``results.json``): the same command finishes an
interrupted study, and one that adds seeds, flip rates or methods trains only the new
``(seed, flip rate, method)`` runs and rebuilds the tables from all. Any other option
changed is refused, naming it, before anything trains, as is a rerun that leaves out runs
that are there (its ``results.json`` would lose them). A run is reused only if its method
and the baseline are still defined as when it was made (loss, smoothing, c₀, ...: recorded
beside the runs, :func:`~smoothalign.experiments.preference.method_definition`): a run of a
method since redefined, or one whose definitions were not recorded, is trained again, said.

``--export-votes FILE`` instead writes the world's training pairs as soft-label rows (several
simulated Bradley–Terry annotators per pair) for ``smoothalign reward``, and exits: a reward
model trained on them can then judge the study (``--judge DIR``). ``--list-methods``,
``--export-votes`` and ``--from-results`` each read a few options only: any other option given
with them is refused, named, rather than ignored (:data:`APPLIES`), and so are the export's
own options without ``--export-votes``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_OUTPUT_DIR = "outputs/preference"


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output-dir",
        default=None,
        help=f"where the results go (default {DEFAULT_OUTPUT_DIR}; with --from-results, the "
        "results' own folder). Each finished (seed, flip rate) group is kept there in "
        "finished_groups/ until the study ends: rerun the same command after an interruption "
        "and those groups are not trained again. A rerun into a finished study's folder may "
        "add seeds, flip rates and methods (the other options unchanged): only the new runs "
        "train",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="7 methods, flip rates 0 and 0.2, 2 seeds, 60 steps: about a minute on 2 cores",
    )
    parser.add_argument(
        "--flip-rates",
        type=_floats,
        help="the fractions of training labels flipped, comma-separated, each in [0, 0.5), "
        "e.g. 0,0.1,0.2 (default 0,0.1,0.2,0.3,0.4; --quick: 0,0.2)",
    )
    parser.add_argument(
        "--seeds", type=int, help="number of seeds, 0 .. N-1 (default 3; --quick: 2)"
    )
    parser.add_argument(
        "--methods",
        type=_names,
        help="comma-separated method names, or a preset: 'grid' (the default: DPO, cDPO, rDPO, "
        "IPO, CALS, oracle-α) or 'sources' (where a per-pair confidence can come from: CALS, "
        "cross-fitting, annotator votes; and the vote baselines), each given once (a method "
        "that a preset already holds runs once). --list-methods shows them",
    )
    parser.add_argument(
        "--steps",
        "--max-steps",
        type=int,
        help="Adam steps per run (default 150; --quick: 60)",
    )
    parser.add_argument(
        "--train-pairs", type=int, help="training pairs (default 4096; --quick: 1024)"
    )
    parser.add_argument(
        "--eval-pairs", type=int, help="held-out pairs scored (default 1024; --quick: 512)"
    )
    parser.add_argument(
        "--sample-prompts",
        type=int,
        help="held-out prompts sampled for the reward (default 256; --quick: 128)",
    )
    parser.add_argument(
        "--lr", "--learning-rate", type=float, help="Adam learning rate (default 2e-3)"
    )
    parser.add_argument("--beta", type=float, help="DPO β (default 0.5; IPO keeps its own 0.1)")
    parser.add_argument(
        "--workers", type=int, help="processes (default: 1 with --quick, else cores)"
    )
    parser.add_argument(
        "--judge",
        metavar="DIR",
        help="a local sequence-classification reward model (num_labels=1) that judges the "
        "win rates instead of the oracle reward, e.g. the output of `smoothalign reward`",
    )
    parser.add_argument(
        "--noisy-votes",
        action="store_true",
        help="the vote-based methods' simulated votes are flipped at the flip rate too (default: "
        "fresh annotators whom the flips of the released label do not touch)",
    )
    parser.add_argument(
        "--list-methods",
        action="store_true",
        help="print the methods (loss, smoothing, CALS c0, rDPO eps, confidence source) and the "
        "presets, and exit",
    )
    parser.add_argument(
        "--export-votes",
        metavar="FILE",
        help="write the first seed's training pairs as soft-label JSONL rows (a .jsonl file) "
        "and exit",
    )
    parser.add_argument(
        "--annotators", type=int, help="for --export-votes: votes per pair (default 5)"
    )
    parser.add_argument(
        "--export-flip-rate",
        type=float,
        help="for --export-votes: the fraction of labels flipped, in [0, 0.5) (default 0)",
    )
    parser.add_argument(
        "--from-results",
        metavar="FILE",
        help="re-render table.md and the figures from a finished run's results.json (no "
        "training; only --output-dir applies with it)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def expand_presets(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` with each preset name replaced by its methods; a method that two presets,
    or a preset and a name, share is run once. A name given twice is refused, as a repeated
    flip rate is: it is a typo, not a request."""
    from smoothalign.experiments.preference import PRESETS

    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"--methods: {', '.join(repeated)} given twice in {','.join(names)}")
    out = [m for n in names for m in PRESETS.get(n, (n,))]
    return tuple(dict.fromkeys(out))


def build_config(args: argparse.Namespace):
    from smoothalign.experiments.preference import PreferenceStudyConfig

    overrides = {
        "flip_rates": args.flip_rates,
        "seeds": tuple(range(args.seeds)) if args.seeds is not None else None,
        "methods": expand_presets(args.methods) if args.methods is not None else None,
        "steps": args.steps,
        "train_pairs": args.train_pairs,
        "eval_pairs": args.eval_pairs,
        "sample_prompts": args.sample_prompts,
        "lr": args.lr,
        "beta": args.beta,
        "noisy_votes": args.noisy_votes or None,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.quick:
        return PreferenceStudyConfig.quick(**overrides)
    return PreferenceStudyConfig(**overrides)


def export_votes(args: argparse.Namespace, cfg) -> int:
    import json

    from smoothalign.experiments.token_world import TokenWorld
    from smoothalign.io import atomic_write_text, check_output_file

    check_output_file(args.export_votes, "--export-votes")

    annotators = 5 if args.annotators is None else args.annotators
    flip_rate = 0.0 if args.export_flip_rate is None else args.export_flip_rate
    # input errors are raised, so that cli.main says them as every other one (with the
    # traceback file's line, exit status 2)
    if annotators < 1:
        raise ValueError(f"--annotators: must be >= 1, got {annotators}")
    if not 0 <= flip_rate < 0.5:  # as the study's flip rates (checked before the reference
        # trains): at 0.5 or more most labels would point the wrong way
        raise ValueError(f"--export-flip-rate: must lie in [0, 0.5), got {flip_rate}")
    world = TokenWorld(cfg.world, cfg.seeds[0])
    rows = world.vote_rows(world.pairs(cfg.train_pairs, 1), annotators, flip_rate=flip_rate)
    path = atomic_write_text(args.export_votes, "".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} soft-label pairs ({annotators} annotators each) to {path}")
    return 0


# every option but --no-progress (a quiet switch, never refused) -> its value when not given
UNSET = {
    "output_dir": None,
    "quick": False,
    "flip_rates": None,
    "seeds": None,
    "methods": None,
    "steps": None,
    "train_pairs": None,
    "eval_pairs": None,
    "sample_prompts": None,
    "lr": None,
    "beta": None,
    "workers": None,
    "judge": None,
    "noisy_votes": False,
    "list_methods": False,
    "export_votes": None,
    "annotators": None,
    "export_flip_rate": None,
    "from_results": None,
}
_ONLY_FOR_EXPORT = ("annotators", "export_flip_rate")
# what each mode of the command reads (the first that is asked for runs); an option given
# that its mode does not read would be silently ignored, and is refused instead
APPLIES = {
    "from_results": ("from_results", "output_dir"),
    "list_methods": ("list_methods",),
    # the first seed's world (--quick: its quick reference) and its training pairs
    "export_votes": ("export_votes", "quick", "train_pairs", *_ONLY_FOR_EXPORT),
    "study": tuple(
        k
        for k in UNSET
        if k not in ("from_results", "list_methods", "export_votes", *_ONLY_FOR_EXPORT)
    ),
}
_DOES = {
    "from_results": "--from-results re-renders a finished run's report from its results",
    "list_methods": "--list-methods prints the methods and presets, and exits",
    "export_votes": "--export-votes writes the first seed's training pairs with simulated "
    "votes, and exits",
    "study": "--annotators and --export-flip-rate apply only with --export-votes",
}


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def mode_of(args: argparse.Namespace) -> str:
    """Which of the command's modes ``args`` ask for (:data:`APPLIES`)."""
    for mode in ("from_results", "list_methods", "export_votes"):
        if getattr(args, mode) != UNSET[mode]:
            return mode
    return "study"


def ignored_options(args: argparse.Namespace) -> str | None:
    """The refusal of the options given that ``args``' mode does not read, or None."""
    mode = mode_of(args)
    ignored = [
        _flag(k)
        for k, unset in UNSET.items()
        if k not in APPLIES[mode] and getattr(args, k) != unset
    ]
    if not ignored:
        return None
    applies = [_flag(k) for k in APPLIES[mode] if k != mode]
    if mode == "study":
        only = ""
    elif not applies:
        only = " (it takes no other option)"
    else:
        only = f" (only {', '.join(applies)} appl{'ies' if len(applies) == 1 else 'y'})"
    return (
        f"{_DOES[mode]}; {', '.join(ignored)} would have no effect: leave "
        f"{'it' if len(ignored) == 1 else 'them'} out{only}"
    )


_FILES = "results.json, table.md, the figures"  # what the study writes, as refusals say


def rerender(args: argparse.Namespace) -> int:
    """The report of a finished run, from its ``results.json``: the claim check and the
    tables are recomputed from the runs, so a fix to the report never needs a re-run.
    (Options that only a run uses are refused by :func:`run`: they would be ignored.)"""
    import json

    from smoothalign.experiments import preference, preference_report
    from smoothalign.experiments.study_dir import (
        check_study_output_dir,
        study_command,
        written_by,
    )
    from smoothalign.io import atomic_write_json, atomic_write_text, check_input_file

    # a missing file or a folder: said as every command says it, not as a bare [Errno 2]
    source = check_input_file(args.from_results, "from_results")
    try:
        results = json.loads(source.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"--from-results {source}: {e}") from e
    if not isinstance(results, dict) or "runs" not in results or "config" not in results:
        raise ValueError(f"--from-results {source}: not a study's results.json")
    who = written_by(results)
    if who != study_command("preference"):
        raise ValueError(
            f"--from-results {source}: not a preference study's results.json"
            + (f" (those of {who})" if who else "")
        )
    results["aggregates"] = preference.aggregate(results["runs"])
    results["claim"] = preference_report.claim_check(results)
    results = {"command": study_command("preference"), **results}  # which study wrote it
    out = Path(args.output_dir) if args.output_dir is not None else source.parent
    check_study_output_dir(out, "preference", _FILES)  # not over another's results
    out.mkdir(parents=True, exist_ok=True)
    table = preference_report.markdown_report(results)
    written = [
        atomic_write_json(out / "results.json", results),
        atomic_write_text(out / "table.md", table),
        *preference_report.write_figures(results, out),
    ]
    print(table)
    print("re-rendered: " + ", ".join(str(p) for p in written))
    return 0


def run(args: argparse.Namespace) -> int:
    from smoothalign.experiments.preference import METHODS, PRESETS

    refusal = ignored_options(args)  # an option the asked-for mode would silently ignore
    if refusal:
        raise ValueError(refusal)
    if args.from_results:
        return rerender(args)
    if args.list_methods:
        for m in METHODS.values():
            print(
                f"{m.name:<16} loss={m.loss:<8} smoothing={m.smoothing}"
                + (f" c0={m.init_confidence:g}" if m.init_confidence is not None else "")
                + (f" eps={m.flip_rate}" if m.flip_rate is not None else "")
                + (f" q={m.confidence}" if m.confidence != "true" else "")
                + (" relabelled" if m.relabel else "")
                + (
                    f" warmup={m.warmup_fraction:g} (plain DPO for the first "
                    f"{m.warmup_fraction:.0%} of the steps, then CALS)"
                    if m.warmup_fraction is not None
                    else ""
                )
            )
        for name, members in PRESETS.items():
            print(f"preset {name}: {','.join(members)}")
        return 0
    try:
        cfg = build_config(args)
    except TypeError as e:  # a bad option: cli.main names it (SMOOTHALIGN_DEBUG=1 raises)
        raise ValueError(str(e)) from e
    if args.export_votes:
        return export_votes(args, cfg)
    from smoothalign.experiments.study_dir import check_study_output_dir, study_command

    # before any training: not into another study's, a run's or a model's folder (a rerun
    # into this study's own folder reuses its runs)
    out = check_study_output_dir(args.output_dir or DEFAULT_OUTPUT_DIR, "preference", _FILES)
    if args.judge is not None and not (Path(args.judge) / "config.json").is_file():
        raise ValueError(f"--judge {args.judge}: no config.json there")

    import shutil

    from smoothalign.experiments import preference, preference_report
    from smoothalign.experiments.logreg import n_of
    from smoothalign.experiments.run_info import RunClock, default_workers
    from smoothalign.io import atomic_write_json, atomic_write_text

    n_groups = len(cfg.seeds) * len(cfg.flip_rates)
    workers = args.workers
    if workers is None:
        workers = 1 if args.quick else min(default_workers(), n_groups)
    if workers < 1:
        raise ValueError(f"--workers: must be >= 1, got {workers}")
    finished_dir = out / preference.FINISHED_DIR
    # the runs of an earlier study there (results.json, finished_groups/): other options, or
    # runs this one would drop, are refused here, before any training; runs of a method
    # defined otherwise now (by this version) than when they were made train again
    reuse, stale = preference.finished_runs(out, cfg, args.judge)
    out.mkdir(parents=True, exist_ok=True)
    names = [m.name for m in cfg.ordered_methods()]
    n_runs = n_groups * len(names)
    print(
        f"preference study: {len(names)} methods × flip rates "
        f"{list(cfg.flip_rates)} × {n_of(len(cfg.seeds))} = {n_runs} runs of {cfg.steps} steps, "
        f"{workers} worker(s)"
    )
    if reuse:
        whole = sum(
            all((s, e, n) in reuse for n in names) for s in cfg.seeds for e in cfg.flip_rates
        )
        print(
            f"resuming: {whole} of {n_groups} (seed, flip rate) groups and {len(reuse)} of "
            f"{n_runs} runs, made earlier with these options, are read from {out}; "
            f"{n_runs - len(reuse)} run(s) to train"
        )
    if stale:
        reasons = "; ".join(dict.fromkeys(stale.values()))
        print(
            f"training again {len(stale)} run(s) read from {out}, not reused: they are not "
            f"runs of the methods as this version defines them ({reasons})"
        )
    clock = RunClock()
    results = preference.run_study(
        cfg,
        workers=workers,
        judge_path=args.judge,
        progress=not args.no_progress,
        finished_dir=finished_dir,
        reuse=reuse,
    )
    results = {"command": study_command("preference"), **results}  # which study wrote it
    results["run_info"] = clock.info()
    results["claim"] = preference_report.claim_check(results)
    table = preference_report.markdown_report(results)
    written = [
        atomic_write_json(out / "results.json", results),
        atomic_write_text(out / "table.md", table),
        *preference_report.write_figures(results, out),
    ]
    shutil.rmtree(finished_dir, ignore_errors=True)  # results.json holds them all now
    print()
    print(table)
    info = results["run_info"]
    print(
        f"study: {info['wall_seconds']:.1f} s wall, {info['cpu_seconds']:.1f} s CPU; wrote "
        + ", ".join(str(p) for p in written)
    )
    return 0
