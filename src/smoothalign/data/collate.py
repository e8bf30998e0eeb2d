"""Batch tokenised preference pairs into the tensors a DPO step needs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.utils.data import Dataset

from smoothalign.data.tokenization import Spans, TokenizedPair

IGNORE_INDEX = -100
"""``labels`` value of tokens that do not count in ``log π(y|x)`` (prompt, padding, and a
response's turns that are not the assistant's)."""

_FIELDS = {f.name for f in fields(TokenizedPair)}


E = TypeVar("E")


class ExampleDataset(Dataset[E]):
    """A map-style torch ``Dataset`` over a list of examples (a validation report's)."""

    def __init__(self, examples: Sequence[E]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> E:
        return self.examples[i]


def response_labels(ids: Sequence[int], spans: Spans | None) -> list[int]:
    """The labels of a response's tokens ``ids``: the ids inside ``spans`` (its assistant
    turns; ``None``: all of it), ``IGNORE_INDEX`` elsewhere. Spans may reach past the end of
    a truncated response."""
    if spans is None:
        return list(ids)
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        labels[start:end] = ids[start:end]
    return labels


def scored_ids(ids: Sequence[int], spans: Spans | None) -> list[int]:
    """What decides a response's ``log π(y|x)``: its tokens up to the end of the last
    assistant-turn token inside ``ids`` (all of them without ``spans``). Two responses alike
    there have the same log-prob under any model: whatever follows is not scored."""
    if spans is None:
        return list(ids)
    end = max((min(b, len(ids)) for a, b in spans if a < min(b, len(ids))), default=0)
    return list(ids[:end])


class PreferenceDataset(ExampleDataset[TokenizedPair]):
    """A map-style torch ``Dataset`` over ``TokenizedPair`` s (e.g. ``report.examples``)."""


class PaddingCollator:
    """What the token collators share: a checked ``pad_token_id``, ``pad_to_multiple_of``,
    and right padding of token sequences and their labels (:meth:`pad`)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
            raise ValueError(f"pad_token_id: expected an int, got {pad_token_id!r}")
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def pad(
        self, input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``input_ids``, ``attention_mask`` and ``labels`` ``[N, L]`` long, right-padded to the
        longest sequence (``L`` rounded up to ``pad_to_multiple_of``): padding is
        ``pad_token_id`` / 0 / ``-100``. ``labels[i]`` has the length of ``input_ids[i]``."""
        length = max(len(ids) for ids in input_ids)
        if self.pad_to_multiple_of:
            length = math.ceil(length / self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(input_ids)
        ids_out = torch.full((n, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, length), dtype=torch.long)
        labels_out = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
        for i, (ids, labs) in enumerate(zip(input_ids, labels, strict=True)):
            ids_out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, : len(ids)] = 1
            labels_out[i, : len(labs)] = torch.tensor(labs, dtype=torch.long)
        return ids_out, attention_mask, labels_out


class PreferenceCollator(PaddingCollator):
    """Collate ``B`` pairs into one right-padded batch of ``2B`` sequences.

    Args:
        pad_token_id: the id written into padding (masked out, so any valid id works).
        pad_to_multiple_of: round the padded length ``L`` up to a multiple of this.

    Calling it on ``B`` ``TokenizedPair`` s (or mappings with the same keys) returns:

    * ``input_ids`` ``[2B, L]`` long: rows ``0..B-1`` are prompt+chosen, rows ``B..2B-1``
      prompt+rejected, in the same pair order;
    * ``attention_mask`` ``[2B, L]`` long: 1 on real tokens, 0 on padding;
    * ``labels`` ``[2B, L]`` long: ``input_ids`` on response tokens, ``-100`` on prompt and
      padding and on a response's turns outside its ``chosen_spans`` / ``rejected_spans``
      (a user or tool turn between two replies: the model reads it, it does not write it,
      so it is no part of ``log π(y|x)``, as the environment's moves are no part of a
      policy's probability of its actions; the same holds in the reference's). Not
      shifted: a causal LM's logits at ``t`` predict ``labels[:, t + 1]``, so
      ``log π(y|x)`` is the sum over ``t`` of ``log_softmax(logits[:, t])[labels[:, t + 1]]``
      where ``labels[:, t + 1] != -100`` (SPEC §1);
    * ``confidence`` ``[B]`` float32: the pair's confidence, NaN where absent;
    * ``index`` ``[B]`` long: each pair's ``TokenizedPair.index``;
    * ``ref_chosen_logps`` / ``ref_rejected_logps`` ``[B]`` float32: only when every pair
      carries precomputed reference log-probs (a batch with some but not all raises).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        super().__init__(pad_token_id, pad_to_multiple_of)
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of: expected >= 1, got {pad_to_multiple_of}")

    def __call__(self, examples: Sequence[TokenizedPair | Mapping[str, Any]]) -> dict[str, Tensor]:
        if not examples:
            raise ValueError("PreferenceCollator: empty batch")
        pairs = [_as_pair(e) for e in examples]
        sequences = [(p.prompt_ids, p.chosen_ids, p.chosen_spans) for p in pairs]
        sequences += [(p.prompt_ids, p.rejected_ids, p.rejected_spans) for p in pairs]
        input_ids, attention_mask, labels = self.pad(
            [[*prompt, *response] for prompt, response, _ in sequences],
            [
                [IGNORE_INDEX] * len(prompt) + response_labels(response, spans)
                for prompt, response, spans in sequences
            ],
        )

        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "confidence": torch.tensor(
                [math.nan if p.confidence is None else p.confidence for p in pairs],
                dtype=torch.float32,
            ),
            "index": torch.tensor([p.index for p in pairs], dtype=torch.long),
        }
        has_ref = [p.ref_chosen_logp is not None and p.ref_rejected_logp is not None for p in pairs]
        if all(has_ref):
            batch["ref_chosen_logps"] = torch.tensor(
                [p.ref_chosen_logp for p in pairs], dtype=torch.float32
            )
            batch["ref_rejected_logps"] = torch.tensor(
                [p.ref_rejected_logp for p in pairs], dtype=torch.float32
            )
        elif any(has_ref):
            missing = [p.index for p, h in zip(pairs, has_ref, strict=True) if not h]
            raise ValueError(
                "PreferenceCollator: some pairs carry reference log-probs and some do not "
                f"(missing for index {missing[:5]}); precompute them for every pair or none"
            )
        return batch


def _as_pair(example: TokenizedPair | Mapping[str, Any]) -> TokenizedPair:
    if isinstance(example, TokenizedPair):
        return example
    if isinstance(example, Mapping):
        return TokenizedPair(**{k: v for k, v in example.items() if k in _FIELDS})
    raise ValueError(
        f"PreferenceCollator: expected TokenizedPair or a mapping, got {type(example).__name__}"
    )
