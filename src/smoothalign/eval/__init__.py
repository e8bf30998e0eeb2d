"""Evaluation: the sentiment oracle (reward of the controlled-sentiment benchmark), exported
here; multiple-choice calibration (``smoothalign eval calibration``) lives in the ``mc_*``,
``multiple_choice`` and ``calibration_*`` modules."""

from smoothalign.eval.oracle import bradley_terry_probability, sentiment_reward

__all__ = ["bradley_terry_probability", "sentiment_reward"]
