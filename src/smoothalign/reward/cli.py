"""``smoothalign reward``: argument parsing only; the work is :func:`smoothalign.reward.run.run_reward`.

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
    "model": "'tiny' (a small config-built Llama with random weights and a byte tokenizer: the "
    "default, sized for the oracle world and tests; give a pretrained trunk for your own data), "
    "'smollm2-135m', a local causal-LM folder (its trunk gets a new scalar head) or a folder "
    "saved from a *ForSequenceClassification model (a smoothalign run's folder: the model in "
    "its final/)",
    "data": "soft-label pairs: a JSONL/JSON/Parquet/CSV file or folder (its train.* / train-*.* files "
    "if it has any, its eval.* / eval-<n>-of-<m>.* (or validation.*) files beside them then "
    "being the held-out pairs, labelled in their rows, by --labels or by --eval-labels, unless --eval-data "
    "is given; else all "
    "its data "
    "files) in TRL format "
    "(prompt/chosen/rejected) with p_chosen, or votes_chosen + votes_total, or a votes list; "
    "default: the oracle text world (simulated annotators, known truth)",
    "labels": "soft labels in a separate file, joined on pair_id: one row per pair "
    "(p_chosen | votes_chosen + votes_total | votes) or one row per annotator vote "
    "({pair_id, vote: 0/1}); without --eval-labels it labels the held-out pairs too (a "
    "--data folder's eval files, or --eval-data), each row the pair of its id on either side",
    "eval_data": "held-out pairs (default: a --data folder's eval.* files, else the data's "
    "'split'=='eval' rows, else a holdout)",
    "eval_labels": "soft labels of the held-out pairs (--eval-data, or a --data folder's eval "
    "files) in a separate file, joined on pair_id (default: the --labels file's rows for "
    "them, if any)",
    "loss": "bt (Bradley–Terry on the majority vote), soft-bce (target = vote share), fkl, "
    "rkl, jsd (divergences of SPEC §6)",
    "posterior": "fkl/rkl/jsd against the batch-normalised posterior target of SPEC §6 "
    "instead of the plain vote share",
    "posterior_grad": "let gradients flow through the posterior target (off: they stop at it, "
    "as SPEC §6 has it)",
    "margin": "m >= 0: the loss sees r₁ − r₂ − m·(2ℓ − 1), ℓ the majority label (bt) or the "
    "vote share",
    "center_weight": "λ of the reward-centering term λ·(r₁ + r₂)² (0 disables it)",
    "rkl_floor": "--loss rkl only: floor of the vote share inside the reverse-KL loss, in "
    "(0, 0.5) (not 0: a unanimous vote, 0/1, makes the reverse KL infinite); the reported "
    "reverse KL floors the share at 1e-6 whatever this is, so runs compare",
    "smoothing": "label smoothing of the target, t → (1 − 2α)t + α: none, constant:<α>, "
    "cals-l0, cals-l2 (α from the model's own calibration, SPEC §4), oracle-l0/l2 (needs a "
    "confidence column)",
    "momentum": "CALS: moving-average momentum per calibrator update (one per micro-batch)",
    "warmup_steps": "CALS: micro-batches during which α = a*(c0) while the bins update",
    "batch_size": "pairs per device per micro-batch (the posterior's batch)",
    "seed": "random seed (data order, the score head's initialisation, the oracle world)",
    "lora": "train a LoRA adapter and the scalar head (--no-lora: full fine-tuning)",
    "oracle_pairs": "oracle text world (no --data): number of pairs",
    "annotators": "oracle text world: Bradley–Terry annotators per pair",
    "oracle_temperature": "oracle text world: annotator temperature τ, q = σ(Δr*/τ)",
    "eval_steps": "evaluate on the held-out pairs every N steps (0: only before and after)",
    "max_eval_pairs": "score only the first N held-out pairs, before, at each --eval-steps and "
    "after training (0: all of them; no cap by default, unlike dpo's 64: a reward model scores "
    "a pair in one forward pass, with no reference model and no sampling)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from smoothalign.reward.config import RewardConfig
    from smoothalign.reward.objective import REWARD_LOSSES

    # the fixed vocabularies, as RewardConfig checks them
    add_config_arguments(parser, RewardConfig, HELP, {**TRAINING_CHOICES, "loss": REWARD_LOSSES})
    add_progress_argument(parser)


def config_from_args(args: argparse.Namespace):
    from smoothalign.reward.config import RewardConfig

    return _config_from_args(args, RewardConfig)


def run(args: argparse.Namespace) -> int:
    from smoothalign.reward.config import RewardConfig

    with progress_bars(not args.no_progress):  # the Trainer's bars and smoothalign's
        return run_command(args, RewardConfig, _load_run)


def _load_run():
    from smoothalign.reward.run import run_reward

    return run_reward
