"""Analyses of trained models: the LM-head entropy lower bound (SPEC §5)."""

from smoothalign.analysis.head import (
    HeadEntropyBound,
    entropy_lower_bound,
    head_entropy_bound,
    smoothed_target_entropy,
    smoothing_for_entropy,
)

__all__ = [
    "HeadEntropyBound",
    "entropy_lower_bound",
    "head_entropy_bound",
    "smoothed_target_entropy",
    "smoothing_for_entropy",
]
