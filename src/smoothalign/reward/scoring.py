"""Load a saved preference (reward) model and score ``(prompt, response)`` texts with it.

The one loader and the one scorer behind ``smoothalign rank-calibrate --reward-model`` and
``smoothalign study preference --judge`` (:class:`smoothalign.experiments.judge.RewardModelJudge`).

**Loading** (:func:`load_preference_model`): a scalar-head ``*ForSequenceClassification``
model as ``smoothalign reward`` saves it — the run folder or its ``final/``
(:func:`resolve_reward_model_path`) — read safely: local files only, safetensors only
(pickled ``.bin`` weights can run code on load), ``trust_remote_code`` off, ``num_labels``
must be 1. Every refusal names the folder and says what is wrong.

**Scoring** (:class:`PreferenceModelScorer`): a response is tokenised exactly as the reward
trainer tokenised its training pairs (``smoothalign.data.validation``):
:func:`smoothalign.data.tokenize_preference` (prompt and response tokenised separately and
concatenated; plain text gets one BOS before the prompt and an EOS after the response; a
message list is rendered by the chat template, the response as an assistant message), then
:func:`smoothalign.data.fit_response` cuts the response from its end so that prompt +
response fit ``max_length`` tokens. A prompt of ``max_length`` tokens or more leaves no room
for a response; the trainer refuses such rows (``prompt_too_long``) and so does the scorer.
Sequences are right-padded with the tokenizer's pad id into batches; the model reads its
score at the last non-pad token, as in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from smoothalign.data import fit_response, tokenize_preference
from smoothalign.io import not_found
from smoothalign.models.loading import is_model_folder
from smoothalign.progress import bar_disable

WHAT = "reward_model"  # the prefix of every message: the option that names the model


class ModelFolderError(FileNotFoundError, ValueError):
    """A folder without the files of a saved model (no ``config.json``). Both a
    ``FileNotFoundError`` and a ``ValueError``, so that callers catching either see it."""


def resolve_reward_model_path(path: str | Path) -> Path:
    """The folder holding the preference model: ``path`` itself, or ``path/final`` for a
    ``smoothalign reward`` run folder. Raises naming the path and what is missing."""
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise not_found(WHAT, p)  # <option>: not found: PATH, as every command says it
    if not p.is_dir():
        raise ValueError(f"{WHAT}: {str(p)!r} is a file; pass the model folder")
    if not is_model_folder(p) and is_model_folder(p / "final"):
        p = p / "final"
    if not is_model_folder(p):
        if (p / "adapter_config.json").is_file() or (p / "final" / "adapter_config.json").is_file():
            raise ValueError(
                f"{WHAT}: {str(p)!r} holds a LoRA adapter, not a full model; merge it into "
                "its base (peft's merge_and_unload, then save_pretrained) and pass that; "
                "current `smoothalign reward --lora` runs save the merged model in final/"
            )
        if (p / "config.json").is_file():
            raise ModelFolderError(
                f"{WHAT}: {str(p)!r} has a config.json that is not a model's (no model_type; "
                "a run folder?) and no final/config.json; pass the folder written by "
                "`smoothalign reward` after it finished, or its final/"
            )
        raise ModelFolderError(
            f"{WHAT}: {str(p)!r} has no config.json (nor final/config.json); pass the "
            "folder written by `smoothalign reward` or its final/"
        )
    return p


def check_preference_model(path: str | Path) -> Path:
    """The folder of the preference model at ``path`` (see :func:`resolve_reward_model_path`),
    checked without loading its weights: safetensors present, a ``config.json`` readable
    without remote code, a ``*ForSequenceClassification`` with one label. Lets a command
    refuse a wrong model before it loads any other."""
    from transformers import AutoConfig

    folder = resolve_reward_model_path(path)
    safe = list(folder.glob("*.safetensors")) + list(folder.glob("*.safetensors.index.json"))
    if not safe:
        found = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        raise ValueError(
            f"{WHAT}: {str(folder)!r} has no .safetensors weights"
            + (f" (found {', '.join(found)})" if found else "")
            + "; only safetensors are loaded (pickled weights can run code)"
        )
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(
            f"{WHAT}: {str(folder)!r}: config.json cannot be read without remote code: {e}"
        ) from e
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ValueError(
            f"{WHAT}: {str(folder)!r} is a {', '.join(archs) or 'model of unknown class'}, "
            "not a preference model (*ForSequenceClassification); train one with "
            "`smoothalign reward`"
        )
    if getattr(config, "num_labels", 1) != 1:
        raise ValueError(
            f"{WHAT}: {str(folder)!r} has {config.num_labels} labels; a preference model "
            "has one scalar output (num_labels=1)"
        )
    return folder


def load_preference_model(path: str | Path, *, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer, folder)``: a scalar-head ``*ForSequenceClassification`` saved by
    ``smoothalign reward`` (the run folder or its ``final/``), loaded safely: local files
    only, safetensors only, ``trust_remote_code`` off. On the CPU, in eval mode, gradients
    off; the tokenizer has a pad token (its EOS when it had none) and the model's
    ``config.pad_token_id`` is its id."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from smoothalign.models import ensure_pad_token

    folder = check_preference_model(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder,
        local_files_only=True,
        trust_remote_code=False,
        use_safetensors=True,
        dtype=dtype,
    )
    tokenizer = AutoTokenizer.from_pretrained(
        folder, local_files_only=True, trust_remote_code=False
    )
    ensure_pad_token(model, tokenizer)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer, folder


class PreferenceModelScorer:
    """``scorer(prompts, responses) -> np.ndarray`` (float64 ``[N]``): the preference model's
    scalar score of each (prompt, response), tokenised as in training (module docstring), in
    right-padded batches of ``batch_size`` on the model's device.

    A prompt is a string or a list of ``{role, content}`` messages; a response is a string
    (an assistant message under a conversational prompt) or, with a conversational prompt,
    a list of assistant messages. ``n_scored`` / ``n_truncated`` count the responses scored
    so far and those cut to fit ``max_length``.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int, batch_size: int = 32):
        if int(max_length) < 2:
            raise ValueError(f"{WHAT}: max_length must be at least 2, got {max_length}")
        if int(batch_size) < 1:
            raise ValueError(f"{WHAT}: batch_size must be at least 1, got {batch_size}")
        if tokenizer.pad_token_id is None:
            raise ValueError(f"{WHAT}: the tokenizer has no pad token; batched scoring needs one")
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size = int(max_length), int(batch_size)
        self.n_scored = 0
        self.n_truncated = 0

    def _tokens(self, prompt: Any, response: Any) -> tuple[list[int], bool]:
        if isinstance(prompt, str) or not isinstance(response, str):
            resp = response
        else:
            resp = [{"role": "assistant", "content": response}]
        # generated text, not data: a merge at the prompt's end is scored, not refused
        p_ids, r_ids, _ = tokenize_preference(prompt, resp, resp, self.tokenizer, strict=False)
        if len(p_ids) >= self.max_length:
            raise ValueError(
                f"{WHAT}: a prompt of {len(p_ids)} tokens leaves no room for a response "
                f"within max_length {self.max_length} (prompt {_preview(prompt)}); raise "
                "max_length"
            )
        r_ids, cut = fit_response(r_ids, len(p_ids), self.max_length)
        return p_ids + r_ids, cut

    def tokens(self, prompt: Any, response: Any) -> list[int]:
        """The token ids the model scores for ``(prompt, response)``."""
        return self._tokens(prompt, response)[0]

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Any], responses: Sequence[Any]) -> np.ndarray:
        if len(prompts) != len(responses):
            raise ValueError(f"scorer: {len(prompts)} prompts but {len(responses)} responses")
        tokenized = [self._tokens(p, r) for p, r in zip(prompts, responses, strict=True)]
        seqs = [s for s, _ in tokenized]
        device = next(self.model.parameters()).device
        pad = int(self.tokenizer.pad_token_id)
        out = []
        starts = range(0, len(seqs), self.batch_size)
        for start in tqdm(
            starts, desc="scoring", leave=False, disable=bar_disable(len(starts) < 4 or None)
        ):
            chunk = seqs[start : start + self.batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, s in enumerate(chunk):
                ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
                mask[i, : len(s)] = 1
            logits = self.model(
                input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
            ).logits
            if logits.ndim != 2 or logits.shape[-1] != 1:
                raise ValueError(
                    f"{WHAT}: expected a scalar head (logits [N, 1]), got {list(logits.shape)}"
                )
            out.append(logits[:, 0].double().cpu())
        self.n_scored += len(seqs)
        self.n_truncated += sum(cut for _, cut in tokenized)
        if not out:
            return np.zeros(0, dtype=np.float64)
        return torch.cat(out).numpy()


def _preview(prompt: Any, n: int = 40) -> str:
    text = prompt if isinstance(prompt, str) else " | ".join(m.get("content", "") for m in prompt)
    return repr(text if len(text) <= n else text[:n] + "…")
