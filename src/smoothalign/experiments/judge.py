"""A reward model as the judge of generated responses (the analogue of a judge-model win rate).

:class:`RewardModelJudge` is a thin wrapper over :mod:`smoothalign.reward.scoring`: the
model is loaded by :func:`~smoothalign.reward.scoring.load_preference_model` (a scalar-head
``*ForSequenceClassification`` — the folder of a ``smoothalign reward`` run or its
``final/`` — local files only, safetensors only, ``trust_remote_code`` off) and scored by
:class:`~smoothalign.reward.scoring.PreferenceModelScorer`, which tokenises
``(prompt, response)`` exactly as the reward trainer did
(:func:`smoothalign.data.tokenize_preference`, then
:func:`smoothalign.data.fit_response` to ``max_length``), so a reward model is judged on
the inputs it was trained on.

``max_length`` defaults to the model's context (``max_position_embeddings``): nothing a
model can read at all is cut. A smaller value cuts responses from their end, as in
training; :meth:`RewardModelJudge.describe` states it, and ``n_truncated`` counts the cuts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from smoothalign.reward.scoring import PreferenceModelScorer, load_preference_model

UNBOUNDED = 1_000_000  # max_length when the model states no context length


def model_context_length(model: Any, tokenizer: Any) -> int:
    """The most tokens ``model`` reads: ``config.max_position_embeddings``, else the
    tokenizer's ``model_max_length`` when it is a real limit, else :data:`UNBOUNDED`."""
    n = getattr(model.config, "max_position_embeddings", None)
    if isinstance(n, int) and n > 1:
        return n
    n = getattr(tokenizer, "model_max_length", None)
    if isinstance(n, int) and 1 < n < UNBOUNDED:
        return n
    return UNBOUNDED


class RewardModelJudge:
    """Scores ``(prompt, response)`` texts with the reward model saved at ``path``.

    ``max_length`` (keyword, default: the model's context length) bounds prompt + response
    in tokens; longer responses are cut from their end, as in training, and a prompt that
    fills it is an error. ``trust_remote_code=True`` is refused: the judge loads only
    architectures built into ``transformers``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        trust_remote_code: bool = False,
        max_length: int | None = None,
    ) -> None:
        if trust_remote_code:
            raise ValueError(
                f"judge: {path}: trust_remote_code is not supported; reward models are "
                "loaded with transformers' own classes only (safetensors, local files)"
            )
        model, tokenizer, folder = load_preference_model(path)
        self.path = folder
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.max_length = int(max_length or model_context_length(model, tokenizer))
        self.scorer = PreferenceModelScorer(
            model, tokenizer, max_length=self.max_length, batch_size=self.batch_size
        )

    @property
    def n_truncated(self) -> int:
        """How many responses scored so far were cut to fit ``max_length``."""
        return self.scorer.n_truncated

    def describe(self) -> str:
        return (
            f"reward model {self.path} (prompt + response up to {self.max_length} tokens; "
            "longer responses cut from the end, as in training)"
        )

    def score_texts(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        """The judge's reward ``[N]`` (float64) of each ``prompt + response``."""
        if len(prompts) != len(responses):
            raise ValueError(f"judge: {len(prompts)} prompts but {len(responses)} responses")
        return torch.from_numpy(self.scorer(list(prompts), list(responses)))

    def score_tokens(self, world: Any, prompts: Tensor, responses: Tensor) -> Tensor:
        """Score a token world's samples through its text rendering."""
        return self.score_texts(
            [world.render_prompt(p) for p in prompts],
            [world.render_response(r) for r in responses],
        )


def load_judge(path: str | Path | None, **kwargs: Any) -> RewardModelJudge | None:
    """``None`` (judge by the oracle reward) or a :class:`RewardModelJudge` from ``path``."""
    return None if path is None else RewardModelJudge(path, **kwargs)
