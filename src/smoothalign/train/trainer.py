"""DPO on ``transformers.Trainer``: only the loss, the metrics and the checkpoint extras are ours.

Why ``Trainer`` rather than TRL's ``DPOTrainer``: TRL computes its loss inline in a private
method whose internals move between releases (and its ``sigmoid`` loss ignores
``label_smoothing``), while ``Trainer.compute_loss`` is a documented extension point. From
``Trainer`` we keep what it does well — the optimisation loop, gradient accumulation,
mixed precision, ``accelerate`` (DDP / FSDP / DeepSpeed), checkpoint/resume of model,
optimizer, scheduler, RNG and data position, TensorBoard and the progress bar — and add:

* the per-pair loss of SPEC §2 with ``α`` from a smoothing policy (SPEC §4);
* TRL's metric names (``rewards/chosen`` …) plus ``cals/*``, written to ``metrics.jsonl``;
* the smoothing policy's state in every checkpoint, and a completion marker written last,
  so that a checkpoint interrupted half-way is never resumed from.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import Trainer

from smoothalign.calibration import calibration_summary, true_preference_metrics
from smoothalign.io import atomic_write_json, json_safe
from smoothalign.smoothing import SmoothingPolicy
from smoothalign.train.checkpoints import COMPLETE_MARKER, save_smoothing_state
from smoothalign.train.config import DPOConfig
from smoothalign.train.objective import dpo_terms, sequence_logps

ALPHA_HIST_BINS = 10  # over [0, 1/2]


class SmoothDPOTrainer(Trainer):
    # compute_loss returns a per-micro-batch mean; Trainer divides by the accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        dpo_config: DPOConfig,
        smoothing_policy: SmoothingPolicy,
        ref_model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.dpo_config = dpo_config
        self.smoothing_policy = smoothing_policy
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
            self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        self._stored: dict[str, dict[str, list[Tensor]]] = defaultdict(lambda: defaultdict(list))
        self.metrics_path = Path(self.args.output_dir) / "metrics.jsonl"

    # ------------------------------------------------------------------ forward
    def _unwrapped(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model)

    def policy_logps(self, model: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """``(log π(y_w|x), log π(y_l|x), |y_w|)``, each ``[B]``, from one concatenated forward."""
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        )
        logps, lengths = sequence_logps(out.logits, batch["labels"])
        b = logps.shape[0] // 2
        return logps[:b], logps[b:], lengths[:b]

    @torch.no_grad()
    def reference_logps(
        self, model: torch.nn.Module, batch: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Reference log-probs ``[B]`` each: precomputed in the batch, a frozen model, or the
        policy with its LoRA adapter disabled."""
        if "ref_chosen_logps" in batch:
            return batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        if self.ref_model is not None:
            chosen, rejected, _ = self.policy_logps(self.ref_model, batch)
            return chosen, rejected
        base = self._unwrapped(model)
        if not hasattr(base, "disable_adapter"):
            raise RuntimeError(
                "reference: no reference model, no precomputed log-probs, no LoRA adapter"
            )
        with base.disable_adapter():
            chosen, rejected, _ = self.policy_logps(model, batch)
        return chosen, rejected

    def _confidence(self, batch: dict[str, Tensor]) -> Tensor | None:
        c = batch.get("confidence")
        if c is None or bool(torch.isnan(c).all()):
            return None
        if bool(torch.isnan(c).any()) and self.smoothing_policy.needs_confidence:
            rows = batch["index"][torch.isnan(c)].tolist()[:5]
            raise ValueError(
                f"confidence: the oracle policy needs it for every row; missing in rows {rows}"
            )
        return c

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg = self.dpo_config
        training = model.training
        chosen, rejected, chosen_len = self.policy_logps(model, inputs)
        ref_chosen, ref_rejected = self.reference_logps(model, inputs)
        terms = dpo_terms(
            chosen,
            rejected,
            ref_chosen.to(chosen.dtype),
            ref_rejected.to(chosen.dtype),
            beta=cfg.beta,
            loss=cfg.loss,
            policy=self.smoothing_policy,
            loss_options=cfg.loss_options(),
            confidence=self._confidence(inputs),
            chosen_lengths=chosen_len,
            sft_weight=cfg.sft_weight,
            update_policy=training,
        )
        loss = terms.losses.mean()
        self._record("train" if training else "eval", terms, chosen.detach(), rejected.detach())
        if return_outputs:
            return loss, {"margins": terms.margins.detach(), "alpha": terms.alpha}
        return loss

    def _record(self, split: str, terms, chosen: Tensor, rejected: Tensor) -> None:
        store = self._stored[split]
        store["rewards/chosen"].append(terms.chosen_rewards)
        store["rewards/rejected"].append(terms.rejected_rewards)
        store["rewards/margins"].append(terms.margins.detach())
        store["rewards/accuracies"].append((terms.margins.detach() > 0).float())
        store["logps/chosen"].append(chosen)
        store["logps/rejected"].append(rejected)
        store["cals/alpha"].append(terms.alpha)

    # ------------------------------------------------------------------ logging
    def _gathered(self, split: str) -> dict[str, np.ndarray]:
        out = {}
        for name, values in self._stored[split].items():
            t = torch.cat([v.float().reshape(-1) for v in values])
            out[name] = (
                self.accelerator.gather_for_metrics(t.to(self.accelerator.device)).cpu().numpy()
            )
        self._stored[split].clear()
        return out

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            split = "train"
        elif any(k.startswith("eval_") for k in logs):
            split = "eval"
        else:
            split = "summary"
        values = self._gathered(split) if split in self._stored and self._stored[split] else {}
        prefix = "" if split == "train" else "eval_"
        extra: dict[str, Any] = {}
        for name, v in values.items():
            if name == "cals/alpha":
                logs[f"{prefix}cals/alpha_mean"] = float(v.mean())
                hist, _ = np.histogram(v, bins=ALPHA_HIST_BINS, range=(0.0, 0.5))
                extra[f"{prefix}cals/alpha_hist"] = hist.tolist()
            else:
                logs[f"{prefix}{name}"] = float(v.mean())
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
    @torch.no_grad()
    def preference_forecasts(self, dataset=None) -> dict[str, np.ndarray]:
        """Margins, rewards and confidences ``[N]`` on a data set, without touching the policy state."""
        model = self.model
        was_training = model.training
        model.eval()
        loader = self.get_eval_dataloader(dataset)
        parts: dict[str, list[Tensor]] = defaultdict(list)
        for batch in loader:
            batch = self._prepare_inputs(batch)
            with self.compute_loss_context_manager():
                chosen, rejected, _ = self.policy_logps(model, batch)
                ref_chosen, ref_rejected = self.reference_logps(model, batch)
            h = self.dpo_config.beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
            conf = batch.get("confidence", torch.full_like(h, float("nan")))
            for name, t in (("margins", h), ("confidence", conf), ("index", batch["index"])):
                parts[name].append(self.accelerator.gather_for_metrics(t.float()).cpu())
        model.train(was_training)
        return {k: torch.cat(v).numpy() for k, v in parts.items()}

    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        f = self.preference_forecasts(eval_dataset)
        metrics = {
            f"{metric_key_prefix}_{k}": v
            for k, v in preference_metrics(f["margins"], f["confidence"]).items()
        }
        self.log(metrics)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        if self.args.should_save:
            save_smoothing_state(self.smoothing_policy.state_dict(), folder)
            # written last: its presence certifies that everything above is complete
            atomic_write_json(folder / COMPLETE_MARKER, {"global_step": self.state.global_step})


def preference_metrics(margins: np.ndarray, confidence: np.ndarray) -> dict[str, float]:
    """Accuracy and calibration of the forecasts ``σ(h)`` of a canonical (chosen-first) set.

    Every pair is read in both orders — ``(σ(h), 1)`` and ``(1 − σ(h), 0)`` — so that a data
    set where the labelled winner always comes first still has two outcomes to calibrate
    against. Where the true confidence ``q`` of the label is known, the forecasts are also
    scored against it: ``*_true`` metrics use outcomes ``(q, 1 − q)`` and the true winner.
    """
    h = np.asarray(margins, dtype=np.float64)
    p = 1.0 / (1.0 + np.exp(-h))
    probs = np.concatenate([p, 1 - p])
    # a tie (h = 0, e.g. the policy still equal to its reference) counts as half right
    out: dict[str, float] = {
        "n_pairs": float(len(h)),
        "accuracy": float(np.mean((h > 0) + 0.5 * (h == 0))),
    }
    out["margin_mean"] = float(h.mean())
    labels = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    for k, v in calibration_summary(probs, labels).items():
        out[k] = v
    q = np.asarray(confidence, dtype=np.float64)
    known = ~np.isnan(q)
    if known.any():
        out.update(true_preference_metrics(h[known], q[known]))
    return out
