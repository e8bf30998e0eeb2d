"""Pairwise preference losses of SPEC §2, as functions of the implicit reward margin.

Every loss maps margins ``h`` (shape ``[B]``, already multiplied by β) and a per-pair
smoothing ``α`` (float or ``[B]``, never differentiated) to per-pair losses ``[B]``;
reduction is the caller's. One small base class holds the shared validation; each loss
is a subclass that only states its formula and its options.

Losses for which smoothing is not defined (``robust``, ``ipo``, ``hinge``) *reject* a
non-zero ``α`` instead of ignoring it: silently dropping a smoothing request is the
bug this library exists to avoid.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from smoothalign._checks import (
    ArrayLike,
    as_number,
    as_tensor,
    broadcast_per_pair,
    check_finite,
    check_in_range,
    check_vector,
)


class PairwiseLoss:
    """Base class: validate inputs, then call :meth:`per_pair`."""

    name: ClassVar[str]
    supports_smoothing: ClassVar[bool] = True
    required_options: ClassVar[tuple[str, ...]] = ()
    optional_options: ClassVar[tuple[str, ...]] = ()

    def __call__(self, margins: ArrayLike, alpha: ArrayLike = 0.0, **options) -> Tensor:
        h = check_vector(check_finite(as_tensor(margins, "margins"), "margins"), "margins")
        a = broadcast_per_pair(alpha, h, "alpha").detach()
        check_in_range(a, "alpha", 0.0, 0.5)
        if not self.supports_smoothing and bool((a != 0).any()):
            raise ValueError(
                f"alpha: the {self.name!r} loss has no label smoothing (SPEC §2); "
                "pass alpha=0 or use the 'sigmoid' loss"
            )
        allowed = set(self.required_options) | set(self.optional_options)
        unknown = set(options) - allowed
        if unknown:
            raise ValueError(
                f"options: {sorted(unknown)} not understood by the {self.name!r} loss "
                f"(it takes {sorted(allowed) or 'no options'})"
            )
        missing = [k for k in self.required_options if options.get(k) is None]
        if missing:
            raise ValueError(f"options: the {self.name!r} loss needs {missing}")
        return self.per_pair(h, a, **options)

    def per_pair(self, h: Tensor, alpha: Tensor, **options) -> Tensor:  # pragma: no cover
        raise NotImplementedError


class SigmoidLoss(PairwiseLoss):
    """DPO; with α > 0 conservative DPO (cDPO): ``−(1−α)·log σ(h) − α·log σ(−h)``."""

    name = "sigmoid"

    def per_pair(self, h: Tensor, alpha: Tensor) -> Tensor:
        return -(1 - alpha) * F.logsigmoid(h) - alpha * F.logsigmoid(-h)


class CALSLoss(SigmoidLoss):
    """The smoothed sigmoid loss, with α supplied per pair by a CALS policy (SPEC §2, §4)."""

    name = "cals"


class RobustLoss(PairwiseLoss):
    """rDPO (Chowdhury et al. 2024): unbiased under label flips with rate ε; may be negative.

    ``[(1−ε)·(−log σ(h)) − ε·(−log σ(−h))] / (1−2ε)``
    """

    name = "robust"
    supports_smoothing = False
    required_options = ("flip_rate",)

    def per_pair(self, h: Tensor, alpha: Tensor, *, flip_rate: float) -> Tensor:
        e = as_number(flip_rate, "flip_rate")
        check_in_range(
            torch.tensor(e, dtype=torch.float64), "flip_rate", 0.0, 0.5, high_inclusive=False
        )
        return ((1 - e) * -F.logsigmoid(h) - e * -F.logsigmoid(-h)) / (1 - 2 * e)


class IPOLoss(PairwiseLoss):
    """IPO (Azar et al. 2023): ``(h/β − 1/(2β))²`` on the un-scaled log-ratio ``h/β``."""

    name = "ipo"
    supports_smoothing = False
    required_options = ("beta",)

    def per_pair(self, h: Tensor, alpha: Tensor, *, beta: float) -> Tensor:
        beta = as_number(beta, "beta")
        if not 0 < beta < math.inf:
            raise ValueError(f"beta: must be a finite number > 0, got {beta!r}")
        return (h / beta - 1 / (2 * beta)) ** 2


class HingeLoss(PairwiseLoss):
    """SLiC hinge: ``max(0, 1 − h)``."""

    name = "hinge"
    supports_smoothing = False

    def per_pair(self, h: Tensor, alpha: Tensor) -> Tensor:
        return torch.relu(1 - h)


LOSSES: dict[str, PairwiseLoss] = {
    cls.name: cls() for cls in (SigmoidLoss, CALSLoss, RobustLoss, IPOLoss, HingeLoss)
}


def get_loss(name: str) -> PairwiseLoss:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"loss: unknown name {name!r}; choose one of {sorted(LOSSES)}") from None


def pairwise_loss(name: str, margins: ArrayLike, alpha: ArrayLike = 0.0, **options) -> Tensor:
    """Per-pair losses ``[B]`` of the loss ``name`` at margins ``h`` ``[B]`` with smoothing ``α``.

    Options: ``flip_rate`` (``robust``), ``beta`` (``ipo``).
    """
    return get_loss(name)(margins, alpha, **options)


def chosen_nll_term(chosen_logps: Tensor, chosen_lengths: Tensor, weight: float) -> Tensor:
    """RPO's optional SFT term on the chosen response: ``λ · NLL(y_w|x) / |y_w|`` per pair ``[B]``.

    ``chosen_logps`` is the summed log-probability of the chosen response ``[B]`` and
    ``chosen_lengths`` its number of response tokens ``[B]``.
    """
    check_vector(check_finite(chosen_logps, "chosen_logps"), "chosen_logps")
    if chosen_lengths.shape != chosen_logps.shape:
        raise ValueError(
            f"chosen_lengths: expected shape {list(chosen_logps.shape)}, "
            f"got {list(chosen_lengths.shape)}"
        )
    if bool((chosen_lengths <= 0).any()):
        raise ValueError("chosen_lengths: every chosen response needs at least one token")
    if not 0 <= weight < float("inf"):
        raise ValueError(f"weight: must be finite and >= 0, got {weight}")
    return -weight * chosen_logps / chosen_lengths.to(chosen_logps.dtype)
