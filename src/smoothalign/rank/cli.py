"""``smoothalign rank-calibrate``: argument parsing only; the work is
:func:`smoothalign.rank.run.run_rank_calibration`.

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
    "policy": "the policy to calibrate: 'smollm2-135m' (default), 'tiny' (tests), a local "
    "causal-LM folder (a smoothalign run's folder: the model in its final/) or a .gguf file",
    "reward_model": "REQUIRED: the preference model, a folder written by `smoothalign reward` "
    "(the run folder or its final/); loaded from safetensors, trust_remote_code off",
    "prompts": "prompts: a JSONL/JSON/Parquet/CSV file or folder (its train.* files if it has "
    "any, its eval.* (or validation.*) files beside them then being the held-out prompts "
    "unless --eval-prompts is given; else all its data files) with a 'prompt' column "
    "(string or messages) and optionally a reference response ('reference', else "
    "'completion', else 'chosen'); default: the shipped sentiment_pairs.jsonl prompts "
    "(reference = their 'chosen')",
    "eval_prompts": "held-out prompts (default: a --prompts folder's eval.* files, else the "
    "prompts' 'split'=='eval' rows, else a holdout)",
    "eval_fraction": "holdout fraction when the prompts have no split column and no --eval-prompts",
    "max_prompts": "use at most this many training prompts (0: all)",
    "max_eval_prompts": "evaluate at most this many held-out prompts (0: all)",
    "output_dir": "where metrics.jsonl, candidates, report.md, plots and final/ go",
    "num_candidates": "K: candidates per prompt (>= 2)",
    "decoding": "sample (temperature sampling), beam (beam search, K beams) or diverse-beam "
    "(group beam search with a Hamming diversity penalty, implemented here: transformers 5 "
    "moved it to the Hub)",
    "temperature": "sampling temperature",
    "top_k": "sampling: keep the k most likely tokens (0: no cut)",
    "num_beam_groups": "diverse-beam: number of groups G, dividing K (0: K groups of one beam)",
    "diversity_penalty": "diverse-beam: penalty per earlier group that picked the same token",
    "max_new_tokens": "longest candidate, in tokens",
    "regenerate": "new candidates from the current policy at every epoch (--no-regenerate: "
    "once, before the first epoch)",
    "generation_batch_size": "prompts per generate() call",
    "score_batch_size": "sequences per preference-model forward",
    "margin": "λ: the pair (i, j) of ranks i < j must have s̄ᵢ − s̄ⱼ >= λ·(j − i) (nats per token)",
    "nll_weight": "weight of the reference response's NLL per token (0: off; then no "
    "reference is needed)",
    "tie_tolerance": "candidate pairs whose scores differ by at most this are not ranked",
    "epochs": "epochs over the training prompts (one round of candidates each)",
    "learning_rate": "peak learning rate (AdamW)",
    "batch_size": "prompts per micro-batch (each brings K candidates and its reference)",
    "weight_decay": "AdamW weight decay (matrices only)",
    "max_grad_norm": "gradient clipping norm (0: none)",
    "max_length": "max tokens of prompt + response (longer ones are cut from the end)",
    "seed": "random seed (sampling, shuffling)",
    "precision": "auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16",
    "trust_remote_code": "allow custom model code from the policy's local folder (never for "
    "the preference model)",
    "logging_steps": "log training metrics every N optimizer steps",
    "save_steps": "checkpoint every N optimizer steps and at the last one (0: none)",
    "resume": "resume from a checkpoint folder, or 'latest' (newest complete one in "
    "--output-dir); one at the last step trains no step and finishes its run (the held-out "
    "evaluation after, final/, report)",
    "on_bad_rows": "invalid prompt rows: 'error' (stop, naming them) or 'skip' (listed in "
    "the report)",
    "save_model": "save the calibrated policy to OUTPUT_DIR/final (safetensors)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from smoothalign.rank.config import DECODINGS, RankConfig

    # the fixed vocabularies, as RankConfig checks them
    add_config_arguments(
        parser,
        RankConfig,
        HELP,
        {**TRAINING_CHOICES, "decoding": DECODINGS},
        required=("reward_model",),  # RankConfig's None: the Python API's own refusal
    )
    add_progress_argument(parser)


def config_from_args(args: argparse.Namespace):
    from smoothalign.rank.config import RankConfig

    return _config_from_args(args, RankConfig)


def run(args: argparse.Namespace) -> int:
    from smoothalign.rank.config import RankConfig

    with progress_bars(not args.no_progress):  # the Trainer's bars and smoothalign's
        return run_command(args, RankConfig, _load_run)


def _load_run():
    from smoothalign.rank.run import run_rank_calibration

    return run_rank_calibration
