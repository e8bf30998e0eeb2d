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

import contextlib
import inspect
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from smoothalign._warn import warn_once
from smoothalign.calibration import preference_metrics
from smoothalign.kernels import filter_eps_for
from smoothalign.models.logits import logit_transform
from smoothalign.progress import bar_disable
from smoothalign.train.base_trainer import PairCountedLoss, SmoothingTrainer
from smoothalign.train.checkpoints import sharded_launch
from smoothalign.train.config import DPOConfig
from smoothalign.train.objective import dpo_terms, sequence_logps


# ---------------------------------------------------------------------------- log-probs
def fused_logps_enabled(setting: str, device: torch.device | str) -> bool:
    """``--fused-logps``: ``on``, ``off``, or ``auto`` (on for a CUDA device); off under FSDP
    (launched with an FSDP config: it shards the LM head's weight outside its forward), so
    that the precomputed reference and the policy always take the same path."""
    if sharded_launch() == "FSDP":
        return False
    return setting == "on" or (setting == "auto" and torch.device(device).type == "cuda")


FUSED_MODEL_TYPES = frozenset(
    {
        # what their LM head does to lm_head(h), all known to models.logit_transform: nothing, or
        # Gemma's final_logit_softcapping, Cohere's logit_scale (×), Granite's logits_scaling (÷)
        "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3",
        "olmo", "olmo2", "starcoder2", "stablelm", "smollm3", "gemma", "gemma2",
        "gemma3_text", "cohere", "cohere2", "granite", "granitemoe",
    }
)  # fmt: skip
"""Model types whose logits are ``transform(lm_head(h))`` with a transform this module
applies. Others (a multiplier it does not know, a learned per-token scale) take the
materialised path: the fused one would give other log-probs, silently. The type is that of
the model that runs (its own ``config.model_type``), never of a text config inside a
multimodal wrapper (``gemma3``, ``llava``), whose forward may treat the logits otherwise."""


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers ``*ForCausalLM`` under DDP / PEFT wrappers."""
    model = getattr(model, "module", model)  # DDP
    if hasattr(model, "get_base_model"):  # PEFT: LoRA layers are injected in place
        model = model.get_base_model()
    return model


def _fused_parts(lm: torch.nn.Module):
    """``(decoder, head)``, or ``None`` when this model cannot take the fused path: no
    decoder/output-embedding accessors, or an output layer that is not a plain Linear
    (e.g. a LoRA-adapted ``lm_head``)."""
    try:
        decoder = lm.get_decoder()
        head = lm.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or decoder is lm or head is None:
        return None
    if type(head) is not torch.nn.Linear:  # a subclass may transform (a LoRA layer, a scale)
        return None
    if getattr(getattr(lm, "config", None), "model_type", None) not in FUSED_MODEL_TYPES:
        return None
    return decoder, head


def model_sequence_logps(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    *,
    fused: bool,
    filter_eps: str | None = "auto",
    filter_stats: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """``(log π(y|x) [N], response lengths [N])`` of a causal LM, as ``sequence_logps``.

    ``fused``: the model runs with ``logits_to_keep`` = no position (the LM head is applied
    to nothing), a forward hook on its decoder takes the final hidden states, and the
    per-token log-probs come from ``kernels.linear_log_probs`` with the LM head's weight
    (tied or not) — the ``[N, L, V]`` logits are never materialised; ``filter_eps`` is the
    kernel's gradient filter (``kernels.filter_eps_for``), ``filter_stats`` its report
    (``kernels.linear_log_probs``). The call goes through
    the outermost module (DDP, PEFT), so wrappers' hooks and LoRA adapters (and
    ``disable_adapter()``) apply as usual. Falls back to the plain path, with a warning
    once, for a model without ``get_decoder``/``get_output_embeddings``/``logits_to_keep``,
    with an adapted LM head, or of a type outside :data:`FUSED_MODEL_TYPES`.
    """
    lm = _causal_lm(model)
    parts = _fused_parts(lm) if fused else None
    if fused and (
        parts is None or "logits_to_keep" not in inspect.signature(lm.forward).parameters
    ):
        name = type(lm).__name__
        warn_once(
            f"fused log-probs: {name} has no usable decoder / LM head / logits_to_keep, or "
            "a model type whose logit transform is not known to be exact here; using the "
            "materialised logits",
            key=f"unfused {name}",
        )
        parts = None
    if parts is None:
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return sequence_logps(out.logits, labels)
    from smoothalign.kernels import linear_log_probs

    decoder, head = parts
    captured: list[Tensor] = []
    autocast_of_forward: list[torch.dtype | None] = []

    def hook(_module, _args, out) -> None:
        captured.append(out[0])
        kind = out[0].device.type  # the autocast the forward ran under (accelerate's, say)
        on = kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind)
        autocast_of_forward.append(torch.get_autocast_dtype(kind) if on else None)

    handle = decoder.register_forward_hook(hook)
    try:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            logits_to_keep=torch.empty(0, dtype=torch.long, device=input_ids.device),
        )
    finally:
        handle.remove()
    hidden = captured[-1]  # [N, L, D], the decoder's last (normed) hidden states
    scale, softcap = logit_transform(lm.config)
    if scale != 1.0:
        hidden = hidden * scale
    # position t predicts token t+1: shift the labels, not the hidden states (no copy)
    targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], 1)
    # the head under the forward's autocast, as the model's own lm_head would run: accelerate
    # wraps only model.forward, so a training step would otherwise read float32 where the
    # reference and the evaluation (run under autocast) read bf16-rounded inputs
    dtype = autocast_of_forward[-1]
    kind = hidden.device.type
    mixed = torch.autocast(kind, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with mixed:
        token_logps = linear_log_probs(
            hidden,
            head.weight,
            targets,
            bias=head.bias,
            softcap=softcap,
            filter_eps=filter_eps,
            filter_stats=filter_stats,
        )
    return token_logps.sum(-1), (targets != -100).sum(-1)


def pair_forecasts(
    batches: Iterable[dict[str, Tensor]],
    logps: Callable[[dict[str, Tensor]], tuple[Tensor, Tensor, Tensor, Tensor]],
    beta: float,
    *,
    gather: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, np.ndarray]:
    """The forecasts of a policy on preference batches (``data.PreferenceCollator``'s), for
    the DPO evaluation and ``smoothalign eval preferences`` alike: ``margins`` ``[N]`` (float32)
    ``h = β·[(log π − log π_ref)(y_w) − (log π − log π_ref)(y_l)]`` (SPEC §1), ``confidence``
    ``[N]`` (NaN where the data has none) and ``index`` ``[N]`` (int64: each pair's
    ``TokenizedPair.index``), in batch order.

    ``logps(batch)`` gives ``(log π(y_w|x), log π(y_l|x), log π_ref(y_w|x), log π_ref(y_l|x))``,
    ``[B]`` each; ``gather`` collects a tensor across ranks (none: this process's only)."""
    parts: dict[str, list[Tensor]] = defaultdict(list)
    for batch in batches:
        chosen, rejected, ref_chosen, ref_rejected = logps(batch)
        h = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
        conf = batch.get("confidence", torch.full_like(h, float("nan")))
        for name, t in (
            ("margins", h.float()),
            ("confidence", conf.float()),
            ("index", batch["index"]),
        ):
            parts[name].append((t if gather is None else gather(t)).cpu())
    if not parts:
        raise ValueError("pair_forecasts: no batch to score")
    return {k: torch.cat(v).numpy() for k, v in parts.items()}


def _refuse_non_finite(batch: dict[str, Tensor], logps: dict[str, Tensor]) -> None:
    """A NaN or infinite log-prob makes its pair's margin so, and the loss fails further on
    at a position in the shuffled batch; say here which term, and which data rows (one
    synchronisation: a single test over the four; Trainer's default
    ``logging_nan_inf_filter`` already waits for every step's loss, so the step was never
    free of one)."""
    bad = ~torch.isfinite(torch.stack([t.detach().float() for t in logps.values()]))
    if not bool(bad.any()):
        return
    index = batch["index"]
    for (name, t), row_bad in zip(logps.items(), bad, strict=True):
        if bool(row_bad.any()):
            rows = index[row_bad.to(index.device)].tolist()
            values = t.detach()[row_bad.to(t.device)].tolist()
            raise ValueError(
                f"{name} is {values[0]} in data row {rows[0]}"
                + (f" (and rows {rows[1:6]})" if len(rows) > 1 else "")
                + ": a NaN or infinite log-prob gives the pair no finite margin (the "
                "reference's come from the data's ref_*_logps columns when given, else from "
                "the reference model)"
            )


class SmoothDPOTrainer(PairCountedLoss, SmoothingTrainer):
    def __init__(
        self,
        *args: Any,
        dpo_config: DPOConfig,
        ref_model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.dpo_config = dpo_config
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
            self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
            self.ref_model.to(self.accelerator.device)  # FSDP's evaluation_mode places nothing
        # FSDP shards the LM head's weight outside its forward: the fused path needs it whole
        self.fused_logps = fused_logps_enabled(
            dpo_config.fused_logps, self.accelerator.device
        ) and not getattr(self, "is_fsdp_enabled", False)
        self.filter_eps = filter_eps_for(dpo_config.grad_filter)
        self.counts_head_filter = self.fused_logps

    # ------------------------------------------------------------------ forward
    def _unwrapped(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model)

    def policy_logps(self, model: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """``(log π(y_w|x), log π(y_l|x), |y_w|)``, each ``[B]``, from one concatenated forward
        (with ``--fused-logps``, without materialising the logits)."""
        logps, lengths = model_sequence_logps(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            batch["labels"],
            fused=self.fused_logps,
            filter_eps=self.filter_eps,
            filter_stats=self.head_stats if model.training and torch.is_grad_enabled() else None,
        )
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
    def _items_in(self, batch: dict[str, Tensor]) -> Tensor:
        return torch.tensor(float(batch["index"].numel()))  # pairs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg = self.dpo_config
        training = model.training
        chosen, rejected, chosen_len = self.policy_logps(model, inputs)
        ref_chosen, ref_rejected = self.reference_logps(model, inputs)
        _refuse_non_finite(
            inputs,
            {
                "the policy's log-prob of the chosen response": chosen,
                "the policy's log-prob of the rejected response": rejected,
                "the reference log-prob of the chosen response": ref_chosen,
                "the reference log-prob of the rejected response": ref_rejected,
            },
        )
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
        loss = self.per_pair_loss(
            terms.losses.sum(), terms.losses.mean(), num_items_in_batch, training
        )
        if training:
            self.record_loss(pairs=(terms.losses.sum(), torch.tensor(float(terms.losses.numel()))))
        self._record("train" if training else "eval", terms, chosen.detach(), rejected.detach())
        if return_outputs:
            return loss, {"margins": terms.margins.detach(), "alpha": terms.alpha}
        return loss

    def _record(self, split: str, terms, chosen: Tensor, rejected: Tensor) -> None:
        h = terms.margins.detach()
        self.record(
            split,
            {
                "rewards/chosen": terms.chosen_rewards,
                "rewards/rejected": terms.rejected_rewards,
                "rewards/margins": h,
                # a tie (h = 0: the policy still equal to its reference, as at step 0
                # with LoRA) counts as half right, as in the held-out `accuracy`
                # (calibration.preference_metrics); TRL counts it as wrong
                "rewards/accuracies": (h > 0).float() + 0.5 * (h == 0).float(),
                "logps/chosen": chosen,
                "logps/rejected": rejected,
                "cals/alpha": terms.alpha,
            },
        )

    # ------------------------------------------------------------------ evaluation
    def preference_forecasts(self, dataset=None) -> dict[str, np.ndarray]:
        """Margins, confidences and row ids ``[N]`` on a data set (:func:`pair_forecasts`);
        the policy state is untouched."""
        loader = self.get_eval_dataloader(dataset)
        bar = tqdm(loader, desc="scoring held-out pairs", leave=False,
                   disable=bar_disable(not self.is_world_process_zero() or len(loader) < 2))  # fmt: skip
        with self.evaluation_mode() as model:

            def logps(batch: dict[str, Tensor]) -> tuple[Tensor, ...]:
                chosen, rejected, _ = self.policy_logps(model, batch)
                return chosen, rejected, *self.reference_logps(model, batch)

            return pair_forecasts(
                (self._prepare_inputs(batch) for batch in bar),
                logps,
                self.dpo_config.beta,
                gather=self.accelerator.gather_for_metrics,
            )

    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        f = self.preference_forecasts(eval_dataset)
        metrics = preference_metrics(f["margins"], f["confidence"])
        return self.finish_evaluation({f"{metric_key_prefix}_{k}": v for k, v in metrics.items()})
