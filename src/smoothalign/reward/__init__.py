"""Reward / preference models trained on soft labels (vote shares), SPEC §6.

    from smoothalign.reward import RewardConfig, run_reward
    result = run_reward(RewardConfig(model="tiny", loss="jsd", posterior=True))

Layers: ``objective`` (tensors: pairwise losses from ``r₁ − r₂`` and a target probability),
``data`` (soft-label rows: validation with row/field errors, labels joined on ``pair_id``,
collation, the oracle world's simulated annotators), ``trainer`` (``transformers.Trainer``
with our ``compute_loss`` and metrics), ``run`` (the wiring) and ``report``. ``cli`` is the
``smoothalign reward`` command. ``scoring`` loads a saved reward model safely and scores
``(prompt, response)`` texts as the trainer tokenised them; ``rank-calibrate`` and the
preference study's judge use it:

    from smoothalign.reward import PreferenceModelScorer, load_preference_model
    model, tokenizer, folder = load_preference_model("outputs/reward")  # or .../final
    scores = PreferenceModelScorer(model, tokenizer, max_length=512)(prompts, responses)
"""

from smoothalign.reward.config import RewardConfig
from smoothalign.reward.objective import (
    POSTERIOR_LOSSES,
    REWARD_LOSSES,
    RewardTerms,
    monitored_divergences,
    reward_loss,
)
from smoothalign.reward.scoring import (
    PreferenceModelScorer,
    load_preference_model,
    resolve_reward_model_path,
)

__all__ = [
    "POSTERIOR_LOSSES",
    "PreferenceModelScorer",
    "REWARD_LOSSES",
    "RewardConfig",
    "RewardTerms",
    "load_preference_model",
    "monitored_divergences",
    "resolve_reward_model_path",
    "reward_loss",
    "run_reward",
]


def run_reward(config: RewardConfig, *, callbacks: list | None = None):
    """Train with ``config``; see :func:`smoothalign.reward.run.run_reward`."""
    from smoothalign.reward.run import run_reward as _run

    return _run(config, callbacks=callbacks)
