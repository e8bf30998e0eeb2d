"""A reward model as the judge of generated responses (the analogue of a judge-model win rate).

:class:`RewardModelJudge` loads any Hugging Face sequence-classification model with one
output (``num_labels=1``) from a local folder — for example one trained by
``smoothalign reward`` — and scores ``(prompt, response)`` texts. The text is tokenised
exactly as the preference trainers do (:func:`smoothalign.data.tokenize_preference`: prompt
and response tokenised separately and concatenated, BOS before the prompt, EOS after the
response), so a reward model is judged on the inputs it was trained on. Loading is local
only (``local_files_only=True``) and ``trust_remote_code`` is off unless asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from smoothalign.data.tokenization import tokenize_preference


class RewardModelJudge:
    def __init__(
        self,
        path: str | Path,
        *,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        self.path = Path(path).expanduser()
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(
                f"judge: {self.path} is not a saved model folder (no config.json); pass the "
                "output folder of a sequence-classification model (e.g. `smoothalign reward`)"
            )
        config = AutoConfig.from_pretrained(
            self.path, local_files_only=True, trust_remote_code=trust_remote_code
        )
        if not any(a.endswith("ForSequenceClassification") for a in config.architectures or ()):
            raise ValueError(
                f"judge: {self.path} holds {config.architectures}, not a "
                "*ForSequenceClassification model"
            )
        if getattr(config, "num_labels", 1) != 1:
            raise ValueError(f"judge: {self.path} has num_labels={config.num_labels}; need 1")
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.path, local_files_only=True, trust_remote_code=trust_remote_code
        )
        self.model.to(device).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.path, local_files_only=True, trust_remote_code=trust_remote_code
        )
        if self.model.config.pad_token_id is None:
            raise ValueError(f"judge: {self.path} has no pad_token_id; batched scoring needs one")
        self.batch_size = int(batch_size)
        self.device = torch.device(device)

    def describe(self) -> str:
        return f"reward model {self.path}"

    @torch.no_grad()
    def score_texts(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        """The judge's reward ``[N]`` (float64) of each ``prompt + response``."""
        if len(prompts) != len(responses):
            raise ValueError(f"judge: {len(prompts)} prompts but {len(responses)} responses")
        pad = int(self.model.config.pad_token_id)
        out = []
        for start in range(0, len(prompts), self.batch_size):
            seqs = []
            for p, r in zip(
                prompts[start : start + self.batch_size],
                responses[start : start + self.batch_size],
                strict=True,
            ):
                prompt_ids, response_ids, _ = tokenize_preference(p, r, r, self.tokenizer)
                seqs.append(prompt_ids + response_ids)
            width = max(len(s) for s in seqs)
            # right padding: transformers reads the score at the last non-pad token
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            logits = self.model(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
            ).logits
            out.append(logits[:, 0].double().cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def score_tokens(self, world: Any, prompts: Tensor, responses: Tensor) -> Tensor:
        """Score a token world's samples through its text rendering."""
        return self.score_texts(
            [world.render_prompt(p) for p in prompts],
            [world.render_response(r) for r in responses],
        )


def load_judge(path: str | Path | None, **kwargs: Any) -> RewardModelJudge | None:
    """``None`` (judge by the oracle reward) or a :class:`RewardModelJudge` from ``path``."""
    return None if path is None else RewardModelJudge(path, **kwargs)
