"""The logistic-regression study (SPEC §7) and the theory figures."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from smoothalign import optimal_alpha
from smoothalign.cli import build_parser, main
from smoothalign.experiments import logreg
from smoothalign.experiments.logreg import (
    MAIN_METHODS,
    LogRegConfig,
    Method,
    evaluate,
    fit_methods,
    make_task,
    run_study,
    winner_confidence,
)
from smoothalign.experiments.logreg_cli import build_config
from smoothalign.experiments.theory_plots import update_magnitude

STUDY_FILES = (
    "results.json",
    "table.md",
    "logreg_test_loss.png",
    "c0_ablation.png",
    "optimal_alpha.png",
    "equilibrium.png",
    "update_dynamics.png",
)

MLE = Method("mle", "MLE", "none")
ORACLE_L2 = Method("oracle-l2", "oracle-ℓ2", "oracle-l2")
ORACLE_L0 = Method("oracle-l0", "oracle-ℓ0", "oracle-l0")
CALS_L2 = Method("cals-l2", "CALS-ℓ2", "cals-l2")
CALS_L0 = Method("cals-l0", "CALS-ℓ0", "cals-l0")


def _fit(d: int, n: int, seed: int, methods, *, steps: int, signal: float = 2.5, n_test=4000):
    task = make_task(d, seed, signal, n, n_test)
    q = winner_confidence(torch.sigmoid(task.x_train @ task.theta_star), task.z_train)
    fit = fit_methods(task.x_train, task.z_train, q, methods, steps=steps, lr=1.0)
    return task, fit, evaluate(fit.theta, task.theta_star, task.x_test)


def _without_timing(runs):
    return [{k: v for k, v in r.items() if k != "fit_seconds_all_methods"} for r in runs]


# ----------------------------------------------------------------------------- end to end


def test_quick_study_writes_every_file(tmp_path, capsys):
    out = tmp_path / "logreg"
    assert main(["study", "logreg", "--quick", "--no-progress", "--output-dir", str(out)]) == 0
    for name in STUDY_FILES:
        assert (out / name).stat().st_size > 0, name
    for name in STUDY_FILES:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    results = json.loads((out / "results.json").read_text())
    cfg = LogRegConfig.quick()
    methods = logreg.study_methods(cfg)
    n_fits = sum(len(cfg.n_values(d)) for d in cfg.dims) * len(cfg.seeds)
    assert len(results["runs"]) == n_fits * len(methods)
    assert len(results["aggregates"]) == n_fits // len(cfg.seeds) * len(methods)
    assert results["config"]["dims"] == list(cfg.dims)
    assert results["calibrator_defaults"]["bins"] == 20
    for r in results["runs"]:
        for k in ("test_kl", "test_bce", "test_accuracy", "test_ece", "cosine"):
            assert math.isfinite(r[k]), (k, r)
        assert r["test_kl"] >= 0
        # cross-entropy against p* = KL + H(p*): the two metrics agree
        assert r["test_bce"] == pytest.approx(r["test_kl"] + r["bayes_bce"], abs=1e-9)

    table = (out / "table.md").read_text()
    printed = capsys.readouterr().out
    for text in (table, printed):
        assert "| d | n | MLE | CALS-ℓ2 | CALS-ℓ0 | oracle-ℓ2 | oracle-ℓ0 |" in text
        assert "CALS-ℓ2 c₀=0.8" in text
    # one row per (d, n) in each table
    assert table.count("\n| 10 | 100 |") == 5


def test_study_is_deterministic_under_its_seeds():
    cfg = LogRegConfig.quick(dims=(6,), n_multipliers=(2, 20), steps=25, n_test=500)
    a = run_study(cfg, progress=False)
    b = run_study(cfg, progress=False)
    assert _without_timing(a["runs"]) == _without_timing(b["runs"])
    # another seed gives other data
    c = run_study(LogRegConfig.quick(**{**a["config"], "seeds": (7, 8)}), progress=False)
    assert [r["test_kl"] for r in c["runs"]] != [r["test_kl"] for r in a["runs"]]


def test_a_sub_grid_fits_the_same_pairs_as_the_full_grid():
    """Pair i depends on (seed, d, i) only: asking for n = 2d alone gives the same fit."""
    full = LogRegConfig.quick(dims=(6,), n_multipliers=(2, 300), steps=10, n_test=300)
    sub = LogRegConfig.quick(dims=(6,), n_multipliers=(2,), steps=10, n_test=300)
    methods = logreg.study_methods(full)[:2]
    a = logreg.run_fit(full, 6, 0, 12, methods)
    b = logreg.run_fit(sub, 6, 0, 12, methods)
    assert _without_timing(a) == _without_timing(b)
    big = make_task(6, 0, 2.5, 3000, 10)
    small = make_task(6, 0, 2.5, 12, 10)
    assert torch.equal(big.x_train[:12], small.x_train)
    assert torch.equal(big.z_train[:12], small.z_train)


@pytest.mark.slow
def test_worker_processes_give_the_same_numbers():
    cfg = LogRegConfig.quick(dims=(6,), n_multipliers=(2, 20), steps=25, n_test=500)
    one = run_study(cfg, workers=1, progress=False)
    two = run_study(cfg, workers=2, progress=False)
    assert _without_timing(one["runs"]) == _without_timing(two["runs"])


# ----------------------------------------------------------------------------- the claims


def test_default_labels_are_noisy():
    """The default ‖θ*‖ gives a mean label confidence in the noisy range 0.75–0.85, and
    the labels follow p*."""
    task = make_task(20, 0, LogRegConfig().signal, 20000, 20000)
    p = torch.sigmoid(task.x_train @ task.theta_star)
    conf = torch.maximum(p, 1 - p).mean()
    assert 0.78 < float(conf) < 0.84
    assert float(task.z_train.mean()) == pytest.approx(float(p.mean()), abs=0.01)
    assert float(task.theta_star.norm()) == pytest.approx(2.5)


def test_oracle_l2_beats_mle_with_few_noisy_pairs():
    """n = 2d noisy pairs sit at the separability threshold d/n = 1/2 (Cover 1965; Candès &
    Sur 2020): the MLE either does not exist (separable data, ‖θ‖ grows for ever under
    gradient descent) or is hugely inflated, so the fitted forecasts are over-confident.
    With the true q the smoothed targets stay strictly inside (0, 1), the fit stays bounded
    and close to p*. This is the regime where smoothing must win; it does by a wide margin."""
    for seed in range(3):
        task, fit, m = _fit(20, 40, seed, [MLE, ORACLE_L2], steps=200)
        kl_mle, kl_oracle = m["test_kl"]
        norm_mle, norm_oracle = m["theta_norm"]
        assert norm_mle > 2 * float(task.theta_star.norm()), "the MLE fit should be inflated"
        assert norm_oracle < float(task.theta_star.norm())  # pulled toward 1/2 (SPEC §3)
        assert kl_oracle < 0.5 * kl_mle, (seed, kl_oracle, kl_mle)


def test_mle_recovers_the_direction_of_theta_star_with_many_pairs():
    _, _, m = _fit(10, 2000, 0, [MLE], steps=200)
    assert m["cosine"][0] >= 0.95
    assert m["test_accuracy"][0] >= 0.95


def test_cals_smoothing_tracks_the_oracle_with_many_pairs():
    """With n = 100d the calibrator's confidence estimates approach the true q: the mean α
    CALS applies is within 0.03 of the oracle's, for both metrics."""
    _, fit, m = _fit(10, 1000, 0, [CALS_L2, ORACLE_L2, CALS_L0, ORACLE_L0], steps=200)
    alpha = fit.final_alpha.tolist()
    assert alpha[0] == pytest.approx(alpha[1], abs=0.03)
    assert alpha[2] == pytest.approx(alpha[3], abs=0.03)
    assert alpha[1] > alpha[3] > 0.1  # ℓ2 smooths more than ℓ0 (a*ℓ2 ≥ a*ℓ0)


def test_fitting_methods_together_equals_fitting_them_alone():
    task = make_task(5, 3, 2.5, 60, 100)
    q = winner_confidence(torch.sigmoid(task.x_train @ task.theta_star), task.z_train)
    both = fit_methods(task.x_train, task.z_train, q, [MLE, CALS_L2], steps=30, lr=1.0)
    alone = fit_methods(task.x_train, task.z_train, q, [CALS_L2], steps=30, lr=1.0)
    torch.testing.assert_close(both.theta[1], alone.theta[0], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- metrics


def test_metrics_against_direct_formulas():
    g = torch.Generator().manual_seed(0)
    theta_star = torch.randn(4, generator=g, dtype=torch.float64)
    x = torch.randn(3000, 4, generator=g, dtype=torch.float64)
    theta = torch.stack([theta_star, 0.5 * theta_star, -theta_star, torch.zeros(4).double()])
    m = evaluate(theta, theta_star, x)
    p = torch.sigmoid(x @ theta_star)
    for i in range(theta.shape[0]):
        f = torch.sigmoid(x @ theta[i])
        kl = (p * torch.log(p / f) + (1 - p) * torch.log((1 - p) / (1 - f))).mean()
        bce = (-p * torch.log(f) - (1 - p) * torch.log(1 - f)).mean()
        assert m["test_kl"][i] == pytest.approx(float(kl), rel=1e-9, abs=1e-12)
        assert m["test_bce"][i] == pytest.approx(float(bce), rel=1e-9)
    assert m["test_kl"][0] == pytest.approx(0.0, abs=1e-12)
    assert m["test_accuracy"][:3] == [1.0, 1.0, 0.0]
    assert m["cosine"][:3] == pytest.approx([1.0, 1.0, -1.0])


def _sample_std(xs):
    """Sample standard deviation (ddof = 1), by hand."""
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _fake_run(d, n, method, seed, test_kl):
    """A per-seed record with every aggregated metric; the other metrics are set from the
    seed so that their mean and std are known too."""
    r = {"d": d, "n": n, "method": method, "seed": seed, "test_kl": test_kl}
    for k in (*logreg.METRICS, "bayes_bce"):
        r.setdefault(k, 0.1 * seed + 0.01 * len(method))
    r["cosine"] = 1.0 - 0.05 * seed**2
    return r


def test_aggregate_pairs_each_seed_with_the_mle_of_the_same_d_and_n():
    """Known per-seed KLs: the paired differences KL(method) − KL(MLE) are taken on the same
    (d, n, seed) only; a wins count is strictly lower KL (a tie is not a win); std is ddof=1."""
    mle_30 = {0: 0.10, 1: 0.20, 2: 0.15, 3: 0.30}
    cals_30 = {0: 0.08, 1: 0.25, 2: 0.15, 3: 0.21, 4: 0.05}  # seed 4 has no MLE run
    mle_60 = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}  # same seeds, another n: must not be paired
    cals_60 = {0: 1.5, 1: 1.0}
    runs = [_fake_run(3, 30, "mle", s, v) for s, v in mle_30.items()]
    runs += [_fake_run(3, 60, "mle", s, v) for s, v in mle_60.items()]
    runs += [_fake_run(3, 30, "cals-l2", s, v) for s, v in cals_30.items()]
    runs += [_fake_run(3, 60, "cals-l2", s, v) for s, v in cals_60.items()]
    runs += [_fake_run(5, 50, "cals-l2", s, 0.3) for s in (0, 1)]  # no MLE at (5, 50)
    order = [7, 2, 12, 0, 16, 9, 4, 14, 1, 11, 6, 15, 3, 10, 8, 5, 13]  # pairing is not by position
    assert sorted(order) == list(range(len(runs)))
    agg = logreg.aggregate([runs[i] for i in order])
    rows = {(a["d"], a["n"], a["method"]): a for a in agg}
    assert set(rows) == {(3, 30, "mle"), (3, 60, "mle"), (3, 30, "cals-l2"), (3, 60, "cals-l2"),
                         (5, 50, "cals-l2")}  # fmt: skip

    row = rows[(3, 30, "cals-l2")]
    diffs = [cals_30[s] - mle_30[s] for s in (0, 1, 2, 3)]  # −0.02, +0.05, 0, −0.09
    assert row["seeds"] == 5 and row["paired_seeds"] == 4
    assert row["seeds_better_than_mle"] == 2  # seeds 0 and 3; seed 2 ties
    assert row["kl_minus_mle_mean"] == pytest.approx(-0.015, abs=1e-12)
    assert row["kl_minus_mle_std"] == pytest.approx(_sample_std(diffs), abs=1e-12)
    assert row["kl_minus_mle_std"] == pytest.approx(math.sqrt(0.0101 / 3), abs=1e-12)
    # the plain per-method summaries: mean and ddof=1 std over all five seeds
    assert row["test_kl_mean"] == pytest.approx(0.148, abs=1e-12)
    assert row["test_kl_std"] == pytest.approx(_sample_std(list(cals_30.values())), abs=1e-12)
    cos = [1.0 - 0.05 * s**2 for s in range(5)]
    assert row["cosine_mean"] == pytest.approx(sum(cos) / 5, abs=1e-12)
    assert row["cosine_std"] == pytest.approx(_sample_std(cos), abs=1e-12)

    row = rows[(3, 60, "cals-l2")]  # +0.5 and −1.0 against the n = 60 MLE
    assert row["paired_seeds"] == 2 and row["seeds_better_than_mle"] == 1
    assert row["kl_minus_mle_mean"] == pytest.approx(-0.25, abs=1e-12)
    assert row["kl_minus_mle_std"] == pytest.approx(1.5 / math.sqrt(2), abs=1e-12)

    mle = rows[(3, 30, "mle")]  # against itself: no wins, no difference
    assert mle["paired_seeds"] == 4 and mle["seeds_better_than_mle"] == 0
    assert mle["kl_minus_mle_mean"] == 0 and mle["kl_minus_mle_std"] == 0
    unpaired = rows[(5, 50, "cals-l2")]
    assert "paired_seeds" not in unpaired and "kl_minus_mle_mean" not in unpaired
    assert unpaired["test_kl_std"] == 0

    # the table prints wins/paired seeds and the mean paired difference
    results = {
        "config": {"dims": [3], "n_multipliers": [10, 20]},
        "methods": [dataclasses.asdict(MLE), dataclasses.asdict(CALS_L2)],
        "aggregates": agg,
    }
    table = logreg.paired_table(results, ["mle", "cals-l2"])
    assert "| 3 | 30 | 0/4 (+0.0000) | 2/4 (-0.0150) |" in table
    assert "| 3 | 60 | 0/4 (+0.0000) | 1/2 (-0.2500) |" in table


def test_ablation_methods_and_their_c0():
    methods = logreg.study_methods(LogRegConfig())
    names = [m.name for m in methods]
    assert names[:5] == [m.name for m in MAIN_METHODS]
    assert len(names) == len(set(names)) == 9
    # c₀ = 1.0 is the library default, i.e. the main CALS run itself
    assert logreg.ablation_method(methods, "l2", 1.0).name == "cals-l2"
    assert logreg.ablation_method(methods, "l0", 0.8).init_confidence == 0.8
    policy = logreg.ablation_method(methods, "l2", 0.9).make()
    assert policy.calibrator.init_confidence == 0.9


def test_cli_options_override_quick_and_defaults():
    parser = build_parser()
    args = parser.parse_args(
        ["study", "logreg", "--quick", "--steps", "7", "--seeds", "3", "--first-seed", "10"]
    )
    cfg = build_config(args)
    assert cfg.steps == 7 and cfg.seeds == (10, 11, 12) and cfg.dims == LogRegConfig.quick().dims
    cfg = build_config(parser.parse_args(["study", "logreg", "--dims", "4", "--signal", "1.5"]))
    assert cfg == LogRegConfig(dims=(4,), signal=1.5)
    with pytest.raises(ValueError, match="signal"):
        LogRegConfig(signal=0.0)
    with pytest.raises(ValueError, match="dims: repeated"):  # would count as extra seeds
        LogRegConfig(dims=(5, 5))
    with pytest.raises(ValueError, match="--first-seed"):  # named, before the study starts
        build_config(parser.parse_args(["study", "logreg", "--first-seed", "-1", "--seeds", "1"]))


# ----------------------------------------------------------------------------- theory plots


def test_update_magnitude():
    p = np.linspace(0, 1, 11)
    c = np.array([0.5, 0.8, 1.0])
    dpo = update_magnitude(p, c, None)
    np.testing.assert_allclose(dpo, np.broadcast_to(1 - p, dpo.shape))
    for metric in ("l0", "l2"):
        g = update_magnitude(p, c, metric)
        target = 1 - optimal_alpha(c, metric)
        np.testing.assert_allclose(g, np.abs(p[None, :] - target[:, None]))
        assert g[0, 5] == pytest.approx(0.0)  # c = 1/2: the update stops at forecast 1/2
        np.testing.assert_allclose(g[2], dpo[2])  # c = 1: CALS is DPO


def test_every_refused_option_is_named_by_its_flag_as_every_input_error(
    tmp_path, capsys, monkeypatch
):
    """`--c0 1.5` was refused as "c0_values: must lie in [0, 1]" (the config's field, not a
    flag), and `--workers 0` printed a message of its own, without the traceback file's
    line that the other input errors have. Each refusal now names the flag typed, in the
    one format of cli.main, before the study runs."""
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    out = tmp_path / "out"
    for options, message in [
        (("--c0", "1.5"), "--c0: must lie in [0, 1]"),
        (("--c0", "0.9", "0.9"), "--c0: repeated value"),
        (("--dims", "0"), "--dims: need positive integers"),
        (("--n-multipliers", "0"), "--n-multipliers: need positive integers"),
        (("--steps", "0"), "--steps: must be >= 1"),
        (("--lr", "0"), "--lr: must be > 0"),
        (("--signal", "0"), "--signal: must be > 0"),
        (("--n-test", "0"), "--n-test: must be >= 1"),
        (("--seeds", "0"), "--seeds: need at least 1"),
        (("--workers", "0"), "--workers: must be >= 1, got 0"),
    ]:
        argv = ["study", "logreg", "--quick", "--output-dir", str(out), *options]
        assert main(argv) == 2, options
        err = capsys.readouterr().err
        assert err.startswith(f"smoothalign study logreg: {message}"), (options, err)
        assert "\n(traceback: " in err, options
    assert not out.exists()


def test_one_seed_prints_no_spread(tmp_path, capsys):
    """`--seeds 1` printed "± 0.0000" in every cell and "over 1 seeds": a spread that one
    seed cannot measure. Now "± n/a", and "1 seed"."""
    out = tmp_path / "out"
    argv = ["study", "logreg", "--quick", "--seeds", "1", "--dims", "5", "--n-multipliers", "2"]
    assert main([*argv, "--no-progress", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    table = (out / "table.md").read_text()
    assert "± 0.0000" not in table and "± n/a" in table
    assert "over 1 seed (one seed: no spread, ± n/a);" in table
    assert "1 seeds" not in printed and "1 seed," in printed
    results = json.loads((out / "results.json").read_text())
    two = {**results, "config": {**results["config"], "seeds": [0, 1]}}
    two["aggregates"] = [{**a, "seeds": 2} for a in results["aggregates"]]
    assert "± n/a" not in logreg.markdown_report(two)  # two seeds: the spread is printed
