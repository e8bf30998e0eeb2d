"""``smoothalign study logreg``: run the logistic-regression study (SPEC §7), write its
results, table and figures, and print the table.

Files written into ``--output-dir``: ``results.json`` (resolved config, every run, the
aggregates), ``table.md``, ``logreg_test_loss.png``, ``c0_ablation.png`` and the theory
figures ``optimal_alpha.png``, ``equilibrium.png``, ``update_dynamics.png``.

This module imports only ``argparse`` at load time, so ``smoothalign --help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_OUTPUT_DIR = "outputs/logreg"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny grid (d = 5, 10; n = 2d, 10d, 50d; 2 seeds; 40 steps; 2000 test points): "
        "seconds, for tests and smoke runs; explicit options below still apply",
    )
    parser.add_argument(
        "--output-dir", default=DEFAULT_OUTPUT_DIR, help="directory for results and figures"
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="number of seeds (default 5; quick: 2)"
    )
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ..."
    )
    parser.add_argument(
        "--dims", type=int, nargs="+", default=None, help="dimensions d (default 10 50 100)"
    )
    parser.add_argument(
        "--n-multipliers",
        type=int,
        nargs="+",
        default=None,
        help="training-set sizes as multiples of d (default 2 5 10 20 50 100)",
    )
    parser.add_argument(
        "--steps",
        "--max-steps",
        type=int,
        default=None,
        help="full-batch gradient-descent steps (default 150)",
    )
    parser.add_argument(
        "--lr", "--learning-rate", type=float, default=None, help="step size (default 1.0)"
    )
    parser.add_argument(
        "--signal",
        type=float,
        default=None,
        help="‖θ*‖; sets the label noise (default 2.5: mean label confidence ≈ 0.81)",
    )
    parser.add_argument(
        "--n-test", type=int, default=None, help="fresh test points per (d, seed) (default 20000)"
    )
    parser.add_argument(
        "--c0",
        dest="c0_values",  # LogRegConfig's field: its refusals name --c0 (cli._named_by_flag)
        type=float,
        nargs="+",
        default=None,
        help="CALS initial confidences of the ablation (default 0.8 0.9 1.0)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes, one torch thread each (default: usable CPUs, at most 8; "
        "quick: 1); results do not depend on it",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_config(args: argparse.Namespace):
    """The :class:`LogRegConfig` that ``args`` ask for (``--quick`` first, then overrides)."""
    from smoothalign.experiments.logreg import LogRegConfig

    overrides: dict[str, Any] = {}
    if args.first_seed < 0:
        raise ValueError(f"--first-seed: a seed is a non-negative integer, got {args.first_seed}")
    if args.seeds is not None:
        if args.seeds < 1:
            raise ValueError(f"--seeds: need at least 1, got {args.seeds}")
        overrides["seeds"] = tuple(range(args.first_seed, args.first_seed + args.seeds))
    elif args.first_seed:
        n_seeds = 2 if args.quick else len(LogRegConfig().seeds)
        overrides["seeds"] = tuple(range(args.first_seed, args.first_seed + n_seeds))
    for arg, key in [
        ("dims", "dims"),
        ("n_multipliers", "n_multipliers"),
        ("c0_values", "c0_values"),
    ]:
        value = getattr(args, arg)
        if value is not None:
            overrides[key] = tuple(value)
    for key in ("steps", "lr", "signal", "n_test"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    return LogRegConfig.quick(**overrides) if args.quick else LogRegConfig(**overrides)


def run(args: argparse.Namespace) -> int:
    from smoothalign.experiments import logreg
    from smoothalign.experiments.run_info import RunClock, default_workers
    from smoothalign.experiments.study_dir import check_study_output_dir, study_command
    from smoothalign.experiments.theory_plots import write_theory_plots
    from smoothalign.io import atomic_write_json, atomic_write_text, save_figure

    cfg = build_config(args)  # a bad option: cli.main names it (SMOOTHALIGN_DEBUG=1 raises)
    # not into another study's, a run's or a model's folder: its files would be replaced
    out = check_study_output_dir(
        args.output_dir, "logreg", "results.json, table.md, logreg_test_loss.png, ..."
    )
    workers = args.workers if args.workers is not None else (1 if args.quick else default_workers())
    if workers < 1:  # raised: cli.main says it as every input error (exit status 2)
        raise ValueError(f"--workers: must be >= 1, got {workers}")
    out.mkdir(parents=True, exist_ok=True)
    methods = logreg.study_methods(cfg)
    n_runs = sum(len(cfg.n_values(d)) for d in cfg.dims) * len(cfg.seeds) * len(methods)
    print(
        f"logreg study: d = {list(cfg.dims)}, n/d = {list(cfg.n_multipliers)}, "
        f"{logreg.n_of(len(cfg.seeds))}, {len(methods)} methods -> {n_runs} runs "
        f"({cfg.steps} GD steps at lr {cfg.lr:g}, ‖θ*‖ = {cfg.signal:g}), {workers} worker(s)"
    )
    clock = RunClock()
    results = logreg.run_study(cfg, workers=workers, progress=not args.no_progress)
    results = {"command": study_command("logreg"), **results}  # which study wrote it
    results["run_info"] = clock.info()
    table = logreg.markdown_report(results)
    written = [
        atomic_write_json(out / "results.json", results),
        atomic_write_text(out / "table.md", table),
        save_figure(logreg.plot_test_loss(results), out / "logreg_test_loss.png"),
        save_figure(logreg.plot_c0_ablation(results), out / "c0_ablation.png"),
        *write_theory_plots(out),
    ]
    print()
    print(table)
    info = results["run_info"]
    print(
        f"study: {info['wall_seconds']:.1f} s wall, {info['cpu_seconds']:.1f} s CPU "
        f"({workers} worker(s)); wrote {', '.join(str(p) for p in written)}"
    )
    return 0
