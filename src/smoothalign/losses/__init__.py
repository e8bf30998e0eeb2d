"""Losses: pairwise preference losses (SPEC §2) and soft-label divergences (SPEC §6)."""

from smoothalign.losses.pairwise import (
    LOSSES,
    PairwiseLoss,
    chosen_nll_term,
    get_loss,
    pairwise_loss,
)
from smoothalign.losses.soft_labels import (
    DIVERGENCES,
    forward_kl,
    jensen_shannon,
    posterior_target,
    reverse_kl,
    soft_label_loss,
)

__all__ = [
    "DIVERGENCES",
    "LOSSES",
    "PairwiseLoss",
    "chosen_nll_term",
    "forward_kl",
    "get_loss",
    "jensen_shannon",
    "pairwise_loss",
    "posterior_target",
    "reverse_kl",
    "soft_label_loss",
]
