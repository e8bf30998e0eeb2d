"""Smoothing: optimal-α theory (SPEC §3), the CALS calibrator and policies (SPEC §4)."""

from smoothalign.smoothing.calibrator import CALSCalibrator
from smoothalign.smoothing.policies import (
    POLICY_NAMES,
    CALSSmoothing,
    ConstantSmoothing,
    OracleSmoothing,
    SmoothingPolicy,
    forecasts_from_margins,
    make_policy,
)
from smoothalign.smoothing.theory import (
    equilibrium_forecast,
    gradient_error_mse,
    gradient_error_prob,
    optimal_alpha,
    smoothed_target,
)

__all__ = [
    "POLICY_NAMES",
    "CALSCalibrator",
    "CALSSmoothing",
    "ConstantSmoothing",
    "OracleSmoothing",
    "SmoothingPolicy",
    "equilibrium_forecast",
    "forecasts_from_margins",
    "gradient_error_mse",
    "gradient_error_prob",
    "make_policy",
    "optimal_alpha",
    "smoothed_target",
]
