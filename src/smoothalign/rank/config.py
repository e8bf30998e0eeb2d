"""The ranking-calibration run's configuration: one dataclass for the Python API and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from smoothalign._checks import ON_BAD_ROWS, PRECISIONS, check_finite_fields, check_ranges, words
from smoothalign.io import config_to_dict

DECODINGS = ("sample", "beam", "diverse-beam")


@dataclass
class RankConfig:
    """Everything ``smoothalign rank-calibrate`` needs. ``reward_model`` is required (a folder
    written by ``smoothalign reward``: the run folder or its ``final/``)."""

    # what to calibrate, with what, on what
    policy: str = "smollm2-135m"
    reward_model: str | None = None
    prompts: str | None = None  # None: the shipped sentiment_pairs.jsonl prompts
    eval_prompts: str | None = None  # None: a folder's eval.*, the 'eval' rows, a holdout
    eval_fraction: float = 0.2
    max_prompts: int = 0  # training prompts used (0: all)
    max_eval_prompts: int = 64  # held-out prompts evaluated before and after (0: all)
    output_dir: str = "outputs/rank"
    # candidates
    num_candidates: int = 4  # K per prompt
    decoding: str = "sample"  # sample | beam | diverse-beam
    temperature: float = 1.0
    top_k: int = 0  # sampling: 0 = no top-k cut
    num_beam_groups: int = 0  # diverse-beam: 0 = K groups of one beam
    diversity_penalty: float = 1.0  # diverse-beam: Hamming penalty between groups
    max_new_tokens: int = 48
    regenerate: bool = True  # new candidates from the current policy every epoch
    generation_batch_size: int = 8  # prompts per generate() call
    score_batch_size: int = 32  # sequences per preference-model forward
    # the objective
    margin: float = 0.1  # λ: the margin per rank of distance, in nats per token
    nll_weight: float = 0.1  # w_nll · NLL(reference) per token; 0 disables it
    tie_tolerance: float = 1e-6  # pairs with |Δscore| <= this carry no ranking
    # optimisation
    epochs: int = 2
    learning_rate: float = 1e-5
    batch_size: int = 4  # prompts (each with K candidates + the reference) per micro-batch
    grad_accum: int = 1
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 256  # prompt + response tokens (longer references are cut from the end)
    seed: int = 0
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU; or fp32 | bf16
    trust_remote_code: bool = False  # the policy's folder only; the reward model never
    # bookkeeping
    logging_steps: int = 5
    save_steps: int = 0  # a checkpoint every N optimizer steps and at the last (0: none)
    save_total_limit: int | None = 2
    resume: str | None = None  # a checkpoint folder, or 'latest' in output_dir
    on_bad_rows: str = "error"
    save_model: bool = True
    report: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_finite_fields(self)
        if not self.reward_model:
            raise ValueError(
                "reward_model: required; pass the folder written by `smoothalign reward` "
                "(its run folder or final/)"
            )
        if self.decoding not in DECODINGS:
            raise ValueError(f"decoding: unknown {self.decoding!r}; choose one of {DECODINGS}")
        checks = {
            "seed": (0 <= self.seed < 2**32, "in [0, 2**32)"),  # what torch and NumPy accept
            "num_candidates": (
                self.num_candidates >= 2,
                ">= 2 (ranking needs at least 2 candidates)",
            ),
            "temperature": (self.temperature > 0, "> 0"),
            "top_k": (self.top_k >= 0, ">= 0"),
            "num_beam_groups": (self.num_beam_groups >= 0, ">= 0"),
            "diversity_penalty": (self.diversity_penalty >= 0, ">= 0"),
            "max_new_tokens": (self.max_new_tokens >= 1, ">= 1"),
            "generation_batch_size": (self.generation_batch_size >= 1, ">= 1"),
            "score_batch_size": (self.score_batch_size >= 1, ">= 1"),
            "margin": (self.margin >= 0, ">= 0"),
            "nll_weight": (self.nll_weight >= 0, ">= 0"),
            "tie_tolerance": (self.tie_tolerance >= 0, ">= 0"),
            "epochs": (self.epochs >= 1, ">= 1"),
            "learning_rate": (self.learning_rate > 0, "> 0"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "grad_accum": (self.grad_accum >= 1, ">= 1"),
            "lr_warmup_steps": (self.lr_warmup_steps >= 0, ">= 0"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "max_grad_norm": (self.max_grad_norm >= 0, ">= 0"),
            "max_length": (self.max_length > 1, "> 1"),
            "eval_fraction": (0 <= self.eval_fraction < 1, "in [0, 1)"),
            "max_prompts": (self.max_prompts >= 0, ">= 0"),
            "max_eval_prompts": (self.max_eval_prompts >= 0, ">= 0"),
            "logging_steps": (self.logging_steps >= 1, ">= 1"),
            "save_steps": (self.save_steps >= 0, ">= 0"),
            # as the other commands': the rotation runs once the newest is certified
            "save_total_limit": (
                self.save_total_limit is None or self.save_total_limit >= 1,
                ">= 1",
            ),
        }
        check_ranges(self, checks)
        if self.decoding == "diverse-beam" and self.num_candidates % self.beam_groups() != 0:
            raise ValueError(
                f"num_beam_groups: {self.num_beam_groups} does not divide num_candidates "
                f"{self.num_candidates}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: {self.precision!r}; choose {words(PRECISIONS)}")
        if self.on_bad_rows not in ON_BAD_ROWS:
            raise ValueError(f"on_bad_rows: {self.on_bad_rows!r}; choose {words(ON_BAD_ROWS)}")

    def beam_groups(self) -> int:
        return self.num_beam_groups or self.num_candidates

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)  # data passed as objects is described, not copied
