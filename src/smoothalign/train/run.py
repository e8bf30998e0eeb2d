"""``run_dpo(config)``: load → validate → (reference log-probs) → train → evaluate → report.

The wiring of the layers below; every piece it calls is tested on its own.
"""

from __future__ import annotations

import copy
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import set_seed

from smoothalign._warn import main_process
from smoothalign.calibration import preference_metrics
from smoothalign.data import (
    PreferenceCollator,
    PreferenceDataset,
    TokenizedPair,
    load_preference_rows,
    validate_preference_rows,
)
from smoothalign.data.loading import folder_held_out
from smoothalign.io import atomic_write_json, config_flags
from smoothalign.models import load_model_and_tokenizer
from smoothalign.progress import bar_disable
from smoothalign.train.checkpoints import (
    clear_before_run,
    clear_incomplete_checkpoints,
    finishes_without_training,
    incomplete_checkpoint_names,
    prepare_output_dir,
    run_config_record,
    save_smoothing_state,
    train_with_resume,
)
from smoothalign.train.common import (
    SPLIT_FILE,
    DataCheck,
    add_lora,
    apply_lean_layers,
    check_identical_after_truncation,
    check_scheduler,
    disable_dropout,
    lean_layers_enabled,
    load_checked,
    require_confidence,
    resolve_bf16,
    save_final_model,
    scored_held_out,
    split_record,
    training_arguments,
    validation_summary,
)
from smoothalign.train.config import DPOConfig
from smoothalign.train.data_fingerprint import (
    check_resume_data,
    data_fingerprint,
    earlier_data_fingerprint,
    pair_reads,
    record_data_fingerprint,
)
from smoothalign.train.report import write_report
from smoothalign.train.run_result import TrainerRunResult
from smoothalign.train.trainer import (
    SmoothDPOTrainer,
    fused_logps_enabled,
    model_sequence_logps,
)

SUMMARY_KEYS = ("accuracy", "accuracy_true", "ece", "ece_true", "rms_true", "oracle_reward")


@dataclass
class RunResult(TrainerRunResult):
    trainer: SmoothDPOTrainer | None = field(default=None, repr=False)  # model + policy state

    COMMAND: ClassVar[str] = "dpo"
    SUMMARY_KEYS: ClassVar[tuple[str, ...]] = SUMMARY_KEYS
    EVAL_LIMIT: ClassVar[str | None] = "--max-eval-pairs"


def run_dpo(config: DPOConfig, *, callbacks: list | None = None) -> RunResult:
    """Train ``config``; ``callbacks`` are extra ``transformers.TrainerCallback`` s."""
    config.validate()
    out = Path(config.output_dir)
    check_scheduler(config)  # first: it records constant's warm-up as 0, which resume compares
    # before the model loads: a mixed-up dir, a bad --resume or a changed config fails fast
    prepare_output_dir(out, config.resume, run_config_record(config), config_flags(config))
    found_incomplete = incomplete_checkpoint_names(out)  # what the run may clear at its end
    set_seed(config.seed)  # python, numpy and torch
    notes: list[str] = []
    device_is_cuda = torch.cuda.is_available()
    bf16 = resolve_bf16(config.precision)

    # a bad file fails before the model loads
    rows, eval_rows, data_notes, eval_option = _read_data(config)
    reference = _reference(config)
    needs_confidence = config.smoothing_policy().needs_confidence

    def checked_data(tokenizer):  # and a resume's rows: the checkpointed run's
        validated = _load_data(config, tokenizer, rows, eval_rows, eval_option)
        train, held_out = validated[0], validated[1]
        data_reference = _uses_data_reference(reference, train + held_out)
        # what the run reads of a pair: its confidence where the smoothing policy reads it
        # (and the held-out *_true metrics), the data's reference log-probs where used
        fingerprint = data_fingerprint(
            train,
            held_out,
            pair_reads(confidence=needs_confidence, reference_logps=data_reference),
            pair_reads(confidence=True, reference_logps=data_reference),
        )
        check = check_resume_data(
            config.resume, out, fingerprint, lambda: earlier_data_fingerprint(train, held_out)
        )
        return validated, fingerprint, data_reference, check

    model, tokenizer, checked = load_checked(  # bad rows too, before the weights if it can
        config.model,
        config.trust_remote_code,
        checked_data,
        lambda tok: load_model_and_tokenizer(
            config.model, trust_remote_code=config.trust_remote_code, tokenizer=tok
        ),
    )
    validated, fingerprint, data_reference, resume_note = checked
    train_ex, eval_ex, validation_md, n_skipped, split_notes, validation = validated
    data_notes += split_notes + ([resume_note] if resume_note else [])
    notes += data_notes
    # one source of reference log-probs per run: the configured one, the data's only where
    # every row has them (the held-out rows beyond --max-eval-pairs too: a resume may
    # change it, and must not change which reference the run trains against)
    given = [ex for ex in train_ex + eval_ex if ex.ref_chosen_logp is not None]
    if data_reference:
        reference = "precomputed (from the data's ref_chosen_logps / ref_rejected_logps)"
    elif given:
        for ex in given:
            ex.ref_chosen_logp = ex.ref_rejected_logp = None
        notes.append(
            f"the data's reference log-probs ({len(given)} rows) were not used: --reference {reference}"
            + (" and not every row has them" if reference == "precomputed" else "")
        )
    held_out = eval_ex  # withheld from training; scored: up to --max-eval-pairs
    eval_ex = scored_held_out(eval_ex, config.max_eval_pairs, "max_eval_pairs", "pairs", notes)
    split = split_record(
        train_ex,
        held_out,
        lambda ex: ex,
        held_out_set=None if eval_rows is None else eval_option,
        eval_fraction=config.eval_fraction,
        seed=config.seed,
        n_scored=len(eval_ex),
        eval_limit="--max-eval-pairs",
    )
    notes.append(f"held-out pairs: each one's file and row in {SPLIT_FILE}")
    oracle = _oracle(config)

    if disable_dropout(model):
        notes.append("dropout: set to 0 in the policy (and so in its reference), as DPO needs")
    if lean_layers_enabled(config.lean_layers):
        notes.append(apply_lean_layers(model, config.lean_layers, config.gradient_checkpointing))
    if config.lora:
        model = add_lora(model, config)
    ref_model = None
    if reference == "model":
        ref_model = _frozen_copy(model, config.lora)
    collator = PreferenceCollator(pad_token_id=int(tokenizer.pad_token_id))
    # before the reference log-probs: the arguments set up the process group of a launch
    # (torchrun), in which the ranks share out the reference's batches
    args = training_arguments(config, bf16)
    if reference == "precomputed":
        # the initial policy is the reference; with LoRA that is the adapter-disabled model.
        # A resume at --max-steps trains nothing: the training rows' are not needed then
        splits = [(train_ex, "train"), (eval_ex, "eval")]
        if finishes_without_training(config.resume, out, config.max_steps):
            splits = splits[1:]
            notes.append(
                "reference log-probs: the training rows' not computed (the resume at "
                "--max-steps trains nothing)"
            )
        for examples, name in splits:
            _attach_reference_logps(
                model,
                examples,
                collator,
                config.batch_size,
                config.lora,
                name,
                bf16,
                fused_logps_enabled(config.fused_logps, _local_device()),
                rank=args.process_index,
                world_size=args.world_size,
            )
    notes.append(f"reference log-probs: {reference}")

    train_ds, eval_ds = PreferenceDataset(train_ex), PreferenceDataset(eval_ex)
    trainer = SmoothDPOTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=tokenizer,
        dpo_config=config,
        smoothing_policy=config.smoothing_policy(),
        ref_model=ref_model,
        callbacks=callbacks,
    )
    if trainer.is_world_process_zero():
        clear_before_run(out, config.resume, notes)  # checks passed, models loaded: the run is on
        atomic_write_json(out / "config.json", run_config_record(config))
        atomic_write_json(out / "validation.json", validation)
        atomic_write_json(out / SPLIT_FILE, split)
    record_data_fingerprint(trainer, out, config.resume, fingerprint)

    forecasts_before = trainer.preference_forecasts(eval_ds)
    before = preference_metrics(forecasts_before["margins"], forecasts_before["confidence"])
    if oracle:
        before.update(_oracle_reward(trainer, tokenizer, eval_ex, config)[0])

    train_seconds = train_with_resume(
        trainer, config.resume, out, notes, smoothing_policy=trainer.smoothing_policy
    )

    forecasts_after = trainer.preference_forecasts(eval_ds)
    after = preference_metrics(forecasts_after["margins"], forecasts_after["confidence"])
    samples = None
    if oracle:
        metrics, samples = _oracle_reward(trainer, tokenizer, eval_ex, config)
        after.update(metrics)
    trainer.log_after_training({f"final_eval_{k}": v for k, v in after.items()})

    final = out / "final"
    main_process = trainer.is_world_process_zero()
    state = trainer.smoothing_policy.state_dict()
    save_final_model(
        trainer, tokenizer, final, lora=config.lora, main_process=main_process,
        extra=lambda folder: save_smoothing_state(state, folder),
    )  # fmt: skip
    if main_process:
        atomic_write_json(out / "eval_results.json", {"before": before, "after": after})
        # the run is done: nothing can save there
        clear_incomplete_checkpoints(out, notes, found_incomplete)
    if config.report and main_process:
        write_report(
            out,
            config=config.to_dict(),
            before=before,
            after=after,
            forecasts_before=forecasts_before,
            forecasts_after=forecasts_after,
            validation_markdown=validation_md,
            notes=notes
            + [f"training time {train_seconds:.0f} s on {'CUDA' if device_is_cuda else 'CPU'}"],
            samples=samples,
        )
    return RunResult(
        out, before, after, train_seconds, len(train_ex), len(eval_ex), n_skipped, notes, trainer,
        n_held_out=len(held_out),
        model=config.model,
    )  # fmt: skip


# ---------------------------------------------------------------------------- data
def _read_data(config: DPOConfig) -> tuple[Any, Any, list[str], str]:
    """The rows of the data (and eval data: ``--eval-data``, else a data folder's eval files
    beside its train files) as loaded, not yet validated; notes; how messages name the
    held-out rows' source."""
    notes = []
    source = config.data
    if source is None:
        from smoothalign.assets import embedded_dataset_path

        source = embedded_dataset_path()
        notes.append(f"data: the embedded controlled-sentiment set ({source.name})")
    rows = load_preference_rows(source, option="data")  # messages name --data
    folder = folder_held_out(source, config.eval_data)
    notes += folder.notes
    eval_rows = (
        folder.rows
        if config.eval_data is None
        else load_preference_rows(config.eval_data, option="eval_data")
    )
    for name, path, loaded in (
        ("data", source, rows),
        ("eval_data", config.eval_data, eval_rows),
    ):
        if loaded is not None and not loaded:
            raise ValueError(f"{name}: {path} holds no rows")
    return rows, eval_rows, notes, folder.option


def _load_data(
    config: DPOConfig, tokenizer, rows, eval_rows, eval_option: str = "--eval-data"
) -> tuple[list[TokenizedPair], list[TokenizedPair], str, int, list[str], dict]:
    """Validate the rows (and eval rows) and split them into train / eval examples; the
    last item is the validation summary for ``validation.json`` (every bad row listed). A
    refusal of the rows lists every bad row in ``refused_validation.json`` (``DataCheck``)."""
    data = DataCheck(config.output_dir, eval_option)  # a refusal lists every bad row there
    with data.refusals_written():
        report, eval_report, (train_ex, eval_ex, info, md, split_notes) = data.validate_and_split(
            lambda part, held_out: validate_preference_rows(
                part, tokenizer, config.max_length, config.on_bad_rows, held_out=held_out
            ),
            rows,
            eval_rows,
            config.eval_fraction,
            config.seed,
        )
        # the oracle-* policies need every training row's confidence: refuse before training
        # (held-out rows without one are fine: the *_true metrics skip them), so after the split
        if config.smoothing_policy().needs_confidence:
            train_ex = require_confidence(report, train_ex, config.on_bad_rows)
            info, md = validation_summary(report, eval_report)
        reports = {"data": report, "eval_data": eval_report}
        check_identical_after_truncation(
            train_ex, reports, config.max_length, eval_option=eval_option
        )
    skipped = sum(v["n_skipped"] for v in info.values())
    return train_ex, eval_ex, md, skipped, split_notes, info


def _reference(config: DPOConfig) -> str:
    """``--reference`` resolved: ``auto`` is ``adapter-disabled`` with LoRA (the base model
    is one context manager away, and a forward pass per step is cheaper than precomputing
    pairs a short run never visits), ``precomputed`` otherwise (once, rather than hold a
    second copy of the model)."""
    if config.reference != "auto":
        return config.reference
    return "adapter-disabled" if config.lora else "precomputed"


def _uses_data_reference(reference: str, examples: list[TokenizedPair]) -> bool:
    """Whether the run reads the data's reference log-probs: precomputed, and every row
    (training and held-out, before ``--max-eval-pairs``) gives them."""
    return reference == "precomputed" and all(ex.ref_chosen_logp is not None for ex in examples)


# ---------------------------------------------------------------------------- model
def _frozen_copy(model, lora: bool):
    base = copy.deepcopy(model)
    if lora:
        base = base.get_base_model() if hasattr(base, "get_base_model") else base
    return base.eval().requires_grad_(False)


@torch.no_grad()
def _attach_reference_logps(
    model,
    examples,
    collator,
    batch_size: int,
    lora: bool,
    name: str,
    bf16: bool,
    fused: bool = False,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> None:
    """Store ``log π_ref`` of every example, computed once before training, on this rank's
    device, in the precision and by the path (fused or not) that training will use (so
    that step 0 has margins ≈ 0).

    Under data parallelism (``world_size`` ranks; every rank calls this, with the same
    ``examples``) the ranks share out the batches: batch ``k`` (examples ``k·batch_size``
    onwards, as one process batches them, so with the same padding and the same values)
    on rank ``k mod world_size``, and then every rank gathers every batch's log-probs (one
    collective, which each rank joins whatever it computed), since each rank's sampler
    reads any example."""
    was_training = model.training
    model.eval()
    device = _local_device()
    model.to(device)
    adapter_off = model.disable_adapter() if lora else nullcontext()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    starts = list(range(0, len(examples), batch_size))[rank::world_size]
    computed: list[tuple[int, list[float], list[float]]] = []
    with adapter_off, autocast:
        for start in tqdm(
            starts,
            desc=f"reference log-probs ({name})",
            leave=False,
            disable=bar_disable(not main_process()),  # the main process's share
        ):
            batch = collator(examples[start : start + batch_size])
            logps, _ = model_sequence_logps(
                model,
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                batch["labels"].to(device),
                fused=fused,
            )
            b = logps.shape[0] // 2
            computed.append((start, logps[:b].tolist(), logps[b:].tolist()))
    model.train(was_training)
    if world_size > 1:
        from accelerate.utils import gather_object

        computed = gather_object(computed)
    done = 0
    for start, chosen, rejected in computed:
        part = examples[start : start + len(chosen)]
        for ex, lc, lr in zip(part, chosen, rejected, strict=True):
            ex.ref_chosen_logp, ex.ref_rejected_logp = lc, lr
        done += len(part)
    if done != len(examples):  # pragma: no cover - a rank that shared out otherwise
        raise RuntimeError(f"reference log-probs: {done} of {len(examples)} examples gathered")


def _local_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


# ---------------------------------------------------------------------------- oracle
def _oracle(config: DPOConfig) -> bool:
    """Whether the run scores generations with the sentiment oracle: ``auto`` does for the
    embedded set, named by omitting ``--data`` or by its own path."""
    if config.eval_samples == 0 or config.oracle == "none":
        return False
    return config.oracle == "sentiment" or config.data is None or _is_embedded(config.data)


def _is_embedded(data: Any) -> bool:
    """Whether ``data`` is the path of the shipped ``sentiment_pairs.jsonl``."""
    from smoothalign.assets import embedded_dataset_path

    if not isinstance(data, str | os.PathLike):
        return False
    try:
        return Path(data).expanduser().resolve() == embedded_dataset_path().resolve()
    except OSError:
        return False


def _oracle_reward(
    trainer: SmoothDPOTrainer, tokenizer, examples, config: DPOConfig
) -> tuple[dict[str, float], list[dict]]:
    """The oracle reward of the policy's samples (:func:`_sample_and_score`), on every rank.

    Every rank would sample the same responses (one seed): under data parallelism the main
    process alone samples and scores them, and sends its result to the others (one
    broadcast, which every rank joins; a failure there is sent too, so that the others
    raise rather than wait). Under FSDP or DeepSpeed every rank samples, as before: the
    sharded model generates only with every rank taking part."""
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    if trainer.accelerator.num_processes == 1 or sharded:
        return _sample_and_score(trainer.model, tokenizer, examples, config)
    from accelerate.utils import broadcast_object_list

    outcome: list[Any] = [None]
    failure: Exception | None = None
    if trainer.is_world_process_zero():
        try:
            outcome[0] = _sample_and_score(trainer.model, tokenizer, examples, config)
        except Exception as err:  # told to the other ranks, then raised here
            failure = err
            outcome[0] = f"{type(err).__name__}: {err}"
    broadcast_object_list(outcome, from_process=0)
    if failure is not None:
        raise failure
    if isinstance(outcome[0], str):
        raise RuntimeError(f"oracle reward: the main process failed: {outcome[0]}")
    return outcome[0]


@torch.no_grad()
def _sample_and_score(
    model, tokenizer, examples, config: DPOConfig
) -> tuple[dict[str, float], list[dict]]:
    """Sample one response per held-out prompt (fixed seed) and score it with the oracle.
    The global random states (CPU, and the model's CUDA device) are as they were after it."""
    from smoothalign.eval.oracle import sentiment_reward

    prompts = [ex.prompt_ids for ex in examples[: config.eval_samples]]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(config.seed)
    width = max(len(p) for p in prompts)
    pad = int(tokenizer.pad_token_id)
    if main_process():  # the only process that samples, unless the model is sharded
        print(
            f"oracle reward: sampling {len(prompts)} responses of up to "
            f"{config.max_new_tokens} tokens...",
            file=sys.stderr,
            flush=True,
        )
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    attention = torch.tensor(
        [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device
    )
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            max_new_tokens=config.max_new_tokens,
            pad_token_id=pad,
        )
    model.train(was_training)
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    rewards = np.array(sentiment_reward(texts))
    samples = [
        {
            "prompt": tokenizer.decode(p, skip_special_tokens=True).strip()[-80:],
            "response": t,
            "reward": float(r),
        }
        for p, t, r in zip(prompts, texts, rewards, strict=True)
    ]
    sem = float(rewards.std(ddof=1) / np.sqrt(len(rewards))) if len(rewards) > 1 else float("nan")
    return {"oracle_reward": float(rewards.mean()), "oracle_reward_sem": sem}, samples
