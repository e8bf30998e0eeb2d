"""The linear soft-label world: a known Bradley–Terry truth, simulated annotators, linear reward
models (features → scalar, no LM)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from smoothalign.experiments import reward_study as rs


def _world(annotators=5, n=3000, dim=8, seed=0, **kw):
    return rs.make_world(
        dim, annotators, seed, n_train=n, n_test=4000, signal=1.5, temperature=1.0, **kw
    )


def _methods(*names):
    by_name = {m.name: m for m in rs.METHODS}
    return [by_name[n] for n in names]


def test_world_has_majority_first_vote_shares_from_the_truth():
    w = _world(annotators=5)
    p = w.p_chosen.numpy()
    assert (p >= 0.5).all() and set(np.round(p * 5).astype(int)) <= {3, 4, 5}
    q = 1 / (1 + np.exp(-((w.phi_chosen - w.phi_rejected) @ w.theta_star).numpy()))
    np.testing.assert_allclose(w.q_chosen.numpy(), q, rtol=1e-10)
    # the majority is right more often than not, and the vote share tracks q on average
    assert (q > 0.5).mean() > 0.7
    assert np.corrcoef(p, q)[0, 1] > 0.3
    # the truth and the test set do not depend on the number of annotators
    w1 = _world(annotators=1)
    assert torch.equal(w.theta_star, w1.theta_star) and torch.equal(w.x_test, w1.x_test)
    # random order: a coin per pair, the share is of the first response
    wr = _world(annotators=5, order="random")
    assert 0.4 < (wr.p_chosen.numpy() < 0.5).mean() < 0.6


def test_soft_bce_recovers_the_true_reward_direction_and_scale():
    """Vote shares from a known Bradley–Terry truth; a linear reward model trained with
    soft-bce recovers θ* itself: cosine >= 0.95 and ‖θ‖ close to ‖θ*‖ (a proper scoring
    rule on unbiased shares), while BT on the majority label overshoots the scale (it
    learns P(majority), which is sharper than q)."""
    w = _world(annotators=5, n=3000)
    fit = rs.fit_linear(
        w, 3000, _methods("soft-bce", "bt"), steps=300, batch_size=64, lr=0.05,
        eval_points=5, seed=0,
    )  # fmt: skip
    soft, bt = fit.theta
    cos = float(soft @ w.theta_star / (soft.norm() * w.theta_star.norm()))
    assert cos >= 0.95
    assert float(soft.norm() / w.theta_star.norm()) == pytest.approx(1.0, abs=0.15)
    assert float(bt.norm()) > 1.3 * float(soft.norm())


def test_fkl_and_soft_bce_fit_identically_and_the_curves_are_recorded():
    w = _world(n=500)
    fit = rs.fit_linear(
        w, 500, _methods("soft-bce", "fkl", "jsd-post"), steps=40, batch_size=32, lr=0.05,
        eval_points=6, seed=1,
    )  # fmt: skip
    torch.testing.assert_close(fit.theta[0], fit.theta[1], rtol=1e-9, atol=1e-12)
    assert fit.curve_steps[0] == 0 and fit.curve_steps[-1] == 40
    assert len(fit.curves["kl_true"][2]) == len(fit.curve_steps)
    # the "after 5% of the steps" columns read a step that was recorded, not an earlier one
    big = rs.fit_linear(w, 500, _methods("soft-bce"), steps=600, batch_size=32, lr=0.05,
                        eval_points=40, seed=1)  # fmt: skip
    assert rs.early_step(600) == 30 and 30 in big.curve_steps


def test_convergence_summaries():
    steps = [0, 1, 2, 4, 8]
    assert rs.value_at(steps, [5.0, 4.0, 3.0, 2.0, 1.0], 3) == 3.0


def test_quick_study_writes_results_table_and_plot(tmp_path):
    parser = argparse.ArgumentParser()
    rs.add_arguments(parser)
    args = parser.parse_args(
        ["--quick", "--steps", "30", "--seeds", "2", "--output-dir", str(tmp_path), "--no-progress"]
    )
    assert rs.run(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "reward_convergence.png").is_file()
    table = (tmp_path / "table.md").read_text()
    assert "| BT (majority) |" in table and "| JSD + post. |" in table
    agg = {a["method"]: a for a in results["aggregates"]}
    assert set(agg) == {m.name for m in rs.METHODS}
    assert agg["soft-bce"]["kl_true_mean"] == pytest.approx(agg["fkl"]["kl_true_mean"], rel=1e-9)
    assert agg["soft-bce"]["paired_seeds"] == 2
    assert results["run_info"]["cpu_model"]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="methods"):
        rs.RewardStudyConfig(methods=("nope",))
    with pytest.raises(ValueError, match="annotators"):
        rs.RewardStudyConfig(annotators=(0,))
    with pytest.raises(ValueError, match="order"):
        rs.RewardStudyConfig(order="sorted")
    with pytest.raises(ValueError, match="n_train: repeated"):  # would count as extra seeds
        rs.RewardStudyConfig(n_train=(100, 100))
