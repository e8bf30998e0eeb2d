"""Reward / preference models trained on soft labels (vote shares), SPEC §6.

    from smoothalign.reward import RewardConfig, run_reward
    result = run_reward(RewardConfig(model="tiny", loss="jsd", posterior=True))

Layers: ``objective`` (tensors: pairwise losses from ``r₁ − r₂`` and a target probability),
``data`` (soft-label rows: validation with row/field errors, labels joined on ``pair_id``,
collation, the oracle world's simulated annotators), ``trainer`` (``transformers.Trainer``
with our ``compute_loss`` and metrics), ``run`` (the wiring) and ``report``. ``cli`` is the
``smoothalign reward`` command.
"""

from smoothalign.reward.config import RewardConfig
from smoothalign.reward.objective import (
    POSTERIOR_LOSSES,
    REWARD_LOSSES,
    RewardTerms,
    monitored_divergences,
    reward_loss,
)

__all__ = [
    "POSTERIOR_LOSSES",
    "REWARD_LOSSES",
    "RewardConfig",
    "RewardTerms",
    "monitored_divergences",
    "reward_loss",
    "run_reward",
]


def run_reward(config: RewardConfig, *, callbacks: list | None = None):
    """Train with ``config``; see :func:`smoothalign.reward.run.run_reward`."""
    from smoothalign.reward.run import run_reward as _run

    return _run(config, callbacks=callbacks)
