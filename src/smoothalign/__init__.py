"""smoothalign: align language models with noisy preferences, and make them calibrated.

The public API (see the README):

    pairwise_loss(name, margins, alpha=0.0, **options)   per-pair losses of SPEC §2
    optimal_alpha(q, metric), equilibrium_forecast(q, metric)   SPEC §3
    CALSCalibrator(...)                                   SPEC §4
    make_policy(spec)                                     none | constant:<α> | cals-l0/l2 | oracle-l0/l2
    expected_calibration_error, rms_calibration_error     SPEC §5
"""

from smoothalign.calibration import (
    brier_score,
    calibration_summary,
    expected_calibration_error,
    max_calibration_error,
    reliability_curve,
    rms_calibration_error,
)
from smoothalign.losses import LOSSES, pairwise_loss, soft_label_loss
from smoothalign.smoothing import (
    CALSCalibrator,
    equilibrium_forecast,
    make_policy,
    optimal_alpha,
)

__version__ = "0.1.0"

__all__ = [
    "LOSSES",
    "CALSCalibrator",
    "brier_score",
    "calibration_summary",
    "equilibrium_forecast",
    "expected_calibration_error",
    "make_policy",
    "max_calibration_error",
    "optimal_alpha",
    "pairwise_loss",
    "reliability_curve",
    "rms_calibration_error",
    "soft_label_loss",
]
