"""The DPO run's configuration: one dataclass, shared by the Python API and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from smoothalign._checks import (
    ON_BAD_ROWS,
    PRECISIONS,
    check_finite_fields,
    check_lean_layers,
    check_lora_options,
    check_ranges,
    trainer_ranges,
    words,
)
from smoothalign._options import option
from smoothalign.io import config_to_dict
from smoothalign.kernels import FUSED_LOGPS, filter_eps_for
from smoothalign.losses import LOSSES
from smoothalign.train.common import calibrator_options, smoothing_policy

REFERENCES = ("auto", "model", "adapter-disabled", "precomputed")
UNSMOOTHED_LOSSES = ("robust", "ipo", "hinge")
"""The losses label smoothing does not apply to (SPEC §2): they take ``smoothing='none'``."""
ORACLES = ("auto", "sentiment", "none")


def default_smoothing(loss: str) -> str:
    """The smoothing a DPO run uses where none is given: ``cals-l2`` for the losses it
    applies to (``sigmoid``, ``cals``), ``none`` for those it does not (``robust``, ``ipo``,
    ``hinge``: SPEC §2), so that ``--loss ipo`` alone runs as TRL's IPO does."""
    return "none" if loss in UNSMOOTHED_LOSSES else "cals-l2"


@dataclass
class DPOConfig:
    """Everything a DPO run needs. Defaults are the embedded demo (SmolLM2-135M + LoRA on the
    shipped controlled-sentiment pairs, CALS-ℓ2), sized for ~5 minutes on 2 CPU cores: 30
    steps of 4 pairs, 64 held-out pairs scored before and after. Real runs raise
    ``max_steps``, ``batch_size`` and ``max_eval_pairs``.

    ``smoothing`` left as ``None`` follows ``loss`` (:func:`default_smoothing`) and is
    replaced by that value on validation, so ``config.json`` and the report name the
    smoothing that ran. ``dataclasses.replace(config, loss=...)`` keeps the resolved value:
    pass ``smoothing=None`` too for the new loss's default."""

    # what to train, on what
    model: str = "smollm2-135m"
    # a file or folder, or the rows themselves (a list of dicts, as a file holds them); None:
    # the embedded controlled-sentiment set (its 'train' split)
    data: str | list | None = None
    eval_data: str | None = None  # None: a data folder's eval.*, the 'eval' rows, a holdout
    eval_fraction: float = 0.1  # holdout when the data has no 'split' column and no eval_data
    output_dir: str = "outputs/dpo"
    # the objective (SPEC §2, §4)
    loss: str = "sigmoid"
    smoothing: str | None = None  # None: the loss's default (default_smoothing), set on validate
    beta: float = 0.1
    flip_rate: float | None = None  # ε for loss='robust'
    sft_weight: float = 0.0  # λ of the chosen-NLL (RPO) term
    bins: int = 20
    momentum: float = 0.99
    init_confidence: float = 1.0
    prior_strength: float = 10.0
    warmup_steps: int = 0
    # optimisation
    max_steps: int = 30
    learning_rate: float = 5e-4
    batch_size: int = 4
    grad_accum: int = 1
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 5
    weight_decay: float = 0.0
    max_length: int = 96
    seed: int = 0
    # model handling
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    reference: str = "auto"  # auto: adapter-disabled with LoRA, precomputed otherwise
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU; or fp32 | bf16
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False  # recompute layer activations in the backward
    fused_logps: str = "auto"  # log-probs without the [N, V] logits: auto (on CUDA) | on | off
    grad_filter: str = "auto"  # the fused kernel's gradient filter: auto | off (exact)
    lean_layers: str = (
        "auto"  # lean RMSNorm/SwiGLU/RoPE: auto (recompute on CUDA) | on | off | recompute
    )
    # bookkeeping
    logging_steps: int = 5
    eval_steps: int = 0  # also score the eval split every N steps (0: only before and after)
    save_steps: int = 0  # 0: save only at the end
    save_total_limit: int | None = 2
    resume: str | None = None  # a checkpoint folder, or 'latest' in output_dir
    on_bad_rows: str = "error"
    oracle: str = (
        "auto"  # reward of generations: auto (sentiment for the embedded set) | sentiment | none
    )
    max_eval_pairs: int = 64  # held-out pairs scored before/after (0: all)
    eval_samples: int = 16  # prompts whose generations the oracle reward scores (0: skip)
    max_new_tokens: int = 32
    report: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_finite_fields(self)
        check_lora_options(self)
        if self.loss not in LOSSES:
            raise ValueError(f"loss: unknown {self.loss!r}; choose one of {sorted(LOSSES)}")
        if self.smoothing is None:  # recorded resolved: config.json, the report, a resume's check
            self.smoothing = default_smoothing(self.loss)
        self.smoothing_policy()  # raises on a bad name or option
        if self.loss in UNSMOOTHED_LOSSES and self.smoothing != "none":
            raise ValueError(
                f"smoothing: the {self.loss!r} loss has no label smoothing (SPEC §2), "
                f"got {self.smoothing!r}; leave {option('smoothing')} out (or give none), or "
                f"use {option('loss', 'sigmoid')} with a smoothing policy"
            )
        if self.loss == "cals" and not self.smoothing.startswith("cals-"):
            raise ValueError(
                f"smoothing: {option('loss', 'cals')} needs {option('smoothing', 'cals-l0')} "
                "or cals-l2"
            )
        if self.loss == "robust" and self.flip_rate is None:
            raise ValueError(
                f"flip_rate: the 'robust' loss needs {option('flip_rate')} ε in [0, 0.5)"
            )
        if self.flip_rate is not None and self.loss != "robust":
            raise ValueError("flip_rate: only the 'robust' loss takes a flip rate")
        if self.flip_rate is not None and not 0.0 <= self.flip_rate < 0.5:
            raise ValueError(f"flip_rate: must lie in [0, 0.5), got {self.flip_rate}")
        checks = {
            **trainer_ranges(self),
            "beta": (self.beta > 0, "> 0"),
            "sft_weight": (self.sft_weight >= 0, ">= 0"),
            "eval_samples": (self.eval_samples >= 0, ">= 0"),
            "max_new_tokens": (self.max_new_tokens > 0, "> 0"),
            "max_eval_pairs": (self.max_eval_pairs >= 0, ">= 0"),
        }
        check_ranges(self, checks)
        if self.reference not in REFERENCES:
            raise ValueError(f"reference: {self.reference!r}; choose one of {REFERENCES}")
        if self.reference == "adapter-disabled" and not self.lora:
            raise ValueError(f"reference: 'adapter-disabled' needs {option('lora', True)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: {self.precision!r}; choose {words(PRECISIONS)}")
        if self.fused_logps not in FUSED_LOGPS:
            raise ValueError(f"fused_logps: {self.fused_logps!r}; choose one of {FUSED_LOGPS}")
        filter_eps_for(self.grad_filter)  # ValueError naming grad_filter
        self.lean_layers = check_lean_layers(self.lean_layers)
        if self.oracle not in ORACLES:
            raise ValueError(f"oracle: {self.oracle!r}; choose {words(ORACLES)}")
        if self.on_bad_rows not in ON_BAD_ROWS:
            raise ValueError(f"on_bad_rows: {self.on_bad_rows!r}; choose {words(ON_BAD_ROWS)}")

    def calibrator_options(self) -> dict[str, Any]:
        return calibrator_options(self)

    def smoothing_policy(self):
        return smoothing_policy(self)

    def loss_options(self) -> dict[str, Any]:
        if self.loss == "robust":
            return {"flip_rate": self.flip_rate}
        if self.loss == "ipo":
            return {"beta": self.beta}
        return {}

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)  # data passed as objects is described, not copied
