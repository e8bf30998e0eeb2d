"""Prompts in, ranked candidates out: load and check prompts, generate ``K`` candidates per
prompt from the policy, score them with a preference model, sort them best first.

**Prompts.** Any file (or folder, list, ``datasets.Dataset``) that
:func:`smoothalign.data.load_preference_rows` reads, with a ``prompt`` column: a string
(plain text) or a list of ``{role, content}`` messages (conversational; rendered with the
policy's chat template and ``add_generation_prompt=True``). All rows must use one form.
The **reference response** (for the NLL term) is the first present of ``reference``,
``completion`` (TRL's prompt-completion format) and ``chosen`` (TRL's preference format: the
labelled winner), in the prompt's form (a string, or assistant messages). Rows without one
are kept when the NLL term is off, and are bad rows (``missing_reference``) when it is on.
A bad row is an error naming its row and field (``prompts.jsonl row 3, field 'prompt':
empty prompt``), or is skipped and listed with ``on_bad_rows="skip"``.

**Generation** (:func:`generate_candidates`): ``sample`` (``generate(do_sample=True)``,
temperature, optional top-k, ``K`` return sequences), ``beam`` (plain beam search,
``num_beams = num_return_sequences = K``) or ``diverse-beam``. ``transformers`` 5 moved
group ("diverse") beam search out of the library into a Hub ``custom_generate`` repository
that needs the network and ``trust_remote_code``; we use neither, so
:func:`diverse_beam_search` implements it here (Vijayakumar et al., 2018: ``G`` groups of
``K/G`` beams decoded in turn at each step, a group's log-probabilities lowered by
``diversity_penalty`` times the number of times an earlier group picked the token at this
step, i.e. the Hamming diversity of ``transformers``' old ``HammingDiversityLogitsProcessor``).
A candidate runs to its first EOS (inclusive) or ``max_new_tokens``.

**Scoring** (:func:`score_and_rank` with any :data:`Scorer`; ``rank-calibrate`` uses
:class:`smoothalign.reward.scoring.PreferenceModelScorer`): the preference model sees the
candidate as its training data looked: the candidate's tokens are decoded to text (special
tokens dropped) and re-tokenised with the preference model's own tokenizer through
:func:`smoothalign.data.tokenize_preference`, as a plain continuation or an assistant
message. So the policy and the preference model need not share a tokenizer.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from smoothalign._options import option
from smoothalign._warn import warn_main
from smoothalign.data import BadRow, fit_response, load_preference_rows
from smoothalign.data.loading import FILE_KEY, ROW_KEY, location
from smoothalign.data.report import RowReport, find_duplicates
from smoothalign.data.tokenization import (
    RowTokenizationError,
    Spans,
    escape_special_text,
    fixed_template_date,
    tokenize_responses,
)
from smoothalign.data.validation import (
    BadRowError,
    bad_row,
    blank_reply_reason,
    content_key,
    has_split_column,
    is_blank,
    looks_like_messages_text,
    messages_as_text_error,
    missing_reason,
    require_object,
    require_split,
)
from smoothalign.progress import bar_disable

REFERENCE_FIELDS = ("reference", "completion", "chosen")
PROMPT_TEXT_FIELDS = ("prompt", *REFERENCE_FIELDS, "rejected")  # strings in CSV
Scorer = Callable[[list[Any], list[str]], Sequence[float]]
"""``scorer(prompts, responses) -> scores``: one float per (prompt, response text)."""


# ------------------------------------------------------------------------------ prompts
@dataclass
class PromptExample:
    """One checked prompt: its tokens under the policy and, if any, its reference response."""

    prompt: Any  # the raw prompt: a string or a list of messages
    prompt_ids: list[int]
    index: int  # position in the loaded rows
    row: int
    file: str | None = None
    reference: Any = None  # the raw reference response, or None
    reference_field: str | None = None
    reference_ids: list[int] | None = None
    reference_spans: Spans | None = None  # its replies' tokens, where it holds several
    reference_truncated: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    content_key: str | None = field(default=None, compare=False, repr=False)  # of the prompt

    @property
    def location(self) -> str:
        return location(self.file, self.row)


@dataclass
class PromptReport(RowReport):
    """What :func:`load_prompts` kept and rejected (``bad_rows`` in row order)."""

    examples: list[PromptExample]
    kind: str
    source: str
    n_with_reference: int = 0
    n_reference_truncated: int = 0
    reference_fields: dict[str, int] = field(default_factory=dict)

    copied: ClassVar[str] = "prompt"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            **self.row_counts(),
            **self.duplicate_counts(),
            "kind": self.kind,
            "n_with_reference": self.n_with_reference,
            "reference_fields": self.reference_fields,
            "n_reference_truncated": self.n_reference_truncated,
            "bad_rows": [b.to_dict() for b in self.bad_rows],
        }

    def to_markdown(self, max_listed: int = 10) -> str:
        fields_used = ", ".join(f"`{k}` {n}" for k, n in self.reference_fields.items()) or "none"
        lines = [
            f"- {self.source}: {self.n_rows} rows read, {self.n_kept} kept, "
            f"{self.n_skipped} skipped; {self.kind} prompts",
            f"- reference responses: {self.n_with_reference} ({fields_used}); "
            f"{self.n_reference_truncated} cut to fit max_length",
        ]
        if self.duplicates:
            lines.append(f"- **warning**: {self.duplicates_warning()} (all in validation.json)")
        lines += [f"- skipped: {b}" for b in self.bad_rows[:max_listed]]
        if self.n_skipped > max_listed:
            lines.append(f"- ... and {self.n_skipped - max_listed} more (see validation.json)")
        return "\n".join(lines)


_Bad = RowTokenizationError  # a bad row: field, code, reason


def _messages(name: str, value: Any, *, roles: tuple[str, ...] | None = None) -> list[dict]:
    if not isinstance(value, list | tuple) or len(value) == 0:
        raise _Bad(name, "malformed_messages", "expected a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not m["role"]:
            raise _Bad(name, "malformed_messages", f"message {i} needs a non-empty 'role'")
        if not isinstance(m.get("content"), str):
            raise _Bad(name, "malformed_messages", f"message {i}: 'content' must be a string")
        if roles is not None and m["role"] not in roles:
            raise _Bad(
                name, "malformed_messages", f"message {i}: role {m['role']!r}, expected {roles}"
            )
        out.append({k: v for k, v in m.items() if v is not None})
    return out


def prompt_token_ids(prompt: Any, tokenizer: Any) -> list[int]:
    """The policy's tokens of a prompt, by :mod:`smoothalign.data.tokenization`'s rules:
    plain text gets exactly one BOS (where the tokenizer has one), a message list is
    rendered by the chat template with ``add_generation_prompt=True``."""
    if isinstance(prompt, str):
        ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        bos = tokenizer.bos_token_id
        if bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        return ids
    try:
        with fixed_template_date():  # the data's date, whatever the day (as dpo and sft)
            text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # Jinja raises whatever the template author chose
        raise _Bad("prompt", "chat_template_error", f"the chat template failed: {e}") from e
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def load_prompts(
    source: Any,
    tokenizer: Any,
    *,
    max_length: int,
    max_new_tokens: int = 1,
    require_reference: bool = False,
    on_bad_rows: str = "error",
    source_name: str | None = None,
    held_out: bool = False,
) -> PromptReport:
    """Read and check prompt rows; see the module docstring for the format.

    A prompt must leave room for at least one response token within ``max_length``
    (``prompt_too_long`` otherwise). Raises ``ValueError`` listing the bad rows with
    ``on_bad_rows="error"`` (and when no row is left).
    """
    if on_bad_rows not in ("error", "skip"):
        raise ValueError(f"on_bad_rows: {on_bad_rows!r}; choose error or skip")
    name = source_name or (str(source) if isinstance(source, str | Path) else "prompts")
    # CSV: the text columns stay strings (a reference "4" is text, not a number)
    # a missing path names its option: --prompts, or --eval-prompts for the held-out ones
    keyword = "eval_prompts" if held_out else "prompts"
    rows = load_preference_rows(source, text_fields=PROMPT_TEXT_FIELDS, option=keyword)
    if not rows:
        raise ValueError(f"prompts: {name} holds no rows")
    first = next((r["prompt"] for r in rows if isinstance(r.get("prompt"), str | list)), "")
    kind = "plain" if isinstance(first, str) else "conversational"
    examples: list[PromptExample] = []
    bad: list[BadRow] = []
    used: dict[str, int] = {}
    split_column = not held_out and has_split_column(rows)  # a held-out set's is not read
    for index, row in enumerate(rows):
        try:
            require_object(row)
            if split_column:
                require_split(row)
            ex = _check_row(row, index, kind, tokenizer, max_length, require_reference)
        except (BadRowError, RowTokenizationError) as e:
            bad.append(bad_row(index, row, e))
            continue
        ex.content_key = content_key(row, ("prompt",))
        examples.append(ex)
        if ex.reference_field:
            used[ex.reference_field] = used.get(ex.reference_field, 0) + 1
    if bad and on_bad_rows == "error":
        listed = "\n".join(f"  {b}" for b in bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ValueError(
            f"prompts: {len(bad)} bad row(s) in {name} (pass {option('on_bad_rows', 'skip')} "
            f"to drop and list them):\n{listed}{more}"
        )
    if not examples:
        raise ValueError(f"prompts: no usable row in {name} ({len(bad)} bad)")
    report = PromptReport(
        examples,
        bad,
        len(rows),
        kind,
        name,
        n_with_reference=sum(e.reference_ids is not None for e in examples),
        n_reference_truncated=sum(e.reference_truncated for e in examples),
        reference_fields=used,
        duplicates=find_duplicates(examples),
    )
    if report.duplicates:
        warn_main(f"prompts: {name}: {report.duplicates_warning()}", stacklevel=2)
    return report


def _check_row(
    row: dict[str, Any],
    index: int,
    kind: str,
    tokenizer: Any,
    max_length: int,
    require_reference: bool,
) -> PromptExample:
    prompt = row.get("prompt")
    if prompt is None:
        known = ("split", ROW_KEY, FILE_KEY, *REFERENCE_FIELDS, "rejected")
        raise _Bad("prompt", "missing_field", missing_reason(row, "prompt", known))
    if looks_like_messages_text(prompt):  # a message list as text: never a plain prompt
        raise messages_as_text_error("prompt", prompt, row.get(FILE_KEY))
    if isinstance(prompt, str) != (kind == "plain") and isinstance(prompt, str | list):
        found = "a plain string" if isinstance(prompt, str) else "a message list"
        raise _Bad("prompt", "mixed_formats", f"{found} among {kind} prompts (use one form)")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise _Bad("prompt", "empty_prompt", "empty prompt")
    elif isinstance(prompt, list | tuple):
        prompt = _messages("prompt", prompt)
        if is_blank(prompt):
            raise _Bad("prompt", "empty_prompt", "empty prompt (every message is blank)")
        if prompt[-1]["role"] == "assistant":
            raise _Bad("prompt", "malformed_messages", "the prompt ends with an assistant message")
    else:
        raise _Bad(
            "prompt", "wrong_type", f"expected a string or messages, got {type(prompt).__name__}"
        )
    prompt_ids = prompt_token_ids(prompt, tokenizer)
    if len(prompt_ids) >= max_length:
        raise _Bad(
            "prompt",
            "prompt_too_long",
            f"{len(prompt_ids)} tokens leave no room for a response within max_length {max_length}",
        )
    # an empty cell is an absent reference: a CSV cannot leave a cell out
    ref_field = next((f for f in REFERENCE_FIELDS if row.get(f) not in (None, "")), None)
    reference = ref_ids = ref_spans = None
    truncated = False
    if ref_field is not None:
        reference = _reference_in_prompt_form(ref_field, row[ref_field], prompt, row.get(FILE_KEY))
        if isinstance(reference, str) and is_blank(reference):
            raise _Bad(ref_field, "empty_response", "empty reference response")
        if not isinstance(reference, str) and (
            reason := blank_reply_reason(reference, "reference response", "not the model's")
        ):
            raise _Bad(ref_field, "empty_response", reason)
        try:  # several replies: their spans, so the NLL skips the template between them
            p_ids, ((full_ref, ref_spans),) = tokenize_responses(
                prompt, [reference], tokenizer, (ref_field,)
            )
        except RowTokenizationError as e:
            raise _Bad(ref_field, e.code, e.reason) from e
        if p_ids != prompt_ids:  # pragma: no cover - both follow the same rules
            raise _Bad(ref_field, "chat_template_prefix", "prompt tokens differ with the response")
        ref_ids, truncated = fit_response(full_ref, len(prompt_ids), max_length)
    elif require_reference:
        raise _Bad(
            "reference",
            "missing_reference",
            f"no reference response ({', '.join(REFERENCE_FIELDS)}) for the NLL term "
            "(--nll-weight 0 turns it off)",
        )
    meta = {
        k: v
        for k, v in row.items()
        if k not in ("prompt", ROW_KEY, FILE_KEY, *REFERENCE_FIELDS, "rejected")
    }
    return PromptExample(
        prompt=prompt,
        prompt_ids=prompt_ids,
        index=index,
        row=row.get(ROW_KEY, index),
        file=row.get(FILE_KEY),
        reference=reference,
        reference_field=ref_field,
        reference_ids=ref_ids,
        reference_spans=ref_spans,
        reference_truncated=truncated,
        metadata=meta,
    )


def _reference_in_prompt_form(
    name: str, reference: Any, prompt: Any, file: str | None = None
) -> Any:
    """The reference of field ``name``, checked to be in the prompt's form: a string beside
    a plain-text prompt, assistant messages beside a message list. A reference of the other
    form is ``mixed_formats``, as a prompt of the other form is: each is well formed on its
    own, the row mixes the two (a message list's checks would call a string malformed).
    ``file``: the row's, which words a ``messages_as_text`` bad row."""
    if looks_like_messages_text(reference):  # a message list as text: never read as text
        raise messages_as_text_error(name, reference, file)
    if isinstance(prompt, str):
        if isinstance(reference, str):
            return reference
        if isinstance(reference, list | tuple):
            raise _Bad(
                name, "mixed_formats", "a message list beside a plain-text prompt (use one form)"
            )
        raise _Bad(name, "wrong_type", f"expected a string, got {type(reference).__name__}")
    if isinstance(reference, str):
        raise _Bad(
            name, "mixed_formats", "a plain string beside a message-list prompt (use one form)"
        )
    return _messages(name, reference, roles=("assistant",))


# ------------------------------------------------------------------------------ generation
def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for source in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if source is None:
            continue
        for i in source if isinstance(source, list | tuple) else [source]:
            if int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("tokenizer: the policy has no EOS token; generation could not stop")
    return ids


def cut_at_eos(ids: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
    """The tokens up to and including the first EOS (all of them when there is none)."""
    out = []
    for t in ids:
        out.append(int(t))
        if int(t) in eos_ids:
            break
    return out


def _left_padded(
    prompts: list[list[int]], pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    cache = cache if cache is not None else getattr(out, "past_key_values", None)
    if cache is None or not hasattr(cache, "reorder_cache"):
        raise ValueError("diverse-beam: the policy returned no reorderable KV cache")
    return cache


@torch.no_grad()
def diverse_beam_search(
    model: Any,
    prompt_ids: list[int],
    *,
    num_beams: int,
    num_groups: int,
    diversity_penalty: float,
    max_new_tokens: int,
    eos_ids: Sequence[int],
) -> list[list[int]]:
    """``num_beams`` continuations of one prompt by diverse (group) beam search.

    ``G = num_groups`` groups of ``num_beams / G`` beams each; at every step the groups pick
    their tokens in turn, group ``g``'s log-probabilities lowered by ``diversity_penalty``
    times the number of beams of groups ``< g`` that picked the same token at this step.
    Beams are ranked by their (penalised) cumulative log-probability; a beam that emits an
    EOS is finished and carried along unchanged. Returns each beam's new tokens, cut after
    the first EOS, in group order.
    """
    if num_beams < 1 or num_groups < 1 or num_beams % num_groups:
        raise ValueError(f"num_groups: {num_groups} must divide num_beams {num_beams}")
    k = num_beams // num_groups
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids] * num_beams, dtype=torch.long, device=device)
    # transformers 5.2x renamed forward's past_key_values to cache; accept either
    cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else None
    cache_kwarg = cache_kwarg or "past_key_values"
    out = model(input_ids=ids, use_cache=True)
    past = _cache_of(out)
    logits = out.logits[:, -1].float()
    vocab = logits.shape[-1]
    # within a group the beams start identical: only its first beam may expand at step 0
    scores = torch.zeros(num_beams, device=device)
    scores.view(num_groups, k)[:, 1:] = -1e9
    finished = torch.zeros(num_beams, dtype=torch.bool, device=device)
    eos = torch.tensor(list(eos_ids), device=device)
    stay = int(eos_ids[0])  # a finished beam's only continuation (cut off afterwards)
    generated = torch.empty((num_beams, 0), dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        logp = torch.log_softmax(logits, dim=-1)
        frozen = torch.full_like(logp, -math.inf)
        frozen[:, stay] = 0.0
        logp = torch.where(finished[:, None], frozen, logp)
        counts = torch.zeros(vocab, device=device)
        parents, tokens, new_scores = [], [], []
        for g in range(num_groups):
            rows = torch.arange(g * k, (g + 1) * k, device=device)
            penalty = diversity_penalty * counts[None, :] * (~finished[rows])[:, None]
            cand = (scores[rows, None] + logp[rows] - penalty).flatten()
            top = cand.topk(k)
            parent = rows[top.indices // vocab]
            token = top.indices % vocab
            live = ~finished[parent]
            counts.index_add_(0, token[live], torch.ones(int(live.sum()), device=device))
            parents.append(parent)
            tokens.append(token)
            new_scores.append(top.values)
        parent = torch.cat(parents)
        token = torch.cat(tokens)
        scores = torch.cat(new_scores)
        generated = torch.cat([generated[parent], token[:, None]], dim=1)
        finished = finished[parent] | torch.isin(token, eos)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        past.reorder_cache(parent)
        mask = torch.ones((num_beams, len(prompt_ids) + step + 1), dtype=torch.long, device=device)
        out = model(
            input_ids=token[:, None], attention_mask=mask, use_cache=True, **{cache_kwarg: past}
        )
        past = _cache_of(out)
        logits = out.logits[:, -1].float()
    return [cut_at_eos(row, eos_ids) for row in generated.tolist()]


@torch.no_grad()
def generate_candidates(
    model: Any,
    tokenizer: Any,
    examples: Sequence[PromptExample],
    *,
    num_candidates: int,
    decoding: str = "sample",
    temperature: float = 1.0,
    top_k: int = 0,
    num_beam_groups: int = 0,
    diversity_penalty: float = 1.0,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    desc: str = "generating candidates",
) -> list[list[list[int]]]:
    """Per prompt, ``num_candidates`` lists of new token ids (each cut after its first EOS).

    Seed the torch RNG first for reproducible sampling. The model is put in eval mode for
    the call and returned to the mode it was in.
    """
    from transformers import GenerationConfig

    if num_candidates < 2:
        raise ValueError(f"num_candidates: need at least 2 to rank, got {num_candidates}")
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[list[list[int]]] = []
    try:
        if decoding == "diverse-beam":
            groups = num_beam_groups or num_candidates
            for ex in tqdm(examples, desc=desc, leave=False, disable=bar_disable(False)):
                results.append(
                    diverse_beam_search(
                        model,
                        ex.prompt_ids,
                        num_beams=num_candidates,
                        num_groups=groups,
                        diversity_penalty=diversity_penalty,
                        max_new_tokens=max_new_tokens,
                        eos_ids=eos_ids,
                    )
                )
            return results
        if decoding == "sample":
            gen = GenerationConfig(
                do_sample=True,
                temperature=temperature,
                top_k=top_k,  # 0: no cut (None would inherit the model's default)
                top_p=1.0,
                num_return_sequences=num_candidates,
            )
        elif decoding == "beam":
            gen = GenerationConfig(
                do_sample=False, num_beams=num_candidates, num_return_sequences=num_candidates
            )
        else:
            raise ValueError(f"decoding: unknown {decoding!r}; choose sample, beam or diverse-beam")
        gen.max_new_tokens = max_new_tokens
        gen.eos_token_id = eos_ids
        gen.pad_token_id = pad_id
        starts = range(0, len(examples), batch_size)
        for start in tqdm(starts, desc=desc, leave=False, unit="batch", disable=bar_disable(False)):
            chunk = examples[start : start + batch_size]
            ids, mask = _left_padded([e.prompt_ids for e in chunk], pad_id, device)
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
            new = out[:, ids.shape[1] :].tolist()
            for i in range(len(chunk)):
                rows = new[i * num_candidates : (i + 1) * num_candidates]
                results.append([cut_at_eos(r, eos_ids) for r in rows])
        return results
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------ ranking
@dataclass
class Candidate:
    ids: list[int]  # the policy's new tokens (EOS included when it stopped)
    text: str
    score: float


@dataclass
class RankedPrompt:
    """A prompt and its candidates sorted by score, best first (rank 0 is best)."""

    example: PromptExample
    candidates: list[Candidate]

    @property
    def scores(self) -> list[float]:
        return [c.score for c in self.candidates]


def score_and_rank(
    examples: Sequence[PromptExample],
    candidate_ids: Sequence[Sequence[list[int]]],
    decode: Callable[[list[int]], str],
    scorer: Scorer,
) -> list[RankedPrompt]:
    """Score every candidate with ``scorer`` (one call over all of them) and sort each
    prompt's candidates by score, best first; ties keep the generation order (stable)."""
    if len(examples) != len(candidate_ids):
        raise ValueError(f"candidates: {len(candidate_ids)} lists for {len(examples)} prompts")
    texts = [[decode(ids) for ids in per] for per in candidate_ids]
    flat_prompts = [ex.prompt for ex, per in zip(examples, texts, strict=True) for _ in per]
    flat_texts = [t for per in texts for t in per]
    tokenizer = getattr(scorer, "tokenizer", None)
    if tokenizer is not None:  # generated text spelling a special token is scored as text
        flat_texts = [escape_special_text(t, tokenizer) for t in flat_texts]
    scores = np.asarray(scorer(flat_prompts, flat_texts), dtype=np.float64)
    if scores.shape != (len(flat_texts),):
        raise ValueError(f"scorer: returned shape {scores.shape}, expected ({len(flat_texts)},)")
    if not np.isfinite(scores).all():
        raise ValueError("scorer: returned NaN or inf scores")
    ranked, at = [], 0
    for ex, ids_list, text_list in zip(examples, candidate_ids, texts, strict=True):
        cands = [
            Candidate(list(ids), text, float(scores[at + i]))
            for i, (ids, text) in enumerate(zip(ids_list, text_list, strict=True))
        ]
        at += len(cands)
        order = sorted(range(len(cands)), key=lambda i: -cands[i].score)
        ranked.append(RankedPrompt(ex, [cands[i] for i in order]))
    return ranked


def candidates_jsonl(
    ranked: Sequence[RankedPrompt], mean_logps: Sequence[Sequence[float]] | None = None
) -> str:
    """The ranked candidates as JSON lines (one prompt per line), for inspection. With
    ``mean_logps`` (``[P, K]``, rank order: the policy's ``s̄`` of each candidate, as the
    ranking metrics take it), each candidate also carries its ``policy_mean_logp``."""
    if mean_logps is not None and [len(m) for m in mean_logps] != [
        len(rp.candidates) for rp in ranked
    ]:
        raise ValueError("candidates_jsonl: mean_logps must be [P, K], one per candidate")
    lines = []
    for p, rp in enumerate(ranked):
        ex = rp.example
        candidates = []
        for r, c in enumerate(rp.candidates):
            record: dict[str, Any] = {"rank": r, "score": c.score}
            if mean_logps is not None:
                record["policy_mean_logp"] = float(mean_logps[p][r])
            candidates.append({**record, "n_tokens": len(c.ids), "text": c.text})
        lines.append(
            json.dumps(
                {"row": ex.row, "file": ex.file, "prompt": ex.prompt, "candidates": candidates},
                ensure_ascii=False,
            )
        )
    return "\n".join(lines) + "\n"
