"""The noisy-preference study: methods, the training loop, the metrics, the claim check, the
judge, and `smoothalign study preference` end to end (small enough for CI)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from smoothalign.cli import main
from smoothalign.experiments import preference as pref
from smoothalign.experiments.preference_report import claim_check, claim_markdown, markdown_report
from smoothalign.experiments.token_world import TokenWorldConfig

TINY = dict(
    train_pairs=48,
    eval_pairs=32,
    sample_prompts=8,
    samples_per_prompt=2,
    steps=6,
    batch_size=16,
    world=TokenWorldConfig(ref_steps=3, ref_batch=8),
)


def test_default_grid_is_the_issue_grid():
    cfg = pref.PreferenceStudyConfig()
    names = [m.name for m in cfg.ordered_methods()]
    assert names[0] == "dpo"
    assert {f"cdpo-{a}" for a in ("0.05", "0.1", "0.2", "0.3")} <= set(names)
    assert {"rdpo-true", "rdpo-wrong", "ipo", "oracle-l0", "oracle-l2"} <= set(names)
    cals = [m for m in names if m.startswith("cals-") and "warmup" not in m]
    assert len(cals) == 6  # {l0, l2} × c₀ ∈ {0.8, 0.9, 1.0}
    assert cfg.flip_rates == (0.0, 0.1, 0.2, 0.3, 0.4) and len(cfg.seeds) >= 3


@pytest.mark.parametrize("true_rate", [0.0, 0.1, 0.2, 0.3, 0.4])
def test_rdpo_wrong_rate_is_wrong_and_valid(true_rate):
    wrong = pref.METHODS["rdpo-wrong"].assumed_flip_rate(true_rate)
    assert abs(wrong - true_rate) == pytest.approx(0.1)
    assert 0 <= wrong < 0.5
    assert pref.METHODS["rdpo-true"].assumed_flip_rate(true_rate) == true_rate


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="methods"):
        pref.PreferenceStudyConfig(methods=("dpo", "nope"))
    with pytest.raises(ValueError, match="flip_rates"):
        pref.PreferenceStudyConfig(flip_rates=(0.5,))
    with pytest.raises(ValueError, match="steps"):
        pref.PreferenceStudyConfig(steps=0)
    with pytest.raises(ValueError, match="flip_rates: repeated"):  # would count as extra seeds
        pref.PreferenceStudyConfig(flip_rates=(0.2, 0.2))


def test_win_rate_counts_ties_half():
    s = torch.tensor([1.0, 0.0, 0.5, 0.2])
    b = torch.tensor([0.0, 1.0, 0.5, 0.1])
    assert pref.win_rate(s, b) == pytest.approx((1 + 0 + 0.5 + 1) / 4)


def test_cals_with_c0_one_trains_exactly_like_dpo_at_first():
    """With c₀ = 1 and one step, CALS gives α = 0 (no evidence yet): the same model as DPO."""
    cfg = pref.PreferenceStudyConfig(**{**TINY, "steps": 1})
    sw = pref.seed_world(cfg, 0)
    data = sw.train.labelled(0.2)
    with torch.no_grad():
        rc = sw.world.logps(sw.world.reference, data.prompts, data.chosen)
        rr = sw.world.logps(sw.world.reference, data.prompts, data.rejected)
    m_dpo, _ = pref.train_method(sw.world, data, rc, rr, pref.METHODS["dpo"], 0.2, cfg, 0)
    m_cals, trace = pref.train_method(
        sw.world, data, rc, rr, pref.METHODS["cals-l2-c1"], 0.2, cfg, 0
    )
    assert trace["alpha_mean"] == [0.0]
    for a, b in zip(m_dpo.parameters(), m_cals.parameters(), strict=True):
        assert torch.equal(a, b)
    # the reference itself is untouched by training
    assert all(not p.requires_grad for p in sw.world.reference.parameters())


def test_oracle_alpha_is_the_optimal_rule_of_the_true_q():
    cfg = pref.PreferenceStudyConfig(**{**TINY, "steps": 3})
    sw = pref.seed_world(cfg, 0)
    data = sw.train.labelled(0.0)
    with torch.no_grad():
        rc = sw.world.logps(sw.world.reference, data.prompts, data.chosen)
        rr = sw.world.logps(sw.world.reference, data.prompts, data.rejected)
    _, trace = pref.train_method(sw.world, data, rc, rr, pref.METHODS["oracle-l2"], 0.0, cfg, 0)
    # every pair's α is 2q(1−q); the whole training set is seen in the first 3 batches of 16
    q = data.q_chosen
    expected = (2 * q * (1 - q)).mean()
    got = sum(trace["alpha_mean"][:3]) / 3
    assert got == pytest.approx(float(expected), abs=1e-6)


def test_evaluation_scores_the_reference_as_uninformative():
    """The reference itself has margin 0 on every held-out pair: accuracy ½ on decided pairs,
    KL to itself 0, and its forecasts σ(0) = ½ scored against the true q."""
    cfg = pref.PreferenceStudyConfig(**TINY)
    sw = pref.seed_world(cfg, 0)
    metrics, samples, _ = pref.evaluate(sw.world, sw.world.reference, sw.held, cfg.beta, 0)
    assert metrics["accuracy_true"] == pytest.approx(0.5)
    assert metrics["kl_ref"] == pytest.approx(0.0, abs=1e-6)
    q = sw.held.pairs.q.double()
    kl = (q * torch.log(q / 0.5) + (1 - q) * torch.log((1 - q) / 0.5)).nan_to_num(0.0)
    assert metrics["kl_true"] == pytest.approx(float(kl.mean()), abs=1e-9)
    reward = sw.world.reward(sw.held.prompts, samples).mean()
    assert metrics["reward"] == pytest.approx(float(reward))


def test_dpo_learns_the_oracle_on_clean_labels():
    """Enough steps on clean labels: held-out accuracy against the truth and the oracle
    reward of samples both rise above the reference's."""
    cfg = pref.PreferenceStudyConfig(
        **{
            **TINY,
            "train_pairs": 1024,
            "eval_pairs": 256,
            "sample_prompts": 64,
            "steps": 150,
            "batch_size": 64,
            "lr": 2e-3,
            "methods": ("dpo",),
            "world": TokenWorldConfig(ref_steps=20, ref_batch=16),
        }
    )
    recs = pref.run_group(cfg, 0, 0.0)
    print(recs[0])
    assert recs[0]["accuracy_true"] > 0.6  # the reference scores exactly ½
    assert recs[0]["reward"] > 0.05  # the reference's samples score ~0
    assert recs[0]["kl_ref"] > 0


def _fake_results(cals_acc: float, cals_ece: float) -> dict:
    runs = []
    for seed in (0, 1):
        for eps in (0.0, 0.2):
            for method, acc, ece in (
                ("dpo", 0.60, 0.20),
                ("cdpo-0.1", 0.64, 0.10),
                ("cdpo-0.2", 0.62, 0.08),
                ("cals-l2-c1", cals_acc, cals_ece),
            ):
                runs.append(
                    {
                        "seed": seed,
                        "flip_rate": eps,
                        "method": method,
                        "accuracy_true": acc,
                        "ece_true": ece + 0.01 * seed,
                    }
                )
    return {"runs": runs, "aggregates": pref.aggregate(runs)}


def test_claim_check_compares_with_dpo_and_the_best_constant_in_hindsight():
    good = claim_check(_fake_results(0.65, 0.07))
    assert good["holds"] and good["flip_rates"] == [0.2]
    by_metric = {r["metric"]: r for r in good["rows"]}
    assert by_metric["accuracy_true"]["vs_best_constant"] == "cdpo-0.1"
    assert by_metric["ece_true"]["vs_best_constant"] == "cdpo-0.2"
    assert by_metric["accuracy_true"]["gain_vs_best_constant_mean"] == pytest.approx(0.01)
    assert by_metric["ece_true"]["gain_vs_dpo_mean"] == pytest.approx(0.13)
    assert by_metric["ece_true"]["seeds_at_least_best_constant"] == 2
    # better than DPO, worse than the best constant on accuracy: the claim fails
    bad = claim_check(_fake_results(0.63, 0.07))
    assert not bad["holds"]
    assert bad["holds_per_variant"] == {"cals-l2-c1": False}


def test_claim_without_a_constant_alpha_is_not_tested_rather_than_false():
    """No cdpo-* method ran: the comparison with the best constant is missing, which is no
    evidence against the claim; the verdict says the claim was not tested."""
    results = _fake_results(0.70, 0.05)
    results["runs"] = [r for r in results["runs"] if not r["method"].startswith("cdpo-")]
    results["aggregates"] = pref.aggregate(results["runs"])
    check = claim_check(results)
    assert not check["tested"]
    text = claim_markdown(check)
    assert "The claim was not tested" in text and "does not hold" not in text
    assert claim_check(_fake_results(0.65, 0.07))["tested"]


def test_claim_table_counts_the_seeds_of_each_comparison_apart():
    """DPO on seeds 0-1, the best constant on seed 0 only: each k/n has its own n."""
    results = _fake_results(0.65, 0.07)
    results["runs"] = [
        r for r in results["runs"] if not (r["method"].startswith("cdpo-") and r["seed"] == 1)
    ]
    results["aggregates"] = pref.aggregate(results["runs"])
    text = claim_markdown(claim_check(results))
    row = next(line for line in text.splitlines() if "| accuracy_true | cals-l2-c1 |" in line)
    assert "(2/2) |" in row and "(1/1) (cdpo-0.1)" in row


def test_claim_with_only_warm_up_variants_says_no_variant_of_the_grid_ran():
    results = _fake_results(0.70, 0.05)
    for r in results["runs"]:
        if r["method"] == "cals-l2-c1":
            r["method"] = "cals-l2-c1-warmup"
    results["aggregates"] = pref.aggregate(results["runs"])
    text = claim_markdown(claim_check(results))
    assert "no CALS variant of the grid ran" in text
    assert "every such flip rate: none" in text  # the warm-up variant is not listed


def test_claim_that_fails_against_dpo_does_not_hold_even_without_a_constant():
    results = _fake_results(0.55, 0.30)  # worse than DPO on both metrics
    results["runs"] = [r for r in results["runs"] if not r["method"].startswith("cdpo-")]
    results["aggregates"] = pref.aggregate(results["runs"])
    check = claim_check(results)
    assert check["tested"] and not check["holds"]
    assert "The claim does not hold" in claim_markdown(check)


def test_cli_quick_run_writes_every_output(tmp_path, monkeypatch):
    out = tmp_path / "study"
    code = main(
        ["study", "preference", "--quick", "--methods", "dpo,cdpo-0.1,cals-l2-c1,oracle-l2",
         "--flip-rates", "0,0.2", "--seeds", "2", "--steps", "4", "--train-pairs", "32",
         "--eval-pairs", "16", "--sample-prompts", "4", "--output-dir", str(out),
         "--no-progress"]
    )  # fmt: skip
    assert code == 0
    for name in (
        "results.json",
        "table.md",
        "accuracy_vs_flip.png",
        "ece_vs_flip.png",
        "reward_vs_kl.png",
        "alpha_histograms.png",
    ):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 4 * 2 * 2
    assert {r["method"] for r in results["runs"]} == {"dpo", "cdpo-0.1", "cals-l2-c1", "oracle-l2"}
    dpo = [r for r in results["runs"] if r["method"] == "dpo"]
    assert all(r["win_rate"] == 0.5 for r in dpo)  # against itself, every draw ties
    assert results["run_info"]["wall_seconds"] > 0
    assert "claim" in results and "rows" in results["claim"]
    assert "## Flip rate 0.2" in (out / "table.md").read_text()
    # the report re-renders from results.json alone, to the same table
    again = tmp_path / "again"
    rerender = ["study", "preference", "--from-results", str(out / "results.json")]
    assert main([*rerender, "--output-dir", str(again)]) == 0
    assert (again / "table.md").read_text() == (out / "table.md").read_text()
    assert (again / "alpha_histograms.png").stat().st_size > 0
    # an --output-dir equal to the default is honoured too (it was taken for "not given")
    monkeypatch.chdir(tmp_path)
    assert main([*rerender, "--output-dir", "outputs/preference"]) == 0
    assert (tmp_path / "outputs" / "preference" / "table.md").is_file()


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert (
        main(["study", "preference", "--methods", "dpo,bogus", "--output-dir", str(tmp_path)]) == 2
    )
    assert "bogus" in capsys.readouterr().err
    assert main(["study", "preference", "--judge", str(tmp_path / "nothing")]) == 2
    assert main(["study", "preference", "--quick", "--workers", "0",
                 "--output-dir", str(tmp_path)]) == 2  # fmt: skip
    assert "--workers: must be >= 1" in capsys.readouterr().err
    export = ["study", "preference", "--quick", "--export-votes", str(tmp_path / "v.jsonl")]
    assert main([*export, "--export-flip-rate", "0.7"]) == 2  # before the reference trains
    assert "--export-flip-rate: must lie in [0, 0.5)" in capsys.readouterr().err


def test_reward_model_trained_on_the_worlds_votes_judges_the_study(tmp_path):
    """The whole soft-label loop: the world's vote shares train a reward model, which then
    judges the study's samples; its scores equal a direct forward pass of that model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from smoothalign.experiments.judge import RewardModelJudge
    from smoothalign.reward import RewardConfig, run_reward

    votes = tmp_path / "votes.jsonl"
    assert main(["study", "preference", "--export-votes", str(votes), "--annotators", "5",
                 "--train-pairs", "40", "--quick"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in votes.read_text().splitlines()]
    assert len(rows) == 40 and all(0 <= r["p_chosen"] <= 1 for r in rows)
    run_reward(
        RewardConfig(
            model="tiny", data=str(votes), output_dir=str(tmp_path / "rm"), max_steps=2,
            batch_size=8, eval_steps=0, logging_steps=1, lr_warmup_steps=0, max_length=32,
            report=False,
        )
    )  # fmt: skip
    final = tmp_path / "rm" / "final"
    judge = RewardModelJudge(final)
    scores = judge.score_texts(["C:ab", "A:"], ["cdef", "ab"])
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    tok = AutoTokenizer.from_pretrained(final)
    for i, (p, r) in enumerate((("C:ab", "cdef"), ("A:", "ab"))):
        ids = tok(p, add_special_tokens=False)["input_ids"]
        ids = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + ids
        ids += tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            direct = model(input_ids=torch.tensor([ids])).logits[0, 0]
        assert float(scores[i]) == pytest.approx(float(direct), abs=1e-5)

    out = tmp_path / "judged"
    assert main(["study", "preference", "--quick", "--methods", "dpo,cals-l2-c1",
                 "--flip-rates", "0.2", "--seeds", "1", "--steps", "2", "--train-pairs", "16",
                 "--eval-pairs", "8", "--sample-prompts", "4", "--judge", str(final),
                 "--output-dir", str(out), "--no-progress"]) == 0  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["judge"].startswith("reward model")
    assert "reward model" in markdown_report(results)


def test_judge_refuses_what_is_not_a_scalar_classifier(tmp_path):
    from smoothalign.experiments.judge import RewardModelJudge
    from smoothalign.models import load_model_and_tokenizer

    with pytest.raises(FileNotFoundError, match="config.json"):
        RewardModelJudge(tmp_path)
    lm, tok = load_model_and_tokenizer("tiny")
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match="ForSequenceClassification"):
        RewardModelJudge(tmp_path / "lm")


def test_results_json_is_strict_json(tmp_path):
    out = Path(tmp_path)
    cfg = pref.PreferenceStudyConfig(**{**TINY, "methods": ("dpo",), "flip_rates": (0.1,),
                                        "seeds": (0,)})  # fmt: skip
    results = pref.run_study(cfg, progress=False)
    from smoothalign.io import atomic_write_json

    atomic_write_json(out / "r.json", results)
    json.loads((out / "r.json").read_text(), parse_constant=lambda c: pytest.fail(c))


# ------------------------------------------------------------- where a confidence comes from
def _labelled_with_refs(cfg, flip_rate):
    sw = pref.seed_world(cfg, 0)
    data = sw.train.labelled(flip_rate)
    with torch.no_grad():
        rc = sw.world.logps(sw.world.reference, data.prompts, data.chosen)
        rr = sw.world.logps(sw.world.reference, data.prompts, data.rejected)
    return sw, data, rc, rr


def test_relabelled_soft_target_is_the_confidence_in_the_original_orientation():
    """Relabelling where q̂ < ½ and smoothing with α = 1 − q̂ (ℓ0 on q̂ ≥ ½) is exactly the
    soft-label loss −q̂·log σ(h) − (1 − q̂)·log σ(−h) of the original pair (float64)."""
    from smoothalign.smoothing import make_policy
    from smoothalign.train.objective import dpo_terms

    cfg = pref.PreferenceStudyConfig(**TINY)
    _, data, rc, rr = _labelled_with_refs(cfg, 0.3)
    gen = torch.Generator().manual_seed(0)
    q_hat = torch.rand(data.prompts.shape[0], generator=gen, dtype=torch.float64)
    lp_c = torch.randn(q_hat.shape, generator=gen, dtype=torch.float64)
    lp_r = torch.randn(q_hat.shape, generator=gen, dtype=torch.float64)
    new, new_rc, new_rr, new_q = pref.relabelled(data, rc.double(), rr.double(), q_hat)
    swap = q_hat < 0.5
    assert torch.equal(new.chosen[swap], data.rejected[swap])
    assert torch.equal(new.chosen[~swap], data.chosen[~swap])
    assert torch.all(new_q >= 0.5) and torch.equal(new.flipped, data.flipped ^ swap)
    new_lp_c = torch.where(swap, lp_r, lp_c)  # the policy's log-probs follow the responses
    new_lp_r = torch.where(swap, lp_c, lp_r)
    beta = 0.5
    terms = dpo_terms(
        new_lp_c,
        new_lp_r,
        new_rc,
        new_rr,
        beta=beta,
        loss="sigmoid",
        policy=make_policy("oracle-l0"),
        confidence=new_q,
    )
    h = beta * ((lp_c - rc.double()) - (lp_r - rr.double()))
    expected = -q_hat * torch.nn.functional.logsigmoid(h) - (
        1 - q_hat
    ) * torch.nn.functional.logsigmoid(-h)
    assert torch.allclose(terms.losses.double(), expected, rtol=1e-10, atol=1e-12)


def test_crossfit_estimates_never_see_their_own_label():
    """Changing the labels of one fold's pairs leaves those pairs' q̂ unchanged (their model
    was trained on the other fold), and changes the other fold's."""
    cfg = pref.PreferenceStudyConfig(**TINY)
    sw, data, rc, rr = _labelled_with_refs(cfg, 0.0)
    q1 = pref.crossfit_confidence(sw.world, data, rc, rr, cfg)
    n = data.prompts.shape[0]
    fold = torch.randperm(n, generator=sw.world.generator(8)) % pref.CROSSFIT_FOLDS
    flip = fold == 0
    other, o_rc, o_rr, _ = pref.relabelled(data, rc, rr, torch.where(flip, 0.0, 1.0).double())
    q2 = pref.crossfit_confidence(sw.world, other, o_rc, o_rr, cfg)
    # fold-0 pairs now read the other way round: same model, so q̂ → 1 − q̂ exactly
    assert torch.allclose(q2[flip], 1 - q1[flip], atol=1e-6)
    assert not torch.allclose(q2[~flip], q1[~flip], atol=1e-4)
    assert torch.all((q1 > 0) & (q1 < 1))


def test_vote_methods_smooth_with_the_posterior_of_simulated_votes():
    cfg = pref.PreferenceStudyConfig(**TINY)
    sw, data, _, _ = _labelled_with_refs(cfg, 0.2)
    votes = pref.simulated_votes(sw.world, data, 5)
    assert torch.all((votes >= 0) & (votes <= 5))
    q_lap = pref.method_confidence(pref.METHODS["votes5-l2"], sw.world, data, lambda: None)
    assert torch.allclose(q_lap, (votes + 1.0).double() / 7.0)
    q_eb = pref.method_confidence(pref.METHODS["votes-eb5-l2"], sw.world, data, lambda: None)
    assert torch.all((q_eb > 0) & (q_eb < 1))
    # the posterior mean is monotone in the votes
    order = torch.argsort(votes)
    assert torch.all(q_eb[order].diff() >= -1e-12)
    assert pref.method_confidence(pref.METHODS["dpo"], sw.world, data, lambda: None) is None


def test_sources_preset_runs_end_to_end_and_reports_estimate_quality(tmp_path):
    out = tmp_path / "src"
    methods = "dpo,xfit-l2,votes-eb3-l0,majority3,soft-eb3,oracle-soft"
    argv = [
        "study",
        "preference",
        "--methods",
        methods,
        "--flip-rates",
        "0.2",
        "--seeds",
        "1",
        "--steps",
        "4",
        "--train-pairs",
        "48",
        "--eval-pairs",
        "32",
        "--sample-prompts",
        "8",
        "--workers",
        "1",
        "--no-progress",
        "--output-dir",
        str(out),
    ]
    from smoothalign.experiments import preference_cli

    assert preference_cli.expand_presets(("sources", "dpo"))[:2] == ("dpo", "cdpo-0.1")
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    by = {r["method"]: r for r in results["runs"]}
    assert set(by) == set(methods.split(","))
    assert by["oracle-soft"]["q_hat_mae"] == 0.0
    assert 0 < by["xfit-l2"]["q_hat_mae"] < 1 and "q_hat_corr" in by["votes-eb3-l0"]
    assert "How good the estimated confidences were" in (out / "table.md").read_text()


def test_noisy_votes_are_flipped_at_the_flip_rate():
    """Monte Carlo: with ε = 0.3 each vote favours the labelled winner with probability
    q(1 − ε) + (1 − q)ε; without, with probability q."""
    cfg = pref.PreferenceStudyConfig(**{**TINY, "train_pairs": 4000})
    sw, data, _, _ = _labelled_with_refs(cfg, 0.0)
    q = data.q_chosen
    for eps in (0.0, 0.3):
        share = pref.simulated_votes(sw.world, data, 50, eps).double() / 50
        expected = q * (1 - eps) + (1 - q) * eps
        assert float((share - expected).mean()) == pytest.approx(0.0, abs=0.005)
        assert float(((share - expected) * (2 * q - 1)).mean()) == pytest.approx(0.0, abs=0.005)


def test_aggregate_reads_an_undefined_value_the_same_before_and_after_results_json(tmp_path):
    from smoothalign.io import atomic_write_json

    runs = [
        {"seed": s, "flip_rate": 0.2, "method": "dpo", "accuracy_true": 0.6 + 0.1 * s,
         "q_hat_corr": math.nan if s == 0 else 0.5}
        for s in range(2)
    ]  # fmt: skip
    atomic_write_json(tmp_path / "results.json", {"runs": runs})
    reread = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert reread[0]["q_hat_corr"] is None  # NaN is written as null
    assert pref.aggregate(runs) == pref.aggregate(reread)
    assert pref.aggregate(runs)[0]["q_hat_corr_mean"] == 0.5


def test_an_interrupted_study_keeps_its_finished_groups_and_resumes_them(tmp_path, capsys,
                                                                          monkeypatch):  # fmt: skip
    """Each finished (seed, flip rate) group is written as it finishes; the same command then
    trains only the missing groups, to the same results; other options are refused."""
    out = tmp_path / "study"
    argv = ["study", "preference", "--quick", "--methods", "dpo,cdpo-0.1", "--flip-rates",
            "0,0.2", "--seeds", "2", "--steps", "2", "--train-pairs", "16", "--eval-pairs", "8",
            "--sample-prompts", "4", "--output-dir", str(out), "--no-progress"]  # fmt: skip
    run_group, calls = pref.run_group, []

    def interrupted_after_two(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[1:3])
        return run_group(*args)

    monkeypatch.setattr(pref, "run_group", interrupted_after_two)
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    assert main(argv) == 130  # Ctrl-C: one line, exit status 130
    err = capsys.readouterr().err
    assert "smoothalign study preference: interrupted" in err
    Path(err.split("(traceback: ")[1].split(";")[0]).unlink()
    kept = sorted(p.name for p in (out / pref.FINISHED_DIR).iterdir())
    assert kept == ["seed-0_flip-0.0.json", "seed-0_flip-0.2.json"]
    assert not (out / "results.json").exists()

    other = [a if a != "2" else "3" for a in argv]  # --seeds 3 --steps 3: another study
    assert main(other) == 2
    err = capsys.readouterr().err
    assert (
        "finished groups) holds runs of a study with other options: --steps 2 (this run: 3)." in err
    )
    assert "--seeds" not in err  # more seeds alone would have been a rerun that adds them

    calls.clear()
    monkeypatch.setattr(pref, "run_group", lambda *a: calls.append(a[1:3]) or run_group(*a))
    assert main(argv) == 0
    assert calls == [(1, 0.0), (1, 0.2)]  # only the groups the interruption left
    assert "resuming: 2 of 4 (seed, flip rate) groups" in capsys.readouterr().out
    assert not (out / pref.FINISHED_DIR).exists()
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["groups_resumed"] == 2

    fresh = tmp_path / "fresh"
    assert main([*argv, "--output-dir", str(fresh)]) == 0
    again = json.loads((fresh / "results.json").read_text())
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed["runs"]] == [
        {k: v for k, v in r.items() if k not in drop} for r in again["runs"]
    ]


def test_a_rerun_that_adds_seeds_and_methods_trains_only_the_new_runs(tmp_path, capsys,
                                                                      monkeypatch):  # fmt: skip
    """A finished study's folder could only be trained again from scratch (and an
    interrupted one's refused more seeds or methods): now a rerun that adds seeds and methods
    reuses the (seed, flip rate, method) runs there, trains the others, to the same results
    as one study with every option, and rebuilds the tables from all; any other option
    changed, or a run left out, is refused before anything trains."""
    out = tmp_path / "study"
    base = ["study", "preference", "--quick", "--flip-rates", "0.2", "--steps", "2",
            "--train-pairs", "16", "--eval-pairs", "8", "--sample-prompts", "4",
            "--no-progress"]  # fmt: skip
    assert main([*base, "--methods", "dpo,cdpo-0.1", "--seeds", "1", "--output-dir", str(out)]) == 0
    before = json.loads((out / "results.json").read_text())
    run_group, calls = pref.run_group, []

    def counted(*a):
        calls.append((a[1], a[2], a[4] if len(a) > 4 else None))
        return run_group(*a)

    monkeypatch.setattr(pref, "run_group", counted)
    more = [*base, "--methods", "dpo,cdpo-0.1,cals-l2-c1", "--seeds", "2"]
    capsys.readouterr()
    assert main([*more, "--output-dir", str(out)]) == 0
    assert calls == [(0, 0.2, ["cals-l2-c1"]), (1, 0.2, None)]  # only the new runs
    assert "resuming: 0 of 2 (seed, flip rate) groups and 2 of 6 runs" in capsys.readouterr().out
    extended = json.loads((out / "results.json").read_text())
    assert extended["runs_reused"] == 2 and extended["config"]["seeds"] == [0, 1]
    assert all(r in extended["runs"] for r in before["runs"])  # kept as they were
    assert "cals-l2-c1" in (out / "table.md").read_text()
    assert not (out / pref.FINISHED_DIR).exists()

    fresh = tmp_path / "fresh"
    assert main([*more, "--output-dir", str(fresh)]) == 0
    again = json.loads((fresh / "results.json").read_text())

    def drop(runs):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in runs]

    assert drop(extended["runs"]) == drop(again["runs"])
    assert extended["aggregates"] == again["aggregates"]

    # options that change the results: refused, named, before any training or writing
    calls.clear()
    stamp = (out / "results.json").stat().st_mtime_ns
    assert main([*more, "--steps", "3", "--lr", "0.01", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "(a finished study) holds runs of a study with other options: " in err
    assert "--lr 0.002 (this run: 0.01), --steps 2 (this run: 3)." in err
    assert "--seeds" not in err and "--methods" not in err
    # a rerun that would drop runs from results.json: refused too
    assert main([*base, "--methods", "dpo,cdpo-0.1", "--seeds", "2", "--output-dir", str(out)]) == 2
    assert "does not ask for (methods cals-l2-c1)" in capsys.readouterr().err
    assert calls == [] and (out / "results.json").stat().st_mtime_ns == stamp


def test_cli_refuses_a_method_given_twice_as_it_does_a_flip_rate(tmp_path, capsys):
    base = ["study", "preference", "--quick", "--output-dir", str(tmp_path / "o")]
    assert main([*base, "--methods", "dpo,ipo,dpo"]) == 2
    assert "--methods: dpo given twice in dpo,ipo,dpo" in capsys.readouterr().err
    assert main([*base, "--flip-rates", "0.2,0.2"]) == 2
    assert "repeated value" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # a method that a preset already holds is one request, run once
    from smoothalign.experiments.preference_cli import expand_presets

    assert expand_presets(("dpo", "grid")).count("dpo") == 1


def test_from_results_refuses_the_options_it_would_ignore(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"runs": [], "config": {}}))
    argv = ["study", "preference", "--from-results", str(results), "--output-dir",
            str(tmp_path / "o")]  # fmt: skip
    assert main([*argv, "--seeds", "5", "--methods", "foo", "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "--seeds, --methods, --steps would have no effect: leave them out" in err
    assert main([*argv, "--quick"]) == 2
    assert "--quick would have no effect: leave it out" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # every option of the command is either checked or one that applies to a re-render
    import argparse

    from smoothalign.experiments import preference_cli

    parser = argparse.ArgumentParser()
    preference_cli.add_arguments(parser)
    dests = {a.dest for a in parser._actions} - {"help"}
    assert dests - {"no_progress"} == set(preference_cli.UNSET)
    assert preference_cli.APPLIES["from_results"] == ("from_results", "output_dir")


def test_list_methods_and_export_votes_refuse_the_options_they_would_ignore(tmp_path, capsys):
    """--list-methods and --export-votes ignored every other option (--steps, --seeds,
    --output-dir, ...) without a word, and the study ignored --annotators; now such an
    option is refused, named, before anything is built or written, as --from-results does."""
    listing = ["study", "preference", "--list-methods"]
    assert main([*listing, "--quick", "--steps", "3"]) == 2
    err = capsys.readouterr().err
    said = "--list-methods prints the methods and presets, and exits; --quick, --steps would "
    assert said + "have no effect: leave them out (it takes no other option)" in err
    votes = tmp_path / "v.jsonl"
    export = ["study", "preference", "--export-votes", str(votes), "--quick", "--train-pairs", "8"]
    assert main([*listing, "--export-votes", str(votes)]) == 2
    assert "--export-votes would have no effect: leave it out" in capsys.readouterr().err
    assert main([*export, "--seeds", "2", "--methods", "dpo", "--steps", "5"]) == 2
    err = capsys.readouterr().err
    said = "--seeds, --methods, --steps would have no effect: leave them out (only --quick, "
    assert said + "--train-pairs, --annotators, --export-flip-rate apply)" in err
    assert main([*export, "--output-dir", str(tmp_path / "o")]) == 2
    assert "--output-dir would have no effect: leave it out" in capsys.readouterr().err
    study = ["study", "preference", "--quick", "--output-dir", str(tmp_path / "o")]
    assert main([*study, "--annotators", "3", "--export-flip-rate", "0.1"]) == 2
    said = "--annotators and --export-flip-rate apply only with --export-votes; --annotators, "
    assert (
        said + "--export-flip-rate would have no effect: leave them out" in capsys.readouterr().err
    )
    assert not votes.exists() and not (tmp_path / "o").exists()
    # what each mode reads is accepted: the export's own options
    assert main([*export, "--annotators", "3", "--export-flip-rate", "0.1"]) == 0
    assert len(votes.read_text().splitlines()) == 8


def test_help_describes_every_option_the_flip_rate_range_and_the_warmup_variants(capsys):
    import argparse

    from smoothalign.experiments import preference_cli

    parser = argparse.ArgumentParser()
    preference_cli.add_arguments(parser)
    helps = {a.dest: a.help for a in parser._actions}
    assert all(helps.values()), [d for d, h in helps.items() if not h]
    assert "[0, 0.5)" in helps["flip_rates"] and "[0, 0.5)" in helps["export_flip_rate"]
    assert main(["study", "preference", "--list-methods"]) == 0
    listed = capsys.readouterr().out.splitlines()
    warmup = [line for line in listed if line.startswith("cals-l2-c1-warmup ")]
    assert warmup and "plain DPO for the first 20% of the steps, then CALS" in warmup[0]


def _without_seconds(runs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in runs]


def test_a_rerun_retrains_the_runs_of_a_method_whose_definition_changed(tmp_path, capsys,
                                                                        monkeypatch):  # fmt: skip
    """Finished runs were reused by method name: a method redefined under the same name (its
    smoothing, here) kept its stale results on a rerun. Now a run is reused only if its
    method and the baseline are defined as when it was made: the redefined method trains
    again, to what a fresh study with the new definition gives; a redefined baseline (whose
    samples every win rate is against) trains its whole group again."""
    out = tmp_path / "study"
    argv = ["study", "preference", "--quick", "--methods", "dpo,cdpo-0.1", "--flip-rates",
            "0.2", "--seeds", "1", "--steps", "2", "--train-pairs", "16", "--eval-pairs", "8",
            "--sample-prompts", "4", "--no-progress"]  # fmt: skip
    assert main([*argv, "--output-dir", str(out)]) == 0
    before = json.loads((out / "results.json").read_text())
    run_group, calls = pref.run_group, []
    monkeypatch.setattr(pref, "run_group", lambda *a: calls.append(a[1:]) or run_group(*a))

    assert main([*argv, "--output-dir", str(out)]) == 0  # unchanged: nothing trains
    assert calls == []

    redefined = pref.Method("cdpo-0.1", smoothing="constant:0.3")
    monkeypatch.setitem(pref.METHODS, "cdpo-0.1", redefined)
    capsys.readouterr()
    assert main([*argv, "--output-dir", str(out)]) == 0
    assert calls == [(0, 0.2, None, ["cdpo-0.1"])]  # only the redefined method
    said = capsys.readouterr().out
    assert "training again 1 run(s)" in said
    assert "cdpo-0.1 was defined otherwise: smoothing 'constant:0.1' (now 'constant:0.3')" in said
    rerun = json.loads((out / "results.json").read_text())
    assert main([*argv, "--output-dir", str(tmp_path / "fresh")]) == 0
    fresh = json.loads((tmp_path / "fresh" / "results.json").read_text())
    assert _without_seconds(rerun["runs"]) == _without_seconds(fresh["runs"])
    old_cdpo = [r for r in before["runs"] if r["method"] == "cdpo-0.1"]
    assert _without_seconds(old_cdpo) != _without_seconds(rerun["runs"][1:])

    calls.clear()
    monkeypatch.setitem(pref.METHODS, "dpo", pref.Method("dpo", loss="ipo"))
    assert main([*argv, "--output-dir", str(out)]) == 0
    assert calls == [(0, 0.2, None, None)]  # the whole group: every win rate is against dpo
    said = capsys.readouterr().out
    assert "training again 2 run(s)" in said and "the baseline dpo" in said


def test_runs_written_without_their_method_definitions_are_trained_again(tmp_path, capsys,
                                                                        monkeypatch):  # fmt: skip
    """An interrupted study's finished groups written by an earlier version recorded no
    method definitions, and an earlier results.json recorded them with fewer fields: what
    their methods were cannot be told, so their runs train again (said), not reused."""
    out = tmp_path / "study"
    argv = ["study", "preference", "--quick", "--methods", "dpo,cdpo-0.1", "--flip-rates",
            "0,0.2", "--seeds", "1", "--steps", "2", "--train-pairs", "16", "--eval-pairs", "8",
            "--sample-prompts", "4", "--no-progress", "--output-dir", str(out)]  # fmt: skip
    run_group, calls = pref.run_group, []

    def interrupted_after_one(*args):
        if calls:
            raise KeyboardInterrupt
        calls.append(args[1:3])
        return run_group(*args)

    monkeypatch.setattr(pref, "run_group", interrupted_after_one)
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    assert main(argv) == 130
    Path(capsys.readouterr().err.split("(traceback: ")[1].split(";")[0]).unlink()
    (group,) = (out / pref.FINISHED_DIR).iterdir()
    saved = json.loads(group.read_text())
    assert [m["name"] for m in saved.pop("methods")] == ["dpo", "cdpo-0.1"]
    group.write_text(json.dumps(saved))  # as an earlier version wrote it

    calls.clear()
    monkeypatch.setattr(pref, "run_group", lambda *a: calls.append(a[1:3]) or run_group(*a))
    assert main(argv) == 0
    assert calls == [(0, 0.0), (0, 0.2)]  # the old group trained again
    assert "were not recorded (an earlier version's runs)" in capsys.readouterr().out

    results = json.loads((out / "results.json").read_text())
    for m in results["methods"]:
        del m["relabel"]  # a field that the earlier version's Method did not have
    (out / "results.json").write_text(json.dumps(results))
    calls.clear()
    assert main(argv) == 0
    assert calls == [(0, 0.0), (0, 0.2)]
    assert "relabel None (now False)" in capsys.readouterr().out


def test_refusals_are_said_as_every_input_error(tmp_path, capsys, monkeypatch):
    """`--annotators 0` and `--workers 0` printed messages of their own ("--annotators must
    be >= 1"), without the traceback file's line that the other input errors have: each
    refusal now goes through cli.main, named by its flag, with exit status 2."""
    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    export = ["study", "preference", "--quick", "--export-votes", str(tmp_path / "v.jsonl")]
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    for argv, message in [
        ([*export, "--annotators", "0"], "--annotators: must be >= 1, got 0"),
        ([*export, "--export-flip-rate", "0.7"], "--export-flip-rate: must lie in [0, 0.5)"),
        (["study", "preference", "--quick", "--workers", "0", "--output-dir", str(tmp_path)],
         "--workers: must be >= 1, got 0"),
        (["study", "preference", "--judge", str(tmp_path / "nothing")], "--judge "),
        (["study", "preference", "--from-results", str(bad)], f"--from-results {bad}: not a"),
        (["study", "preference", "--from-results", str(tmp_path / "no.json")],
         f"--from-results: not found: {tmp_path / 'no.json'}"),
        ([*export, "--steps", "3"], "--export-votes writes"),
        (["study", "preference", "--flip-rates", "0.6"], "--flip-rates: each must lie in"),
        (["study", "preference", "--train-pairs", "1"], "--train-pairs: must be >= 2"),
        (["study", "preference", "--lr", "0"], "--lr: must be > 0"),
    ]:  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"smoothalign study preference: {message}"), (argv, err)
        assert "\n(traceback: " in err, argv
    assert not (tmp_path / "v.jsonl").exists()


def test_one_seed_prints_no_spread():
    """With one seed (of a method, of a metric, of a paired comparison) the tables printed
    "± 0.000", a spread nothing measured: now "± n/a"."""
    results = _fake_results(0.65, 0.07)
    results["runs"] = [
        r for r in results["runs"] if not (r["method"].startswith("cdpo-") and r["seed"] == 1)
    ]
    results["runs"][0]["ece_true"] = float("nan")  # dpo, seed 0, ε = 0: one ECE left
    results["aggregates"] = pref.aggregate(results["runs"])
    text = claim_markdown(claim_check(results))
    row = next(line for line in text.splitlines() if "| accuracy_true | cals-l2-c1 |" in line)
    assert " ± n/a (1/1) (cdpo-0.1)" in row and "n/a (2/2)" not in row
    results["config"] = {"flip_rates": [0.0, 0.2]}
    from smoothalign.experiments.preference_report import method_table

    table = method_table(results, 0.0)
    dpo = next(line for line in table.splitlines() if line.startswith("| dpo |"))
    cdpo = next(line for line in table.splitlines() if line.startswith("| cdpo-0.1 |"))
    cals = next(line for line in table.splitlines() if line.startswith("| cals-l2-c1 |"))
    assert "± n/a" in dpo and "± 0.0" in dpo  # its ECE over one seed, accuracy over two
    assert "± 0.0" not in cdpo and "± n/a" in cdpo
    assert "± n/a" not in cals
