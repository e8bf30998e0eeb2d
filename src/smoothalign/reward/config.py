"""The reward-model run's configuration: one dataclass, shared by the Python API and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from smoothalign._checks import (
    ON_BAD_ROWS,
    PRECISIONS,
    check_finite_fields,
    check_lora_options,
    check_ranges,
    trainer_ranges,
    words,
)
from smoothalign._options import option
from smoothalign.data.loading import has_held_out_files
from smoothalign.io import config_to_dict
from smoothalign.reward.objective import POSTERIOR_LOSSES, REWARD_LOSSES
from smoothalign.train.common import calibrator_options, smoothing_policy

SMOOTHING_CHOICES = ("none", "constant:<alpha>", "cals-l0", "cals-l2", "oracle-l0", "oracle-l2")


@dataclass
class RewardConfig:
    """Everything a reward-model run needs. Defaults: the tiny Llama with a scalar head on the
    oracle text world (simulated annotators, known truth), soft-bce, about a minute on CPU.

    ``posterior=True`` needs ``batch_size`` >= 2: the posterior target's normaliser is a sum
    over the micro-batch (per device; ``grad_accum`` does not enlarge it), and for one pair
    the target is the plain vote share, so ``batch_size=1`` is refused here (the loss
    itself only warns, as a data set's last batch may be one pair)."""

    # what to train, on what
    model: str = "tiny"
    # a file or folder, or the rows themselves (a list of dicts); None: the oracle text world
    # (see oracle_* below)
    data: str | list | None = None
    labels: str | None = None  # soft labels in a separate file, joined on pair_id
    eval_data: str | None = None  # None: a data folder's eval.*, the 'eval' rows, a holdout
    eval_labels: str | None = None
    eval_fraction: float = 0.2
    output_dir: str = "outputs/reward"
    # the objective (reward/objective.py; SPEC §6)
    loss: str = "soft-bce"
    # fkl/rkl/jsd against the batch-normalised posterior target; needs batch_size >= 2 (its
    # normaliser is a sum over the micro-batch: with one pair the target is the vote share)
    posterior: bool = False
    posterior_grad: bool = False  # let gradients flow through the posterior target
    margin: float = 0.0
    center_weight: float = 0.0  # λ of the reward-centering term λ·(r₁ + r₂)²
    rkl_floor: float = 1e-6
    smoothing: str = "none"
    bins: int = 20
    momentum: float = 0.99
    init_confidence: float = 1.0
    prior_strength: float = 10.0
    warmup_steps: int = 0
    # optimisation
    max_steps: int = 150
    learning_rate: float = 1e-3
    batch_size: int = 16
    grad_accum: int = 1
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 5
    weight_decay: float = 0.0
    max_length: int = 64
    seed: int = 0
    # model handling
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU; or fp32 | bf16
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False  # recompute layer activations in the backward
    # the oracle text world (data=None)
    oracle_pairs: int = 600
    annotators: int = 5
    oracle_temperature: float = 1.0
    # bookkeeping
    logging_steps: int = 10
    eval_steps: int = 25  # held-out evaluation every N steps (0: only before and after)
    # held-out pairs scored (0: all). Unlike dpo's (64), no cap by default: a reward model
    # scores a pair in one forward pass, no reference model and no sampling
    max_eval_pairs: int = 0
    save_steps: int = 0  # 0: save only at the end
    save_total_limit: int | None = 2
    resume: str | None = None  # a checkpoint folder, or 'latest' in output_dir
    on_bad_rows: str = "error"
    report: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_finite_fields(self)
        check_lora_options(self)
        if self.loss not in REWARD_LOSSES:
            raise ValueError(f"loss: unknown {self.loss!r}; choose one of {list(REWARD_LOSSES)}")
        if self.posterior and self.loss not in POSTERIOR_LOSSES:
            raise ValueError(
                f"posterior: the posterior target (SPEC §6) applies to {list(POSTERIOR_LOSSES)}, "
                f"not {option('loss', self.loss)}"
            )
        if self.posterior_grad and not self.posterior:
            raise ValueError(f"posterior_grad: only meaningful with {option('posterior', True)}")
        if self.posterior and self.batch_size == 1:
            # the normaliser Σ_j q_θ(ρ|x_j) runs over the micro-batch (per device), so one
            # pair per batch makes every posterior target the plain vote share (SPEC §6)
            raise ValueError(
                f"{option('posterior')}: the posterior target's normaliser is a sum over "
                f"the batch (SPEC §6), so with {option('batch_size', 1)} every target is the "
                f"plain vote share: raise {option('batch_size')} (pairs per device per "
                f"micro-batch; {option('grad_accum')} does not enlarge it) or drop "
                f"{option('posterior', True)}"
            )
        self.smoothing_policy()  # raises on a bad name or option
        checks = {
            **trainer_ranges(self),
            "margin": (self.margin >= 0, ">= 0"),
            "center_weight": (self.center_weight >= 0, ">= 0"),
            # > 0: reverse KL is always logged, and a unanimous vote (0/1) would make it
            # infinite (and, as the loss, give NaN weights after one step)
            "rkl_floor": (0 < self.rkl_floor < 0.5, "in (0, 0.5)"),
            "oracle_pairs": (self.oracle_pairs >= 2, ">= 2"),
            "annotators": (self.annotators >= 1, ">= 1"),
            "oracle_temperature": (self.oracle_temperature > 0, "> 0"),
            "max_eval_pairs": (self.max_eval_pairs >= 0, ">= 0"),
        }
        check_ranges(self, checks)
        if self.labels is not None and self.data is None:
            raise ValueError(
                f"labels: a labels file needs {option('data')} (the oracle world has labels)"
            )
        if (  # a data folder's eval files beside its train files: they label those
            self.eval_labels is not None
            and self.eval_data is None
            and not has_held_out_files(self.data)
        ):
            raise ValueError(
                f"eval_labels: labels the held-out pairs: needs {option('eval_data')}, or a "
                f"{option('data')} folder with eval files (eval.jsonl, ...) beside its train "
                "files"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: {self.precision!r}; choose {words(PRECISIONS)}")
        if self.on_bad_rows not in ON_BAD_ROWS:
            raise ValueError(f"on_bad_rows: {self.on_bad_rows!r}; choose {words(ON_BAD_ROWS)}")

    def calibrator_options(self) -> dict[str, Any]:
        return calibrator_options(self)

    def smoothing_policy(self):
        return smoothing_policy(self)

    def loss_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`smoothalign.reward.objective.reward_loss`."""
        return {
            "posterior": self.posterior,
            "detach_target": not self.posterior_grad,
            "margin": self.margin,
            "center_weight": self.center_weight,
            "rkl_floor": self.rkl_floor,
        }

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)  # data passed as objects is described, not copied
