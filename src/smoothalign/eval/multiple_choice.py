"""Score multiple-choice questions with a causal LM, and measure accuracy and calibration.

Two scorers (SPEC §5), both batched, both pure functions of ``(model, tokenizer, prompts)``:

* :func:`score_letters` — **letter scorer**. The prompt lists the options as A, B, C, …
  and ends in ``Answer:``; one forward pass gives the next-token distribution, and the score
  of option *k* is the log-probability of its continuation `` A``/`` B``/…, tokenised as
  it follows ``Answer:`` (not on its own: a Llama-2 tokenizer encodes `` A`` alone as
  ``▁ ▁A``, after ``Answer:`` as ``▁A``). When the tokenizer splits `` A`` into several
  tokens (a byte-level tokenizer: `` `` then ``A``),
  the shared leading tokens are appended to the prompt and only the last, distinguishing
  token is read: the shared factor cancels in the softmax over options, so the result is
  the exact conditional over the letters. ``letter_mass`` records how much next-token
  probability the letters get at all (low mass: the model wanted to say something else).
* :func:`score_options` — **option-likelihood scorer** (cloze). The score of option *k* is
  the *mean* log-probability per token of the option's own text as the continuation of the
  prompt (its tokens as they follow the prompt in the joint encoding; sum of token log-probs
  divided by the option's token count), so long options are
  not penalised for their length. Each prompt runs through the model once; its options are
  scored from copies of its key/value cache (``use_cache=False``: prompt + option per option).

In both cases the forecast is ``softmax(scores)`` over the options (:func:`option_probabilities`),
the prediction its arg-max and the confidence its max; :func:`summarise` gives accuracy and
the SPEC §5 calibration errors (ECE and RMS over 15 equal-width bins, via
:mod:`smoothalign.calibration`).

**Identical options.** A question may list the same text twice (nine MMLU questions do; local
JSONL refuses it, BIG-bench examples with it are skipped and counted). Two such options are
one answer: the model cannot tell them apart, and picking either one is picking the right
text or not. Scored by position, the copy listed second could never be predicted by the
option scorer (the copies score the same and the arg-max takes the first), and a model that
names the right text by the other letter would be counted wrong. So before the forecast,
:func:`merge_identical_options` turns each question's option scores into scores of its
*distinct answers* (:func:`smoothalign.eval.mc_tasks.option_groups`), and the forecast,
prediction, confidence, correctness, NLL and chance level are those over distinct answers:

* letter scorer (``"sum"``): each letter is a different next token, so an answer's
  probability is the total over its letters (its score their log-sum-exp);
* option scorer (``"once"``): the copies are one continuation scored twice (equal up to
  rounding), so it counts once (the mean of the copies' scores), rather than twice the
  probability of a single text.

No question is dropped; ``eval calibration`` counts such questions (``n_identical_options``)
and lists their answers in ``predictions.jsonl``. A question without identical options is
scored exactly as before (its answers are its options).

Sequences are left-padded (with explicit ``position_ids``) so the positions that matter sit
at the end of every row, and the model is asked for those logits only (``logits_to_keep``):
no ``[batch, length, vocabulary]`` tensor for the whole prompt. A prompt longer than
``max_length`` minus its continuation loses tokens from its *start* (oldest few-shot text
first); such questions are counted in ``n_truncated``, never dropped. An option that alone
fills ``max_length`` leaves no room for any prompt: :func:`score_options` raises for it, or
with ``too_long="skip"`` leaves its question unscored and says why (``MCScores.skipped``).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smoothalign.calibration import calibration_summary
from smoothalign.eval.mc_tasks import LETTERS


def _left_padded(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, ...]:
    """``(input_ids, attention_mask, position_ids)`` ``[B, L]`` of ``seqs`` left-padded to the
    longest, positions counting from 0 at each sequence's first real token."""
    L = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), L), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for b, x in enumerate(seqs):
        ids[b, L - len(x) :] = torch.tensor(x)
        mask[b, L - len(x) :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp_(min=0)


__all__ = [
    "MERGE_RULES",
    "MCScores",
    "ScoringInputError",
    "continuation_ids",
    "letter_token_ids",
    "merge_identical_options",
    "option_probabilities",
    "predictions",
    "score_letters",
    "score_options",
    "summarise",
]

DEFAULT_BINS = 15


@dataclass
class MCScores:
    """Per-question option scores (float64 arrays, one per question, one value per option).

    ``letter_mass`` (letter scorer only): per question, the total next-token probability of
    its letters. ``truncated``: per question, whether any of its sequences lost prompt tokens.
    ``skipped`` (option scorer with ``too_long="skip"``): per question, ``None``, or why it
    was not scored (an option too long for ``max_length``); a skipped question's scores are
    NaN.
    """

    scores: list[np.ndarray]
    truncated: list[bool]
    letter_mass: list[float] | None = None
    skipped: list[str | None] | None = None

    @property
    def n_truncated(self) -> int:
        return int(sum(self.truncated))

    @property
    def n_skipped(self) -> int:
        return sum(r is not None for r in self.skipped or ())


class ScoringInputError(ValueError):
    """A prompt or option that cannot be scored; ``prompt`` is its index in the scorer's
    ``prompts`` (``None`` when not tied to one) and ``option`` the option's index in its
    list (``None`` when not tied to one), for callers to name the question their own way:
    ``detail`` is the message without the ``prompt i, option k:`` that ``str()`` starts with.
    """

    def __init__(self, prompt: int | None, detail: str, option: int | None = None):
        at = [] if prompt is None else [f"prompt {prompt}"]
        at += [] if option is None else [f"option {option}"]
        super().__init__(f"{', '.join(at)}: {detail}" if at else detail)
        self.prompt = prompt
        self.option = option
        self.detail = detail


# --------------------------------------------------------------------------------------------
# the two scorers
# --------------------------------------------------------------------------------------------


def letter_token_ids(tokenizer: Any, n_letters: int) -> tuple[list[int], list[int]]:
    """``(shared_prefix_ids, letter_ids)`` for the continuations `` A``, `` B``, … of a
    prompt ending in ``Answer:`` (as :func:`smoothalign.eval.mc_prompts.build_prompt`'s do).

    Each continuation's ids are those it gets *after* ``Answer:``, the tail of
    ``encode("Answer: A")`` beyond ``encode("Answer:")`` (see :func:`continuation_ids`): a
    SentencePiece tokenizer of the Llama-2 layout encodes `` A`` alone as ``▁ ▁A`` but
    ``Answer: A`` as ``… : ▁A``. Raises ``ValueError`` when the continuations do not share all
    but their last token or their last tokens collide (the letter scorer cannot then read
    one distribution).
    """
    context = _encode(tokenizer, _LETTER_CONTEXT)
    encoded = [
        continuation_ids(tokenizer, _LETTER_CONTEXT, f" {c}", context) for c in LETTERS[:n_letters]
    ]
    prefix = encoded[0][:-1]
    if any(len(e) == 0 or e[:-1] != prefix for e in encoded):
        raise ValueError(
            "letter scorer: the tokenizer encodes ' A', ' B', … with different leading tokens "
            f"({encoded[:4]}…); use the option-likelihood scorer (--scorer option)"
        )
    last = [e[-1] for e in encoded]
    if len(set(last)) != len(last):
        raise ValueError(f"letter scorer: two letters share a token id ({last}); cannot score")
    return prefix, last


_LETTER_CONTEXT = "Answer:"


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def continuation_ids(
    tokenizer: Any, prompt: str, text: str, prompt_ids: list[int] | None = None
) -> list[int]:
    """The token ids of ``text`` as the continuation of ``prompt``: the tail of
    ``encode(prompt + text)`` beyond ``encode(prompt)`` (both without special tokens;
    ``prompt_ids`` is that encoding when already at hand), when the latter is a prefix of the
    former and the tail is not empty; else ``encode(text)`` on its own.

    Encoded alone, a continuation can get tokens it never has after the prompt: Llama-2 /
    Mistral-v0.1 tokenizers prepend ``▁`` to every text they encode, so `` A`` alone is
    ``▁ ▁A`` while ``Answer: A`` ends in ``▁A``.
    """
    if prompt_ids is None:
        prompt_ids = _encode(tokenizer, prompt)
    joint = _encode(tokenizer, prompt + text)
    n = len(prompt_ids)
    if len(joint) > n and joint[:n] == prompt_ids:
        return joint[n:]
    return _encode(tokenizer, text)


def score_letters(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    n_options: Sequence[int],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    progress: bool = False,
    desc: str = "letter scorer",
) -> MCScores:
    """Log-probabilities of the letters A, B, … (first ``n_options[i]`` of them) as the next
    token after ``prompts[i]`` (which should list the lettered options; see
    :func:`smoothalign.eval.mc_prompts.build_prompt` with ``"letter"``)."""
    if len(prompts) != len(n_options):
        raise ValueError(f"n_options: expected {len(prompts)} values, got {len(n_options)}")
    if len(prompts) == 0:
        return MCScores([], [], [])
    too_many = [i for i, n in enumerate(n_options) if n > len(LETTERS) or n < 2]
    if too_many:
        i = too_many[0]
        raise ScoringInputError(i, f"{n_options[i]} options; the letter scorer needs 2..26")
    prefix, letter_ids = letter_token_ids(tokenizer, max(n_options))
    max_length = _max_length(model, tokenizer, max_length)
    seqs, truncated = [], []
    for p in _encode_prompts(tokenizer, prompts):
        ids, cut = _fit(p + prefix, [], max_length)
        seqs.append(ids)
        truncated.append(cut)
    index = torch.tensor(letter_ids)
    scores: list[np.ndarray | None] = [None] * len(prompts)
    mass: list[float] = [0.0] * len(prompts)
    for rows, logits in _batches(
        model, tokenizer, seqs, [1] * len(seqs), batch_size, progress, desc
    ):
        logp = _log_softmax(logits[:, -1]).cpu()  # [B, V], float64 for a float64 model
        picked = logp[:, index].double().numpy()  # [B, n_letters_max]
        for b, i in enumerate(rows):
            s = picked[b, : n_options[i]]
            scores[i] = s
            mass[i] = float(np.exp(s).sum())
    return MCScores(scores=scores, truncated=truncated, letter_mass=mass)


def score_options(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    options: Sequence[Sequence[str]],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    progress: bool = False,
    desc: str = "option scorer",
    use_cache: bool = True,
    too_long: str = "error",
) -> MCScores:
    """Mean per-token log-probability of each continuation ``options[i][k]`` after
    ``prompts[i]`` (continuations as given: include the leading space, see
    :func:`smoothalign.eval.mc_prompts.continuations`).

    The prompt is tokenised with the tokenizer's special tokens; an option's ids are its tail
    in the joint encoding of prompt + option (:func:`continuation_ids`; the option alone when
    the prompt's ids are not a prefix of the joint ones), and the two are concatenated, so
    an option's token ids never depend on how the computation is organised. With ``use_cache`` (the default) each prompt
    goes through the model once: its key/value cache is copied to the rows of its options,
    which then run only their own tokens (all but the last, whose log-probability the
    previous position gives; a one-token option needs no forward of its own). The uncached
    path (``use_cache=False``) runs prompt + option as one sequence per option, K times the
    prompt's cost; both give the same scores up to floating-point rounding.

    The uncached path is used instead, for the questions concerned, when

    * a question does not fit ``max_length`` with one of its options: the prompt is then cut
      per option (by that option's length), so its options do not share one prompt;
    * the model returns no cache (a model without cache support, a stub), or has a sliding
      attention window shorter than the longest prompt plus the longest option.

    Log-probabilities are taken in float32 (float64 for a float64 model) on both paths.

    An option of ``max_length`` tokens or more leaves no room for its prompt: with
    ``too_long="error"`` (the default) a :class:`ScoringInputError` names it; with
    ``"skip"`` its question is not scored (its scores NaN) and ``MCScores.skipped`` says
    why, so that one such question does not stop the others.
    """
    if len(prompts) != len(options):
        raise ValueError(f"options: expected {len(prompts)} lists, got {len(options)}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if too_long not in ("error", "skip"):
        raise ValueError(f"too_long: expected 'error' or 'skip', got {too_long!r}")
    max_length = _max_length(model, tokenizer, max_length)
    prompt_ids: list[list[int]] = []
    option_ids: list[list[list[int]]] = []
    truncated = [False] * len(prompts)
    skipped: list[str | None] = [None] * len(prompts)
    for i, p in enumerate(_encode_prompts(tokenizer, prompts)):
        if len(options[i]) < 2:
            raise ScoringInputError(i, f"{len(options[i])} options; need at least 2")
        if not p:
            raise ScoringInputError(i, "encodes to no tokens; an option needs a context")
        plain = _encode(tokenizer, prompts[i])
        conts = []
        for k, text in enumerate(options[i]):
            cont = continuation_ids(tokenizer, prompts[i], text, plain)
            if not cont:
                raise ScoringInputError(i, f"encodes to no tokens ({text!r})", option=k)
            conts.append(cont)
        prompt_ids.append(p)
        option_ids.append(conts)
        k = max(range(len(conts)), key=lambda k: len(conts[k]))  # the longest option
        if len(conts[k]) >= max_length:  # no room for a single prompt token
            if too_long == "error":
                _fit(p, conts[k], max_length, where=(i, k))  # raises
            why = _no_room(len(conts[k]), max_length)
            skipped[i] = f"option {k + 1} of {len(conts)}: {why}"
            continue
        truncated[i] = any(_fit(p, cont, max_length)[1] for cont in conts)
    scores = [np.full(len(o), np.nan) for o in options]
    scored = [i for i in range(len(prompts)) if skipped[i] is None]
    # an upper bound on any cached row's length (longest prompt + longest option)
    longest = max((len(prompt_ids[i]) for i in scored), default=0)
    longest += max((len(c) for i in scored for c in option_ids[i]), default=0)
    cached: list[int] = []
    if use_cache and _cache_fits(model, longest):
        cached = [i for i in scored if not truncated[i]]
    if cached:
        try:
            _option_means_cached(
                model, tokenizer, prompt_ids, option_ids, cached, scores, batch_size,
                progress, desc,
            )  # fmt: skip
        except _NoCache:
            cached = []
    done = set(cached)
    rest = [i for i in scored if i not in done]
    if rest:
        _option_means_uncached(
            model, tokenizer, prompt_ids, option_ids, rest, scores, batch_size, max_length,
            progress, desc,
        )  # fmt: skip
    return MCScores(scores=scores, truncated=truncated, skipped=skipped)


def _option_means_uncached(
    model, tokenizer, prompt_ids, option_ids, questions, scores, batch_size, max_length,
    progress, desc,
) -> None:  # fmt: skip
    """Fill ``scores[i]`` for ``i`` in ``questions``: one sequence prompt + option per option
    (the prompt cut from its start to fit ``max_length`` with that option)."""
    seqs, lengths, owner = [], [], []
    for i in questions:
        for k, cont in enumerate(option_ids[i]):
            ids, _ = _fit(prompt_ids[i], cont, max_length)
            seqs.append(ids + cont)
            lengths.append(len(cont))
            owner.append((i, k))
    keep = [n + 1 for n in lengths]
    for rows, logits in _batches(model, tokenizer, seqs, keep, batch_size, progress, desc):
        logp = _log_softmax(logits)  # [B, K, V]
        K = logits.shape[1]
        for b, s in enumerate(rows):
            n = lengths[s]
            targets = torch.tensor(seqs[s][-n:], device=logp.device)
            # logits kept at positions L-K..L-1; the option's tokens sit at L-n..L-1 and are
            # predicted from positions L-n-1..L-2, i.e. kept indices K-n-1..K-2
            rows_logp = logp[b, K - n - 1 : K - 1].gather(-1, targets[:, None]).squeeze(-1)
            i, k = owner[s]
            scores[i][k] = float(rows_logp.double().sum()) / n


class _NoCache(Exception):
    """The model returned no key/value cache: score with the uncached path."""


def _cache_fits(model: Any, longest: int) -> bool:
    """Whether cached scoring is exact for this model: no sliding attention window that a
    sequence of ``longest`` tokens could exceed (windowed caches keep only the window)."""
    config = getattr(model, "config", None)
    get_text = getattr(config, "get_text_config", None)
    config = get_text(decoder=True) if callable(get_text) else config
    window = getattr(config, "sliding_window", None)
    if window is None or getattr(config, "use_sliding_window", True) is False:
        return True
    return isinstance(window, int) and longest <= window


def _cache_kwarg(model: Any) -> str:
    """transformers 5.2x renamed forward's ``past_key_values`` to ``cache``; accept either."""
    for m in (model, getattr(model, "get_base_model", lambda: None)()):
        try:
            params = inspect.signature(m.forward).parameters
        except (AttributeError, TypeError, ValueError):
            continue
        if "cache" in params:
            return "cache"
        if "past_key_values" in params:
            return "past_key_values"
    return "past_key_values"


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    cache = cache if cache is not None else getattr(out, "past_key_values", None)
    if cache is None or not hasattr(cache, "reorder_cache"):
        raise _NoCache
    return cache


def _rows_of(cache: Any, rows: torch.Tensor) -> Any:
    """A cache holding rows ``rows`` (repeats allowed) of ``cache``, which stays as it was.

    A cache of plain dynamic layers is copied shallowly: ``reorder_cache`` then replaces the
    copy's key/value tensors by the selected rows and leaves the originals alone (only the
    selected rows are copied). Any other cache is deep-copied first."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if isinstance(layers, list) and all(type(layer) is DynamicLayer for layer in layers):
        out = copy.copy(cache)
        out.layers = [copy.copy(layer) for layer in layers]
    else:
        out = copy.deepcopy(cache)
    out.reorder_cache(rows)
    return out


@torch.no_grad()
def _option_means_cached(
    model, tokenizer, prompt_ids, option_ids, questions, scores, batch_size, progress, desc
) -> None:
    """Fill ``scores[i]`` for ``i`` in ``questions``. Questions go in groups of ``batch_size``
    (longest prompt first): the group's prompts run once (left-padded, explicit positions,
    last logits only), then its options, longest first, in chunks of ``batch_size`` rows:
    each row a copy of its prompt's cache row followed by the option's tokens (right-padded;
    positions continue the prompt's)."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    keep_one = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    cache_kwarg = _cache_kwarg(model)
    order = sorted(questions, key=lambda i: -len(prompt_ids[i]))
    total = sum(len(option_ids[i]) for i in questions)
    with tqdm(total=total, desc=desc, unit="seq", disable=not progress, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            group = order[start : start + batch_size]
            # 1. the prompts, once each
            ids, mask, position_ids = _left_padded([prompt_ids[i] for i in group], pad)
            out = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=position_ids.to(device),
                use_cache=True,
                **keep_one,
            )
            cache = _cache_of(out)
            logits = out.logits if hasattr(out, "logits") else out[0]
            first = _log_softmax(logits[:, -1]).cpu()  # [G, V]: predicts each option's 1st token
            del out, logits
            # per option: its tokens' log-probs (the first from the prompt's last logits)
            token_logps: dict[tuple[int, int], list[torch.Tensor]] = {}
            multi = []  # (g, i, k) of the options with more than one token
            for g, i in enumerate(group):
                for k, cont in enumerate(option_ids[i]):
                    token_logps[g, k] = [first[g, cont[0]].reshape(1)]
                    if len(cont) > 1:
                        multi.append((g, i, k))
            # 2. the options' other tokens (all but the last), on their prompt's cache rows
            multi.sort(key=lambda r: -len(option_ids[r[1]][r[2]]))
            for c in range(0, len(multi), batch_size):
                chunk = multi[c : c + batch_size]
                rows = torch.tensor([g for g, _, _ in chunk])
                inputs = [option_ids[i][k][:-1] for _, i, k in chunk]
                M = len(inputs[0])  # longest first
                opt_ids = torch.full((len(chunk), M), pad, dtype=torch.long)
                opt_mask = torch.zeros((len(chunk), M), dtype=torch.long)
                for b, x in enumerate(inputs):
                    opt_ids[b, : len(x)] = torch.tensor(x)
                    opt_mask[b, : len(x)] = 1
                starts = mask[rows].sum(-1, keepdim=True)  # the prompts' lengths
                out = model(
                    input_ids=opt_ids.to(device),
                    attention_mask=torch.cat([mask[rows], opt_mask], dim=1).to(device),
                    position_ids=(starts + torch.arange(M)).to(device),
                    use_cache=True,
                    **{cache_kwarg: _rows_of(cache, rows.to(device))},
                )
                logits = out.logits if hasattr(out, "logits") else out[0]
                logp = _log_softmax(logits)  # [N, M, V]: position j predicts token j + 1
                for b, (g, i, k) in enumerate(chunk):
                    targets = torch.tensor(option_ids[i][k][1:], device=logp.device)
                    picked = logp[b, : len(targets)].gather(-1, targets[:, None]).squeeze(-1)
                    token_logps[g, k].append(picked.cpu())
                del out, logits, logp
            del cache
            for g, i in enumerate(group):
                for k, cont in enumerate(option_ids[i]):
                    s = torch.cat(token_logps[g, k]).double().sum()
                    scores[i][k] = float(s) / len(cont)
            bar.update(sum(len(option_ids[i]) for i in group))


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary in at least float32 (float64 logits stay float64)."""
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


# --------------------------------------------------------------------------------------------
# from scores to metrics
# --------------------------------------------------------------------------------------------


MERGE_RULES = {"letter": "sum", "option": "once"}
"""How each scorer's options of identical text become one answer (:func:`merge_identical_options`)."""


def merge_identical_options(
    scores: Sequence[np.ndarray],
    answers: Sequence[int],
    groups: Sequence[Sequence[int]],
    rule: str,
) -> tuple[list[np.ndarray], list[int]]:
    """``(answer_scores, answer_indices)``: per question, one score per distinct answer and
    the index of the right answer among them (see the module docstring).

    ``groups[i][k]`` is the answer of option ``k`` of question ``i``
    (:func:`smoothalign.eval.mc_tasks.option_groups`: answers numbered in order of first
    appearance). ``rule`` is ``"sum"`` (an answer's probability is the total over its options:
    the log-sum-exp of their scores; the letter scorer) or ``"once"`` (its options are one
    continuation scored more than once: the mean of their scores; the option scorer). A
    question whose options are all distinct comes back unchanged, the same array.
    """
    if rule not in ("sum", "once"):
        raise ValueError(f"rule: expected 'sum' or 'once', got {rule!r}")
    if not len(scores) == len(answers) == len(groups):
        raise ValueError(
            f"scores/answers/groups: need equal lengths ({len(scores)}, {len(answers)}, "
            f"{len(groups)})"
        )
    out_scores, out_answers = [], []
    for i, (s, a, g) in enumerate(zip(scores, answers, groups, strict=True)):
        g = np.asarray(g, dtype=np.int64)
        if len(g) != len(s) or not 0 <= a < len(s):
            raise ValueError(
                f"question {i}: {len(s)} scores, {len(g)} option groups, answer {a}: need one "
                "group per option and an answer among them"
            )
        if (g == np.arange(len(g))).all():  # all distinct: the options are the answers
            out_scores.append(s)
            out_answers.append(int(a))
            continue
        n = int(g.max()) + 1
        if g.min() < 0 or len(set(g.tolist())) != n:
            raise ValueError(f"question {i}: option groups {g.tolist()} skip an answer number")
        s = np.asarray(s, dtype=np.float64)
        merged = np.empty(n)
        for j in range(n):
            mine = s[g == j]
            if rule == "once":
                merged[j] = mine.mean()
            else:
                top = mine.max()
                merged[j] = top if np.isneginf(top) else top + np.log(np.exp(mine - top).sum())
        out_scores.append(merged)
        out_answers.append(int(g[a]))
    return out_scores, out_answers


def option_probabilities(scores: np.ndarray) -> np.ndarray:
    """``softmax(scores)`` in float64: the forecast over the options."""
    s = np.asarray(scores, dtype=np.float64)
    e = np.exp(s - s.max())
    return e / e.sum()


def predictions(scores: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """``(probabilities, predicted index, confidence)`` per question."""
    probs = [option_probabilities(s) for s in scores]
    pred = np.array([int(np.argmax(p)) for p in probs], dtype=np.int64)
    conf = np.array([float(np.max(p)) for p in probs], dtype=np.float64)
    return probs, pred, conf


def summarise(
    scores: Sequence[np.ndarray], answers: Sequence[int], bins: int = DEFAULT_BINS
) -> dict[str, float]:
    """Accuracy and calibration of the max-softmax confidence (SPEC §5).

    ``scores[i]`` holds one score per answer and ``answers[i]`` is the right one's index:
    for questions that list an option twice, the output of :func:`merge_identical_options`
    (else each identical option would be a separate, position-scored answer).

    Keys: ``n``, ``accuracy``, ``ece``, ``rms``, ``mce`` (over ``bins`` equal-width bins),
    ``brier`` (top-label: mean of (confidence − correct)²), ``nll`` (mean −log p(answer)),
    ``mean_confidence``, ``chance`` (mean of 1/number of answers: a uniform forecast's
    accuracy).
    """
    if len(scores) != len(answers) or not scores:
        raise ValueError(
            f"scores/answers: need equal, non-zero lengths ({len(scores)}, {len(answers)})"
        )
    probs, pred, conf = predictions(scores)
    answers = np.asarray(answers, dtype=np.int64)
    correct = (pred == answers).astype(np.float64)
    p_answer = np.array([p[a] for p, a in zip(probs, answers, strict=True)])
    cal = calibration_summary(conf, correct, bins)
    return {
        "n": len(scores),
        "accuracy": float(correct.mean()),
        "ece": cal["ece"],
        "rms": cal["rms"],
        "mce": cal["mce"],
        "brier": cal["brier"],
        "nll": float(-np.log(np.clip(p_answer, 1e-300, None)).mean()),
        "mean_confidence": float(conf.mean()),
        "chance": float(np.mean([1.0 / len(p) for p in probs])),
        "bins": bins,
    }


# --------------------------------------------------------------------------------------------
# batching
# --------------------------------------------------------------------------------------------


def _encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    return [list(tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts]


def _max_length(model: Any, tokenizer: Any, max_length: int | None) -> int:
    if max_length is not None:
        if max_length < 2:
            raise ValueError(f"max_length: must be >= 2, got {max_length}")
        return max_length
    limits = [getattr(getattr(model, "config", None), "max_position_embeddings", None)]
    limits.append(getattr(tokenizer, "model_max_length", None))
    limits = [int(x) for x in limits if isinstance(x, int) and 1 < x < 10**7]
    return min(limits) if limits else 2048


def _fit(
    prompt: list[int], cont: list[int], max_length: int, where: tuple[int, int] | None = None
) -> tuple[list[int], bool]:
    """``prompt`` cut from its start to leave room for ``cont`` under ``max_length``, and
    whether it was cut. ``where``: ``(prompt index, option index)``, named in the error."""
    room = max_length - len(cont)
    if room < 1:
        prompt, option = (None, None) if where is None else where
        raise ScoringInputError(prompt, _no_room(len(cont), max_length), option=option)
    if len(prompt) <= room:
        return prompt, False
    return prompt[len(prompt) - room :], True


def _no_room(n_tokens: int, max_length: int) -> str:
    return (
        f"a continuation of {n_tokens} tokens leaves no room for the prompt under "
        f"max_length {max_length}"
    )


def _accepts(model: Any, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@torch.no_grad()
def _batches(
    model: Any,
    tokenizer: Any,
    seqs: list[list[int]],
    keep: list[int],
    batch_size: int,
    progress: bool,
    desc: str,
):
    """Yield ``(sequence indices, logits [B, K, V])`` for left-padded batches, longest first;
    ``K`` is the batch's largest ``keep`` (logits of the last ``K`` positions)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    use_keep = _accepts(model, "logits_to_keep")
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    with tqdm(total=len(seqs), desc=desc, unit="seq", disable=not progress, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            K = max(keep[i] for i in rows)
            ids, mask, position_ids = _left_padded([seqs[i] for i in rows], pad)
            kwargs = {"logits_to_keep": K} if use_keep else {}
            out = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=position_ids.to(device),
                use_cache=False,
                **kwargs,
            )
            logits = out.logits if hasattr(out, "logits") else out[0]
            yield rows, logits[:, -K:]
            bar.update(len(rows))
