"""Calibration by ranking (SLiC-style): fine-tune a policy so that its length-normalised
log-likelihood orders its own samples as a preference model does.

    from smoothalign.rank import RankConfig, run_rank_calibration
    result = run_rank_calibration(RankConfig(policy="tiny", reward_model="outputs/reward"))

Layers: ``objective`` (tensors: the pairwise ranking loss with margins ``λ·(j − i)`` and
the reference NLL), ``metrics`` (arrays: Spearman and friends), ``candidates`` (prompts,
generation, ranking; the preference model is loaded and scored by
:mod:`smoothalign.reward.scoring`), ``trainer`` (the calibration loop),
``run`` (the wiring) and ``report``. ``cli`` is ``smoothalign rank-calibrate``.
"""

from smoothalign.rank.config import RankConfig
from smoothalign.rank.objective import calibration_terms, mean_token_logps, ranking_loss

__all__ = [
    "RankConfig",
    "calibration_terms",
    "mean_token_logps",
    "ranking_loss",
    "run_rank_calibration",
]


def run_rank_calibration(config: RankConfig):
    """Calibrate with ``config``; see :func:`smoothalign.rank.run.run_rank_calibration`."""
    from smoothalign.rank.run import run_rank_calibration as _run

    return _run(config)
