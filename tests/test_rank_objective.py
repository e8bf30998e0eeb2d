"""Calibration by ranking, the tensor side: the pairwise ranking loss with margins λ·(j − i),
its length normalisation, the NLL term, and the Spearman metrics. Checked against float64
brute-force references written from the definition."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from smoothalign.rank.metrics import average_ranks, ranking_metrics, spearman
from smoothalign.rank.objective import (
    calibration_terms,
    mean_token_logps,
    pair_accuracy,
    ranking_loss,
)


def brute_force_loss(logps: np.ndarray, margin: float, scores=None, tol: float = 0.0):
    """Per prompt: mean over i < j (ties in score dropped) of max(0, λ(j−i) − (s_i − s_j))."""
    out = []
    for b in range(logps.shape[0]):
        terms = []
        for i, j in itertools.combinations(range(logps.shape[1]), 2):
            if scores is not None and abs(scores[b, i] - scores[b, j]) <= tol:
                continue
            terms.append(max(0.0, margin * (j - i) - (logps[b, i] - logps[b, j])))
        out.append(sum(terms) / len(terms) if terms else 0.0)
    return np.array(out)


def test_ranking_loss_equals_a_float64_double_loop(rng):
    logps = rng.normal(-2.0, 0.5, size=(6, 5))
    for margin in (0.0, 0.1, 0.7):
        got = ranking_loss(torch.from_numpy(logps), margin).numpy()
        np.testing.assert_allclose(got, brute_force_loss(logps, margin), rtol=1e-12, atol=1e-14)
    # with scores: tied pairs (identical samples) drop out of the mean
    scores = np.sort(rng.normal(size=(6, 5)), axis=1)[:, ::-1].copy()
    scores[0, 1] = scores[0, 2]
    scores[1, :] = 3.0  # everything tied: contributes 0
    got = ranking_loss(
        torch.from_numpy(logps), 0.3, scores=torch.from_numpy(scores), tie_tolerance=1e-9
    ).numpy()
    np.testing.assert_allclose(got, brute_force_loss(logps, 0.3, scores, 1e-9), rtol=1e-12)
    assert got[1] == 0.0


def test_no_loss_and_no_gradient_when_already_ordered_with_enough_margin():
    margin = 0.25
    # s̄ falls by a bit more than λ per rank: every pair i < j clears λ·(j − i)
    logps = torch.tensor([[-1.0 - 1.01 * margin * r for r in range(4)]], dtype=torch.float64)
    logps.requires_grad_(True)
    loss = ranking_loss(logps, margin)
    assert float(loss.detach()) == 0.0
    loss.sum().backward()
    assert torch.equal(logps.grad, torch.zeros_like(logps))
    # a hair short of the margin between ranks 0 and 1: only that pair is active
    short = torch.tensor([[-1.0, -1.0 - 0.9 * margin, -1.0 - 3 * margin]], dtype=torch.float64)
    np.testing.assert_allclose(
        ranking_loss(short, margin).numpy(), [(0.1 * margin) / 3], rtol=1e-12
    )


def test_gradient_raises_the_better_candidates_log_likelihood():
    # the preference model's best candidate (rank 0) is the policy's least likely one
    logps = torch.tensor([[-3.0, -2.0, -1.0]], dtype=torch.float64, requires_grad=True)
    ranking_loss(logps, 0.1).sum().backward()
    g = logps.grad[0]
    assert g[0] < 0 < g[2]  # descent raises s̄ of rank 0 and lowers s̄ of the worst
    with torch.no_grad():
        stepped = logps - 0.5 * logps.grad
    assert float(ranking_loss(stepped, 0.1)) < float(ranking_loss(logps.detach(), 0.1))


def test_gradient_through_a_model_raises_the_better_sequence():
    """One SGD step on the tiny Llama: s̄ of the preferred continuation goes up."""
    from smoothalign.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer("tiny")
    model.train()
    prompt = [256, 120, 58]
    better, worse = [97, 98, 257], [100, 100, 100, 257]
    ids = torch.full((2, 7), 258)
    labels = torch.full((2, 7), -100)
    for row, resp in enumerate((better, worse)):
        seq = prompt + resp
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, len(prompt) : len(seq)] = torch.tensor(resp)
    mask = (ids != 258).long()

    def s_bar():
        logits = model(input_ids=ids, attention_mask=mask).logits
        return mean_token_logps(logits, labels)[0]

    s0 = s_bar()
    before = s0.detach()
    # force the order to be violated: a margin far above the current gap
    loss = ranking_loss(s0.view(1, 2), margin=10.0).sum()
    loss.backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt.step()
    with torch.no_grad():
        s1 = s_bar()
    assert float(s1[0]) > float(before[0])
    assert float(s1[0] - s1[1]) > float(before[0] - before[1])


def test_length_normalisation_by_hand():
    """Vocabulary of 4; logits chosen so the log-probabilities are known exactly."""
    p = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64)
    logits = torch.log(p).expand(2, 6, 4).clone()
    # row 0: prompt of 2 tokens, response [0, 1, 2] → log .5 + log .25 + log .125, over 3
    # row 1: prompt of 3 tokens, response [3, 0] then padding → (log .125 + log .5) / 2
    labels = torch.tensor([[-100, -100, 0, 1, 2, -100], [-100, -100, -100, 3, 0, -100]])
    s, n = mean_token_logps(logits, labels)
    expected = [
        (math.log(0.5) + math.log(0.25) + math.log(0.125)) / 3,
        (math.log(0.125) + math.log(0.5)) / 2,
    ]
    np.testing.assert_allclose(s.numpy(), expected, rtol=1e-12)
    assert n.tolist() == [3, 2]
    # a longer response of the same per-token quality has the same s̄ (not a lower sum)
    long_labels = torch.tensor([[-100, 0, 0, 0, 0, 0], [-100, -100, -100, -100, 0, -100]])
    s_long, _ = mean_token_logps(logits, long_labels)
    np.testing.assert_allclose(s_long.numpy(), [math.log(0.5)] * 2, rtol=1e-12)
    with pytest.raises(ValueError, match="no response tokens"):
        mean_token_logps(logits, torch.full((2, 6), -100))


def test_calibration_terms_add_the_reference_nll_per_token():
    logps = torch.tensor([[-1.0, -1.5, -0.5], [-2.0, -2.0, -2.0]], dtype=torch.float64)
    scores = torch.tensor([[3.0, 2.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    ref = torch.tensor([-1.2, -0.4], dtype=torch.float64, requires_grad=True)
    terms = calibration_terms(
        logps, scores, margin=0.2, reference_logps=ref, nll_weight=0.5, tie_tolerance=1e-9
    )
    rank = brute_force_loss(logps.numpy(), 0.2, scores.numpy(), 1e-9)
    np.testing.assert_allclose(terms.ranking.detach().numpy(), rank, rtol=1e-12)
    np.testing.assert_allclose(terms.losses.detach().numpy(), rank + 0.5 * np.array([1.2, 0.4]))
    terms.losses.sum().backward()
    np.testing.assert_allclose(ref.grad.numpy(), [-0.5, -0.5])  # descent raises the reference
    # prompt 0: s̄ orders (0, 1) right, (0, 2) and (1, 2) wrong → 1/3; prompt 1: 0 of 2 right
    np.testing.assert_allclose(terms.pair_accuracy.numpy(), [1 / 3, 0.0])
    with pytest.raises(ValueError, match="reference_logps"):
        calibration_terms(logps, scores, margin=0.2, nll_weight=0.1)


def test_ranking_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="K >= 2"):
        ranking_loss(torch.zeros(3, 1), 0.1)
    with pytest.raises(ValueError, match="margin"):
        ranking_loss(torch.zeros(3, 2), -0.1)
    with pytest.raises(ValueError, match="sorted best first"):
        ranking_loss(torch.zeros(1, 2), 0.1, scores=torch.tensor([[0.0, 1.0]]))
    assert math.isnan(float(pair_accuracy(torch.zeros(1, 2), torch.ones(1, 2))[0]))


def test_spearman_and_ranking_metrics(rng):
    np.testing.assert_allclose(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1, 3.5, 2])
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 40.0])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert math.isnan(spearman(np.array([1.0, 1.0]), np.array([1.0, 2.0])))
    # Spearman with ties equals Pearson on average ranks (reference computed by hand)
    x, y = np.array([1.0, 2.0, 2.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0])
    rx, ry = np.array([1, 2.5, 2.5, 4]), np.array([1.0, 3, 2, 4])
    assert spearman(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    scores = np.array([[3.0, 2.0, 1.0], [5.0, 4.0, 4.0]])
    logps = np.array([[-1.0, -2.0, -3.0], [-3.0, -1.0, -2.0]])
    m = ranking_metrics(logps, scores)
    assert m["spearman_within"] == pytest.approx((1.0 + spearman(logps[1], scores[1])) / 2)
    assert m["pair_accuracy"] == pytest.approx(3 / 5)  # prompt 1's tied pair is not counted
    assert m["policy_top_score"] == pytest.approx((3.0 + 4.0) / 2)
    assert m["best_of_k_score"] == pytest.approx(4.0)
    assert m["score_mean"] == pytest.approx(scores.mean())
    # the same text scored in two batches, 3e-8 apart: a tie under the run's tolerance, as
    # in the training loss, not a wrongly ordered pair
    near = ranking_metrics([[-1.0, -1.0, -2.0]], [[1.0, 1.0 - 3e-8, 0.0]], tie_tolerance=1e-6)
    exact = ranking_metrics([[-1.0, -1.0, -2.0]], [[1.0, 1.0, 0.0]])
    assert near["pair_accuracy"] == exact["pair_accuracy"] == 1.0
    assert near["spearman_within"] == pytest.approx(exact["spearman_within"]) == 1.0
