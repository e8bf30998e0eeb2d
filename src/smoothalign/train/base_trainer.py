"""What the DPO and reward-model trainers share on top of ``transformers.Trainer``.

* a smoothing policy whose state goes into every checkpoint, certified by a completion
  marker written last — after every rank has finished its part of the save;
* per-pair metric buffers, gathered across ranks and written to ``metrics.jsonl`` (with
  non-scalar extras: the α histogram and the calibrator's per-bin ``q̂``) besides the usual
  Trainer logs (progress bar, TensorBoard);
* an evaluation context that runs the model on its device under the same autocast as
  training, so that "before" and "after" forecasts are computed alike;
* ``evaluate`` that logs its metrics and tells the callbacks, as Trainer's own does.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import Trainer

from smoothalign.io import atomic_write_json, json_safe
from smoothalign.smoothing import SmoothingPolicy
from smoothalign.train.checkpoints import COMPLETE_MARKER, save_smoothing_state

ALPHA_HIST_BINS = 10  # over [0, 1/2]


class SmoothingTrainer(Trainer):
    # compute_loss returns a per-micro-batch mean; Trainer divides by the accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, smoothing_policy: SmoothingPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.smoothing_policy = smoothing_policy
        self._stored: dict[str, dict[str, list[Tensor]]] = defaultdict(lambda: defaultdict(list))
        self.metrics_path = Path(self.args.output_dir) / "metrics.jsonl"

    # ------------------------------------------------------------------ metrics
    def record(self, split: str, values: dict[str, Tensor]) -> None:
        """Buffer per-pair values ``[B]`` until the next log. A name ending in ``alpha`` is
        logged as its mean and a histogram over ``[0, ½]``."""
        for name, t in values.items():
            self._stored[split][name].append(t.detach().float().reshape(-1))

    def _gathered(self, split: str) -> dict[str, np.ndarray]:
        # gather, not gather_for_metrics: the buffer spans several batches, and the latter
        # would truncate it to the last batch's remainder at the end of an epoch
        out = {}
        for name, values in self._stored[split].items():
            t = torch.cat(values).to(self.accelerator.device)
            out[name] = self.accelerator.gather(t).cpu().numpy()
        self._stored[split].clear()
        return out

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            split = "train"
        elif any(k.startswith("eval_") for k in logs):
            split = "eval"
        else:
            split = "summary"
        values = self._gathered(split) if self._stored.get(split) else {}
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
            logs["cals/step"] = calibrator.step
        super().log(logs, start_time)
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
        if self.args.should_save:  # a folder saved over (a resume from an older checkpoint)
            (folder / COMPLETE_MARKER).unlink(missing_ok=True)  # is uncertified until done
        super()._save_checkpoint(model, trial)
        # every rank writes its own RNG state (and shards under FSDP/DeepSpeed): certify the
        # checkpoint only once all of them are done
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            save_smoothing_state(self.smoothing_policy.state_dict(), folder)
            # written last: its presence certifies that everything above is complete
            atomic_write_json(folder / COMPLETE_MARKER, {"global_step": self.state.global_step})
