"""The scorers read each continuation's tokens as they follow the prompt.

A Llama-2 / Mistral-v0.1 tokenizer (``tokenizer.json``: normalizer ``Prepend('▁')`` then
``Replace(' ', '▁')``) encodes `` A`` on its own as ``▁ ▁A`` but ``Answer: A`` as
``… : ▁A``; scoring the separately encoded continuation scored a token the model never sees
there. The reference is a brute force independent of the scorers: one unpadded float64
forward of the *jointly* encoded ``prompt + continuation``, reading the log-probabilities
of the tokens past the prompt's.
"""

from __future__ import annotations

import string

import numpy as np
import pytest
import torch
from tests.data_helpers import sentencepiece_like_tokenizer as _sentencepiece_like

from smoothalign.eval.mc_prompts import build_prompt, continuations
from smoothalign.eval.mc_tasks import MCQuestion
from smoothalign.eval.multiple_choice import (
    letter_token_ids,
    option_probabilities,
    score_letters,
    score_options,
)
from smoothalign.models.loading import build_tiny_model, build_tiny_tokenizer

TOKENIZERS = {
    "llama2": lambda: _sentencepiece_like("llama2"),
    "metaspace": lambda: _sentencepiece_like("metaspace"),
    "bytes": build_tiny_tokenizer,
}


def _model64(vocab_size: int):
    """The tiny Llama in float64 with larger random weights, so that options differ (at least
    259 ids: its config's pad id is 258)."""
    model = build_tiny_model(seed=4, vocab_size=max(vocab_size, 259)).double().eval()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.4)
    return model


def _joint_logps(model, tok, prompt: str, cont: str) -> np.ndarray:
    """Log-probabilities of the tokens of ``tok(prompt + cont)`` past ``tok(prompt)``."""
    p = list(tok(prompt, add_special_tokens=True)["input_ids"])
    full = list(tok(prompt + cont, add_special_tokens=True)["input_ids"])
    assert full[: len(p)] == p and len(full) > len(p)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    return np.array([float(logp[j - 1, full[j]]) for j in range(len(p), len(full))])


QUESTIONS = [
    MCQuestion("Which planet is red?", ("Mars", "Venus", "Earth"), 0, "t"),
    MCQuestion("Pick one", ("Alpha beta", "Gamma", "Delta epsilon zeta", "Eta"), 2, "t"),
    MCQuestion("Yes or no: is 7 prime?", ("Yes", "No"), 0, "t"),
]


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tok_model(request):
    tok = TOKENIZERS[request.param]()
    return request.param, tok, _model64(len(tok))


def test_llama2_layout_encodes_a_lone_continuation_with_an_extra_token():
    """The premise: encoded alone, `` A`` gets a leading ``▁`` it does not have in context."""
    tok = TOKENIZERS["llama2"]()
    alone = tok.convert_ids_to_tokens(tok.encode(" A", add_special_tokens=False))
    joint = tok.convert_ids_to_tokens(tok.encode("Answer: A", add_special_tokens=False))
    assert alone == ["▁", "▁A"] and joint[-2:] == [":", "▁A"]
    assert letter_token_ids(tok, 3) == ([], tok.convert_tokens_to_ids(["▁A", "▁B", "▁C"]))


@pytest.mark.parametrize("use_cache", [True, False])
def test_option_scorer_equals_the_jointly_encoded_brute_force(tok_model, use_cache):
    _, tok, model = tok_model
    prompts = [build_prompt(q, "cloze") for q in QUESTIONS]
    conts = [continuations(q, "cloze") for q in QUESTIONS]
    ref = [
        np.array([_joint_logps(model, tok, p, c).mean() for c in cs])
        for p, cs in zip(prompts, conts, strict=True)
    ]
    assert min(np.ptp(r) for r in ref) > 1e-3  # the options are told apart
    got = score_options(model, tok, prompts, conts, batch_size=2, use_cache=use_cache)
    for g, r in zip(got.scores, ref, strict=True):
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-10)


def test_letter_scorer_equals_the_jointly_encoded_brute_force(tok_model):
    """The letters' forecast is the softmax of the joint log-probabilities of `` A``, `` B``, …
    (a shared leading token, as with the byte tokenizer, cancels in it); where each letter is
    one token (the SentencePiece layouts) the scores are those log-probabilities."""
    name, tok, model = tok_model
    prompts = [build_prompt(q, "letter") for q in QUESTIONS]
    n = [len(q.options) for q in QUESTIONS]
    ref = [
        np.array([_joint_logps(model, tok, p, f" {c}").sum() for c in string.ascii_uppercase[:k]])
        for p, k in zip(prompts, n, strict=True)
    ]
    assert min(np.ptp(r) for r in ref) > 1e-3
    got = score_letters(model, tok, prompts, n, batch_size=2)
    for g, r in zip(got.scores, ref, strict=True):
        np.testing.assert_allclose(option_probabilities(g), option_probabilities(r), atol=1e-12)
        if name != "bytes":
            np.testing.assert_allclose(g, r, rtol=0, atol=1e-10)


def test_an_option_too_long_for_max_length_names_prompt_and_option():
    tok = build_tiny_tokenizer()
    model = _model64(len(tok))
    prompts = ["Question: a\nAnswer:", "Question: b\nAnswer:"]
    options = [[" x", " y"], [" x", " a much longer option"]]
    with pytest.raises(ValueError, match=r"prompt 1, option 1: .*max_length 16") as err:
        score_options(model, tok, prompts, options, max_length=16)
    assert err.value.prompt == 1  # a ScoringInputError: callers name the question
