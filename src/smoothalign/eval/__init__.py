"""Evaluation: the sentiment oracle (reward of the controlled-sentiment benchmark)."""

from smoothalign.eval.oracle import bradley_terry_probability, sentiment_reward

__all__ = ["bradley_terry_probability", "sentiment_reward"]
