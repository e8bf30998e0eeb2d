"""``run_sft(config)``: model → data → train → evaluate → report.

The wiring of the layers below; every piece it calls is tested on its own. Writes into
``config.output_dir``: ``config.json``, ``validation.json``, ``split.json`` (the held-out
rows: ``train.common.split_record``), ``data_fingerprint.json`` (the rows trained and
evaluated on; each checkpoint holds its own), ``metrics.jsonl``,
``checkpoint-N/`` (with ``--save-steps``), ``final/`` (the full model; with LoRA the merged
model, and the adapter in ``final/adapter/``),
``eval_results.json`` (held-out metrics before and after) and, with ``report``,
``report.md`` with ``training_curves.png`` and ``reliability.png``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import set_seed

from smoothalign.data.loading import check_paths_exist, folder_held_out
from smoothalign.io import atomic_write_json, config_flags
from smoothalign.models import load_model_and_tokenizer
from smoothalign.sft.config import SFTConfig
from smoothalign.sft.data import TEXT_FIELDS as SFT_TEXT_FIELDS
from smoothalign.sft.data import (
    SFTCollator,
    SFTDataset,
    SFTExample,
    embedded_sft_rows,
    validate_sft_rows,
)
from smoothalign.sft.trainer import SFTTrainer
from smoothalign.train.checkpoints import (
    clear_before_run,
    clear_incomplete_checkpoints,
    incomplete_checkpoint_names,
    prepare_output_dir,
    run_config_record,
    train_with_resume,
)
from smoothalign.train.common import (
    SPLIT_FILE,
    DataCheck,
    add_lora,
    apply_lean_layers,
    check_scheduler,
    held_out_set_of,
    lean_layers_enabled,
    load_checked,
    resolve_bf16,
    save_final_model,
    scored_held_out,
    split_record,
    training_arguments,
)
from smoothalign.train.data_fingerprint import (
    check_resume_data,
    data_fingerprint,
    earlier_data_fingerprint,
    record_data_fingerprint,
)
from smoothalign.train.run_result import TrainerRunResult

SUMMARY_KEYS = ("loss", "nll", "perplexity", "mean_token_accuracy", "entropy", "top1_ece")


@dataclass
class SFTRunResult(TrainerRunResult):
    trainer: SFTTrainer | None = field(default=None, repr=False)

    COMMAND: ClassVar[str] = "sft"
    UNIT: ClassVar[str] = "rows"
    SUMMARY_KEYS: ClassVar[tuple[str, ...]] = SUMMARY_KEYS
    EVAL_LIMIT: ClassVar[str | None] = "--max-eval-rows"
    KEY_WIDTH: ClassVar[int] = 20
    VALUE_WIDTH: ClassVar[int] = 9


def load_sft_data(
    config: SFTConfig, tokenizer: Any
) -> tuple[list[SFTExample], list[SFTExample], dict[str, Any], str, list[str]]:
    """``(train, eval, validation_dict, validation_markdown, notes)`` for ``config``. A
    refusal of the rows lists every bad row in ``refused_validation.json`` (``DataCheck``)."""
    notes = []
    if config.data is None:
        rows: Any = embedded_sft_rows()
        notes.append(
            "data: the embedded controlled-sentiment prompts with their labelled 'chosen' "
            "responses as completions"
        )
    else:
        rows = config.data  # validation loads it (and names it if it holds no row)
    # a data folder's eval.* beside its train.* is the held-out set, unless --eval-data
    folder = folder_held_out(
        config.data, config.eval_data, text_fields=SFT_TEXT_FIELDS, what="SFT data"
    )
    notes += folder.notes
    data = DataCheck(config.output_dir, folder.option)  # a refusal lists every bad row there
    with data.refusals_written():
        eval_rows = config.eval_data if config.eval_data is not None else folder.rows
        _, _, (train_ex, eval_ex, info, md, split_notes) = data.validate_and_split(
            lambda part, held_out: validate_sft_rows(
                part, tokenizer, config.max_length, config.on_bad_rows, held_out=held_out
            ),
            rows,
            eval_rows,
            config.eval_fraction,
            config.seed,
            what="rows",
        )
    return train_ex, eval_ex, info, md, notes + split_notes


SFT_READS = ("input_ids", "labels")
"""What training and evaluation read of an SFT row (its data fingerprint's content): its
tokens and which of them the loss reads."""


def sft_content(example: SFTExample) -> tuple:
    """:data:`SFT_READS` of ``example``: its content under the fingerprint's scheme 1."""
    return example.input_ids, example.labels


def token_note(train: list[SFTExample], held_out: list[SFTExample]) -> str:
    """The report's line on the tokens the loss reads, in the training rows and (apart) in
    the held-out ones: validation counts every kept row's, before the train/eval split."""
    n_train = sum(ex.n_completion_tokens for ex in train)
    n_held = sum(ex.n_completion_tokens for ex in held_out)
    return (
        f"tokens the loss reads: {n_train} in the {len(train)} training rows (an epoch's), "
        f"{n_held} in the {len(held_out)} held-out rows"
    )


def run_sft(config: SFTConfig, *, callbacks: list | None = None) -> SFTRunResult:
    """Fine-tune ``config.model`` on ``config.data``; ``callbacks`` are extra
    ``transformers.TrainerCallback`` s."""
    config.validate()
    out = Path(config.output_dir)
    check_scheduler(config)  # first: it records constant's warm-up as 0, which resume compares
    # before the model loads: a mixed-up dir, a bad --resume or a changed config fails fast
    prepare_output_dir(out, config.resume, run_config_record(config), config_flags(config))
    found_incomplete = incomplete_checkpoint_names(out)  # what the run may clear at its end
    set_seed(config.seed)  # python, numpy and torch: data order and the LoRA initialisation
    bf16 = resolve_bf16(config.precision)
    # a mistyped path fails before the model loads
    check_paths_exist(data=config.data, eval_data=config.eval_data)

    def checked_data(tokenizer):  # and a resume's rows: the checkpointed run's
        validated = load_sft_data(config, tokenizer)
        train, held_out = validated[0], validated[1]
        fingerprint = data_fingerprint(train, held_out, SFT_READS)
        earlier = lambda: earlier_data_fingerprint(train, held_out, sft_content)  # noqa: E731
        return validated, fingerprint, check_resume_data(config.resume, out, fingerprint, earlier)

    model, tokenizer, checked = load_checked(  # bad rows before the weights, if it can
        config.model,
        config.trust_remote_code,
        checked_data,
        lambda tok: load_model_and_tokenizer(
            config.model, trust_remote_code=config.trust_remote_code, tokenizer=tok
        ),
    )
    validated, fingerprint, resume_note = checked
    train_ex, eval_ex, info, validation_md, notes = validated
    notes += [resume_note] if resume_note else []
    n_skipped = sum(v["n_skipped"] for v in info.values())
    notes.append(token_note(train_ex, eval_ex))
    held_out = eval_ex  # withheld from training; scored: up to --max-eval-rows
    eval_ex = scored_held_out(eval_ex, config.max_eval_rows, "max_eval_rows", "rows", notes)
    split = split_record(
        train_ex,
        held_out,
        lambda ex: ex,
        held_out_set=held_out_set_of(config.eval_data, info),
        eval_fraction=config.eval_fraction,
        seed=config.seed,
        n_scored=len(eval_ex),
        eval_limit="--max-eval-rows",
    )
    notes.append(f"held-out rows: each one's file and row in {SPLIT_FILE}")
    if lean_layers_enabled(config.lean_layers):
        notes.append(apply_lean_layers(model, config.lean_layers, config.gradient_checkpointing))
    if config.lora:
        model = add_lora(model, config)  # the DPO run's adapter: all-linear, causal LM
    notes.append(
        f"label smoothing β = {config.label_smoothing:g}; "
        + ("LoRA" if config.lora else "full fine-tuning")
        + f", fused kernel: {config.fused} (auto: on CUDA)"
    )

    collator = SFTCollator(pad_token_id=int(tokenizer.pad_token_id))
    train_ds, eval_ds = SFTDataset(train_ex), SFTDataset(eval_ex)
    trainer = SFTTrainer(
        model=model,
        args=training_arguments(config, bf16),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=tokenizer,
        sft_config=config,
        callbacks=callbacks,
    )
    main_process = trainer.is_world_process_zero()
    if main_process:
        clear_before_run(out, config.resume, notes)  # checks passed, models loaded: the run is on
        atomic_write_json(out / "config.json", run_config_record(config))
        atomic_write_json(out / "validation.json", info)
        atomic_write_json(out / SPLIT_FILE, split)
    record_data_fingerprint(trainer, out, config.resume, fingerprint)

    trainer.check_head(collator(eval_ex[: config.batch_size]))
    before, tokens_before = trainer.token_evaluation(eval_ds)
    train_seconds = train_with_resume(trainer, config.resume, out, notes)

    after, tokens_after = trainer.token_evaluation(eval_ds)
    trainer.log_after_training({f"final_eval_{k}": v for k, v in after.items()})
    save_final_model(trainer, tokenizer, out / "final", lora=config.lora, main_process=main_process)
    if main_process:
        atomic_write_json(out / "eval_results.json", {"before": before, "after": after})
        # the run is done: nothing can save there
        clear_incomplete_checkpoints(out, notes, found_incomplete)
    device = "CUDA" if torch.cuda.is_available() else "CPU"
    notes.append(f"training time {train_seconds:.0f} s on {device}")
    if config.report and main_process:
        from smoothalign.sft.report import write_sft_report

        write_sft_report(
            out,
            config=config.to_dict(),
            before=before,
            after=after,
            tokens_before=tokens_before,
            tokens_after=tokens_after,
            validation_markdown=validation_md,
            notes=notes,
        )
    return SFTRunResult(
        out, before, after, train_seconds, len(train_ex), len(eval_ex), n_skipped, notes, trainer,
        n_held_out=len(held_out),
        model=config.model,
    )  # fmt: skip
