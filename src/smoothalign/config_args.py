"""Command-line flags from a config dataclass, and the config back from parsed flags.

Every field but ``extra`` becomes ``--field-name`` (``io.config_flags``, which a resume
refusal reads too) with the field's default and a help text from ``help_texts`` (a missing help text is an error, so every option is documented).
A field of a fixed vocabulary gets argparse ``choices`` (the constants its config checks
against), so that ``--help`` lists them and another word is refused while parsing.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import MISSING, fields
from typing import Any

from smoothalign._checks import LEAN_LAYERS, ON_BAD_ROWS, PRECISIONS
from smoothalign.io import CALIBRATOR_FLAGS, config_flags
from smoothalign.kernels import GRAD_FILTERS

# help texts of the fields the training configs share (a command's HELP may override one)
TRAINING_HELP = {
    "eval_fraction": "holdout fraction when the data has no split column and no --eval-data",
    "output_dir": "where checkpoints, metrics.jsonl, report.md and plots go",
    "max_steps": "optimizer steps",
    "learning_rate": "peak learning rate",
    "grad_accum": "gradient accumulation steps",
    "lr_scheduler": "transformers scheduler name",
    "lr_warmup_steps": "learning-rate warm-up steps",
    "weight_decay": "AdamW weight decay",
    "max_length": "max tokens of prompt + response (longer responses are truncated and counted)",
    "lora": "train a LoRA adapter (--no-lora: full fine-tuning)",
    "lora_r": "LoRA rank",
    "lora_alpha": "LoRA scaling alpha",
    "precision": "auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16",
    "trust_remote_code": "allow custom model code from a local model folder",
    "gradient_checkpointing": "recompute each decoder layer's activations in the backward "
    "instead of keeping them (much less activation memory for about a third more time)",
    "lean_layers": "RMSNorm and SwiGLU that keep fewer activations for the backward, and a "
    "faster rotary embedding (same formulas; Llama, Mistral, Qwen2/3 layers; about 30%% less "
    "activation memory at Llama-3.2-1B shapes; Triton kernels on CUDA): auto (recompute on "
    "CUDA, off on the CPU), on, off, or recompute (on, and the norm outputs and SwiGLU product "
    "recomputed in the backward: about half the eager activations)",
    "grad_filter": "the fused LM-head kernel's gradient filter (CUDA): auto skips the backward "
    "blocks whose every softmax entry is below eps/32 of the bf16/fp16 inputs (no filtering for "
    "fp32 inputs), as Cut Cross-Entropy does, and the rows and columns of a computed block below "
    "a quarter of that, putting the left-out mass back along the head's mean row (fast "
    "when the softmax is spread thin, as in a randomly initialised model, but that softmax "
    "mass is then missing from the gradient); off computes every block (none of the softmax is dropped)",
    "bins": "CALS: number of forecast bins K (even)",
    "init_confidence": "CALS: prior confidence c0 (1.0 = no smoothing until evidence arrives)",
    "prior_strength": "CALS: pseudo-pairs κ of prior per bin (never decayed)",
    "logging_steps": "log training metrics every N steps",
    "save_steps": "checkpoint every N steps (0: only the final model)",
    "save_total_limit": "keep at most this many complete checkpoints, the newest (at least 1: older ones are removed only once the new one is certified complete; 'all' keeps every one)",
    "resume": "resume from a checkpoint folder, or 'latest' (newest complete one in --output-dir); one at --max-steps trains no step and finishes its run (evaluation, final/, report)",
    "on_bad_rows": "invalid data rows: 'error' (stop, listing them) or 'skip' (listed in the report)",
    "report": "write report.md and the plots at the end",
}


# the fixed vocabularies of the options the training configs share (a command adds its own,
# as for HELP): the very constants the configs check, so that the Python API refuses what
# argparse refuses
TRAINING_CHOICES: dict[str, Sequence[str]] = {
    "precision": PRECISIONS,
    "on_bad_rows": ON_BAD_ROWS,
    "grad_filter": GRAD_FILTERS,
    "lean_layers": LEAN_LAYERS,
}
# an option's other names, after its own --field-name (which help, messages and config.json
# keep): the fused LM-head kernel is `dpo --fused-logps` and `sft --fused` (same kernel, same
# words), and either command takes the other's name
FLAG_ALIASES: dict[str, tuple[str, ...]] = {
    "fused_logps": ("--fused",),
    "fused": ("--fused-logps",),
    # the CALS calibrator's options before they took their prefix (io.CALIBRATOR_FLAGS)
    **{name: ("--" + name.replace("_", "-"),) for name in CALIBRATOR_FLAGS},
}
# string options that were once on/off flags: the bare flag still means "on" and the
# --no- form "off"
BARE_FLAG_VALUES = {"lean_layers": "on"}
# the word that gives an optional number's None on the command line (Python passes None)
NONE_WORDS = {"save_total_limit": "all"}


def add_trust_remote_code(parser: argparse.ArgumentParser, whose: str = "") -> None:
    """``--trust-remote-code`` / ``--no-trust-remote-code`` (off) for a command that loads
    models outside a run config (the evaluations, a study); ``whose``: which models, said in
    its help after the training commands' text."""
    parser.add_argument(
        "--trust-remote-code",
        action=argparse.BooleanOptionalAction,
        default=False,
        help=TRAINING_HELP["trust_remote_code"] + (f" ({whose})" if whose else ""),
    )


def _fields(config_cls: type) -> list:
    return [f for f in fields(config_cls) if f.name in config_flags(config_cls)]


def add_config_arguments(
    parser: argparse.ArgumentParser,
    config_cls: type,
    help_texts: dict[str, str],
    choices: Mapping[str, Sequence[str]] = TRAINING_CHOICES,
    required: Collection[str] = (),
) -> None:
    """An option for each field of ``config_cls`` (but ``extra``). ``choices``: the words a
    field of a fixed vocabulary takes; ``required``: the fields the command line must give
    (argparse says so in the usage and refuses a command without them; the config may still
    default them to None, for the Python API, whose own check then refuses that None)."""
    flags = config_flags(config_cls)  # what a resume refusal names too
    for f in _fields(config_cls):
        flag = flags[f.name]
        names = (flag, *FLAG_ALIASES.get(f.name, ()))  # the field's own flag first
        default = f.default if f.default is not MISSING else None
        words = {"choices": choices[f.name]} if f.name in choices else {}
        if f.type in ("bool", bool):
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_texts[f.name],
            )
            continue
        # annotations are strings here; a list (rows handed over in Python) has no flag form
        base = str(f.type).replace(" | None", "").replace(" | list", "")
        kind = {"int": int, "float": float, "str": _non_empty}[base]
        if f.name in BARE_FLAG_VALUES:
            parser.add_argument(
                *names,
                dest=f.name,
                type=kind,
                nargs="?",
                const=BARE_FLAG_VALUES[f.name],
                default=default,
                **words,
                help=help_texts[f.name] + f" (the bare flag: {BARE_FLAG_VALUES[f.name]})",
            )
            parser.add_argument(
                "--no-" + flag[2:], dest=f.name, action="store_const", const="off",
                default=argparse.SUPPRESS, help=f"the same as {flag} off",
            )  # fmt: skip
            continue
        if f.name in NONE_WORDS:
            kind = _or_none(kind, NONE_WORDS[f.name])
        parser.add_argument(
            *names,
            dest=f.name,
            type=kind,
            default=default,
            required=f.name in required,
            help=help_texts[f.name],
            **words,
        )


def _or_none(kind: Callable[[str], Any], word: str) -> Callable[[str], Any]:
    """``kind``, or None for ``word`` (``--save-total-limit all``: keep every checkpoint,
    the Python API's ``save_total_limit=None``)."""

    def convert(text: str) -> Any:
        if text.strip().lower() == word:
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'} or '{word}', got {text!r}"
            ) from None

    return convert


def _non_empty(text: str) -> str:
    """A string flag's value: an empty one (``--data ""``) would mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value; leave the option out for its default")
    return text


def config_from_args(args: argparse.Namespace, config_cls: type) -> Any:
    """The config of the parsed flags. The dataclass's refusals name the option by its field
    (``max_steps: must be > 0, got 0``, as the Python API sees it); ``cli.main`` prints that
    name as the command's flag (``--max-steps: ...``), as for every other refusal."""
    return config_cls(**{f.name: getattr(args, f.name) for f in _fields(config_cls)})


def run_command(
    args: argparse.Namespace,
    config_cls: type,
    load_run: Callable[[], Callable[[Any], Any]],
) -> int:
    """A command's whole ``run``: the config from ``args``, then the run function that
    ``load_run`` imports (only once the config is valid), then its summary printed. A config
    the dataclass refuses raises ``ValueError``, which :func:`smoothalign.cli.main` prints as
    ``smoothalign COMMAND: message`` with exit status 2."""
    config = config_from_args(args, config_cls)
    result = load_run()(config)
    print(result.summary())
    return 0
