"""The linear soft-label world: a known Bradley–Terry truth, simulated annotators, linear reward
models (features → scalar, no LM)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from smoothalign.experiments import reward_study as rs
from smoothalign.experiments.run_info import invoked_command


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


def _sample_std(xs):
    """Sample standard deviation (ddof = 1), by hand."""
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _fake_run(k, n, method, seed, kl, acc, curve):
    r = {"annotators": k, "n": n, "method": method, "seed": seed}
    r |= {key: 0.01 * seed for key in rs.METRICS}
    r |= {"kl_true": kl, "accuracy_true": acc, "curve_steps": [0, 5, 10], "curve_kl_true": curve}
    return r


def test_aggregate_compares_each_seed_with_bt_on_the_same_data():
    """Known per-seed values: lower KL and higher accuracy than BT on the same
    (K, n, seed), ties and rounding-level differences not counted; the mean paired KL
    difference, its ddof=1 std, and the mean ± std convergence curve."""
    bt = {0: (0.20, 0.80), 1: (0.30, 0.70), 2: (0.25, 0.75), 3: (0.40, 0.60)}
    # seed 0: better on both; 1: worse on both; 2: KL lower by rounding only (1e-13
    # relative, as soft-bce vs fkl) and the same accuracy; 3: better KL, worse accuracy;
    # seed 4: no BT run on it
    soft = {
        0: (0.15, 0.85),
        1: (0.35, 0.65),
        2: (0.25 * (1 - 1e-13), 0.75),
        3: (0.30, 0.55),
        4: (0.01, 0.99),
    }
    curves = {s: [1.0 + s, 0.5 + 0.1 * s**2, 0.2 * s] for s in range(5)}
    runs = [_fake_run(3, 100, "soft-bce", s, *v, curves[s]) for s, v in soft.items()]
    runs += [_fake_run(3, 100, "bt", s, *v, curves[s]) for s, v in bt.items()]
    # the same seeds with other K or n: BT here is far worse, and must not be paired
    runs += [_fake_run(5, 100, "bt", s, 9.0, 0.0, curves[s]) for s in range(4)]
    runs += [_fake_run(3, 200, "bt", s, 9.0, 0.0, curves[s]) for s in range(4)]
    runs += [_fake_run(3, 200, "soft-bce", s, 8.0, 0.1, curves[s]) for s in (1, 2)]
    runs = runs[::-1]  # pairing is by key, not by position
    rows = {(a["annotators"], a["n"], a["method"]): a for a in rs.aggregate(runs)}

    row = rows[(3, 100, "soft-bce")]
    assert row["seeds"] == 5 and row["paired_seeds"] == 4
    assert row["seeds_lower_kl_than_baseline"] == 2  # seeds 0 and 3
    assert row["seeds_higher_accuracy_than_baseline"] == 1  # seed 0
    diffs = [soft[s][0] - bt[s][0] for s in range(4)]  # −0.05, +0.05, ≈0, −0.10
    assert row["kl_minus_baseline_mean"] == pytest.approx(-0.025, abs=1e-12)
    assert row["kl_minus_baseline_std"] == pytest.approx(_sample_std(diffs), abs=1e-12)
    assert row["kl_minus_baseline_std"] == pytest.approx(math.sqrt(0.0125 / 3), abs=1e-12)
    kls = [v[0] for v in soft.values()]
    assert row["kl_true_mean"] == pytest.approx(sum(kls) / 5, abs=1e-12)
    assert row["kl_true_std"] == pytest.approx(_sample_std(kls), abs=1e-12)
    assert row["curve_steps"] == [0, 5, 10]
    for j in range(3):
        column = [curves[s][j] for s in range(5)]
        assert row["curve_kl_true_mean"][j] == pytest.approx(sum(column) / 5, abs=1e-12)
        assert row["curve_kl_true_std"][j] == pytest.approx(_sample_std(column), abs=1e-12)

    other = rows[(3, 200, "soft-bce")]  # 8.0 against 9.0 on both seeds
    assert other["paired_seeds"] == 2 and other["seeds_lower_kl_than_baseline"] == 2
    assert other["seeds_higher_accuracy_than_baseline"] == 2
    assert other["kl_minus_baseline_mean"] == pytest.approx(-1.0, abs=1e-12)
    assert other["kl_minus_baseline_std"] == pytest.approx(0.0, abs=1e-12)
    base = rows[(3, 100, "bt")]  # against itself
    assert base["seeds_lower_kl_than_baseline"] == 0
    assert base["seeds_higher_accuracy_than_baseline"] == 0
    assert base["kl_minus_baseline_mean"] == 0 and base["kl_minus_baseline_std"] == 0


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
    # the command recorded is one that reruns it: the module's when run as a script
    with mock.patch.object(sys, "argv", [rs.__file__, "--quick", "--seeds", "2"]):
        assert invoked_command(rs.__name__) == (
            "python -m smoothalign.experiments.reward_study --quick --seeds 2"
        )
    with mock.patch.object(
        sys, "argv", ["/venv/bin/smoothalign", "study", "reward", "--seeds", "2"]
    ):
        assert invoked_command(rs.__name__) == "smoothalign study reward --seeds 2"
    cli_file = str(Path(rs.__file__).parents[1] / "cli.py")  # python -m smoothalign.cli study …
    with mock.patch.object(sys, "argv", [cli_file, "study", "reward", "--seeds", "2"]):
        assert invoked_command(rs.__name__) == "smoothalign study reward --seeds 2"


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="methods"):
        rs.RewardStudyConfig(methods=("nope",))
    with pytest.raises(ValueError, match="seeds: need at least one"):
        rs.RewardStudyConfig(seeds=())
    with pytest.raises(ValueError, match="annotators"):
        rs.RewardStudyConfig(annotators=(0,))
    with pytest.raises(ValueError, match="order"):
        rs.RewardStudyConfig(order="sorted")
    with pytest.raises(ValueError, match="n_train: repeated"):  # would count as extra seeds
        rs.RewardStudyConfig(n_train=(100, 100))


@pytest.mark.parametrize(
    "extra, named", [(["--lm-seeds", "0"], "--lm-seeds: only"),
                     (["--lm-seeds", "2", "--lm-steps", "5"], "--lm-seeds and --lm-steps: only")]
)  # fmt: skip
def test_lm_options_without_lm_are_refused(tmp_path, capsys, extra, named):
    from smoothalign.cli import main

    out = tmp_path / "o"
    assert main(["study", "reward", "--quick", "--output-dir", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert named in err and "add --lm, or leave" in err
    assert not out.exists()


def test_an_even_number_of_annotators_is_warned_about(tmp_path, capsys):
    """docs/results.md reads the tables with odd K (no tied votes); an even K runs, warned."""
    from smoothalign.cli import main

    argv = ["study", "reward", "--quick", "--steps", "2", "--seeds", "1", "--no-progress"]
    assert main([*argv, "--annotators", "3", "4", "--output-dir", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "warning: --annotators 4: with an even K a pair's votes can tie" in err
    assert main([*argv, "--annotators", "3", "--output-dir", str(tmp_path / "b")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_the_lm_part_prints_no_progress_bar_without_progress(tmp_path, capfd):
    """`study reward --lm --no-progress` used to print every tiny-LM run's Trainer and
    "Writing model shards" bars (45 lines for --lm-seeds 1 --lm-steps 5)."""
    from smoothalign import progress
    from smoothalign.cli import main

    argv = ["study", "reward", "--quick", "--steps", "20", "--seeds", "1", "--lm", "--lm-seeds",
            "1", "--lm-steps", "2", "--no-progress", "--output-dir", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    captured = capfd.readouterr()
    for bar in ("it/s]", "s/it]", "Writing model shards", "%|"):
        assert bar not in captured.err + captured.out, bar
    assert "train_runtime" not in captured.out  # nor the Trainer's log lines (metrics.jsonl)
    assert "lm" in json.loads((tmp_path / "results.json").read_text())
    assert progress.enabled()


def test_one_seed_prints_no_spread(tmp_path):
    """`--seeds 1` printed "± 0.0000" in every cell and "over 1 seeds": now "± n/a"."""
    from smoothalign.cli import main

    out = tmp_path / "o"
    argv = ["study", "reward", "--quick", "--steps", "2", "--seeds", "1", "--no-progress"]
    assert main([*argv, "--output-dir", str(out)]) == 0
    table = (out / "table.md").read_text()
    assert "± 0.0" not in table and "± n/a" in table
    assert "mean ± std over 1 seed (one seed: no spread, ± n/a)." in table
