"""The option-likelihood scorer with and without the prompt's key/value cache.

    python benchmarks/mc_option_scorer.py                          # MMLU, 100 questions, CPU
    python benchmarks/mc_option_scorer.py --limit 20 --repeats 1   # quicker

The same questions, prompts and continuations as ``smoothalign eval calibration --scorer
option`` (seeded subsample, cloze prompts, ``--shots``), scored by
``smoothalign.eval.multiple_choice.score_options`` with ``use_cache=False`` (prompt + option
per option, the previous scorer) and ``use_cache=True`` (each prompt once), interleaved
``old, new, old, new, …`` so that load from other processes hits both alike. Prints the wall
times, the largest score difference and the summary metrics of each run (which must agree),
with the machine. A question that lists one option text twice (nine MMLU questions, one of
them in the default 100) is scored as ``eval calibration`` scores it: its identical options
are one answer (``merge_identical_options``), in the metrics and in whether the two runs
predict the same, so that two copies of one answer are not told apart by position; ``--output`` writes the same as JSON. Wall and CPU seconds of this process
are both recorded: on a shared machine the CPU seconds (with ``--threads 1``) are the steadier
measure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from smoothalign.experiments.run_info import cpu_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from smoothalign.eval.mc_prompts import build_prompt, continuations, few_shot_indices
    from smoothalign.eval.mc_sources import load_tasks
    from smoothalign.eval.mc_tasks import option_groups, subsample_indices
    from smoothalign.eval.multiple_choice import (
        MERGE_RULES,
        merge_identical_options,
        predictions,
        score_options,
        summarise,
    )
    from smoothalign.models import load_model_and_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", nargs="+", default=["mmlu"])
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shots", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="old/new pairs, interleaved")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--output", default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    prompts, conts, answers, groups = [], [], [], []
    for t in load_tasks(args.tasks):
        idx = subsample_indices(len(t.questions), args.limit, args.seed)
        shots = few_shot_indices(t.questions, args.shots, args.seed, for_indices=idx)
        for i, s in zip(idx, shots, strict=True):
            q = t.questions[i]
            prompts.append(build_prompt(q, "cloze", [t.questions[j] for j in s]))
            conts.append(continuations(q, "cloze"))
            answers.append(q.answer)
            groups.append(option_groups(q.options))
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=getattr(torch, args.dtype))
    model.to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    runs: dict[str, list[float]] = {"old": [], "new": []}
    cpu: dict[str, list[float]] = {"old": [], "new": []}  # this process's CPU seconds
    scores: dict[str, list[np.ndarray]] = {}
    for _ in range(args.repeats):
        for name, use_cache in (("old", False), ("new", True)):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            out = score_options(
                model, tokenizer, prompts, conts, batch_size=args.batch_size, use_cache=use_cache
            )
            sync()
            runs[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            scores[name] = out.scores
            print(f"{name}: {runs[name][-1]:.1f} s wall, {cpu[name][-1]:.1f} s CPU", flush=True)
    diff = max(
        float(np.abs(a - b).max()) for a, b in zip(scores["old"], scores["new"], strict=True)
    )
    # identical options are one answer, as eval calibration scores them: by answer, not
    # by the option's position (summarise expects merged scores)
    merged = {
        name: merge_identical_options(s, answers, groups, MERGE_RULES["option"])
        for name, s in scores.items()
    }
    metrics = {name: summarise(*m) for name, m in merged.items()}
    predicted = {name: predictions(m[0])[1] for name, m in merged.items()}
    result = {
        "model": args.model,
        "tasks": args.tasks,
        "n_questions": len(prompts),
        "n_options": int(sum(len(c) for c in conts)),
        "n_identical_options": sum(len(set(g)) < len(g) for g in groups),
        "batch_size": args.batch_size,
        "device": args.device
        if not args.device.startswith("cuda")
        else torch.cuda.get_device_name(args.device),
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "seconds": runs,
        "cpu_seconds": cpu,
        "median_s": {k: statistics.median(v) for k, v in runs.items()},
        "min_s": {k: min(v) for k, v in runs.items()},
        "speedup": statistics.median(runs["old"]) / statistics.median(runs["new"]),
        "cpu_speedup": statistics.median(cpu["old"]) / statistics.median(cpu["new"]),
        "max_abs_score_diff": diff,
        "same_predictions": bool((predicted["old"] == predicted["new"]).all()),
        "metrics": metrics,
        "torch": torch.__version__,
    }
    print("| scorer | wall (s), each run | median wall (s) | CPU (s), each run |")
    print("|---|---|---|---|")
    for k, v in runs.items():
        each, each_cpu = ", ".join(f"{x:.1f}" for x in v), ", ".join(f"{x:.1f}" for x in cpu[k])
        print(f"| {k} | {each} | {statistics.median(v):.1f} | {each_cpu} |")
    print(json.dumps(result, indent=1))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
