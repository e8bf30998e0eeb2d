"""SFT on ``transformers.Trainer``: only the loss, the metrics and the evaluation are ours.

The shared base (:class:`smoothalign.train.base_trainer.SmoothingTrainer`) gives the metric
buffers gathered across ranks, ``metrics.jsonl``, the evaluation context and the certified
checkpoints (``smoothalign_complete.json`` written last; ``--resume latest`` trusts only
those). SFT smooths tokens, not pairs: its smoothing policy is the stateless ``none``.

The loss (SPEC §5) is computed from the last hidden states and the LM-head weight
(:func:`smoothalign.sft.objective.sft_loss`), so the model's forward asks for one position
of logits only (``logits_to_keep=1``) and ``fused=True`` can avoid the ``[N, V]`` logits
altogether. :meth:`SFTTrainer.check_head` verifies once, before training, that
``head(last hidden state)`` reproduces the model's own logits.

Gradient accumulation and data parallelism count tokens, not micro-batches: the loss is
the sum over this micro-batch's completion tokens divided by Trainer's count of completion
tokens in the whole accumulated (and, across ranks, global) batch, ``num_items_in_batch``,
so accumulating two micro-batches equals one batch of both even when their token counts
differ. Models whose ``forward`` takes no loss kwargs get no count from Trainer: their loss
is the micro-batch mean, divided by the accumulation steps (Trainer's fallback).

Logged (TRL's names): ``loss`` (the smoothed training loss), ``mean_token_accuracy``,
``entropy`` (of the predictive distribution, nats), plus ``nll`` (the unsmoothed
cross-entropy, comparable across β) and ``completion_tokens`` (in the logging window).
Every one of them is a mean over the completion tokens of the whole logging window (all
its steps, micro-batches and ranks pooled), so at β = 0 ``loss`` equals ``nll`` up to
float rounding. ``loss`` replaces Trainer's own, a mean of the window's per-step means
(which weighs a step of few tokens like one of many); so does the end-of-run
``train_loss``, pooled over every step of the run (a resumed one's too: the sums go into
each checkpoint).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from smoothalign.calibration import calibration_summary, reliability_curve
from smoothalign.kernels import filter_eps_for
from smoothalign.progress import bar_disable
from smoothalign.sft.config import SFTConfig
from smoothalign.sft.objective import IGNORE_INDEX, head_logits, sft_loss, token_statistics
from smoothalign.smoothing import SmoothingPolicy
from smoothalign.train.base_trainer import SmoothingTrainer
from smoothalign.train.trainer import fused_logps_enabled

TOKEN_BINS = 15  # SPEC §5: ECE over 15 equal-width bins
_SUMS = ("nll", "correct", "entropy")  # summed per micro-batch, logged per token
_COUNT = "_sum/tokens"
_LOGGED = {  # buffered sum -> the per-token mean logged
    "loss": "loss",
    "nll": "nll",
    "correct": "mean_token_accuracy",
    "entropy": "entropy",
}


class SFTTrainer(SmoothingTrainer):
    # compute_loss scales for accumulation itself: by the step's trained tokens, counted
    # here (_get_num_items_in_batch) whatever the model's forward accepts, or by the steps
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, sft_config: SFTConfig, **kwargs: Any) -> None:
        kwargs.setdefault("smoothing_policy", SmoothingPolicy())  # 'none': SFT has no α
        super().__init__(*args, **kwargs)
        self.sft_config = sft_config
        self.counts_head_filter = fused_logps_enabled(sft_config.fused, self.accelerator.device)
        base = self._base_model(self.model)
        self._logits_to_keep = "logits_to_keep" in inspect.signature(base.forward).parameters
        self._run_sums = {"loss": 0.0, "tokens": 0.0}  # the windows logged in the run

    def restore_loss_sums(self, sums: dict[str, Any] | None) -> None:
        run = (sums or {}).get("run_sums", {})
        self._run_sums = {
            "loss": float(run.get("loss", 0.0)),
            "tokens": float(run.get("tokens", 0.0)),
        }

    def loss_sums(self) -> dict[str, Any]:
        loss, tokens = self._buffered_sum("_sum/loss"), self._buffered_sum(_COUNT)
        return {
            "run_sums": {
                "loss": self._run_sums["loss"] + loss,
                "tokens": self._run_sums["tokens"] + tokens,
            }
        }

    # ------------------------------------------------------------------ forward
    def _base_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = self.accelerator.unwrap_model(model)
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def head(self, model: torch.nn.Module) -> tuple[Tensor, Tensor | None, float | None]:
        """``(C [V, D], bias [V] or None, softcap or None)`` of the model's LM head."""
        base = self._base_model(model)
        head = base.get_output_embeddings()
        if head is None or not hasattr(head, "weight"):
            raise ValueError(f"model: {type(base).__name__} has no LM head (output embeddings)")
        if _is_adapter_layer(head):  # its weight is the base one: the adapter left out
            raise ValueError(
                f"model: its LM head is a {type(head).__name__}, an adapter layer: the SFT "
                "objective reads the head's weight, so it would train and score without the "
                "adapter; leave lm_head out of the adapter (modules_to_save trains it whole)"
            )
        softcap = getattr(base.config, "final_logit_softcapping", None)
        return head.weight, getattr(head, "bias", None), softcap

    def hidden_states(self, model: torch.nn.Module, batch: dict[str, Tensor]) -> Tensor:
        """Last hidden states ``[B, L, D]`` (what the head reads), from the model's own
        forward (so DDP/accelerate hooks run); its logits are kept for one position only."""
        kwargs: dict[str, Any] = {"output_hidden_states": True, "use_cache": False}
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
        return out.hidden_states[-1]

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # the head under the run's autocast, as in evaluation (accelerate wraps only the
        # model's forward): training and evaluation then round its inputs alike
        with self.accelerator.autocast():
            return self._compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _compute_loss(self, model, inputs, return_outputs, num_items_in_batch):
        cfg = self.sft_config
        hidden = self.hidden_states(model, inputs)
        weight, bias, softcap = self.head(model)
        labels = inputs["labels"]
        total = sft_loss(
            hidden,
            weight,
            labels,
            label_smoothing=cfg.label_smoothing,
            fused=fused_logps_enabled(cfg.fused, hidden.device),
            filter_eps=filter_eps_for(cfg.grad_filter),
            filter_stats=self.head_stats if model.training else None,
            reduction="sum",
            bias=bias,
            softcap=softcap,
        )
        if num_items_in_batch is not None:  # the step's tokens (_get_num_items_in_batch)
            loss = total / num_items_in_batch.clamp(min=1)
            if self._tokens_across_ranks():
                # num_items_in_batch counts every rank's tokens, and DDP averages gradients
                loss = loss * self.accelerator.num_processes
        else:  # evaluation, or a step taken outside Trainer.train()
            loss = total / (labels[:, 1:] != IGNORE_INDEX).sum().clamp(min=1)
            if model.training:
                loss = loss / getattr(self, "current_gradient_accumulation_steps", 1)
        if model.training:
            stats = token_statistics(
                hidden.detach(), weight.detach(), labels, bias=bias, softcap=softcap
            )
            mask = stats["mask"]
            values = {f"_sum/{name}": stats[name][mask].sum().reshape(1) for name in _SUMS}
            values["_sum/loss"] = total.detach().float().reshape(1)  # the smoothed sum trained
            values[_COUNT] = mask.sum().float().reshape(1)
            self.record("train", values)
        return (loss, {"hidden_states": hidden}) if return_outputs else loss

    def _tokens_across_ranks(self) -> bool:
        return bool(self.args.average_tokens_across_devices) and self.args.world_size > 1

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """The trained tokens (shifted labels, as the loss counts them) of all the step's
        micro-batches, summed over ranks when tokens are averaged across devices. Our own
        count, not Trainer's: it counts only for models whose forward takes loss keyword
        arguments, and without it each micro-batch's mean was divided by the steps (a
        short micro-batch's tokens weighed more)."""
        if not batch_samples:
            return None
        n = sum((b["labels"][:, 1:] != IGNORE_INDEX).sum() for b in batch_samples)
        n = torch.as_tensor(n, device=device, dtype=torch.float32)
        if self._tokens_across_ranks():
            n = self.accelerator.gather(n.reshape(1)).sum()
        return n

    def _gathered(self, split: str) -> dict[str, np.ndarray]:
        """Token-weighted means over the logging window from the buffered per-micro-batch
        sums (every rank's), instead of a mean of micro-batch or step means. ``loss`` among
        them: it replaces Trainer's ``loss`` in the log (a mean of per-step means), so that
        every logged training quantity pools the window's tokens alike."""
        out = super()._gathered(split)
        if _COUNT not in out:
            return out
        n = float(out.pop(_COUNT).astype(np.float64).sum())  # as the pair trainers sum
        for key, name in _LOGGED.items():
            total = float(out.pop(f"_sum/{key}").astype(np.float64).sum())
            out[name] = np.array([total / n if n else math.nan])
            if key == "loss" and split == "train":
                self._run_sums["loss"] += total
                self._run_sums["tokens"] += n
        out["completion_tokens"] = np.array([n])
        return out

    def _summarised(self, split: str, logs: dict[str, Any]) -> dict[str, Any]:
        extra = super()._summarised(split, logs)
        # the end of training (after the last window, written first): Trainer's train_loss is
        # a mean of per-step means too; pooled over the run's tokens instead, as each window
        n = self._run_sums["tokens"]
        if split == "summary" and "train_loss" in logs and n:
            value = self._run_sums["loss"] / n
            if math.isfinite(value):  # else Trainer's (its NaN filter) stays, as in a window
                logs["train_loss"] = value
        return extra

    # ------------------------------------------------------------------ checks
    @torch.no_grad()
    def check_head(self, batch: dict[str, Tensor]) -> float:
        """Raise unless ``head(last hidden state)`` reproduces the model's logits on
        ``batch`` (a model that scales or post-processes its logits otherwise would train
        on another objective than it says). Returns the largest absolute difference."""
        with self.evaluation_mode() as model:
            batch = self._prepare_inputs(batch)
            out = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                output_hidden_states=True,
                use_cache=False,
            )
            weight, bias, softcap = self.head(model)
            mine = head_logits(out.hidden_states[-1], weight, bias, softcap)
            theirs = out.logits.float()
        real = batch["attention_mask"].bool()
        diff = float((mine - theirs).abs()[real].max())
        scale = 1.0 + float(theirs[real].abs().max())
        tolerance = (2e-2 if self.args.bf16 else 1e-3) * scale
        if not diff <= tolerance:
            raise ValueError(
                "model: its logits are not lm_head(last hidden state) (largest difference "
                f"{diff:.3g}, tolerance {tolerance:.3g}): it scales or transforms them in a way "
                "the SFT objective does not know, so it cannot be trained with smoothalign sft"
            )
        return diff

    # ------------------------------------------------------------------ evaluation
    def token_evaluation(self, dataset=None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """``(metrics, tokens)`` on a data set's completion tokens. ``tokens`` holds
        per-token ``confidence`` (max softmax probability) and ``correct`` ``[N]``."""
        beta = self.sft_config.label_smoothing
        names = ("nll", "correct", "entropy", "confidence", "uniform_ce")
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        n_rows = 0
        with self.evaluation_mode() as model:
            loader = self.get_eval_dataloader(dataset)
            quiet = bar_disable(  # None: off when not a terminal
                not self.is_world_process_zero() or None
            )
            for batch in tqdm(loader, desc="scoring held-out tokens", leave=False, disable=quiet):
                batch = self._prepare_inputs(batch)
                hidden = self.hidden_states(model, batch)
                weight, bias, softcap = self.head(model)
                stats = token_statistics(
                    hidden, weight, batch["labels"], bias=bias, softcap=softcap
                )
                for name in names:
                    t = torch.where(stats["mask"], stats[name], torch.nan)
                    # rows differ in length across ranks: pad them alike, then gather
                    t = self.accelerator.pad_across_processes(t, dim=1, pad_index=math.nan)
                    t = self.accelerator.gather_for_metrics(t).cpu().numpy().reshape(-1)
                    parts[name].append(t[~np.isnan(t)])
                n_rows += int(self.accelerator.gather_for_metrics(batch["index"]).numel())
        tok = {name: np.concatenate(v).astype(np.float64) for name, v in parts.items()}
        metrics = token_metrics(tok, beta)
        metrics["n_rows"] = float(n_rows)
        return metrics, {"confidence": tok["confidence"], "correct": tok["correct"]}

    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        metrics, _ = self.token_evaluation(eval_dataset)
        return self.finish_evaluation({f"{metric_key_prefix}_{k}": v for k, v in metrics.items()})


def token_metrics(tokens: dict[str, np.ndarray], label_smoothing: float) -> dict[str, float]:
    """Per-token means over completion tokens ``[N]``: the smoothed ``loss``
    ``(1 − β)·nll + β·uniform_ce`` (SPEC §5), ``nll``, ``perplexity`` = ``exp(nll)``,
    ``mean_token_accuracy``, ``entropy``, and the calibration of the top-1 prediction
    (confidence = max softmax probability vs right/wrong; ECE, RMS, MCE over 15 bins, Brier)."""
    n = tokens["nll"].size
    if n == 0:
        raise ValueError("evaluation: no completion tokens to score")
    nll = float(tokens["nll"].mean())
    out = {
        "n_tokens": float(n),
        "loss": (1 - label_smoothing) * nll + label_smoothing * float(tokens["uniform_ce"].mean()),
        "nll": nll,
        "perplexity": float(np.exp(min(nll, 700.0))),
        "mean_token_accuracy": float(tokens["correct"].mean()),
        "entropy": float(tokens["entropy"].mean()),
        "confidence": float(tokens["confidence"].mean()),
    }
    calib = calibration_summary(
        np.clip(tokens["confidence"], 0.0, 1.0), tokens["correct"], TOKEN_BINS
    )
    out.update({f"top1_{k}": v for k, v in calib.items()})
    return out


def token_reliability(tokens: dict[str, np.ndarray]):
    return reliability_curve(np.clip(tokens["confidence"], 0.0, 1.0), tokens["correct"], TOKEN_BINS)


def _is_adapter_layer(module: torch.nn.Module) -> bool:
    """A PEFT tuner layer (LoRA, …), whose ``weight`` leaves its adapter out. (A
    ``modules_to_save`` copy is not one: its ``weight`` is the trained copy the forward uses.)"""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(module, BaseTunerLayer)
