"""What the DPO, reward-model and SFT trainers share on top of ``transformers.Trainer``.

* a smoothing policy whose state goes into every checkpoint, certified by a completion
  marker written last — after every rank has finished its part of the save;
* per-pair metric buffers, gathered across ranks and written to ``metrics.jsonl`` (with
  non-scalar extras: the α histogram and the calibrator's per-bin ``q̂``) besides the usual
  Trainer logs (progress bar, TensorBoard);
* the run's pooled loss sums (``train_loss``) in every checkpoint too, so that a resumed run
  reports it over every step (:meth:`SmoothingTrainer.train`);
* the fingerprint of the rows the run trains on in every checkpoint too
  (:attr:`SmoothingTrainer.data_fingerprint`), which a resume from it is checked against;
* ``save_total_limit`` rotation over complete checkpoints only, once the new one is
  certified (:func:`smoothalign.train.checkpoints.rotate_checkpoints`), in place of
  Trainer's, which counted a crashed save's folder as a checkpoint;
* an evaluation context that runs the model on its device under the same autocast as
  training, so that "before" and "after" forecasts are computed alike;
* ``evaluate`` that logs its metrics and tells the callbacks, as Trainer's own does.
* the after-training evaluation's log (:meth:`SmoothingTrainer.log_after_training`), into
  the events file of the training's own logs: TensorBoard's writer stays open past the end
  of training until that log closes it.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import Trainer
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import PrinterCallback, TrainerCallback

from smoothalign import progress
from smoothalign.io import atomic_write_bytes, atomic_write_json, json_safe
from smoothalign.smoothing import SmoothingPolicy
from smoothalign.train.checkpoints import (
    COMPLETE_MARKER,
    load_loss_sums,
    resumed_step,
    rotate_checkpoints,
    save_loss_sums,
    save_smoothing_state,
)
from smoothalign.train.data_fingerprint import DATA_FINGERPRINT, write_data_fingerprint

ALPHA_HIST_BINS = 10  # over [0, 1/2]


class StepsFromTheArguments(TrainerCallback):
    """Logging, evaluation and saving every ``--logging-steps`` / ``--eval-steps`` /
    ``--save-steps`` of this call, a resume's too. Trainer reads them into its state before
    a resume, then loads the checkpoint's state over them (with a warning that they differ),
    so a resumed run kept the interrupted run's, though a resume may change them
    (``checkpoints.RESUMABLE_OPTIONS``)."""

    def on_train_begin(self, args, state, control, **kwargs):
        state.compute_steps(args, state.max_steps)


class TensorBoardToTheFinalLog(TensorBoardCallback):
    """TensorBoard's callback, its writer left open at the end of training and closed by
    :meth:`close` (:meth:`SmoothingTrainer.log_after_training`, after the final
    evaluation's record): one events file a run. Transformers' own closes it at
    ``on_train_end``, and the record logged after training opened a second file."""

    def on_train_end(self, args, state, control, **kwargs):
        pass  # close() closes it

    def close(self) -> None:
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None


def _keep_tensorboard_open(trainer: Trainer) -> None:
    """Put :class:`TensorBoardToTheFinalLog` in the place of Trainer's own TensorBoard
    callback (the one ``report_to`` adds; a subclass of it a caller passed stays)."""
    callbacks = trainer.callback_handler.callbacks
    for i, callback in enumerate(callbacks):
        if type(callback) is TensorBoardCallback:
            kept = TensorBoardToTheFinalLog(tb_writer=callback.tb_writer)
            kept.logging_dir = callback.logging_dir
            callbacks[i] = kept


def uses_every_parameter(model: torch.nn.Module | None) -> bool:
    """Whether every trainable parameter of ``model`` (a causal LM, or a sequence classifier
    with its scalar head; a PEFT model's adapter) takes part in every training step's loss,
    so that DDP need not search the autograd graph for unused ones
    (``ddp_find_unused_parameters=False``). Not so, or not known, for a mixture of experts
    (the experts a batch routes no token to), a composite model (a multimodal one's vision
    tower, which text leaves out: its config has sub-configs) or a model without a
    transformers config."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or not hasattr(config, "to_dict") or getattr(config, "sub_configs", None):
        return False
    return not any(
        "expert" in key and isinstance(value, int) and not isinstance(value, bool) and value > 1
        for key, value in config.to_dict().items()
    )


class SmoothingTrainer(Trainer):
    # compute_loss returns a per-micro-batch mean; Trainer divides by the accumulation steps
    loss_is_scaled_for_ga = False
    # whether this trainer's loss goes through the fused LM-head kernel (set by subclasses):
    # then each training step records the softmax mass its gradient filter left out
    counts_head_filter = False
    head_stats: dict | None = None  # the kernel's filter_stats, for one training step
    # the step of the checkpoint this train() resumed from when it held no loss sums (an
    # earlier version's): train_loss then covers the steps after it only, and says so
    train_loss_from_step: int | None = None
    # the rows the run trains on (train.data_fingerprint), saved into each checkpoint: a
    # resume from it is checked against them (the runs set it: record_data_fingerprint)
    data_fingerprint: dict[str, Any] | None = None

    def __init__(self, *args: Any, smoothing_policy: SmoothingPolicy, **kwargs: Any) -> None:
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        model = kwargs.get("model", args[0] if args else None)
        # Trainer's DDP default (unset: find unused parameters, but not under gradient
        # checkpointing or for a PEFT model) costs a traversal of the autograd graph every
        # step and a warning on every rank; our models use every parameter they train
        if (
            training_args is not None
            and training_args.ddp_find_unused_parameters is None
            and uses_every_parameter(model)
        ):
            training_args.ddp_find_unused_parameters = False
        super().__init__(*args, **kwargs)
        self.add_callback(StepsFromTheArguments)
        _keep_tensorboard_open(self)
        if not progress.enabled():  # a study's --no-progress: a quiet run, not one log dict a
            self.remove_callback(PrinterCallback)  # line (metrics.jsonl has them); a user's own
        # disable_tqdm keeps Trainer's printed logs, as Trainer gives them
        self.smoothing_policy = smoothing_policy
        if smoothing_policy.calibrator is not None:  # CALS sums over ranks only under DDP
            smoothing_policy.calibrator.sum_across_ranks = self.accelerator.num_processes > 1
        self._stored: dict[str, dict[str, list[Tensor]]] = defaultdict(lambda: defaultdict(list))
        self.metrics_path = Path(self.args.output_dir) / "metrics.jsonl"

    def train(self, resume_from_checkpoint=None, *args: Any, **kwargs: Any):
        """Trainer's ``train``. The run's pooled loss sums (``train_loss``) start from the
        checkpoint's (:meth:`loss_sums`), so that a resumed run reports ``train_loss`` over
        every step, as the uninterrupted run would; Trainer's covers this call's steps only.
        A checkpoint saved without them leaves it so, and the end-of-training record says
        so: ``train_loss_from_step``, the checkpoint's step."""
        folder = resume_from_checkpoint
        if folder is True:  # Trainer's "the last checkpoint in output_dir"
            from transformers.trainer_utils import get_last_checkpoint

            folder = get_last_checkpoint(self.args.output_dir)
        sums = load_loss_sums(folder) if folder else None
        self.restore_loss_sums(sums)
        self.train_loss_from_step = resumed_step(folder) if folder and sums is None else None
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def loss_sums(self) -> dict[str, Any] | None:
        """What ``train_loss`` is computed from, over the run so far (the values buffered
        since the last log included), for a checkpoint; ``None``: nothing to save. It
        gathers across ranks: every rank calls it."""
        return None

    def restore_loss_sums(self, sums: dict[str, Any] | None) -> None:
        """Start the run's loss sums from a checkpoint's :meth:`loss_sums` (``None``: from
        nothing, as a fresh run)."""

    def _buffered_sum(self, name: str) -> float:
        """The sum over ranks, in float64, of the training values buffered under ``name``
        since the last log, which stay buffered. Every rank calls it, and joins the gather
        whatever it holds: each gathers its own sum, 0 where it buffered nothing (a rank that
        returned without would leave the others waiting in the collective for good)."""
        values = self._stored["train"].get(name)
        local = float(torch.cat(values).cpu().double().sum()) if values else 0.0
        if self.accelerator.num_processes == 1:
            return local
        t = torch.tensor([local], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.gather(t).cpu().sum())

    def _buffered_names(self, prefix: str) -> list[str]:
        """The names under ``prefix`` (``"_loss/"``: ``_loss/<name>/...``) buffered since the
        last log on any rank (every rank calls it: it gathers), so that every rank then
        gathers the same sums (:meth:`_buffered_sum`) even where one buffered none."""
        names = {k.split("/")[1] for k in self._stored["train"] if k.startswith(prefix)}
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            names = set().union(*gather_object([sorted(names)]))
        return sorted(names)

    # ------------------------------------------------------------------ metrics
    def training_step(self, model, inputs, num_items_in_batch=None):
        """Trainer's step; with the fused LM head it also records ``head/filtered_mass``:
        the mean over tokens of the off-target softmax mass that the kernel's gradient filter
        (``--grad-filter auto``, with its strips) left out of the hidden states' gradient,
        before the kernel puts it back along the head's mean row — small for a
        trained model, most of it for random weights (then ``--grad-filter off``)."""
        self.head_stats = {} if self.counts_head_filter else None
        try:
            loss = super().training_step(model, inputs, num_items_in_batch)
        finally:
            stats, self.head_stats = self.head_stats, None
        if self.counts_head_filter:  # one value every step (NaN without one): the same keys
            mass = (stats or {}).get("dropped_mass")  # and lengths on every rank for gather
            value = torch.nanmean(mass.float()) if mass is not None else torch.tensor(math.nan)
            self.record("train", {"head/filtered_mass": value.reshape(1)})
        return loss

    def record(self, split: str, values: dict[str, Tensor]) -> None:
        """Buffer per-pair values ``[B]`` until the next log. A name ending in ``alpha`` is
        logged as its mean and a histogram over ``[0, ½]``."""
        for name, t in values.items():
            self._stored[split][name].append(t.detach().float().reshape(-1))

    def _gathered(self, split: str) -> dict[str, np.ndarray]:
        """The values buffered under ``split`` since the last log, every rank's, by name (in
        this rank's order of recording); the buffer is emptied.

        Under data parallelism every rank calls it at the same log, whatever it buffered
        (:meth:`_summarised` does), and every rank must have buffered the same names, each
        with as many values as on the other ranks (per-pair values of equal batches): the
        values are gathered name by name, without padding. That is checked first, in one
        collective of the buffer's layout: otherwise an error on every rank naming each
        rank's, rather than a gather that waits for good for a rank that has no such name,
        or that pairs one rank's values with another's of another name."""
        stored = self._stored[split]
        layout = {name: sum(v.numel() for v in values) for name, values in stored.items()}
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            layouts = gather_object([sorted(layout.items())])
            if any(other != layouts[0] for other in layouts):
                stored.clear()
                per_rank = "; ".join(f"rank {r}: {dict(lay)}" for r, lay in enumerate(layouts))
                raise RuntimeError(
                    f"metrics ({split}): the ranks buffered other values since the last log "
                    f"({per_rank}); every rank must record the same names, with as many values "
                    "each, between two logs"
                )
        # gather, not gather_for_metrics: the buffer spans several batches, and the latter
        # would truncate it to the last batch's remainder at the end of an epoch. In one
        # order on every rank (sorted), whatever order each recorded them in
        gathered = {}
        for name in sorted(layout):
            t = torch.cat(stored[name]).to(self.accelerator.device)
            gathered[name] = self.accelerator.gather(t).cpu().numpy()
        stored.clear()
        return {name: gathered[name] for name in layout}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            split = "train"
        elif any(k.startswith("eval_") for k in logs):
            split = "eval"
        else:
            split = "summary"
        if split == "summary" and self._stored.get("train"):
            # the end of training: the steps after the last logging step (max_steps not a
            # multiple of logging_steps) still have buffered per-pair values; write them
            tail: dict[str, Any] = {"partial_window": True}
            self._write_record("train", tail, self._summarised("train", tail))
        extra = self._summarised(split, logs)
        if split == "summary" and "train_loss" in logs and self.train_loss_from_step is not None:
            logs["train_loss_from_step"] = self.train_loss_from_step  # not the whole run's
        if split == "train" and getattr(self, "resumed_mid_window", False):
            extra["partial_window"] = True  # its window began before the checkpoint
            self.resumed_mid_window = False
        super().log(logs, start_time)
        self._write_record(split, logs, extra)

    def log_after_training(self, logs: dict[str, float]) -> None:
        """Log what is measured after training (the final evaluation), and close
        TensorBoard's writer: :class:`TensorBoardToTheFinalLog` kept it open past the end of
        training for this record, which so lands in the training's events file. A caller's
        own TensorBoard callback (not transformers' class itself) closed its writer at the
        end of training and opens another for this record: that one is closed too, not
        left open for the rest of the process (a study runs many runs in one). A run that
        fails between the end of training and this log leaves the writer open (flushed at
        every log) until the process ends."""
        try:
            self.log(logs)
        finally:
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, TensorBoardToTheFinalLog):
                    callback.close()
                elif isinstance(callback, TensorBoardCallback):
                    callback.on_train_end(self.args, self.state, self.control)

    def _summarised(self, split: str, logs: dict[str, Any]) -> dict[str, Any]:
        """Add the buffered per-pair values of ``split`` to ``logs`` as means (α: mean and
        histogram); returns the non-scalar extras for metrics.jsonl."""
        # every rank gathers under data parallelism, even one with nothing buffered: so that
        # a rank that buffered otherwise than the others is an error, not a wait for good
        gathers = self._stored.get(split) or self.accelerator.num_processes > 1
        values = self._gathered(split) if gathers else {}
        prefix = "" if split == "train" else "eval_"
        extra: dict[str, Any] = {}
        for name, v in values.items():
            if name.endswith("alpha"):
                logs[f"{prefix}{name}_mean"] = float(v.mean())
                hist, _ = np.histogram(v, bins=ALPHA_HIST_BINS, range=(0.0, 0.5))
                extra[f"{prefix}{name}_hist"] = hist.tolist()
            elif not np.isnan(v).all():
                logs[f"{prefix}{name}"] = float(np.nanmean(v))
        calibrator = self.smoothing_policy.calibrator
        if calibrator is not None and split == "train":
            extra["cals/q_hat"] = calibrator.bin_confidence().tolist()
            # the reliability curve of the forecasts (SPEC §4): per bin, how often the label
            # agreed with the forecast (the moving-average counts, without q̂'s prior; null
            # for an empty bin) and the counts themselves
            w, lo = calibrator.wins, calibrator.losses
            n = w + lo
            extra["cals/reliability"] = torch.where(
                n > 0, w / n.clamp_min(1e-300), math.nan
            ).tolist()
            extra["cals/bin_counts"] = n.tolist()
            logs["cals/step"] = calibrator.step
        return extra

    def _write_record(self, split: str, logs: dict[str, Any], extra: dict[str, Any]) -> None:
        if self.is_world_process_zero():
            record = {"step": self.state.global_step, "split": split, **logs, **extra}
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(json_safe(record)) + "\n")

    # ------------------------------------------------------------------ evaluation
    @contextmanager
    def evaluation_mode(self) -> Iterator[torch.nn.Module]:
        """The model in eval mode on its device, under training's autocast, without grad."""
        model = self.model
        if not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            model.to(self.args.device)  # before train(), Trainer may not have placed it yet
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.accelerator.autocast():
                yield model
        finally:
            model.train(was_training)

    def finish_evaluation(self, metrics: dict[str, float]) -> dict[str, float]:
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(
            self.args, self.state, self.control, metrics
        )
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, trial) -> None:
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        sums = self.loss_sums()  # on every rank: it gathers the window's buffered values
        if self.args.should_save:  # a folder saved over (a resume from an older checkpoint)
            (folder / COMPLETE_MARKER).unlink(missing_ok=True)  # is uncertified until done
        # Trainer's rotation would run before the marker, counting every checkpoint-N folder
        # (a crashed save's of a higher step kept as the newest): with no limit it does
        # nothing, and ours runs below instead, once the checkpoint is certified
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        # every rank writes its own RNG state (and shards under FSDP/DeepSpeed): certify the
        # checkpoint only once all of them are done
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            record_training_arguments(self.args, folder)  # with the run's save_total_limit
            save_smoothing_state(self.smoothing_policy.state_dict(), folder)
            if sums is not None:
                save_loss_sums(sums, folder)
            if self.data_fingerprint is not None:
                write_data_fingerprint(folder, self.data_fingerprint)
            else:  # a folder saved over must not keep an earlier save's
                (folder / DATA_FINGERPRINT).unlink(missing_ok=True)
            # written last: its presence certifies that everything above is complete
            atomic_write_json(folder / COMPLETE_MARKER, {"global_step": self.state.global_step})
            rotate_checkpoints(
                folder.parent,
                self.args.save_total_limit,
                newest=folder,
                protected=(self.state.best_model_checkpoint,),
            )


def record_training_arguments(args: Any, folder: Path) -> None:
    """Write ``args`` again as ``folder``'s ``training_args.bin`` (atomically), where
    Trainer wrote one: it saved them while ``save_total_limit`` was switched off for its
    save (:meth:`SmoothingTrainer._save_checkpoint`), so the checkpoint recorded no limit
    rather than the run's. A save that wrote none (sharded weights that skip
    ``Trainer._save``) is left so."""
    import io

    from transformers.trainer import TRAINING_ARGS_NAME

    path = folder / TRAINING_ARGS_NAME
    if path.is_file():
        buf = io.BytesIO()
        torch.save(args, buf)  # as Trainer._save does
        atomic_write_bytes(path, buf.getvalue())


class PairCountedLoss:
    """Mixin for the pairwise trainers (DPO, reward): the loss of an optimizer step is the
    mean over every pair it accumulates, not the mean of its micro-batches' means.

    Trainer's usual scaling (each micro-batch's mean divided by the accumulation steps)
    over-weights the pairs of a short micro-batch, the last of an epoch. Instead
    :meth:`_get_num_items_in_batch` counts the pairs (``_items_in``) of all the micro-batches
    of the step, summed over ranks, and :meth:`per_pair_loss` divides each micro-batch's sum
    by that count (times the number of processes, which DDP's gradient averaging divides by).
    Without a count (evaluation, or ``training_step`` called directly) it is the mean,
    divided by the accumulation steps when training.

    The logged ``loss`` is pooled alike: each training micro-batch buffers its loss terms as
    sums and counts (:meth:`record_loss`), and a window's ``loss`` is the sum over terms of
    the window's sum over its count (every step, micro-batch and rank), which replaces
    Trainer's mean of the window's per-step means: those weigh the pairs of a short step (an
    epoch's last) more, while the other logged values (``record``) pool the window's pairs.
    So is the end-of-run ``train_loss``, over every step of the run: its sums go into each
    checkpoint (:meth:`loss_sums`), and a resumed run starts from them. A window whose
    pooled loss is not finite keeps Trainer's, which its NaN/inf filter may have cleaned.
    The end's last partial window (after the last logging step), which Trainer does not
    log, gets its pooled ``loss`` too (so every training record of ``metrics.jsonl`` has
    one, and the plots show that window), and counts in ``train_loss``.
    """

    loss_is_scaled_for_ga = True  # per_pair_loss does the scaling
    _window_loss: float | None = None  # the pooled loss of the window being logged

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._run_loss: dict[str, list[float]] = {}  # per term: [sum, count] of the run

    def restore_loss_sums(self, sums: dict[str, Any] | None) -> None:
        run = (sums or {}).get("run_loss", {})
        self._run_loss = {
            name: [float(total), float(count)] for name, (total, count) in run.items()
        }

    def loss_sums(self) -> dict[str, Any]:
        run = {name: list(term) for name, term in self._run_loss.items()}
        # the steps since the last log, which the checkpoint covers
        for name in self._buffered_names("_loss/"):
            term = run.setdefault(name, [0.0, 0.0])
            term[0] += self._buffered_sum(f"_loss/{name}/sum")
            term[1] += self._buffered_sum(f"_loss/{name}/count")
        return {"run_loss": run}

    def record_loss(self, **terms: tuple[Tensor, Tensor]) -> None:
        """Buffer a training micro-batch's loss as terms ``name=(sum, count)``: the logged
        loss is ``Σ_terms sum / count``, each pooled over the window (a count of 0: 1, as
        :meth:`per_pair_loss` clamps it)."""
        for name, (total, count) in terms.items():
            self.record("train", {f"_loss/{name}/sum": total, f"_loss/{name}/count": count})

    def _gathered(self, split: str) -> dict[str, np.ndarray]:
        out = super()._gathered(split)
        names = sorted({k.split("/")[1] for k in out if k.startswith("_loss/")})
        window = 0.0
        for name in names:
            total = float(out.pop(f"_loss/{name}/sum").astype(np.float64).sum())
            count = float(out.pop(f"_loss/{name}/count").astype(np.float64).sum())
            window += total / max(count, 1.0)
            run = self._run_loss.setdefault(name, [0.0, 0.0])
            run[0], run[1] = run[0] + total, run[1] + count
        if names:
            self._window_loss = window
        return out

    def _summarised(self, split: str, logs: dict[str, Any]) -> dict[str, Any]:
        self._window_loss = None
        extra = super()._summarised(split, logs)
        window = self._window_loss
        # a window Trainer logged (a non-finite one keeps Trainer's, which its filter may have
        # cleaned), or the end's last partial window, for which Trainer logs none
        if (
            split == "train"
            and window is not None
            and ("loss" not in logs or math.isfinite(window))
        ):
            logs["loss"] = window
        if split == "summary" and "train_loss" in logs and self._run_loss:
            value = sum(total / max(count, 1.0) for total, count in self._run_loss.values())
            if math.isfinite(value):
                logs["train_loss"] = value
        return extra

    def _items_in(self, batch: dict[str, Any]) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        if not batch_samples:
            return None
        n = sum(self._items_in(b).to(device=device, dtype=torch.float32) for b in batch_samples)
        if self.args.world_size > 1:
            n = self.accelerator.gather(n.reshape(1)).sum()
        return n

    def per_pair_loss(
        self, total: Tensor, mean: Tensor, num_items: Tensor | None, training: bool
    ) -> Tensor:
        """``total`` (this micro-batch's sum of weighted pair losses) over the step's pair
        count, or ``mean`` where there is no count."""
        if num_items is None:  # set by Trainer.train(); 1 for a step taken outside it
            steps = getattr(self, "current_gradient_accumulation_steps", 1)
            return mean / steps if training else mean
        loss = total / num_items.clamp(min=1.0)
        if self.args.world_size > 1:
            loss = loss * self.accelerator.num_processes
        return loss
