"""The token oracle world of the noisy-preference benchmark: determinism, the reward rule,
Bradley–Terry labels, exact flips, log-probabilities and sampling, against independent
references (Python loops, float64, binomial statistics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smoothalign.experiments.token_world import LETTERS, TokenWorld, TokenWorldConfig

FAST = TokenWorldConfig(ref_steps=5, ref_batch=8)


@pytest.fixture(scope="module")
def world() -> TokenWorld:
    return TokenWorld(FAST, seed=3)


def test_world_is_deterministic_under_its_seed(world):
    again = TokenWorld(FAST, seed=3)
    for a, b in zip(world.reference.parameters(), again.reference.parameters(), strict=True):
        assert torch.equal(a, b)
    p, q = world.pairs(64, 1), again.pairs(64, 1)
    for name in ("prompts", "first", "second", "q", "natural_label", "flip_order"):
        assert torch.equal(getattr(p, name), getattr(q, name)), name
    other = TokenWorld(FAST, seed=4).pairs(64, 1)
    assert not torch.equal(p.first, other.first)
    assert not torch.equal(world.pairs(64, 2).first, p.first)  # streams are independent


def test_reward_is_the_documented_rule(world):
    c = world.config
    g = world.generator(99)
    prompts = world.sample_prompts(200, g)
    responses = torch.randint(c.vocab, (200, c.response_length), generator=g)
    got = world.reward(prompts, responses)
    for i in range(200):
        t = int(prompts[i, 1]) - c.vocab
        good = {(2 * t) % c.vocab, (2 * t + 1) % c.vocab}
        bad = {(2 * t + c.vocab // 2) % c.vocab, (2 * t + 1 + c.vocab // 2) % c.vocab}
        toks = responses[i].tolist()
        expected = (sum(x in good for x in toks) - sum(x in bad for x in toks)) / len(toks)
        assert float(got[i]) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="topic"):
        world.reward(prompts[:, [0, 2, 1, 3]], responses)


def test_true_preference_is_bradley_terry_on_the_reward(world):
    p = world.pairs(50, 1)
    r1 = world.reward(p.prompts, p.first).numpy()
    r2 = world.reward(p.prompts, p.second).numpy()
    expected = 1 / (1 + np.exp(-(r1 - r2) / world.config.temperature))
    np.testing.assert_allclose(p.q.numpy(), expected, rtol=0, atol=1e-12)


def test_labels_follow_bradley_terry():
    """Natural labels are Bernoulli(q): the standardised sum Σ(z − q)/√Σq(1−q) is ~N(0, 1),
    and so is each of a few bins of q (a binomial test per bin)."""
    w = TokenWorld(TokenWorldConfig(ref_steps=0), seed=5)
    p = w.pairs(3000, 1)
    z, q = p.natural_label.double().numpy(), p.q.numpy()
    stat = (z - q).sum() / math.sqrt((q * (1 - q)).sum())
    assert abs(stat) < 4.0
    for lo, hi in ((0.0, 0.2), (0.2, 0.45), (0.45, 0.55), (0.55, 0.8), (0.8, 1.0)):
        m = (q >= lo) & (q < hi)
        assert m.sum() > 100, (lo, hi)
        s = (z[m] - q[m]).sum() / math.sqrt((q[m] * (1 - q[m])).sum())
        assert abs(s) < 4.0, (lo, hi, s)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.25, 0.4])
def test_flip_rate_is_applied_exactly_and_nested(world, eps):
    p = world.pairs(203, 1)
    lab = p.labelled(eps)
    assert int(lab.flipped.sum()) == round(eps * 203)
    smaller = p.labelled(eps / 2)
    assert bool((lab.flipped | ~smaller.flipped).all())  # flipped at ε/2 ⇒ flipped at ε
    for i in range(203):
        first_chosen = bool(p.natural_label[i]) != bool(lab.flipped[i])
        want_c = p.first[i] if first_chosen else p.second[i]
        want_r = p.second[i] if first_chosen else p.first[i]
        assert torch.equal(lab.chosen[i], want_c) and torch.equal(lab.rejected[i], want_r)
        want_q = float(p.q[i]) if first_chosen else 1 - float(p.q[i])
        assert float(lab.q_chosen[i]) == pytest.approx(want_q, abs=1e-15)
    with pytest.raises(ValueError, match="flip_rate"):
        p.labelled(1.5)


def test_logps_are_the_sum_of_content_token_log_softmax(world):
    c = world.config
    g = world.generator(7)
    prompts = world.sample_prompts(5, g)
    responses = torch.randint(c.vocab, (5, c.response_length), generator=g)
    got = world.logps(world.reference, prompts, responses).double()
    ids = torch.cat([prompts, responses], 1)
    with torch.no_grad():
        logits = world.reference(input_ids=ids).logits.double()
    for i in range(5):
        total = 0.0
        for j in range(c.response_length):
            row = logits[i, c.prompt_length - 1 + j, : c.vocab].numpy()
            m = row.max()
            lse = m + math.log(np.exp(row - m).sum())
            total += row[int(responses[i, j])] - lse
        assert float(got[i]) == pytest.approx(total, abs=1e-4)


def test_sampling_stays_in_the_content_vocabulary_and_is_reproducible(world):
    g1, g2 = world.generator(11), world.generator(11)
    prompts = world.sample_prompts(32, world.generator(12))
    a = world.sample(world.reference, prompts, g1)
    b = world.sample(world.reference, prompts, g2)
    assert torch.equal(a, b)
    assert a.shape == (32, world.config.response_length)
    assert int(a.min()) >= 0 and int(a.max()) < world.config.vocab


def test_sampling_matches_the_model_distribution():
    """The first response token's empirical frequencies match softmax over content logits
    (χ² with V−1 degrees of freedom, far tail)."""
    w = TokenWorld(TokenWorldConfig(ref_steps=20, ref_batch=16), seed=1)
    prompt = w.sample_prompts(1, w.generator(1))
    n = 4000
    samples = w.sample(w.reference, prompt.expand(n, -1), w.generator(2))[:, 0]
    with torch.no_grad():
        logits = w.reference(input_ids=prompt).logits[0, -1, : w.config.vocab].double()
    p = torch.softmax(logits, -1).numpy()
    counts = np.bincount(samples.numpy(), minlength=w.config.vocab)
    chi2 = ((counts - n * p) ** 2 / (n * p)).sum()
    assert chi2 < 50.0  # df = 15: P(χ² > 50) ≈ 1e-5


def test_reference_learns_its_markov_chain():
    """After SFT the reference's next-token distribution is close to the chain's rows."""
    w = TokenWorld(TokenWorldConfig(ref_steps=150), seed=0)
    init, trans = w.markov_chain
    prompts = w.sample_prompts(64, w.generator(8))
    ys = w.markov_responses(64, w.generator(9))
    with torch.no_grad():
        logits = w.reference(input_ids=torch.cat([prompts, ys], 1)).logits.double()
    pos = w.config.prompt_length  # predicts response token 2 from token 1
    pred = torch.softmax(logits[:, pos, : w.config.vocab], -1)
    tv = 0.5 * (pred - trans[ys[:, 0]]).abs().sum(-1)
    untrained = TokenWorld(TokenWorldConfig(ref_steps=0), seed=0).reference
    with torch.no_grad():
        logits0 = untrained(input_ids=torch.cat([prompts, ys], 1)).logits.double()
    tv0 = 0.5 * (torch.softmax(logits0[:, pos, : w.config.vocab], -1) - trans[ys[:, 0]]).abs()
    assert float(tv.mean()) < 0.5 * float(tv0.sum(-1).mean())


def test_vote_rows_are_valid_soft_labels(world):
    from smoothalign.models import load_model_and_tokenizer
    from smoothalign.reward.data import validate_reward_rows

    p = world.pairs(400, 1)
    rows = world.vote_rows(p, 7, flip_rate=0.1)
    assert len(rows) == 400
    for r in rows:
        assert r["p_chosen"] == r["votes_chosen"] / 7 and r["votes_total"] == 7
        assert set(r["chosen"]) <= set(LETTERS[: world.config.vocab])
        assert r["prompt"][0].isupper() and r["prompt"][1] == ":"
    q = np.array([r["confidence"] for r in rows])
    share = np.array([r["p_chosen"] for r in rows])
    # vote shares are unbiased for q: the mean difference is within 4 standard errors
    se = math.sqrt((q * (1 - q)).sum() / 7) / len(rows)
    assert abs((share - q).mean()) < 4 * se + 1e-12
    _, tok = load_model_and_tokenizer("tiny")
    report = validate_reward_rows(rows, tok, 64)
    assert report.n_kept == 400


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="topics"):
        TokenWorldConfig(vocab=8, topics=5)
    with pytest.raises(ValueError, match="vocab"):
        TokenWorldConfig(vocab=7)
    with pytest.raises(ValueError, match="temperature"):
        TokenWorldConfig(temperature=0)
