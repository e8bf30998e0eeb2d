"""Which checkpoint to resume from: only those a completed save has certified.

``Trainer`` writes a checkpoint folder piece by piece; a crash half-way leaves a folder that
looks like a checkpoint. Ours writes :data:`COMPLETE_MARKER` last (atomically), and resume
only trusts folders that carry it.
"""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

from smoothalign import _options
from smoothalign.io import (
    atomic_write_bytes,
    atomic_write_text,
    check_not_a_model_folder,
    check_output_dir,
)

COMPLETE_MARKER = "smoothalign_complete.json"
SMOOTHING_STATE = "smoothing_state.pt"
LOSS_SUMS = "loss_sums.pt"
_CKPT = re.compile(r"^checkpoint-(\d+)$")
_RUN_FILES = "config.json, final/, checkpoint-N/, metrics.jsonl, report.md, ..."
"""What a training run writes into its ``output_dir``, as a refusal lists it."""


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / COMPLETE_MARKER).is_file()


def _checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """Every ``checkpoint-N`` folder in ``output_dir``, complete or not, by step."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), c) for c in root.iterdir() if (m := _CKPT.match(c.name))]
    return [c for _, c in sorted(found) if c.is_dir()]


def incomplete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders in ``output_dir`` whose save did not complete, by step,
    where it holds no complete one (empty otherwise): what keeps ``--resume latest`` and a
    new run from starting there (:func:`refuse_only_incomplete_checkpoints`)."""
    found = _checkpoint_folders(output_dir)
    return [] if any(is_complete(c) for c in found) else found


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The highest-step ``checkpoint-N`` in ``output_dir`` whose save completed, if any."""
    complete = [c for c in _checkpoint_folders(output_dir) if is_complete(c)]
    return complete[-1] if complete else None


def rotate_checkpoints(
    output_dir: str | Path,
    limit: int | None,
    newest: str | Path,
    protected: tuple[str | Path | None, ...] = (),
) -> list[Path]:
    """Trainer's ``save_total_limit`` rotation, over complete checkpoints only: run once
    ``newest`` (the checkpoint just saved) is certified. Returns the folders removed.

    Trainer's own (``transformers.trainer_utils.rotate_checkpoints``) counts every
    ``checkpoint-N`` folder and keeps the newest by step (or mtime): a folder whose save
    did not complete, of a higher step (a crash at 750, then a resume from 500 with another
    ``--save-steps``), was kept as the newest while complete ones were removed, down to none
    that ``--resume latest`` could continue from. Here:

    * ``newest`` and ``protected`` (the best checkpoint, where one is tracked) are kept;
    * the other complete ones are removed oldest step first, until at most ``limit``
      complete ones remain (more where more are kept);
    * a folder without :data:`COMPLETE_MARKER` at a step below ``newest``'s is removed: a
      save that crashed, which this run has since trained past; nothing resumes from it and
      no save of this run writes into it again. One at a higher step is left alone (the run
      may save over it when it gets there), and never counts towards ``limit``; the run
      removes it when it finishes (:func:`clear_incomplete_checkpoints`). Those removed are
      said in one warning (:func:`~smoothalign._warn.warn_main`: the main process only),
      naming them, as the end of the run says its own; the complete ones the limit removes
      are the rotation's documented work, and go unsaid.

    Nothing is removed without a ``limit`` (``None`` or ``<= 0``: keep every checkpoint)."""
    if limit is None or limit <= 0:
        return []
    import shutil

    newest = Path(newest)
    newest_step = _step_of(newest)
    keep = {Path(p).resolve() for p in (newest, *protected) if p is not None}
    folders = _checkpoint_folders(output_dir)
    complete = [c for c in folders if is_complete(c)]
    remaining, to_keep = len(complete), max(limit, len(keep & {c.resolve() for c in complete}))
    removed = []
    for folder in complete:  # oldest step first
        if remaining <= to_keep:
            break
        if folder.resolve() not in keep:
            removed.append(folder)
            remaining -= 1
    crashed = [
        c
        for c in folders
        if not is_complete(c) and c.resolve() not in keep and _step_of(c) < newest_step
    ]
    removed += crashed
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    gone = [c for c in crashed if not c.exists()]
    if gone:
        from smoothalign._warn import warn_main

        warn_main(_removed_incomplete(output_dir, gone, f", below {newest.name} just saved"))
    return sorted(removed, key=_step_of)


def _removed_incomplete(output_dir: str | Path, removed: list[Path], where: str = "") -> str:
    """The line that says which ``checkpoint-N`` folders whose save did not complete were
    removed from ``output_dir`` (``where``: what the line adds after their names)."""
    names = ", ".join(c.name for c in removed)
    what = "a save that" if len(removed) == 1 else "saves that"
    return (
        f"{_options.option('output_dir')}: removed {names} from {Path(output_dir)}{where}: "
        f"{what} did not complete (no {COMPLETE_MARKER}, a crash while saving), which nothing "
        "resumes from"
    )


def incomplete_checkpoint_names(output_dir: str | Path) -> frozenset[str]:
    """The names of ``output_dir``'s ``checkpoint-N`` folders whose save did not complete
    (no :data:`COMPLETE_MARKER`), as a run finds them when it starts: what
    :func:`clear_incomplete_checkpoints` may remove once it finishes."""
    return frozenset(
        c.name for c in _checkpoint_folders(output_dir) if not c.is_symlink() and not is_complete(c)
    )


def remove_incomplete_checkpoints(
    output_dir: str | Path, found_at_start: frozenset[str] | set[str]
) -> list[Path]:
    """Remove the ``checkpoint-N`` folders of ``output_dir`` named in ``found_at_start``
    (:func:`incomplete_checkpoint_names` when the run started) whose save still has not completed
    (no :data:`COMPLETE_MARKER`: a crash while saving), whatever their step, once the run has
    finished (``final/`` written); returns those removed, by step. Call it on the main
    process only, as the rotation runs there.

    :func:`rotate_checkpoints` leaves one above the newest checkpoint, where the run may
    still save over it: a resumed run that ends below its step (a crash at 750, a resume
    from 500 to 600) has no later save to do so, and it stayed for good. Nothing resumes
    from it, and ``--resume`` refuses it. Only the folders found incomplete at the start are
    removed: one that appeared since may be another process's save in progress (two jobs
    on one folder). Never a complete one, and a symlink is left (its target is not ours);
    one that cannot be removed (permissions) is left, and not returned."""
    import shutil

    removed = []
    for folder in _checkpoint_folders(output_dir):
        if folder.name not in found_at_start or folder.is_symlink() or is_complete(folder):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    return removed


def clear_incomplete_checkpoints(
    output_dir: str | Path, notes: list[str], found_at_start: frozenset[str] | set[str]
) -> list[Path]:
    """At the end of a run that finished (``final/`` written), on the main process:
    :func:`remove_incomplete_checkpoints` of those ``found_at_start``, said in one warning
    (:func:`~smoothalign._warn.warn_main`; ``smoothalign dpo: warning: ...`` on the command
    line) and in ``notes`` (the report's) naming the folders, since a folder that
    disappears must not go unsaid."""
    removed = remove_incomplete_checkpoints(output_dir, found_at_start)
    if removed:
        from smoothalign._warn import warn_main

        line = _removed_incomplete(output_dir, removed)
        warn_main(line)
        notes.append(line)
    return removed


def _step_of(folder: Path) -> int:
    """The step in a ``checkpoint-N`` folder's name."""
    m = _CKPT.match(folder.name)
    if m is None:
        raise ValueError(f"not a checkpoint folder: {folder}")
    return int(m.group(1))


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """``None`` → no resume; ``'latest'`` → the newest complete checkpoint in ``output_dir``
    (none yet: start fresh); a path → that checkpoint, which must be complete. A relative
    path is read as given (against the current directory) where it exists, else in
    ``output_dir``: ``--resume checkpoint-500`` names ``output_dir``'s ``checkpoint-500``."""
    if resume is None:
        return None
    if resume == "latest":
        return latest_complete_checkpoint(output_dir)
    folder = Path(resume)
    if not folder.exists() and not folder.expanduser().is_absolute():
        inside = Path(output_dir) / folder
        if inside.exists():
            folder = inside
        else:
            raise ValueError(f"resume: no checkpoint folder at {folder} nor at {inside}")
    if not folder.is_dir():
        raise ValueError(f"resume: no checkpoint folder at {folder}")
    if not is_complete(folder):
        raise ValueError(
            f"resume: {folder} has no {COMPLETE_MARKER}; its save did not complete, so it is not "
            f"trusted. {_resume_instead(folder.parent, output_dir)}"
        )
    return folder


def _resume_instead(parent: Path, output_dir: str | Path) -> str:
    """What to do instead of resuming a checkpoint of ``parent`` whose save did not
    complete: resume a complete one, named (where ``parent`` holds any), else start over."""
    import shlex

    complete = [c for c in _checkpoint_folders(parent) if is_complete(c)]
    if complete:
        names = ", ".join(c.name for c in complete[-3:])
        latest = ""
        if parent.resolve() == Path(output_dir).resolve():
            latest = f"; {_options.option('resume', 'latest')} takes {complete[-1].name}"
        return f"Resume from a complete one ({names}{latest})."
    if parent.resolve() != Path(output_dir).resolve():  # another run's folder: not ours
        return (
            f"{parent} holds no complete checkpoint: none can be resumed. Resume from a "
            f"complete checkpoint, or run without {_options.option('resume')}."
        )
    paths = " ".join(shlex.quote(str(c)) for c in _checkpoint_folders(parent))
    return (
        f"{parent} holds no complete checkpoint: none can be resumed. To start over in this "
        f"folder, delete them (rm -r {paths}) and run without {_options.option('resume')}; "
        f"or pass another {_options.option('output_dir')}."
    )


RESUMABLE_OPTIONS = frozenset(
    {
        # how long, how often to log / evaluate / save, and what the report shows: a resumed
        # run may change these; every other option defines the training and must not change
        "max_steps", "logging_steps", "eval_steps", "save_steps", "save_total_limit",
        "resume", "report", "output_dir", "max_eval_pairs", "max_eval_rows", "eval_samples",
        "max_new_tokens", "oracle", "on_bad_rows", "extra", "working_dir",
        "model_as_given",  # what --model was typed as: model, what it loads, is compared
        # how the same computation runs (kernels, precision, memory)
        "precision", "fused", "fused_logps", "grad_filter", "lean_layers",
        "gradient_checkpointing",
    }
)  # fmt: skip
RECORDED_BESIDE_OPTIONS = frozenset({"extra", "working_dir", "model_as_given"})
"""Keys of a run's ``config.json`` that no flag sets: the Python API's ``extra``, and what
:func:`run_config_record` adds to the options."""
SCHEDULES_OF_MAX_STEPS = frozenset(
    {"linear", "cosine", "cosine_with_restarts", "polynomial", "cosine_with_min_lr",
     "cosine_warmup_with_min_lr", "warmup_stable_decay"}
)  # fmt: skip
"""Learning-rate schedules computed from the total steps: ``max_steps`` may not change on a
resume under them (``constant``, ``constant_with_warmup``, ``inverse_sqrt`` ignore it)."""
_PATH_OPTIONS = ("model", "data", "eval_data", "labels", "eval_labels")


def prepare_output_dir(
    output_dir: str | Path,
    resume: str | None,
    config: dict[str, Any] | None = None,
    flags: dict[str, str] | None = None,
) -> None:
    """Keep two runs from mixing in one ``output_dir``, and check a resume before anything
    loads. Deletes nothing: a run refused later (a bad option, bad rows) leaves the earlier
    run's results alone; :func:`clear_before_run` clears them once the run is under way.

    A fresh run (no ``resume``) into a folder holding an earlier run's ``checkpoint-N``
    folders is refused: its saves would land among them, and a later ``--resume latest``
    could pick up the other run's state. A resume needs a complete checkpoint
    (``resolve_resume``); with ``config`` (this run's ``config.json`` dict) it must also
    match the configuration of the run that wrote the checkpoint (its folder's
    ``config.json``) in every option outside :data:`RESUMABLE_OPTIONS` (``flags``: the
    command's, :func:`check_resume_config`). ``--resume latest`` with no complete checkpoint
    starts a new run, said in a warning, unless there are checkpoint folders whose save did
    not complete (refused, naming them: :func:`refuse_only_incomplete_checkpoints`) or a
    finished run's outputs (refused: :func:`refuse_finished_run_without_checkpoints`). A fresh run
    whose ``model`` (in ``config``) is the folder's ``final/`` is refused
    (:func:`refuse_own_final_as_input`). A model folder as ``output_dir`` (a
    ``transformers`` ``config.json``: a model's, or a run's ``final/``) is refused, whose
    ``config.json`` the run's options would replace
    (:func:`~smoothalign.io.check_not_a_model_folder`); a run's folder is not one (its
    ``config.json`` holds the run's options). Call it before the model loads."""
    root = Path(output_dir)
    check_output_dir_path(root)
    check_not_a_model_folder(root, _RUN_FILES, _options.option("output_dir"))
    folder = resolve_resume(resume, root)  # a bad --resume fails here, not after loading
    if folder is None and config is not None:  # a fresh run removes final/ when it starts
        refuse_own_final_as_input(root, {"model": config.get("model")})
    if folder is None:
        refuse_outputs_of_no_run(root)
    if folder is None and resume == "latest":
        refuse_only_incomplete_checkpoints(root, resume)
        refuse_finished_run_without_checkpoints(root)
        _say_no_checkpoint(root, config)
    if folder is not None and config is not None:
        check_resume_config(folder.parent / "config.json", config, flags)
        step = checkpoint_step(folder)
        max_steps = config.get("max_steps")
        if step is not None and isinstance(max_steps, int):
            check_resume_step(folder, step, max_steps)
    if not root.is_dir():
        return
    earlier = _checkpoint_folders(root)
    outside = folder is not None and folder.resolve().parent != root.resolve()
    if outside and (earlier or (root / "metrics.jsonl").is_file()):
        what = ", ".join(c.name for c in earlier[-3:]) or "metrics.jsonl"
        raise ValueError(
            f"output_dir: {root} holds another run's outputs ({what}); resuming {folder} "
            "there would mix the two runs' checkpoints and metrics: pass a new --output-dir"
        )
    if resume is None and earlier:
        if not any(is_complete(c) for c in earlier):  # nothing --resume latest continues
            refuse_only_incomplete_checkpoints(root, resume)
        names = ", ".join(c.name for c in earlier[-3:])
        raise ValueError(
            f"output_dir: {root} already holds an earlier run's checkpoints ({names}); "
            "pass --resume latest to continue that run, or another --output-dir (or delete "
            "them) to start a new one"
        )


def refuse_only_incomplete_checkpoints(root: Path, resume: str | None) -> None:
    """Refuse a run into ``root`` where its only ``checkpoint-N`` folders are saves that
    did not complete (no :data:`COMPLETE_MARKER`: a crash mid-save), naming them: there is
    nothing to resume, and a new run among them would lose the earlier run's record
    (``metrics.jsonl``, cleared as it starts) without a word beyond a line on stderr, and
    save its checkpoints among the stale ones. Deleting them is the user's call; the
    message says how."""
    incomplete = incomplete_checkpoints(root)
    if not incomplete:
        return
    import shlex

    shown = ", ".join(c.name for c in incomplete[:5])
    if len(incomplete) > 5:
        shown += f" and {len(incomplete) - 5} more"
    paths = " ".join(shlex.quote(str(c)) for c in incomplete)
    opening = _options.option("resume", "latest") if resume == "latest" else "output_dir: a new run"
    raise ValueError(
        f"{opening}: {root} holds no complete checkpoint, only {shown}, whose save did not "
        f"complete (no {COMPLETE_MARKER}, a crash while saving): none can be resumed, and the "
        "run that wrote them cannot be continued. To start it over in this folder, delete "
        f"them (rm -r {paths}) and run the same command again; or pass another --output-dir"
    )


def finished_run_outputs(root: Path) -> list[str]:
    """What in ``root`` shows a run that finished there: its ``final/`` (the trained model)
    and its ``eval_results.json`` (written at the end, ``final/`` or not: rank-calibrate's
    ``--no-save-model``), as :func:`clear_for_new_run` names them when it replaces them."""
    found = ["final/"] if (root / "final").exists() or (root / "final").is_symlink() else []
    return found + (["eval_results.json"] if (root / "eval_results.json").is_file() else [])


def refuse_finished_run_without_checkpoints(root: Path) -> None:
    """Refuse ``--resume latest`` into ``root`` where a run finished without saving a
    checkpoint (``--save-steps 0``, the default: :func:`finished_run_outputs`, and no
    complete checkpoint), before anything loads: ``--resume`` asks to continue that run,
    which cannot be, and the new run it would start replaces its trained model. A folder
    with nothing of a run in it (a job's first launch) still starts a new run."""
    found = finished_run_outputs(root)
    if not found:
        return
    raise ValueError(
        f"{_options.option('resume', 'latest')}: {root} holds a run that finished without "
        f"saving a checkpoint ({', '.join(found)}; no checkpoint-N/): there is nothing to "
        f"resume. To start over in this folder, run without {_options.option('resume')} (the "
        "new run replaces that run's outputs, and says so); to keep them, pass another "
        f"{_options.option('output_dir')}"
    )


def _say_no_checkpoint(root: Path, config: dict[str, Any] | None) -> None:
    """``--resume latest`` found no checkpoint: the run starts fresh (a preemptible job
    passes it on every launch, the first included), said in one warning by the main
    process (:func:`~smoothalign._warn.warn_main`), so that a resume that was expected does
    not pass unnoticed. (Checkpoints whose save did not complete, and a finished run's
    outputs without a checkpoint, are refused first: :func:`refuse_only_incomplete_checkpoints`,
    :func:`refuse_finished_run_without_checkpoints`.)"""
    from smoothalign._warn import warn_main

    never = (
        "; with --save-steps 0 this run writes none either"
        if config is not None and config.get("save_steps") == 0
        else ""
    )
    warn_main(
        f"{_options.option('resume', 'latest')}: no complete checkpoint in {root}: starting a "
        f"new run{never}"
    )


def check_output_dir_path(root: Path) -> None:
    """Refuse an ``output_dir`` that is a file, or lies under one: Trainer's ``makedirs``
    would fail only after the model loaded, with a bare ``[Errno 17] File exists``."""
    check_output_dir(root, "--output-dir")


def check_resume_step(folder: Path, step: int, max_steps: int) -> None:
    """Refuse a checkpoint past ``--max-steps`` (a resume cannot take steps back); one at it
    from a run that was to go on (its ``trainer_state.json`` names a larger ``max_steps``:
    that run never wrote the end of its training, its last logging window and training
    summary, and a resume that trains nothing cannot write them either); and one at it under
    FSDP / DeepSpeed, where :func:`load_finished_checkpoint` cannot load its weights.
    A checkpoint at ``--max-steps`` is otherwise the end of a run whose training is done:
    resuming it trains nothing and runs only what comes after training (the final
    evaluation, ``final/``, the report), which a crash may have cut short."""
    planned = _planned_steps(folder)
    ended_there = planned is None or planned == step
    if step > max_steps:
        how = (
            f"pass --max-steps {step} to finish that run (no step is trained), or a larger "
            "one to extend it"
            if ended_there
            else f"pass a --max-steps above {step} to go on training from it"
        )
        raise ValueError(
            f"resume: {folder} is at step {step}, past --max-steps {max_steps}: a resume "
            f"cannot undo steps; {how}"
        )
    if step == max_steps and not ended_there:
        raise ValueError(
            f"resume: {folder} is at step {step} of a {planned}-step run, which was to go "
            f"on: a resume at --max-steps {max_steps} would train nothing, and the end of "
            "that training (its last logging window, the training summary) was never "
            f"written; pass a --max-steps above {step} to go on training from it"
        )
    sharded = sharded_launch()
    if step == max_steps and sharded:
        raise ValueError(_cannot_finish(folder, step, sharded))


def _planned_steps(folder: Path) -> int | None:
    """The ``max_steps`` of the run that saved ``folder`` (its ``trainer_state.json``)."""
    import json

    try:
        value = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        value = value.get("max_steps")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def finishes_without_training(resume: str | None, output_dir: str | Path, max_steps: int) -> bool:
    """Whether ``--resume`` names a checkpoint at ``max_steps``: the run then trains nothing
    (:func:`train_with_resume`), and what only training reads need not be prepared."""
    folder = resolve_resume(resume, output_dir)
    return folder is not None and checkpoint_step(folder) == max_steps


def sharded_launch() -> str | None:
    """``FSDP`` or ``DeepSpeed`` when ``accelerate launch`` set one up (it says so in the
    environment of every process, before anything loads), else None."""
    for name in ("FSDP", "DeepSpeed"):
        flag = os.environ.get(f"ACCELERATE_USE_{name.upper()}", "false")
        if flag.strip().lower() in ("1", "true", "yes"):
            return name
    return None


def _cannot_finish(folder: Path, step: int, sharded: str) -> str:
    return (
        f"resume: {folder} is at step {step} = --max-steps: its training is done, but "
        f"finishing the run without training is not supported under {sharded}, whose "
        "weights load only inside Trainer.train (which would train a step more). Pass a "
        "larger --max-steps to extend the run, or run it anew into another --output-dir"
    )


def load_finished_checkpoint(trainer, folder: Path) -> None:
    """Put the weights and the step count of ``folder``, a checkpoint at ``--max-steps``,
    into ``trainer`` instead of calling ``trainer.train``, whose loop, resumed at
    ``max_steps`` exactly, would take one more optimizer step before it checks the limit.

    What follows training then runs as after ``train``: on the checkpoint's model, with the
    records logged at its step. The optimizer, scheduler and RNG states stay unread: nothing
    steps them, and what follows training draws no random number from them (the oracle
    samples from its own seed).
    The weights load through Trainer's own ``_load_from_checkpoint`` (as ``train`` loads
    them: a full model, a sharded one or a LoRA adapter), which needs a model that
    FSDP / DeepSpeed have not wrapped: those are refused.
    The callbacks are told that training began and ended, with no step between, as
    ``train`` tells them (its arguments, the state at the checkpoint's step, the model and
    tokenizer; no optimizer nor dataloader: none is made): Trainer's contract pairs the two
    events, and a callback that opens a logger or a progress bar at the first closes it at
    the second. No step event reaches the callbacks, but the progress bar is brought to the
    checkpoint's step (its own ``on_step_end``): it shows N/N done, not an empty 0/N."""
    # prepare_output_dir refuses them before the model loads, from what the launch says
    for sharded, on in (
        ("FSDP", trainer.is_fsdp_enabled),
        ("DeepSpeed", trainer.is_deepspeed_enabled),
    ):
        if on:
            raise ValueError(_cannot_finish(folder, trainer.args.max_steps, sharded))
    from transformers import TrainerState
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_utils import align_special_tokens

    # as train() does first: the tokenizer's EOS/BOS/PAD ids into the model's configs (what
    # final/ saves and generation stops on)
    if trainer.processing_class is not None and hasattr(trainer.model, "config"):
        align_special_tokens(trainer.model, trainer.processing_class)
    trainer._load_from_checkpoint(str(folder))
    trainer.state = TrainerState.load_from_json(str(folder / TRAINER_STATE_NAME))
    # the saved state says which process wrote it (rank 0): each rank's own, as train() sets
    trainer.state.init_training_references(
        trainer, trainer.args.max_steps, trainer.state.num_train_epochs, None
    )
    from transformers.trainer_callback import ProgressCallback

    handler = trainer.callback_handler
    trainer.control = handler.on_train_begin(trainer.args, trainer.state, trainer.control)
    for callback in handler.callbacks:
        if isinstance(callback, ProgressCallback):  # its bar opened at 0/N: the steps are done
            callback.on_step_end(trainer.args, trainer.state, trainer.control)
    trainer.control = handler.on_train_end(trainer.args, trainer.state, trainer.control)


def resumed_step(folder: str | Path) -> int | None:
    """The step of checkpoint ``folder``: its marker's, else its ``trainer_state.json``'s."""
    import json

    step = checkpoint_step(folder)
    if step is None:
        try:
            step = json.loads((Path(folder) / "trainer_state.json").read_text())["global_step"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return step if isinstance(step, int) else None


def checkpoint_step(folder: str | Path) -> int | None:
    """The step a certified checkpoint was saved at (its marker's ``global_step``)."""
    import json

    try:
        step = json.loads((Path(folder) / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = step.get("global_step") if isinstance(step, dict) else None
    return value if isinstance(value, int) else None


def run_config_record(config: Any, loaded: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run writes to ``config.json``: its options (``config.to_dict()``) and the
    directory it was launched from, against which its relative paths are read. Each model
    option holds the model the run loads, and the value typed as ``<option>_as_given``
    where the two differ: a run folder given as ``--model`` stands for its ``final/``.
    ``loaded``: each model option's loaded path (default: ``model``'s,
    :func:`~smoothalign.models.loading.loaded_model_path`); rank-calibrate passes its
    ``policy`` and ``reward_model``."""
    from smoothalign.models.loading import loaded_model_path

    record = {**config.to_dict(), "working_dir": os.getcwd()}
    if loaded is None:
        given = record.get("model")
        loaded = {"model": loaded_model_path(given)} if isinstance(given, str) else {}
    for option, path in loaded.items():
        given = record.get(option)
        if path is not None and os.fspath(path) != given:
            record[option], record[f"{option}_as_given"] = os.fspath(path), given
    return record


EARLIER_OUTPUTS = (
    "metrics.jsonl", "report.md", "eval_results.json", "training_curves.png", "alpha.png",
    "reliability.png", "divergences.png", "calibration.png", "reward_convergence.png",
    "refused_validation.json",
)  # fmt: skip
"""An earlier run's result files, which a run that starts fresh removes: appended to
(``metrics.jsonl``) or left beside this run's (a report or plot that ``--no-report`` does
not rewrite) they would pass for this run's; and the data check of a run refused there
(``train.common.DataCheck``), which would pass for this run's."""


def clear_earlier_outputs(
    output_dir: str | Path, *patterns: str, keep: tuple[str, ...] = (), final: bool = False
) -> None:
    """Remove :data:`EARLIER_OUTPUTS` and the files matching ``patterns`` from
    ``output_dir`` (the main process only); with ``final``, the earlier run's ``final/``
    too (:func:`remove_earlier_final`). Checkpoints are left: :func:`prepare_output_dir`
    guards them."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    root = Path(output_dir)
    if final:
        remove_earlier_final(root)
    for name in EARLIER_OUTPUTS:
        if name not in keep:
            (root / name).unlink(missing_ok=True)
    for pattern in patterns:
        for path in root.glob(pattern):
            if path.is_file():
                path.unlink(missing_ok=True)


def remove_earlier_final(output_dir: str | Path) -> None:
    """Remove an earlier run's ``final/`` (and a crash's ``.final.partial/``) from
    ``output_dir``, the main process only. ``final/`` is moved aside first, then deleted:
    a crash half-way leaves no ``final/`` with some of its files gone, which would still
    load as the folder's model."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    import shutil
    import tempfile

    root = Path(output_dir)
    final = root / "final"
    if final.is_symlink() or final.is_file():
        final.unlink()
    elif final.is_dir():
        aside = Path(tempfile.mkdtemp(dir=root, prefix=".final.old-"))
        os.replace(final, aside / "final")
        shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(root / ".final.partial", ignore_errors=True)


def refuse_own_final_as_input(output_dir: str | Path, inputs: dict[str, Any]) -> None:
    """Refuse a fresh run whose input (``inputs``: an option's name → the path it loads)
    is ``output_dir``'s ``final/``, before anything loads: the run removes that folder when
    it starts (:func:`clear_before_run`), so an interrupted run would lose the model it
    trains from, and a finished one would leave the folder's model with no record of how it
    was made (the earlier run's configuration and metrics replaced)."""
    final = Path(output_dir) / "final"
    if not final.exists():
        return
    for option, value in inputs.items():
        if not isinstance(value, str | os.PathLike) or not str(value):
            continue
        path = Path(value).expanduser()
        if path.exists() and path.resolve() == final.resolve():
            raise ValueError(
                f"output_dir: {final} is what this run loads as --{option.replace('_', '-')} "
                f"({value}); a new run there would replace the earlier run's results and the "
                "model it starts from: pass another --output-dir"
            )


def refuse_outputs_of_no_run(output_dir: str | Path) -> None:
    """Refuse a fresh run into a folder that holds files a run's start removes
    (:data:`EARLIER_OUTPUTS`, a ``final/``) but is no smoothalign run's folder (no run
    ``config.json``: :func:`~smoothalign.io.is_run_folder`), before anything loads: a data
    folder with its own ``report.md``, another tool's ``metrics.jsonl`` or ``eval
    calibration``'s ``reliability.png`` would be deleted as an earlier run's outputs. A run
    writes its ``config.json`` before any of those, so a folder it left has one; a refused
    run's ``refused_validation.json`` alone is its own."""
    from smoothalign.io import is_run_folder

    root = Path(output_dir)
    if not root.is_dir() or is_run_folder(root):
        return
    found = [n for n in EARLIER_OUTPUTS if n != "refused_validation.json" and (root / n).exists()]
    found += ["final/"] if (root / "final").exists() else []
    if found:
        opt = _options.option("output_dir")
        raise ValueError(
            f"output_dir: {root} holds {', '.join(found)} but is no smoothalign run's folder "
            "(no run config.json): a new run there would delete them as an earlier run's "
            f"outputs; pass another {opt} (or move them)"
        )


def clear_before_run(
    output_dir: str | Path, resume: str | None, notes: list[str] | None = None
) -> None:
    """:func:`clear_earlier_outputs` for a run about to start: a fresh one (no checkpoint to
    resume) clears them all, the earlier run's ``final/`` included (an interrupted run must
    not leave it beside its own ``config.json``, where every command reading the folder as
    a model would load it as this run's), and says so (:func:`clear_for_new_run`, into
    ``notes``); a resumed one keeps ``metrics.jsonl``, which it
    continues, and ``final/`` (its own run's, replaced whole at the end), and clears the
    rest, which it writes anew (a ``--no-report`` resume must not leave the old report
    beside its results). The runs call it once every check has passed and the models are
    loaded, just before they write their own ``config.json``: a run refused earlier leaves
    the earlier results, and one interrupted later leaves none of them beside its own
    configuration. It creates ``output_dir``: a run refused before it leaves no folder."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    if resolve_resume(resume, output_dir) is None:
        clear_for_new_run(output_dir, notes)
    else:  # a resumed run continues metrics.jsonl and writes every other result anew
        clear_earlier_outputs(output_dir, keep=("metrics.jsonl",))


def clear_for_new_run(
    output_dir: str | Path, notes: list[str] | None, *patterns: str, final: bool = True
) -> list[str]:
    """:func:`clear_earlier_outputs` (``patterns``, ``final``) for a fresh run, on the main
    process: where an earlier run's outputs were there (its ``final/`` model, its results),
    one warning (:func:`~smoothalign._warn.warn_main`) and a line in ``notes`` (the
    report's) name the folder and what was
    removed, since a new run that replaces a finished one's trained model must not do so
    unsaid. Returns the names removed (empty on the other processes)."""
    from smoothalign._warn import main_process

    root = Path(output_dir)
    if not main_process():
        return []
    removed = []
    if final and ((root / "final").exists() or (root / "final").is_symlink()):
        removed.append("final/ (its trained model)")
    removed += [name for name in EARLIER_OUTPUTS if (root / name).is_file()]
    removed += sorted({p.name for pattern in patterns for p in root.glob(pattern) if p.is_file()})
    clear_earlier_outputs(root, *patterns, final=final)
    # a refused run's data check alone is no earlier run's outputs
    if not set(removed) - {"refused_validation.json"}:
        return removed
    from smoothalign._warn import warn_main

    plots = sum(name.endswith(".png") for name in removed)
    shown = [name for name in removed if not name.endswith(".png")]
    shown += [f"{plots} plot{'s' if plots > 1 else ''}"] if plots else []
    opt = _options.option("output_dir")
    line = (
        f"{opt}: this new run replaces the earlier run's outputs in {root}: removed "
        f"{', '.join(shown)}; its config.json is now this run's (to keep a run's outputs, "
        f"give each run its own {opt})"
    )
    warn_main(line)
    if notes is not None:
        notes.append(line)
    return removed


def check_resume_config(
    saved_path: Path,
    config: dict[str, Any],
    flags: dict[str, str] | None = None,
    *,
    resumable: frozenset[str] = RESUMABLE_OPTIONS,
    paths: tuple[str, ...] = _PATH_OPTIONS,
    models: tuple[str, ...] = ("model",),
) -> None:
    """Refuse a resume whose configuration differs from the saved one (``saved_path``, the
    checkpointed run's ``config.json``; none saved: nothing to compare) in an option that
    defines the training, naming every such option at once and the flags that give the
    saved values again. Paths are compared resolved, each against the directory its run
    was launched from (``working_dir``), where they exist.

    ``flags``: the command-line flag of each of the command's options
    (:func:`smoothalign.io.config_flags` of its config, from which the CLI makes them); by
    default ``--key-name`` for each key of ``config`` but those recorded beside the options
    (:data:`RECORDED_BESIDE_OPTIONS`). A differing key without a flag (an option of the
    version that wrote ``config.json`` that this one has not) is said to have none.
    ``resumable``, ``paths`` (compared resolved) and ``models`` (paths of what they load):
    the command's, where they are not dpo's, sft's and reward's (rank-calibrate's)."""
    if not saved_path.is_file():
        return
    import json

    saved = json.loads(saved_path.read_text(encoding="utf-8"))
    now = json.loads(json.dumps(config, default=str))  # as config.json would hold it
    saved_dir, now_dir = saved.get("working_dir"), now.get("working_dir", os.getcwd())
    if flags is None:
        flags = {k: "--" + k.replace("_", "-") for k in now if k not in RECORDED_BESIDE_OPTIONS}
    changed, keep, no_flag = [], [], []
    for key in sorted((saved.keys() | now.keys()) - resumable):
        a, b = saved.get(key), now.get(key)
        if key in paths:  # model: what it loads (config.json had a run folder)
            a, b = _resolved(a, saved_dir, key in models), _resolved(b, now_dir, key in models)
        if a == b:
            continue
        if key in paths:
            shown = "model" if key in models else key  # a model name is shown as is
            change = (
                f"{key} {_path_shown(shown, saved.get(key), saved_dir)} -> "
                f"{_path_shown(shown, now.get(key), now_dir)}"
            )
            if saved.get(key) == now.get(key):  # the same relative path, read elsewhere
                change += ": a relative path is read against the folder its run was launched from"
        else:
            change = f"{key} {saved.get(key)!r} -> {now.get(key)!r}"
        changed.append(change)
        if key in flags:
            keep.append(_as_flag(flags[key], a))
        else:
            no_flag.append(key)
    # the schedule the resumed run must keep (a changed one is refused above)
    scheduler = saved.get("lr_scheduler", now.get("lr_scheduler"))
    if saved.get("max_steps") != now.get("max_steps") and scheduler in SCHEDULES_OF_MAX_STEPS:
        changed.append(
            f"max_steps {saved.get('max_steps')!r} -> {now.get('max_steps')!r} with "
            f"--lr-scheduler {scheduler}, whose learning rate follows max_steps: the resumed "
            "steps would continue the old schedule and then jump onto the new one (to train "
            "longer, start a new run with a schedule that does not depend on it: "
            "constant_with_warmup, inverse_sqrt)"
        )
        keep.append(_as_flag(flags.get("max_steps", "--max-steps"), saved.get("max_steps")))
    if changed:
        flagged = [f"{' '.join(keep)}, with --resume"] if keep else []
        if no_flag:  # an option of the version that wrote config.json, say
            has = "has" if len(no_flag) == 1 else "have"
            flagged.append(f"{', '.join(no_flag)} {has} no flag in this command")
        raise ValueError(
            f"resume: this run's options differ from the checkpointed run's "
            f"({saved_path}): {'; '.join(changed)}. A resumed run continues the same "
            "training, and its options are not read from the checkpoint: give the ones that "
            f"define it again as that run had them ({'; '.join(flagged)}), or "
            "drop --resume to start a new run (in another --output-dir)"
        )


def _path_shown(key: str, value: Any, base: str | None) -> str:
    """A path option's value as typed, and where a relative one is read (``base``, its
    run's launch directory) when that is another path or nothing (a model name, left as is)."""
    if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
        return repr(value)
    resolved = _resolved(value, base)
    if resolved != value:
        return f"{value!r} ({resolved})"
    if key == "model" or not base:
        return repr(value)  # a built-in name such as tiny, or no directory to read it in
    return f"{value!r} ({Path(base) / value}: not found)"


def _as_flag(flag: str, value: Any) -> str:
    """``value`` given by ``flag`` on the command line (``None``: the flag left out)."""
    import shlex

    if value is None:
        return f"without {flag}"
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return f"{flag} {shlex.quote(str(value))}"


def _resolved(value: Any, base: str | None, model: bool = False) -> Any:
    """``value`` as a resolved path when it names an existing file or folder (a relative one
    read against ``base``), else unchanged (a registry name such as ``tiny``, or None).
    ``model``: the path of what it loads (a run folder's ``final/``)."""
    if not isinstance(value, str) or not value:
        return value
    path = Path(value).expanduser()
    if not path.is_absolute() and base:
        path = Path(base) / path
    if model:
        from smoothalign.models.loading import loaded_model_path

        path = Path(loaded_model_path(path))
    return str(path.resolve()) if path.exists() else value


def _trim_metrics(path: Path, step: int | None, trains: bool = True) -> int:
    """Cut from ``path`` a last record a crash cut short, and (``step`` given) the records
    that a resume from ``step`` writes again (:func:`_written_again`), rewriting it
    atomically (lines that are not records are kept); how many records were removed."""
    import json

    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").split("\n")
    partial = lines.pop() != ""  # the text after the last newline: a cut record, or nothing
    kept, dropped = [], 0
    for line in lines:
        try:
            later = step is not None and _written_again(json.loads(line), step, trains)
        except (ValueError, KeyError, TypeError):
            later = False
        if later:
            dropped += 1
        else:
            kept.append(line + "\n")
    if dropped or partial:
        atomic_write_text(path, "".join(kept))
    return dropped


def _earlier_train_runtime(path: Path, step: int) -> float | None:
    """The ``train_runtime`` (seconds) of the end-of-training record at ``step`` in
    ``path``, kept by a resume that trains nothing (:func:`_written_again`); ``None`` if
    there is none (a crash before Trainer logged it). Trainer times each ``train()`` call:
    after earlier resumes, this is the last session's time, not the whole run's."""
    import json

    if not path.is_file():
        return None
    seconds = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step") == step:
            value = record.get("train_runtime")
            if isinstance(value, int | float) and value >= 0:
                seconds = float(value)
    return seconds


def _written_again(record: dict[str, Any], step: int, trains: bool) -> bool:
    """Whether a resume from ``step`` writes ``record`` (the earlier run's) again: a record
    logged after ``step``, and an end-of-run (``summary``) record at it. Those are all
    written anew for the whole run where the resume trains (a finished run extended); where
    it trains nothing (a run finished at ``--max-steps``) only the after-training
    evaluation's (``final_eval_*``): the end-of-training record (runtime, mean loss) is not
    written again, and still describes the training that was done."""
    if record["step"] != step:
        return record["step"] > step
    if record.get("split") != "summary":
        return False
    return trains or any(key.startswith("final_eval_") for key in record)


def train_with_resume(
    trainer, resume: str | None, output_dir: str | Path, notes: list[str], smoothing_policy=None
) -> float:
    """Resolve ``--resume`` (noting what was resumed), restore ``smoothing_policy``'s state
    from the checkpoint when given, run ``trainer.train``; the seconds training took. A
    checkpoint at ``--max-steps`` is loaded without training (:func:`load_finished_checkpoint`,
    0 seconds): the run goes on with what comes after training."""
    folder = resolve_resume(resume, output_dir)
    done = False
    if folder is not None:
        if smoothing_policy is not None:
            restore_smoothing_state(smoothing_policy, folder)
        notes.append(f"resumed from {folder}")
        step = checkpoint_step(folder)
        done = step is not None and step == trainer.args.max_steps
        if not done and not (folder / LOSS_SUMS).is_file():
            notes.append(
                f"train_loss: over the steps after {step} only ({folder.name} holds no "
                f"{LOSS_SUMS}: an earlier version's checkpoint); metrics.jsonl says so "
                "(train_loss_from_step)"
            )
        # the per-pair values buffered since the last log before the save are not in the
        # checkpoint (only their loss sums, for train_loss): the first record after it
        # covers fewer steps, and says so
        trainer.resumed_mid_window = (step or 0) % trainer.args.logging_steps != 0
        if int(os.environ.get("RANK", "0")) == 0:
            # the resumed records start on a line of their own after a record a crash cut
            # short, and the interrupted run's records past the checkpoint describe steps
            # that are trained again: they go, so that no step is in the file twice
            dropped = _trim_metrics(Path(output_dir) / "metrics.jsonl", step, trains=not done)
            if dropped:
                notes.append(
                    f"metrics.jsonl: {dropped} record(s) of the earlier run after step {step} "
                    "(or its end-of-run summary) removed: written again by this run"
                )
    elif resume == "latest":
        notes.append("--resume latest: no complete checkpoint yet, started fresh")
    if done:
        load_finished_checkpoint(trainer, folder)
        seconds = _earlier_train_runtime(Path(output_dir) / "metrics.jsonl", step)
        notes.append(
            f"{folder.name} is at --max-steps {trainer.args.max_steps}: its training was "
            "done, so no step was trained; its weights were evaluated and saved"
            + (
                "; the training time is that of the earlier run's last training session "
                "(its train_runtime in metrics.jsonl)"
                if seconds
                else ""
            )
        )
        return seconds or 0.0
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(folder) if folder else None)
    return time.perf_counter() - t0


def save_smoothing_state(state: dict[str, Any], folder: str | Path) -> Path:
    """Write a smoothing policy's state into ``folder`` atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(Path(folder) / SMOOTHING_STATE, buf.getvalue())


def load_smoothing_state(folder: str | Path) -> dict[str, Any]:
    return torch.load(Path(folder) / SMOOTHING_STATE, map_location="cpu", weights_only=True)


def save_loss_sums(sums: dict[str, Any], folder: str | Path) -> Path:
    """Write a trainer's pooled loss sums of the run so far (``SmoothingTrainer.loss_sums``)
    into ``folder`` atomically: a run resumed from it then reports ``train_loss`` over every
    step, not only those after the checkpoint."""
    buf = io.BytesIO()
    torch.save(sums, buf)
    return atomic_write_bytes(Path(folder) / LOSS_SUMS, buf.getvalue())


def load_loss_sums(folder: str | Path) -> dict[str, Any] | None:
    """The loss sums saved in ``folder``; ``None`` for a checkpoint saved without them (by
    an earlier version, or by Trainer alone)."""
    path = Path(folder) / LOSS_SUMS
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def restore_smoothing_state(policy, folder: str | Path) -> None:
    """Load a checkpoint's smoothing state into ``policy``, refusing one made with other
    options: the run's recorded configuration must be what actually runs."""
    state = load_smoothing_state(folder)
    current = policy.state_dict()
    if state.get("name") != current.get("name"):
        raise ValueError(
            f"smoothing: the checkpoint {folder} was trained with {state.get('name')!r}, "
            f"not {current.get('name')!r}"
        )
    if "calibrator" in current:
        for option in ("bins", "momentum", "init_confidence", "prior_strength", "warmup_steps"):
            saved, now = state["calibrator"][option], current["calibrator"][option]
            if saved != now:
                raise ValueError(
                    f"{option}: the checkpoint {folder} has {saved}, this run asks for {now}; "
                    "resume with the same CALS options"
                )
    policy.load_state_dict(state)
