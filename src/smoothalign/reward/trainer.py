"""Reward models on ``transformers.Trainer``: only the loss, the metrics and the checkpoint
extras are ours (the same split as :mod:`smoothalign.train.trainer`; see
docs/architecture.md for why ``Trainer`` and not TRL).

The model is any ``AutoModelForSequenceClassification`` with ``num_labels=1``: one forward
over the ``2B`` sequences of a batch gives ``r₁`` (chosen) and ``r₂`` (rejected), and the
objective of :mod:`smoothalign.reward.objective` turns ``d = r₁ − r₂`` and the soft label into
the loss. Logged (TRL's names where they exist): ``rewards/chosen``, ``rewards/rejected``,
``rewards/margins``, ``rewards/accuracies`` (against the majority vote), ``divergence/fkl``,
``divergence/rkl``, ``divergence/jsd`` (the model against the plain vote share, whatever the
training loss), ``target/mean``, ``smoothing/alpha_mean`` and the CALS state, into
``metrics.jsonl``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import Tensor

from smoothalign.calibration import PAIRWISE_BINS, calibration_summary, true_preference_metrics
from smoothalign.calibration.pairwise import _pairwise_bins
from smoothalign.reward.config import RewardConfig
from smoothalign.reward.objective import (
    majority_first_margins,
    monitored_divergences,
    reward_loss,
)
from smoothalign.train.base_trainer import PairCountedLoss, SmoothingTrainer


class RewardTrainer(PairCountedLoss, SmoothingTrainer):
    def __init__(self, *args: Any, reward_config: RewardConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reward_config = reward_config

    # ------------------------------------------------------------------ forward
    def rewards(self, model: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(r₁, r₂)`` ``[B]`` each (float32), from one forward over the ``2B`` sequences."""
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        )
        logits = out.logits
        if logits.ndim != 2 or logits.shape[-1] != 1:
            raise ValueError(
                f"model: expected a scalar head (num_labels=1) giving logits [2B, 1], got "
                f"{list(logits.shape)}"
            )
        r = logits[:, 0].float()
        b = r.shape[0] // 2
        return r[:b], r[b:]

    def _majority_confidence(self, batch: dict[str, Tensor], p: Tensor) -> Tensor | None:
        """The true confidence of the *majority* winner (what an oracle policy reads)."""
        c = batch.get("confidence")
        if c is None or bool(torch.isnan(c).all()):
            if self.smoothing_policy.needs_confidence:
                raise ValueError(
                    f"confidence: the {self.smoothing_policy.name!r} policy needs each pair's "
                    "true P(chosen wins) (a 'confidence' column)"
                )
            return None
        if bool(torch.isnan(c).any()) and self.smoothing_policy.needs_confidence:
            rows = batch["index"][torch.isnan(c)].tolist()[:5]
            raise ValueError(
                f"confidence: the oracle policy needs it for every row; missing in {rows}"
            )
        c = c.to(p.dtype)
        return torch.where(p < 0.5, 1 - c, c)

    # ------------------------------------------------------------------ loss
    def _items_in(self, batch: dict[str, Tensor]) -> Tensor:
        """The pairs that carry weight: all, or under ``bt`` those whose votes are not tied."""
        p = batch["p_chosen"]
        return (
            (p != 0.5).sum() if self.reward_config.loss == "bt" else p.new_tensor(p.numel())
        ).float()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg = self.reward_config
        training = model.training
        r1, r2 = self.rewards(model, inputs)
        p = inputs["p_chosen"].to(r1.dtype)
        h = majority_first_margins((r1 - r2).detach(), p)
        confidence = self._majority_confidence(inputs, p)
        alpha = self.smoothing_policy.alpha(h, confidence)
        if training:  # a tied vote (p = ½) says nothing about which response wins: CALS's
            # bins count only the decided pairs (the loss gives a tie no majority either)
            self.smoothing_policy.update(h[p != 0.5])
        terms = reward_loss(cfg.loss, r1, r2, p, alpha=alpha, **cfg.loss_options())
        weighted = terms.losses * terms.weights
        loss = self.per_pair_loss(
            weighted.sum(), weighted.sum() / terms.weights.sum().clamp_min(1.0),
            num_items_in_batch, training,
        )  # fmt: skip
        if cfg.center_weight:  # a per-micro-batch mean (it regularises, it is not averaged)
            scale = getattr(self, "current_gradient_accumulation_steps", 1) if training else 1
            loss = loss + cfg.center_weight * ((r1 + r2) ** 2).mean() / scale
        if training:  # evaluation goes through reward_forecasts / evaluate instead
            self._record("train", terms, r1.detach(), r2.detach(), p)
            loss_terms = {"pairs": (weighted.sum(), terms.weights.sum())}
            if cfg.center_weight:  # its mean is over every pair, tied votes included
                n = torch.tensor(float(p.numel()))
                loss_terms["centering"] = (cfg.center_weight * terms.centering.sum(), n)
            self.record_loss(**loss_terms)
        if return_outputs:
            return loss, {"margins": terms.margins.detach(), "alpha": terms.alpha}
        return loss

    def _record(self, split: str, terms, r1: Tensor, r2: Tensor, p: Tensor) -> None:
        d = terms.margins.detach()
        divergences = monitored_divergences(d, p)  # METRIC_RKL_FLOOR, not the loss's floor
        self.record(
            split,
            {
                "rewards/chosen": r1,
                "rewards/rejected": r2,
                "rewards/margins": d,
                "rewards/accuracies": _agreement(d, p),
                **{f"divergence/{name}": v for name, v in divergences.items()},
                "target/mean": terms.target,
                "rewards/centering": terms.centering,
                "smoothing/alpha": terms.alpha,
            },
        )

    # ------------------------------------------------------------------ evaluation
    def reward_forecasts(self, dataset=None) -> dict[str, np.ndarray]:
        """Per pair ``[N]``: ``chosen``/``rejected`` rewards, ``margins``, ``p_chosen``,
        ``confidence`` (NaN where unknown) and ``index``; the smoothing state is untouched."""
        parts: dict[str, list[Tensor]] = defaultdict(list)
        with self.evaluation_mode() as model:
            for batch in self.get_eval_dataloader(dataset):
                batch = self._prepare_inputs(batch)
                r1, r2 = self.rewards(model, batch)
                named = {
                    "chosen": r1,
                    "rejected": r2,
                    "margins": r1 - r2,
                    "p_chosen": batch["p_chosen"],
                    "confidence": batch["confidence"],
                    "index": batch["index"],
                }
                for name, t in named.items():
                    parts[name].append(self.accelerator.gather_for_metrics(t.float()).cpu())
        return {k: torch.cat(v).numpy().astype(np.float64) for k, v in parts.items()}

    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        f = self.reward_forecasts(eval_dataset)
        metrics = reward_metrics(f["margins"], f["p_chosen"], f["confidence"], self.reward_config)
        return self.finish_evaluation({f"{metric_key_prefix}_{k}": v for k, v in metrics.items()})


def _agreement(d: Tensor, p: Tensor) -> Tensor:
    """Per pair: 1 if the sign of ``d`` agrees with the majority vote, ½ for ``d = 0``, NaN
    for a tied vote (no majority to agree with)."""
    right = ((d > 0) == (p > 0.5)).to(d.dtype)
    right = torch.where(d == 0, torch.full_like(d, 0.5), right)
    return torch.where(p == 0.5, torch.full_like(d, math.nan), right)


def reward_metrics(
    margins: np.ndarray,
    p_chosen: np.ndarray,
    confidence: np.ndarray | None = None,
    config: RewardConfig | None = None,
    *,
    bins: int = PAIRWISE_BINS,
) -> dict[str, float]:
    """Held-out accuracy and calibration of the forecasts ``σ(d)`` ``[N]``.

    * ``accuracy``: sign of ``d`` against the majority vote (tied votes left out; ``d = 0``
      counts ½); ``n_tied_votes`` counts the pairs left out (all of them: ``accuracy`` is
      NaN).
    * ``ece``/``rms``/``mce``/``brier``: ``σ(d)`` against the held-out vote shares, each pair
      read in both orders, ``(σ(d), p)`` and ``(1 − σ(d), 1 − p)``; binned vote shares
      average to the true probability, so the binned gap is unbiased per bin.
    * ``fkl``/``rkl``/``jsd``: mean divergence of ``[σ(d), σ(−d)]`` from ``[p, 1 − p]``; in
      ``rkl`` the vote share is floored at :data:`~smoothalign.reward.objective.METRIC_RKL_FLOOR`
      (10⁻⁶) whatever ``config.rkl_floor`` (the ``rkl`` loss's), so runs compare.
    * where the true ``q = P(chosen wins)`` is known: ``accuracy_true`` (sign of ``d`` against
      the true preference, pairs with ``q = ½`` left out), ``ece_true``, ``rms_true``,
      ``brier_true`` and ``kl_true`` = mean ``KL(q ‖ σ(d))``, over the ``n_pairs_true``
      pairs with a ``q``.

    ``bins``: an even integer >= 2, as for every pairwise (mirrored) reading
    (:data:`~smoothalign.calibration.PAIRWISE_BINS`): an odd count puts a forecast and its
    mirror image in one central bin, where near-½ forecasts look calibrated whatever the
    truth. Refused (``ValueError``) whether or not any confidence is known.
    """
    bins = _pairwise_bins(bins)
    d = np.asarray(margins, dtype=np.float64)
    p = np.asarray(p_chosen, dtype=np.float64)
    s = 1.0 / (1.0 + np.exp(-d))
    out: dict[str, float] = {"n_pairs": float(d.size)}
    decided = p != 0.5
    agree = np.where(d == 0, 0.5, (d > 0) == (p > 0.5))
    out["accuracy"] = float(agree[decided].mean()) if decided.any() else math.nan
    out["n_tied_votes"] = float((~decided).sum())  # left out of accuracy (NaN if all are)
    out.update(calibration_summary(np.concatenate([s, 1 - s]), np.concatenate([p, 1 - p]), bins))
    # the reverse KL's floor is METRIC_RKL_FLOOR whatever config.rkl_floor (a training option
    # of --loss rkl), so that runs with different floors report comparable values
    for name, v in monitored_divergences(torch.from_numpy(d), torch.from_numpy(p)).items():
        out[name] = float(v.mean())
    out["margin_mean"] = float(d.mean())
    out["margin_abs_mean"] = float(np.abs(d).mean())
    if confidence is not None:
        q = np.asarray(confidence, dtype=np.float64)
        known = ~np.isnan(q)
        if known.any():
            out["n_pairs_true"] = float(known.sum())
            out.update(true_preference_metrics(d[known], q[known], bins=bins))
    return out
