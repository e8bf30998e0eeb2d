"""The oracle of the controlled-sentiment benchmark: a fixed, deterministic reward.

``r*(x, y)`` is the VADER compound sentiment score of the response ``y`` (Hutto & Gilbert,
2014; the ``vaderSentiment`` package, MIT licence), a number in ``[-1, 1]``: ``+1`` very
positive, ``-1`` very negative, ``0`` neutral or empty. It ignores the prompt ``x``. Under
Bradley–Terry with temperature ``τ`` (SPEC §1) the true probability that ``y_a`` beats ``y_b``
is ``σ((r*(y_a) − r*(y_b)) / τ)``; the embedded data set uses ``τ = 0.25``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["bradley_terry_probability", "sentiment_reward"]


@lru_cache(maxsize=1)
def _analyzer() -> Any:
    # Read-only lexicon tables, built once per process (~0.1 s); scoring has no state.
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "the sentiment oracle needs vaderSentiment: pip install vaderSentiment"
        ) from None
    return SentimentIntensityAnalyzer()


def sentiment_reward(texts: Sequence[str]) -> list[float]:
    """VADER compound score of each text, in ``[-1, 1]``; shape ``[N]`` in, ``[N]`` out.

    Deterministic (a lexicon and fixed rules: no model, no randomness). An empty or
    whitespace-only text scores 0.0.
    """
    if isinstance(texts, str):
        raise TypeError("sentiment_reward: pass a list of texts, not a single string")
    analyzer = _analyzer()
    out = []
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"sentiment_reward: expected str, got {type(text).__name__}")
        out.append(float(analyzer.polarity_scores(text)["compound"]) if text.strip() else 0.0)
    return out


def bradley_terry_probability(r_a: Any, r_b: Any, temperature: float = 1.0) -> Any:
    """``P(a ≻ b) = σ((r_a − r_b) / temperature)`` (SPEC §1, Bradley–Terry).

    ``r_a``, ``r_b``: floats, or broadcastable arrays / tensors of rewards (shape ``[N]``).
    Returns a float for float inputs, else the same array type. ``temperature > 0``: smaller
    is more decisive. Computed in a numerically stable way (no overflow for large margins).
    """
    if not temperature > 0:
        raise ValueError(f"temperature: must be > 0, got {temperature!r}")
    torch = sys.modules.get("torch")  # a tensor argument means torch is already imported
    if torch is not None and (isinstance(r_a, torch.Tensor) or isinstance(r_b, torch.Tensor)):
        return torch.sigmoid((torch.as_tensor(r_a) - torch.as_tensor(r_b)) / temperature)
    if np.isscalar(r_a) and np.isscalar(r_b):
        return _sigmoid((float(r_a) - float(r_b)) / temperature)
    x = (np.asarray(r_a, dtype=np.float64) - np.asarray(r_b, dtype=np.float64)) / temperature
    # σ(x) = exp(−log(1 + e^{−x})) = exp(−logaddexp(0, −x)): stable for any sign of x
    return np.exp(-np.logaddexp(0.0, -x))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)
