"""Smoothing policies: where each pair's ``α`` comes from, selectable by name.

    none            α = 0 (plain DPO)
    constant:<α>    the same α for every pair (conservative DPO)
    cals-l0/l2      α = a*(ĉ), ĉ estimated on the fly by a :class:`CALSCalibrator` (SPEC §4)
    oracle-l0/l2    α = a*(q) from each pair's true confidence ``q`` (studies only)

Every policy works on margins ``h`` ``[B]`` and returns ``α`` ``[B]`` with no gradient, on the
margins' device and dtype. :meth:`SmoothingPolicy.step` computes ``α`` from the state
*before* the batch and then folds the batch in, so a pair's own forecast never sets its
own smoothing, and with ``c₀ = 1`` the first step is exactly plain DPO.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from smoothalign._checks import as_tensor, check_finite, check_in_range, check_vector
from smoothalign.smoothing.calibrator import TIE_TOLERANCE, CALSCalibrator
from smoothalign.smoothing.theory import _optimal_alpha, check_metric


def forecasts_from_margins(margins: Tensor) -> Tensor:
    """``σ(h)`` in float64, exactly ½ for ties ``|h| < TIE_TOLERANCE`` (defined with the
    calibrator, which treats the forecasts ``σ(h)`` of such margins as ties too)."""
    h = margins.detach().to(torch.float64)
    return torch.sigmoid(torch.where(h.abs() < TIE_TOLERANCE, torch.zeros_like(h), h))


class SmoothingPolicy:
    """Per-pair smoothing ``α``. A subclass overrides :meth:`alpha` (read, no state change)
    and, if it learns, :meth:`update`; the trainers call the two apart (``alpha``, then
    ``update`` once the batch's loss is known to be valid), so :meth:`step` is a
    convenience that must stay ``alpha`` followed by ``update``."""

    name: str = "none"
    needs_confidence: bool = False
    calibrator: CALSCalibrator | None = None

    def alpha(self, margins: Tensor, confidence: Tensor | None = None) -> Tensor:
        return torch.zeros_like(_margins(margins))

    def update(self, margins: Tensor) -> None:
        """Fold a batch into the policy's state (no-op for stateless policies)."""

    def step(self, margins: Tensor, confidence: Tensor | None = None) -> Tensor:
        a = self.alpha(margins, confidence)
        self.update(margins)
        return a

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"state: saved policy {state.get('name')!r} is not {self.name!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class ConstantSmoothing(SmoothingPolicy):
    def __init__(self, value: float) -> None:
        check_in_range(torch.tensor(float(value), dtype=torch.float64), "alpha", 0.0, 0.5)
        self.value = float(value)
        self.name = f"constant:{self.value!r}"  # every digit: a resume must match α exactly

    def alpha(self, margins: Tensor, confidence: Tensor | None = None) -> Tensor:
        return torch.full_like(_margins(margins), self.value)


class CALSSmoothing(SmoothingPolicy):
    def __init__(self, metric: str, calibrator: CALSCalibrator | None = None) -> None:
        self.metric = check_metric(metric)
        self.calibrator = calibrator if calibrator is not None else CALSCalibrator()
        self.name = f"cals-{metric}"

    def alpha(self, margins: Tensor, confidence: Tensor | None = None) -> Tensor:
        h = as_tensor(margins, "margins")
        a = self.calibrator.alpha(forecasts_from_margins(_host_margins(h)), self.metric)
        return a.to(device=h.device, dtype=h.dtype)

    def update(self, margins: Tensor) -> None:
        self.calibrator.update(forecasts_from_margins(_host_margins(margins)))

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "calibrator": self.calibrator.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "calibrator" not in state:
            raise ValueError(f"state: the {self.name!r} policy state has no 'calibrator' entry")
        self.calibrator.load_state_dict(state["calibrator"])


class OracleSmoothing(SmoothingPolicy):
    needs_confidence = True

    def __init__(self, metric: str) -> None:
        self.metric = check_metric(metric)
        self.name = f"oracle-{metric}"

    def alpha(self, margins: Tensor, confidence: Tensor | None = None) -> Tensor:
        h = _margins(margins)
        if confidence is None:
            raise ValueError(
                f"confidence: the {self.name!r} policy needs each pair's true confidence q "
                "(a 'confidence' column in the data)"
            )
        q = as_tensor(confidence, "confidence", like=h)
        if q.shape != h.shape:
            raise ValueError(f"confidence: expected shape {list(h.shape)}, got {list(q.shape)}")
        check_in_range(q, "confidence", 0.0, 1.0)
        return _optimal_alpha(q.detach(), self.metric)


POLICY_NAMES = ("none", "constant:<alpha>", "cals-l0", "cals-l2", "oracle-l0", "oracle-l2")
CALIBRATOR_OPTIONS = ("bins", "momentum", "init_confidence", "prior_strength", "warmup_steps")


def make_policy(spec: str, **calibrator_options: Any) -> SmoothingPolicy:
    """Build a policy from its name (see the module docstring).

    ``calibrator_options`` (``bins``, ``momentum``, ``init_confidence``, ``prior_strength``,
    ``warmup_steps``) configure the CALS calibrator and are rejected for other policies
    so that a misplaced option never goes unnoticed.
    """
    if not isinstance(spec, str):
        raise ValueError(f"smoothing: expected a policy name, got {type(spec)}")
    spec = spec.strip()
    if spec.startswith("cals-"):
        unknown = set(calibrator_options) - set(CALIBRATOR_OPTIONS)
        if unknown:
            raise ValueError(
                f"smoothing: unknown calibrator option(s) {sorted(unknown)}; "
                f"choose from {list(CALIBRATOR_OPTIONS)}"
            )
        return CALSSmoothing(_metric_of(spec), CALSCalibrator(**calibrator_options))
    if calibrator_options:
        raise ValueError(
            f"smoothing: calibrator options {sorted(calibrator_options)} apply only to "
            f"cals-l0/cals-l2, not {spec!r}"
        )
    if spec == "none":
        return SmoothingPolicy()
    if spec.startswith("constant:"):
        try:
            value = float(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"smoothing: {spec!r} needs a number, e.g. 'constant:0.1'") from None
        if not 0.0 <= value <= 0.5:  # NaN too; named as the option, not as "alpha"
            raise ValueError(
                f"smoothing: {spec!r}: the constant α must lie in [0, 0.5], got "
                f"{spec.split(':', 1)[1].strip()}"
            )
        return ConstantSmoothing(value)
    if spec.startswith("oracle-"):
        return OracleSmoothing(_metric_of(spec))
    raise ValueError(f"smoothing: unknown policy {spec!r}; choose one of {POLICY_NAMES}")


def _metric_of(spec: str) -> str:
    metric = spec.split("-", 1)[1]
    if metric not in ("l0", "l2"):
        raise ValueError(f"smoothing: unknown policy {spec!r}; choose one of {POLICY_NAMES}")
    return metric


def _margins(margins: Tensor) -> Tensor:
    h = as_tensor(margins, "margins")
    return check_vector(check_finite(h, "margins"), "margins")


def _host_margins(margins: Tensor) -> Tensor:
    """The margins copied to the host once, then checked: the calibrator's arithmetic on a
    batch of B numbers is CPU work; on a GPU it was dozens of small kernel launches and
    several synchronisations for each of ``alpha`` and ``update`` (the DPO step
    benchmark's CALS bookkeeping)."""
    return _margins(as_tensor(margins, "margins").detach().cpu())
