"""``run_reward(config)``: model → data → train → evaluate → report, for a scalar-head model.

The wiring of the layers below; every piece it calls is tested on its own.

**What ``final/`` holds.** Always a full, self-contained ``*ForSequenceClassification``
model (safetensors, ``num_labels=1``, ``pad_token_id`` set) with its tokenizer, so that
:func:`smoothalign.reward.scoring.load_preference_model`, ``rank-calibrate`` and the
preference study's judge read every run alike. With ``--lora`` the trained adapter is
merged into a copy of the model (``merge_and_unload``) and the merged model is what
``final/`` holds; the adapter itself (small next to the model: the LoRA matrices and the
scalar head, which peft trains in full) is kept beside it in ``final/adapter/`` for whoever
wants to reload it onto its base with peft. The merge works on a copy of the trained model
(once more its memory, freed after saving; the trainer's model stays a ``PeftModel``), on
the main process only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import set_seed

from smoothalign.data.loading import check_paths_exist, folder_held_out
from smoothalign.io import atomic_write_json, config_flags
from smoothalign.reward.config import RewardConfig
from smoothalign.reward.data import (
    RewardCollator,
    RewardDataset,
    RewardPair,
    oracle_text_rows,
    share_labels,
    validate_reward_rows,
)
from smoothalign.reward.trainer import RewardTrainer, reward_metrics
from smoothalign.train.checkpoints import (
    clear_before_run,
    clear_incomplete_checkpoints,
    incomplete_checkpoint_names,
    prepare_output_dir,
    run_config_record,
    save_smoothing_state,
    train_with_resume,
)
from smoothalign.train.common import (
    SPLIT_FILE,
    DataCheck,
    check_identical_after_truncation,
    check_scheduler,
    held_out_set_of,
    load_checked,
    require_confidence,
    resolve_bf16,
    save_final_model,
    scored_held_out,
    split_record,
    split_validated,
    training_arguments,
    validation_summary,
)
from smoothalign.train.data_fingerprint import (
    check_resume_data,
    data_fingerprint,
    earlier_data_fingerprint,
    pair_content,
    pair_reads,
    record_data_fingerprint,
)
from smoothalign.train.run_result import TrainerRunResult

SUMMARY_KEYS = ("accuracy", "accuracy_true", "ece", "ece_true", "kl_true", "fkl", "rkl", "jsd")


@dataclass
class RewardRunResult(TrainerRunResult):
    trainer: RewardTrainer | None = field(default=None, repr=False)

    COMMAND: ClassVar[str] = "reward"
    EVAL_LIMIT: ClassVar[str | None] = "--max-eval-pairs"
    SUMMARY_KEYS: ClassVar[tuple[str, ...]] = SUMMARY_KEYS

    def nan_text(self) -> dict[str, str]:
        """Where every held-out pair tied, the console's accuracy row reads a bare "n/a":
        the note above it (:func:`~smoothalign.train.report_md.tied_votes_note`) already
        says why, once, and the row would otherwise repeat it in both columns."""
        return {key: "n/a" for key in super().nan_text()}


# ---------------------------------------------------------------------------- model
def build_reward_model(
    name_or_path: str, *, trust_remote_code: bool = False, tokenizer: Any = None
) -> tuple[torch.nn.Module, Any]:
    """``(model, tokenizer)``: a sequence-classification model with ``num_labels=1``.
    ``tokenizer``: one already read from the same place (:func:`smoothalign.models.
    load_tokenizer`), used instead of reading it again.

    A folder saved from a ``*ForSequenceClassification`` model loads as it is. Anything else
    that :func:`smoothalign.models.load_model_and_tokenizer` reads (``'tiny'``,
    ``'smollm2-135m'``, a causal-LM folder or ``.gguf``) becomes the trunk of
    ``AutoModelForSequenceClassification.from_config(config, num_labels=1)``: the causal LM's
    base-model weights are copied in and only the scalar ``score`` head is new (initialised
    from the global torch RNG: seed first). ``config.pad_token_id`` is always set, so that
    batches of several sequences can be pooled: ``transformers`` reads the score at the last
    token whose id is not the pad id. Where pad and EOS share an id (SmolLM2), a response's
    final EOS therefore counts as padding and the score is read at the token before it —
    the same rule for every sequence, so rewards stay comparable.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from smoothalign.models import load_model_and_tokenizer
    from smoothalign.models.loading import ensure_pad_token, resolve_model_folder

    path = resolve_model_folder(Path(str(name_or_path)).expanduser())
    if path.is_dir() and (path / "config.json").exists():
        cfg = AutoConfig.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
        if any(a.endswith("ForSequenceClassification") for a in cfg.architectures or ()):
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, local_files_only=True, trust_remote_code=trust_remote_code
            )
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(
                    path, local_files_only=True, trust_remote_code=trust_remote_code
                )
            ensure_pad_token(model, tokenizer)
            return model, tokenizer
    lm, tokenizer = load_model_and_tokenizer(
        name_or_path, trust_remote_code=trust_remote_code, tokenizer=tokenizer
    )
    config = copy.deepcopy(lm.config)
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForSequenceClassification.from_config(
        config, trust_remote_code=trust_remote_code
    )
    trunk = getattr(model, model.base_model_prefix)
    trunk.load_state_dict(getattr(lm, lm.base_model_prefix).state_dict())
    ensure_pad_token(model, tokenizer)
    return model, tokenizer


def _add_lora(model, config: RewardConfig):
    from peft import LoraConfig, get_peft_model

    from smoothalign._warn import peft_wrap_quietly

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="SEQ_CLS",  # keeps the new scalar head fully trainable (modules_to_save)
    )
    with peft_wrap_quietly():  # PEFT reads a deprecated transformers alias
        return get_peft_model(model, lora)


# ---------------------------------------------------------------------------- data
def load_reward_data(
    config: RewardConfig, tokenizer
) -> tuple[list[RewardPair], list[RewardPair], dict[str, Any], str, list[str]]:
    """``(train, eval, validation_dict, validation_markdown, notes)`` for ``config``. A
    refusal of the rows lists every bad row in ``refused_validation.json`` (``DataCheck``)."""
    notes = []
    if config.data is None:
        rows: Any = oracle_text_rows(
            config.oracle_pairs,
            annotators=config.annotators,
            temperature=config.oracle_temperature,
            seed=config.seed,
        )
        notes.append(
            f"data: the oracle text world ({config.oracle_pairs} pairs, {config.annotators} "
            f"Bradley–Terry annotators per pair, τ = {config.oracle_temperature:g}, "
            "true reward 0.5·(#a − #d))"
        )
    else:
        rows = config.data
    # a data folder's eval.* beside its train.* is the held-out set, unless --eval-data
    folder = folder_held_out(config.data, config.eval_data)
    notes += folder.notes
    eval_rows = config.eval_data if config.eval_data is not None else folder.rows
    labels, eval_labels = config.labels, config.eval_labels
    labels_source = eval_labels_source = None
    if labels is not None and eval_labels is None and eval_rows is not None:
        # one labels file for both sides: each of its rows labels the pair of its id
        shared = share_labels(rows, eval_rows, labels, held_out_name=folder.option)
        rows, eval_rows, labels = shared.data, shared.held_out, shared.train_labels
        labels_source = shared.source
        if shared.n_held_out:
            eval_labels_source = shared.source
            notes.append(
                f"labels: {shared.source} labels {shared.n_held_out} held-out pairs "
                f"({folder.option}) beside the training pairs, matched on pair_id"
            )
    data = DataCheck(config.output_dir, folder.option)  # a refusal lists every bad row there
    hint = None
    if config.eval_data is None and config.eval_labels is None:  # the folder's eval pairs
        in_labels = "in the --labels file, " if config.labels is not None else ""
        hint = (
            f"The held-out pairs without a label are {folder.option} (read as the held-out "
            f"set, beside its train files): label them in their rows, {in_labels}or in a "
            "file given as --eval-labels FILE (joined on pair_id), or hold out other pairs "
            "with --eval-data"
        )
    with data.refusals_written():
        report = data.validate(
            "train",
            lambda: validate_reward_rows(
                rows,
                tokenizer,
                config.max_length,
                config.on_bad_rows,
                labels=labels,
                labels_source=labels_source,
            ),
        )
        eval_report = None
        if eval_rows is not None:
            eval_report = data.validate(
                "eval",
                lambda: validate_reward_rows(
                    eval_rows,
                    tokenizer,
                    config.max_length,
                    config.on_bad_rows,
                    labels=eval_labels,
                    labels_source=eval_labels_source,
                    held_out=True,
                    missing_label_hint=hint,
                ),
            )
        data.check()
        train_ex, eval_ex, info, md, split_notes = split_validated(
            report,
            eval_report,
            lambda ex: ex.pair,
            config.eval_fraction,
            config.seed,
            eval_option=folder.option,
        )
        # the oracle-* policies read every training pair's true confidence: refused here,
        # before the model loads and before the run clears an earlier run's results
        # (held-out pairs may lack one: the *_true metrics skip them), so after the split
        if config.smoothing_policy().needs_confidence:
            train_ex = require_confidence(report, train_ex, config.on_bad_rows, lambda ex: ex.pair)
            info, md = validation_summary(report, eval_report)
        texts = {"data": report.text, "eval_data": eval_report and eval_report.text}
        check_identical_after_truncation(
            [ex.pair for ex in train_ex],
            texts,
            config.max_length,
            whole_text=True,
            eval_option=folder.option,
        )
    return train_ex, eval_ex, info, md, notes + split_notes


def reward_reads(*, confidence: bool) -> tuple[str, ...]:
    """What training and evaluation read of a soft-label pair (its data fingerprint's
    content): its tokens and scored spans, its label (``p_chosen``, which votes give: the
    counts themselves are not read) and, where read, its true confidence (an oracle
    smoothing policy's, or the held-out ``*_true`` metrics'); never the data's DPO reference
    log-probs."""
    return (*pair_reads(confidence=confidence, prefix="pair."), "p_chosen")


def reward_content(example: RewardPair) -> tuple:
    """The content of a soft-label pair under the fingerprint's scheme 1: every field of
    the tokenised pair's (:func:`pair_content`), and its label with the votes it came from."""
    return (*pair_content(example.pair), example.p_chosen, example.votes_chosen,
            example.votes_total)  # fmt: skip


# ---------------------------------------------------------------------------- run
def run_reward(config: RewardConfig, *, callbacks: list | None = None) -> RewardRunResult:
    """Train the reward model of ``config``; ``callbacks`` are extra ``TrainerCallback`` s.

    Writes into ``config.output_dir``: ``config.json``, ``metrics.jsonl``, ``validation.json``,
    ``split.json`` (the held-out pairs: ``train.common.split_record``),
    ``eval_results.json`` (held-out metrics before and after), ``final/`` (the full model in
    safetensors, loadable with ``AutoModelForSequenceClassification`` or
    :func:`~smoothalign.reward.scoring.load_preference_model`, its tokenizer and the smoothing
    state; with ``config.lora`` the merged model, and the adapter in ``final/adapter/``) and,
    with ``config.report``, ``report.md`` with its plots.
    """
    config.validate()
    out = Path(config.output_dir)
    check_scheduler(config)  # first: it records constant's warm-up as 0, which resume compares
    # before the model loads: a mixed-up dir, a bad --resume or a changed config fails fast
    prepare_output_dir(out, config.resume, run_config_record(config), config_flags(config))
    found_incomplete = incomplete_checkpoint_names(out)  # what the run may clear at its end
    set_seed(config.seed)  # python, numpy and torch: the score head's initialisation
    notes: list[str] = []
    bf16 = resolve_bf16(config.precision)
    check_paths_exist(  # a mistyped path fails before the model loads
        data=config.data,
        eval_data=config.eval_data,
        labels=config.labels,
        eval_labels=config.eval_labels,
    )

    def checked_data(tokenizer):  # and a resume's rows: the checkpointed run's
        validated = load_reward_data(config, tokenizer)
        train, held_out = validated[0], validated[1]
        fingerprint = data_fingerprint(
            train,
            held_out,
            reward_reads(confidence=config.smoothing_policy().needs_confidence),
            reward_reads(confidence=True),
        )
        earlier = lambda: earlier_data_fingerprint(train, held_out, reward_content)  # noqa: E731
        return validated, fingerprint, check_resume_data(config.resume, out, fingerprint, earlier)

    model, tokenizer, checked = load_checked(  # bad rows before the weights, if it can
        config.model,
        config.trust_remote_code,
        checked_data,
        lambda tok: build_reward_model(
            config.model, trust_remote_code=config.trust_remote_code, tokenizer=tok
        ),
    )
    validated, fingerprint, resume_note = checked
    from smoothalign.models.loading import announce_model

    announce_model("reward", config.model)  # its default, tiny, has random weights: say so
    train_ex, eval_ex, info, validation_md, data_notes = validated
    notes += data_notes + ([resume_note] if resume_note else [])
    n_skipped = sum(v["n_skipped"] for v in info.values())
    held_out = eval_ex  # withheld from training; scored: up to --max-eval-pairs (0: all)
    eval_ex = scored_held_out(eval_ex, config.max_eval_pairs, "max_eval_pairs", "pairs", notes)
    split = split_record(
        train_ex,
        held_out,
        lambda ex: ex.pair,
        held_out_set=held_out_set_of(config.eval_data, info),
        eval_fraction=config.eval_fraction,
        seed=config.seed,
        n_scored=len(eval_ex),
        eval_limit="--max-eval-pairs",
    )
    notes.append(f"held-out pairs: each one's file and row in {SPLIT_FILE}")
    if config.lora:
        model = _add_lora(model, config)

    collator = RewardCollator(pad_token_id=int(tokenizer.pad_token_id))
    train_ds, eval_ds = RewardDataset(train_ex), RewardDataset(eval_ex)
    trainer = RewardTrainer(
        model=model,
        args=training_arguments(config, bf16),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=tokenizer,
        reward_config=config,
        smoothing_policy=config.smoothing_policy(),
        callbacks=callbacks,
    )
    main_process = trainer.is_world_process_zero()
    if main_process:
        clear_before_run(out, config.resume, notes)  # checks passed, models loaded: the run is on
        atomic_write_json(out / "config.json", run_config_record(config))
        atomic_write_json(out / "validation.json", info)
        atomic_write_json(out / SPLIT_FILE, split)
    record_data_fingerprint(trainer, out, config.resume, fingerprint)

    forecasts_before = trainer.reward_forecasts(eval_ds)
    before = _metrics(forecasts_before, config)
    train_seconds = train_with_resume(
        trainer, config.resume, out, notes, smoothing_policy=trainer.smoothing_policy
    )

    forecasts_after = trainer.reward_forecasts(eval_ds)
    after = _metrics(forecasts_after, config)
    trainer.log_after_training({f"final_eval_{k}": v for k, v in after.items()})

    final = out / "final"
    state = trainer.smoothing_policy.state_dict()
    save_final_model(
        trainer, tokenizer, final, lora=config.lora, main_process=main_process,
        extra=lambda folder: save_smoothing_state(state, folder),
    )  # fmt: skip
    if main_process:
        atomic_write_json(out / "eval_results.json", {"before": before, "after": after})
        # the run is done: nothing can save there
        clear_incomplete_checkpoints(out, notes, found_incomplete)
    device = "CUDA" if torch.cuda.is_available() else "CPU"
    notes.append(f"training time {train_seconds:.0f} s on {device}")
    if config.report and main_process:
        from smoothalign.reward.report import write_reward_report

        write_reward_report(
            out,
            config=config.to_dict(),
            before=before,
            after=after,
            forecasts_before=forecasts_before,
            forecasts_after=forecasts_after,
            validation_markdown=validation_md,
            notes=notes,
        )
    return RewardRunResult(
        out, before, after, train_seconds, len(train_ex), len(eval_ex), n_skipped, notes, trainer,
        n_held_out=len(held_out),
        model=config.model,
    )  # fmt: skip


def _metrics(forecasts: dict, config: RewardConfig) -> dict[str, float]:
    return reward_metrics(
        forecasts["margins"], forecasts["p_chosen"], forecasts["confidence"], config
    )
