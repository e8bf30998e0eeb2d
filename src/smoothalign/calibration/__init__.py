"""Calibration metrics (ECE, RMS, MCE, Brier), reliability curves and diagrams."""

from smoothalign.calibration.metrics import (
    ReliabilityCurve,
    brier_score,
    calibration_summary,
    expected_calibration_error,
    max_calibration_error,
    reliability_curve,
    rms_calibration_error,
)
from smoothalign.calibration.pairwise import (
    PAIRWISE_BINS,
    pairwise_reliability_curve,
    preference_metrics,
    true_preference_metrics,
)

__all__ = [
    "PAIRWISE_BINS",
    "ReliabilityCurve",
    "brier_score",
    "calibration_summary",
    "expected_calibration_error",
    "max_calibration_error",
    "pairwise_reliability_curve",
    "preference_metrics",
    "reliability_curve",
    "rms_calibration_error",
    "true_preference_metrics",
]
