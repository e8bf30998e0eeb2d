"""The CALS label-confidence estimator (SPEC §4).

The forecast ``p̂ = σ(h)`` of a pair is the model's probability that its *labelled* winner
wins. Each pair is read twice: ``p̂`` with outcome "first wins" and, mirrored, ``1 − p̂``
with outcome "first loses". ``K`` equal-width bins (``K`` even, so ½ is an edge) keep
exponentially weighted counts ``w_k`` and ``l_k`` of the two outcomes, and a prior of ``κ``
pseudo-pairs at confidence ``c₀`` that is never decayed. The confidence of a label whose
forecast falls in bin ``k`` is

    q̂_k = (w_k + κ·c₀) / (w_k + l_k + κ).

*Moving average of counts.* A bin the batch touched is updated as ``w_k ← m·w_k + c_k``,
where ``c_k`` is the batch's count: an exponential moving average scaled by ``1/(1−m)``,
so ``w_k`` is a number of pairs (those of the last ~``1/(1−m)`` steps) and the prior
``κ`` is commensurable with it whatever the batch size. Bins the batch did not touch keep
their counts. Ties carry no information and are not counted: ``p̂ = ½`` exactly, and every
forecast in the tie band ``|p̂ − ½| < σ(TIE_TOLERANCE) − ½`` (:data:`TIE_BAND`), the image
of the margins ``|h| < TIE_TOLERANCE`` that SPEC §4 calls ties. A tie is read (by
:meth:`CALSCalibrator.confidence` and :meth:`CALSCalibrator.alpha`) as the exact tie ½.

*Mirror-symmetric bins.* The mirrored reading ``1 − p̂`` of a pair must land in the mirror
bin ``K − 1 − k`` of the bin ``k`` of ``p̂``, exactly, or ``w`` and ``l`` stop being the two
readings of the same pairs (and ``q̂(p) + q̂(1 − p) ≠ 1`` even with ``κ = 0``). Plain
``floor(p·K)`` breaks this at every interior edge (``p = k/K`` and ``1 − p`` both fall on the
upper side) and, through rounding of ``1 − p``, next to them. So the bins below ½ are
``[k/K, (k+1)/K)``, those above ½ are their mirror images ``(k/K, (k+1)/K]``, the mirrored
reading is binned as ``K − 1 − k`` directly, and an exact tie (never counted) is looked up
in bin ``K/2``.

Under ``torch.distributed`` the per-bin batch counts are summed across ranks before the
update, so every rank holds identical state.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from smoothalign._checks import (
    ArrayLike,
    as_integer,
    as_number,
    as_tensor,
    check_in_range,
    check_vector,
)
from smoothalign.smoothing.theory import _optimal_alpha, check_metric

TIE_TOLERANCE = 1e-5
"""Margins with ``|h|`` below this are ties (forecast ½, not counted by CALS; SPEC §4).

A policy equal to its reference gives ``h = 0`` only up to rounding when the reference
log-probs were computed in other batches (other padding, other kernels): ~1e-7 in fp32.
Counted, that noise would fill the two bins beside ½ symmetrically and pull ``q̂`` there
toward ½ — the cold-start drift SPEC §4 excludes ties to avoid. Defined here, below
``smoothing.policies`` (which re-exports it), so that the calibrator can apply it too."""

TIE_BAND = math.tanh(TIE_TOLERANCE / 2) / 2 * (1 - 1e-9)
"""Forecasts with ``|p̂ − ½| < TIE_BAND`` are ties: the image of ``|h| < TIE_TOLERANCE``
under ``σ`` (``σ(h) − ½ = tanh(h/2)/2``), so that a caller passing ``σ(h)`` itself gets what
:func:`~smoothalign.smoothing.policies.forecasts_from_margins` (ties made exactly ½) gets.
Narrowed by a relative 1e-9 (~20 ulps of ½) so that no rounding of ``σ`` in float64 puts
the forecast of a margin ``|h| ≥ TIE_TOLERANCE`` inside it: the policies' forecasts, ½ or
outside the band, are then binned exactly as before."""


def _ties_to_half(p: Tensor) -> Tensor:
    """``p`` with every forecast of the tie band replaced by exactly ½."""
    return torch.where((p - 0.5).abs() < TIE_BAND, torch.full_like(p, 0.5), p)


class CALSCalibrator:
    """Binned, moving-average estimate of each label's confidence from the model's forecasts.

    Args:
        bins: number ``K`` of equal-width forecast bins; must be even (½ is then an edge).
        momentum: decay ``m`` per update of the touched bins' counts, in ``[0, 1)``.
        init_confidence: ``c₀``, the prior confidence (1.0: no smoothing before evidence).
        prior_strength: ``κ``, pseudo-pairs of prior per bin; never decayed.
        warmup_steps: for the first ``W`` updates, :meth:`alpha` returns ``a*(c₀)``
            while the bins keep updating.
    """

    def __init__(
        self,
        bins: int = 20,
        momentum: float = 0.99,
        init_confidence: float = 1.0,
        prior_strength: float = 10.0,
        warmup_steps: int = 0,
    ) -> None:
        # NumPy integers and 0-d tensors are numbers too; a string or None is named here
        bins, warmup_steps = as_integer(bins, "bins"), as_integer(warmup_steps, "warmup_steps")
        momentum = as_number(momentum, "momentum")
        init_confidence = as_number(init_confidence, "init_confidence")
        prior_strength = as_number(prior_strength, "prior_strength")
        if bins < 2 or bins % 2:
            raise ValueError(
                f"bins: must be an even integer >= 2 (so 1/2 is a bin edge), got {bins}"
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: must lie in [0, 1), got {momentum}")
        if not 0.0 <= init_confidence <= 1.0:
            raise ValueError(f"init_confidence: must lie in [0, 1], got {init_confidence}")
        if not 0.0 <= prior_strength < float("inf"):
            raise ValueError(f"prior_strength: must be finite and >= 0, got {prior_strength}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps: must be an integer >= 0, got {warmup_steps}")
        self.bins = bins
        self.momentum = float(momentum)
        self.init_confidence = float(init_confidence)
        self.prior_strength = float(prior_strength)
        self.warmup_steps = warmup_steps
        # sum each batch's counts over the ranks: None decides by torch.distributed (a
        # process group of several ranks); a trainer sets it from its own data parallelism,
        # since a process group can exist while every rank trains on the same data
        self.sum_across_ranks: bool | None = None
        self.reset()

    def reset(self) -> None:
        self.wins = torch.zeros(self.bins, dtype=torch.float64)
        self.losses = torch.zeros(self.bins, dtype=torch.float64)
        self.step = 0

    # ------------------------------------------------------------------ binning
    def _forecasts(self, forecasts: ArrayLike) -> Tensor:
        p = as_tensor(forecasts, "forecasts").detach().to(torch.float64)
        check_vector(p, "forecasts")
        return check_in_range(p, "forecasts", 0.0, 1.0)

    def bin_index(self, forecasts: ArrayLike) -> Tensor:
        """Bin of each forecast ``[B]``, mirror-symmetric: ``bin(1 − p) = K − 1 − bin(p)``.

        Below ½ the bins are ``[k/K, (k+1)/K)``, above ½ ``(k/K, (k+1)/K]`` (so ``p̂ = 0`` is
        in bin 0 and ``p̂ = 1`` in bin ``K − 1``); an exact tie ``p̂ = ½`` maps to bin ``K/2``.
        This is the plain binning: the tie band (:data:`TIE_BAND`) is not applied here, but
        :meth:`confidence` and :meth:`alpha` read a forecast in it as ½ (bin ``K/2``).
        """
        p = self._forecasts(forecasts)
        k, half = self.bins, self.bins // 2
        # 1 − p is exact for p ≥ ½ (Sterbenz), so the upper half is the exact mirror image
        # of the lower half; the clamps keep rounding of p·K from crossing ½.
        low = (p * k).floor().clamp(0, half - 1)
        high = ((k - 1) - ((1 - p) * k).floor()).clamp(half, k - 1)
        return torch.where(p < 0.5, low, high).long().cpu()

    def batch_counts(self, forecasts: ArrayLike) -> Tensor:
        """This batch's per-bin counts ``[2, K]``: row 0 "first wins", row 1 "first loses".

        Row 1 is row 0 mirrored (the same pairs read in the other order). Ties (``p̂`` in the
        tie band :data:`TIE_BAND` around ½, ``p̂ = ½`` included) are not counted.
        """
        p = _ties_to_half(self._forecasts(forecasts))
        p = p[p != 0.5]  # ties carry no information
        k = self.bins
        counts = torch.zeros(2, k, dtype=torch.float64)
        if p.numel():
            counts[0] = torch.bincount(self.bin_index(p), minlength=k).to(torch.float64)
            counts[1] = counts[0].flip(0)
        return counts

    # ------------------------------------------------------------------ state
    def update(self, forecasts: ArrayLike) -> None:
        """Fold a batch of forecasts ``[B]`` (for the labelled winners) into the bins.

        Ties are not counted (SPEC §4): a forecast within :data:`TIE_BAND` of ½, i.e. ``σ(h)``
        of a margin ``|h| < TIE_TOLERANCE``, as well as ½ itself. The step still advances.
        """
        counts = self.batch_counts(forecasts)
        ranks = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if ranks and self.sum_across_ranks is not False:
            counts = _all_reduce_sum(counts)
        touched = counts.sum(0) > 0
        m = self.momentum
        self.wins = torch.where(touched, m * self.wins + counts[0], self.wins)
        self.losses = torch.where(touched, m * self.losses + counts[1], self.losses)
        self.step += 1

    def bin_confidence(self) -> Tensor:
        """``q̂_k`` for every bin ``[K]`` (float64)."""
        kappa, c0 = self.prior_strength, self.init_confidence
        total = self.wins + self.losses + kappa
        q = (self.wins + kappa * c0) / total.clamp_min(1e-300)
        return torch.where(total > 0, q, torch.full_like(q, c0))

    def confidence(self, forecasts: ArrayLike) -> Tensor:
        """Estimated confidence ``ĉ = q̂_{k(p̂)}`` of each label ``[B]`` (float64, CPU); a tie
        (``p̂`` within :data:`TIE_BAND` of ½) is read from bin ``K/2``, as ½ is."""
        return self.bin_confidence()[self.bin_index(_ties_to_half(self._forecasts(forecasts)))]

    def in_warmup(self) -> bool:
        return self.step < self.warmup_steps

    def alpha(self, forecasts: ArrayLike, metric: str = "l2") -> Tensor:
        """Per-pair smoothing ``α = a*(ĉ)`` ``[B]`` (``a*(c₀)`` during warm-up); no gradient."""
        check_metric(metric)
        p = self._forecasts(forecasts)
        if self.in_warmup():
            c = torch.full_like(p, self.init_confidence).cpu()
        else:
            c = self.confidence(p)
        return _optimal_alpha(c, metric)

    def reliability(self) -> dict[str, list[float]]:
        """Per-bin state for logging: edges, ``q̂_k``, and the counts ``w_k``, ``l_k``."""
        return {
            "bin_edges": torch.linspace(0, 1, self.bins + 1).tolist(),
            "q_hat": self.bin_confidence().tolist(),
            "wins": self.wins.tolist(),
            "losses": self.losses.tolist(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "bins": self.bins,
            "momentum": self.momentum,
            "init_confidence": self.init_confidence,
            "prior_strength": self.prior_strength,
            "warmup_steps": self.warmup_steps,
            "step": self.step,
            "wins": self.wins.clone(),
            "losses": self.losses.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` exactly; a malformed state raises ``ValueError`` and
        leaves the calibrator unchanged."""
        if not isinstance(state, dict):
            raise ValueError(f"state: expected a dict from state_dict(), got {type(state)}")
        missing = {*_HYPERPARAMETERS, "step", "wins", "losses"} - set(state)
        if missing:
            raise ValueError(f"state: missing keys {sorted(missing)}")
        try:  # the constructor's checks, so that a state holds only what it accepts
            fresh = CALSCalibrator(**{key: state[key] for key in _HYPERPARAMETERS})
        except ValueError as err:
            raise ValueError(f"state: {err}") from None
        try:
            # float64 from the start: a list of Python floats would otherwise pass via float32
            wins = torch.as_tensor(state["wins"], dtype=torch.float64).detach().cpu().clone()
            losses = torch.as_tensor(state["losses"], dtype=torch.float64).detach().cpu().clone()
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"state: wins/losses are not numeric arrays ({err})") from None
        bins = fresh.bins
        if wins.shape != (bins,) or losses.shape != wins.shape:
            raise ValueError(
                f"state: wins/losses must have shape [{bins}], "
                f"got {list(wins.shape)} and {list(losses.shape)}"
            )
        for name, t in (("wins", wins), ("losses", losses)):
            if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
                raise ValueError(f"state: {name} must be finite and >= 0")
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"state: step must be an integer >= 0, got {step!r}")
        self.bins, self.momentum = fresh.bins, fresh.momentum
        self.init_confidence, self.prior_strength = fresh.init_confidence, fresh.prior_strength
        self.warmup_steps = fresh.warmup_steps
        self.wins, self.losses, self.step = wins, losses, step

    def __repr__(self) -> str:
        return (
            f"CALSCalibrator(bins={self.bins}, momentum={self.momentum}, "
            f"init_confidence={self.init_confidence}, prior_strength={self.prior_strength}, "
            f"warmup_steps={self.warmup_steps}, step={self.step})"
        )


_HYPERPARAMETERS = ("bins", "momentum", "init_confidence", "prior_strength", "warmup_steps")
"""The constructor's arguments, saved by :meth:`CALSCalibrator.state_dict`."""


def _all_reduce_sum(counts: Tensor) -> Tensor:
    """Sum ``counts`` over ranks; NCCL needs the tensor on the rank's CUDA device."""
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    t = counts.to(device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu()
