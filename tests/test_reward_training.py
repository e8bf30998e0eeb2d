"""The reward trainer end to end on the tiny Llama with a scalar head: model building, a few
steps, the report, the CLI, data parallelism (2 ranks)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.dist_helpers import records, torchrun
from tests.dpo_helpers import cut_alike_rows, earlier_version_fingerprints
from tests.md_tables import misaligned_rows
from transformers import (
    AutoModelForSequenceClassification,
    LlamaForSequenceClassification,
    TrainerCallback,
)

from smoothalign.models import load_model_and_tokenizer
from smoothalign.reward import RewardConfig, run_reward
from smoothalign.reward import cli as reward_cli
from smoothalign.reward.data import RewardCollator, oracle_text_rows, validate_reward_rows
from smoothalign.reward.report import describe_loss
from smoothalign.reward.run import build_reward_model


def _small(out: Path, **overrides) -> RewardConfig:
    base = dict(
        model="tiny",
        output_dir=str(out),
        oracle_pairs=48,
        max_steps=4,
        batch_size=8,
        logging_steps=2,
        eval_steps=2,
        lr_warmup_steps=0,
        max_length=32,
    )
    return RewardConfig(**{**base, **overrides})


def test_tiny_reward_model_is_the_lm_trunk_with_a_scalar_head():
    torch.manual_seed(0)
    model, tok = build_reward_model("tiny")
    lm, _ = load_model_and_tokenizer("tiny")
    assert isinstance(model, LlamaForSequenceClassification)
    assert model.config.num_labels == 1
    assert model.config.pad_token_id == tok.pad_token_id is not None
    for name, w in lm.model.state_dict().items():
        assert torch.equal(model.model.state_dict()[name], w), name
    # the reward of a sequence does not depend on the padding of its batch
    rows = oracle_text_rows(4, seed=1)
    rows[0]["chosen"] = rows[0]["chosen"] * 3  # a long one forces padding on the others
    examples = validate_reward_rows(rows, tok, 64).examples
    batch = RewardCollator(tok.pad_token_id)(examples)
    model.eval()
    with torch.no_grad():
        together = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        for i in range(batch["input_ids"].shape[0]):
            n = int(batch["attention_mask"][i].sum())
            alone = model(batch["input_ids"][i : i + 1, :n]).logits[0, 0]
            assert float(alone) == pytest.approx(float(together[i]), abs=1e-5)


def test_trainer_runs_a_few_steps_and_writes_its_report(tmp_path):
    result = run_reward(_small(tmp_path / "run"))
    out = tmp_path / "run"
    for name in (
        "report.md",
        "divergences.png",
        "training_curves.png",
        "reliability.png",
        "metrics.jsonl",
        "eval_results.json",
        "config.json",
        "validation.json",
    ):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train" and "loss" in r]
    evals = [r for r in records if r["split"] == "eval" and "eval_fkl" in r]
    assert [r["step"] for r in train] == [2, 4]
    assert len(evals) >= 2
    for name in ("fkl", "rkl", "jsd"):
        assert all(r[f"divergence/{name}"] >= 0 for r in train)
    for key in ("rewards/chosen", "rewards/margins", "rewards/accuracies", "smoothing/alpha_mean"):
        assert key in train[0]
    after = json.loads((out / "eval_results.json").read_text())["after"]
    for key in ("accuracy", "ece", "rms", "accuracy_true", "ece_true", "rms_true", "kl_true"):
        assert 0 <= after[key] <= 1 or key == "kl_true", key
    assert result.n_train + result.n_eval == 48
    report = (out / "report.md").read_text()
    assert "![divergences](divergences.png)" in report
    assert "ECE of σ(r₁ − r₂) vs held-out vote shares" in report
    assert "against the vote share" in report  # the default loss reads the vote share
    assert r"| mean \|r₁ − r₂\| |" in report and misaligned_rows(report) == []
    assert "against the majority vote" in describe_loss({"loss": "bt", "smoothing": "none"})
    # the final model reloads as a sequence classifier with the trained rewards
    reloaded = AutoModelForSequenceClassification.from_pretrained(out / "final")
    ids = torch.tensor([[256, 120, 58, 97, 257]])
    trained = result.trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, trained(ids).logits, atol=1e-6)


class _Steps(TrainerCallback):
    """Counts the optimizer steps a run takes."""

    def __init__(self) -> None:
        self.taken = 0

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.taken += 1


def test_resume_at_max_steps_finishes_a_run_that_crashed_writing_its_report(tmp_path, monkeypatch):
    """A run that crashed writing its report, after its last checkpoint (at --max-steps):
    --resume latest trains no step and writes the report, from the checkpoint's model."""
    import smoothalign.reward.report as report_module

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash while writing the report")

    out = tmp_path / "run"
    monkeypatch.setattr(report_module, "write_reward_report", crash)
    with pytest.raises(KeyboardInterrupt):
        run_reward(_small(out, save_steps=4))
    monkeypatch.undo()
    assert not (out / "report.md").exists()
    after = json.loads((out / "eval_results.json").read_text())["after"]

    steps = _Steps()
    result = run_reward(_small(out, save_steps=4, resume="latest"), callbacks=[steps])
    assert steps.taken == 0 and result.trainer.state.global_step == 4
    assert (out / "report.md").is_file()
    assert result.after == pytest.approx(after, rel=1e-5)
    final = load_file(out / "final" / "model.safetensors")
    saved = load_file(out / "checkpoint-4" / "model.safetensors")
    assert final.keys() == saved.keys()
    for k in final:
        assert torch.equal(final[k], saved[k]), k
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summaries = [r for r in records if r["split"] == "summary"]
    assert [r["step"] for r in summaries] == [4, 4]  # training's end, then the final eval
    assert "train_runtime" in summaries[0] and "final_eval_accuracy" in summaries[1]


def test_cli_trains_jsd_on_the_posterior_with_cals_margin_and_centering(tmp_path):
    rows = oracle_text_rows(40, annotators=3, seed=2)
    texts = [{k: r[k] for k in ("pair_id", "prompt", "chosen", "rejected")} for r in rows]
    votes = [
        {"pair_id": r["pair_id"], "vote": int(i < r["votes_chosen"])}
        for r in rows
        for i in range(r["votes_total"])
    ]
    data, labels = tmp_path / "pairs.jsonl", tmp_path / "votes.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in texts))
    labels.write_text("".join(json.dumps(r) + "\n" for r in votes))
    parser = argparse.ArgumentParser()
    reward_cli.add_arguments(parser)
    argv = [
        "--model", "tiny", "--data", str(data), "--labels", str(labels),
        "--output-dir", str(tmp_path / "cli"), "--loss", "jsd", "--posterior",
        "--smoothing", "cals-l2", "--init-confidence", "0.9", "--margin", "0.5",
        "--center-weight", "0.01", "--max-steps", "3", "--batch-size", "8",
        "--logging-steps", "1", "--eval-steps", "0", "--max-length", "32", "--no-report",
    ]  # fmt: skip
    args = parser.parse_args(argv)
    assert reward_cli.run(args) == 0
    results = json.loads((tmp_path / "cli" / "eval_results.json").read_text())
    assert "accuracy" in results["after"] and "accuracy_true" not in results["after"]
    config = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert config["posterior"] and config["loss"] == "jsd" and config["smoothing"] == "cals-l2"
    assert (tmp_path / "cli" / "final" / "smoothing_state.pt").is_file()
    assert not (tmp_path / "cli" / "report.md").exists()


def test_cli_rejects_a_bad_configuration(capsys):
    from smoothalign.cli import main

    assert main(["reward", "--loss", "bt", "--posterior"]) == 2
    assert "posterior" in capsys.readouterr().err


@pytest.mark.parametrize("loss", ["fkl", "rkl", "jsd"])
def test_posterior_with_one_pair_per_batch_is_refused_naming_both_options(loss, capsys):
    """The posterior's normaliser is a sum over the micro-batch: with one pair every target
    is the plain vote share (SPEC §6), a run that silently trains without the posterior.
    Refused before anything loads, naming the keywords in Python and the flags on the CLI."""
    from smoothalign.cli import main

    with pytest.raises(ValueError, match=r"^posterior: .*batch_size=1.*raise batch_size"):
        RewardConfig(model="tiny", loss=loss, posterior=True, batch_size=1)
    assert main(["reward", "--loss", loss, "--posterior", "--batch-size", "1"]) == 2
    err = capsys.readouterr().err
    assert "--posterior" in err and "--batch-size 1" in err and "raise --batch-size" in err
    assert "batch_size" not in err
    RewardConfig(model="tiny", loss=loss, posterior=True, batch_size=2)  # two pairs: fine
    RewardConfig(model="tiny", loss=loss, batch_size=1)  # no posterior: fine


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("lora_r", 0),
        ("lora_alpha", 0),
        ("save_total_limit", 0),
        ("weight_decay", -1.0),
        ("rkl_floor", 0.0),  # reverse KL is always logged: a unanimous vote would make it ∞
    ],
)
def test_config_refuses_values_sft_and_dpo_refuse(option, value):
    """A LoRA scale of 0 trains nothing; a save limit of 0 keeps no checkpoint to resume
    from (``None`` keeps them all)."""
    with pytest.raises(ValueError, match=rf"^{option}: must be .+, got {value}$"):
        RewardConfig(model="tiny", lora=True, **{option: value}).validate()


@pytest.mark.parametrize("limit", [None, 1])
def test_every_trainer_accepts_a_save_limit_of_one_or_none(limit):
    """1 keeps the newest complete checkpoint (the rotation runs once the new one is
    certified); ``None``, as the annotation says, keeps every checkpoint."""
    from smoothalign.sft import SFTConfig
    from smoothalign.train import DPOConfig

    for config in (RewardConfig, DPOConfig, SFTConfig):
        config(model="tiny", save_total_limit=limit).validate()


@pytest.mark.slow
def test_soft_bce_learns_the_oracle_world(tmp_path):
    """~10 s: 150 steps on 600 pairs; held-out accuracy against the true preference > 0.9
    and calibrated against the true q."""
    result = run_reward(
        RewardConfig(model="tiny", output_dir=str(tmp_path), eval_steps=0, report=False)
    )
    assert result.after["accuracy_true"] > 0.9
    assert result.after["ece_true"] < 0.08


def test_the_saved_model_ranks_by_the_oracle_reward(tmp_path):
    """Orientation end to end, outside the trainer: the saved model, loaded and scored by the
    public scorer on fresh oracle texts, prefers the text with the higher oracle reward. (The
    trainer's own metrics share its chosen/rejected split, so a swap would fool them.)"""
    import numpy as np

    from smoothalign.reward import PreferenceModelScorer, load_preference_model
    from smoothalign.reward.data import oracle_reward

    run_reward(_small(tmp_path / "run", oracle_pairs=96, max_steps=10, batch_size=16, eval_steps=0,
                      report=False))  # fmt: skip
    model, tok, _ = load_preference_model(tmp_path / "run")
    rows = oracle_text_rows(200, seed=12345)  # not the run's seed: texts it never saw
    score = PreferenceModelScorer(model, tok, max_length=32)
    chosen = score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = score([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    truth = np.array([oracle_reward(r["chosen"]) - oracle_reward(r["rejected"]) for r in rows])
    decided = truth != 0
    agree = np.mean((chosen - rejected)[decided] * truth[decided] > 0)
    assert agree > 0.8, agree


@pytest.mark.parametrize("loss", ["bt", "soft-bce"])
def test_gradient_accumulation_matches_the_large_batch(tmp_path, loss):
    """Micro-batches of 4 accumulate to the step of one batch of 8, even when they hold
    different numbers of weighted pairs (bt gives a tied vote weight 0): the step's loss is
    the weighted mean over all its pairs."""
    import json

    common = dict(
        loss=loss,
        oracle_pairs=60,
        max_steps=2,
        logging_steps=1,
        eval_steps=0,
        report=False,
        annotators=2,
    )  # fmt: skip  (2 annotators: many ties)
    run_reward(_small(tmp_path / "big", batch_size=8, grad_accum=1, **common))
    run_reward(_small(tmp_path / "accum", batch_size=4, grad_accum=2, **common))
    norms = []
    for run in ("big", "accum"):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        norms.append([json.loads(x)["grad_norm"] for x in lines if '"grad_norm"' in x])
    assert len(norms[0]) == 2 and norms[0] == pytest.approx(norms[1], rel=1e-4)


@pytest.mark.parametrize(("loss", "center_weight"), [("bt", 0.0), ("soft-bce", 0.5)])
def test_the_logged_loss_is_the_mean_over_the_windows_pairs(
    tmp_path, monkeypatch, loss, center_weight
):
    """A window of 3 steps whose last is an epoch's short one: its ``loss`` (and the run's
    ``train_loss``) is the mean over the window's weighted pairs (bt: the decided votes;
    the centering term over every pair), not Trainer's mean of the per-step means."""
    import math

    from smoothalign.reward.trainer import RewardTrainer

    steps: list[tuple[float, int]] = []  # (the step's loss, the pairs it is a mean over)
    training_step = RewardTrainer.training_step

    def recorded(self, model, inputs, num_items_in_batch=None):
        value = training_step(self, model, inputs, num_items_in_batch)
        steps.append((float(value), int(self._items_in(inputs))))
        return value

    monkeypatch.setattr(RewardTrainer, "training_step", recorded)
    out = tmp_path / "r"
    kw = dict(
        oracle_pairs=12, batch_size=4, max_steps=3, logging_steps=3, eval_steps=0, report=False
    )
    # 2 annotators: tied votes, which bt gives no weight
    run_reward(_small(out, loss=loss, center_weight=center_weight, annotators=2, **kw))
    counts = [n for _, n in steps]
    assert len(set(counts)) > 1  # steps of different weights in the window
    pooled = math.fsum(v * n for v, n in steps) / sum(counts)
    of_means = math.fsum(v for v, _ in steps) / 3
    assert abs(pooled - of_means) > 1e-5
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    (window,) = [r for r in records if r["split"] == "train"]
    (summary,) = [r for r in records if "train_loss" in r]
    assert window["loss"] == pytest.approx(pooled, rel=1e-6)
    assert summary["train_loss"] == pytest.approx(pooled, rel=1e-6)


def test_the_last_partial_logging_window_logs_its_loss_and_is_plotted(tmp_path):
    """max_steps 3 with logging_steps 2: step 3 is written at the end with its pooled
    ``loss`` (Trainer logs none for it), so the training curves, which plot only records
    with a loss, show it; with max_steps below logging_steps it is the only point."""
    from smoothalign.reward.report import plot_training_curves

    for max_steps, logging_steps, steps in ((3, 2, [2, 3]), (2, 5, [2])):
        out = tmp_path / f"r{max_steps}"
        kw = dict(max_steps=max_steps, logging_steps=logging_steps, eval_steps=0, report=False)
        run_reward(_small(out, **kw))
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in records if r["split"] == "train"]
        assert [r["step"] for r in train] == steps and train[-1]["partial_window"]
        assert all(isinstance(r.get("loss"), float) for r in train)
        plotted = plot_training_curves(records).axes[0].lines[0]
        assert list(plotted.get_xdata()) == steps


def test_pairs_made_identical_by_truncation_are_warned_about(tmp_path):
    """As for DPO: a warning on the console counts the pairs whose whole sequences (what a
    reward model reads) truncation made identical."""
    data = tmp_path / "cut.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in cut_alike_rows()))
    kw = dict(max_length=20, max_steps=1, eval_steps=0, report=False)
    with pytest.warns(UserWarning, match="max_length 20") as caught:
        run_reward(_small(tmp_path / "r", data=str(data), **kw))
    said = [str(w.message) for w in caught if "after truncation" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("data: 10 of 20 kept pairs have identical")
    assert "chosen and rejected sequences" in said[0]


def test_cals_bins_count_only_decided_votes(tmp_path, monkeypatch):
    """A tied vote (p = ½) says nothing about which response wins: CALS's bins get the
    margins of the decided pairs only (``bt`` gives a tie weight 0 as well)."""
    from smoothalign.smoothing.policies import CALSSmoothing

    seen = []
    real_update = CALSSmoothing.update

    def update(self, margins):
        seen.append(len(margins))
        return real_update(self, margins)

    monkeypatch.setattr(CALSSmoothing, "update", update)
    import smoothalign.reward.trainer as trainer_module

    ties = []
    real_loss = trainer_module.RewardTrainer.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            ties.append(int((inputs["p_chosen"] == 0.5).sum()))
        return real_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(trainer_module.RewardTrainer, "compute_loss", compute_loss)
    cfg = _small(
        tmp_path / "r", smoothing="cals-l2", annotators=2, max_steps=3, eval_steps=0, report=False
    )  # fmt: skip  (2 annotators: many ties)
    run_reward(cfg)
    assert len(seen) == len(ties) == 3 and sum(ties) > 0  # the case has ties
    assert seen == [8 - k for k in ties]


def test_the_after_training_evaluation_leaves_no_tensorboard_writer_open(tmp_path, monkeypatch):
    """As DPO's: the final evaluation's record reaches TensorBoard in the training's
    writer (one events file a run), which is closed once it is written."""
    from tests.dpo_helpers import fake_tensorboard

    writers = fake_tensorboard(monkeypatch)
    result = run_reward(_small(tmp_path / "run", max_steps=2, eval_steps=0, report=False))
    assert "tensorboard" in result.trainer.args.report_to
    (writer,) = writers  # the training's, kept open for the final record: one a run
    assert writer.closed and "train/train_loss" in writer.scalars
    assert "train/final_eval_accuracy" in writer.scalars


# ---------------------------------------------------------------------------- two ranks
@pytest.fixture(scope="module")
def two_process_reward(tmp_path_factory) -> Path:
    """One torchrun launch (gloo, 2 CPU processes) of tests/dist_reward_worker.py: a run
    uninterrupted (``straight/``), and the same run crashed after step 5 and resumed from its
    checkpoint at step 3 (``crashed/``); each rank's output in its own log (``rank<R>.out``,
    ``rank<R>.err``). The data have 2 pairs that truncation makes identical, which is warned
    about; 54 training pairs: the 6 steps of 8 stay in the first epoch (its last step, short
    of pairs, would have the sampler repeat pairs on one rank to even the ranks' batches)."""
    folder = tmp_path_factory.mktemp("reward_dist")
    rows = oracle_text_rows(64, seed=4) + cut_alike_rows(4)
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return torchrun("dist_reward_worker.py", folder, str(data), str(folder))


def test_two_process_reward_keeps_ranks_identical(two_process_reward):
    r0 = torch.load(two_process_reward / "rank0.pt", weights_only=True)
    r1 = torch.load(two_process_reward / "rank1.pt", weights_only=True)
    assert r0["world_size"] == r1["world_size"] == 2
    # real data parallelism: the trainer knows of both ranks, and they see different pairs
    assert r0["trainer_world_size"] == r1["trainer_world_size"] == 2
    assert set(r0["first_batch"]).isdisjoint(r1["first_batch"])
    for run in ("straight", "resumed"):
        cal0, cal1 = r0[run]["policy"]["calibrator"], r1[run]["policy"]["calibrator"]
        assert cal0["step"] == cal1["step"] == 6
        assert torch.equal(cal0["wins"], cal1["wins"]) and cal0["wins"].sum() > 0
        assert torch.equal(cal0["losses"], cal1["losses"])
        for k in r0[run]["weights"]:
            assert torch.equal(r0[run]["weights"][k], r1[run]["weights"][k]), (run, k)


def test_two_process_reward_ddp_skips_the_search_for_unused_parameters(two_process_reward):
    """Every parameter trained takes part in the loss: DDP is told so
    (``ddp_find_unused_parameters=False``), instead of searching the autograd graph every
    step and warning on every rank that it found none."""
    for rank in (0, 1):
        state = torch.load(two_process_reward / f"rank{rank}.pt", weights_only=True)
        assert state["find_unused"] is False, rank
        assert (
            "find_unused_parameters=True"
            not in (two_process_reward / f"rank{rank}.err").read_text()
        )


def test_two_process_loss_sums_join_the_gathers_on_every_rank(two_process_reward):
    """Loss terms buffered on one rank only (rank 0's two micro-batches, nothing on rank 1)
    are summed over the ranks on both: the rank without them gathers their names and sums
    all the same, instead of skipping the terms it has not seen (which left rank 0 waiting
    in the collective, or failing as rank 1 exited)."""
    for rank in (0, 1):
        state = torch.load(two_process_reward / f"rank{rank}.pt", weights_only=True)
        assert state["probe_sums"] == {"run_loss": {"pairs": [4.5, 6.0]}}, rank


def test_two_process_gathers_refuse_buffers_that_differ_between_ranks(two_process_reward):
    """A logging window's values are gathered name by name: the ranks' buffers must hold
    the same names with as many values each. Recorded in another order they gather
    alike (each name's values with that name's); with other lengths, or on one rank only,
    every rank raises, naming what each rank buffered, rather than waiting for good in a
    gather the other never joins or pairing values of different lengths."""
    for rank in (0, 1):
        state = torch.load(two_process_reward / f"rank{rank}.pt", weights_only=True)
        assert state["gathered order"] == {"a": 1.0, "b": 0.0}, rank
        for case, layouts in (
            ("lengths", "rank 0: {'a': 2}; rank 1: {'a': 3}"),
            ("one rank", "rank 0: {'a': 2}; rank 1: {}"),
        ):
            message = state[f"gathered {case}"]
            assert isinstance(message, str), (rank, case, message)
            assert "the ranks buffered other values" in message and layouts in message


def test_two_process_reward_trains_as_one_process(two_process_reward, tmp_path):
    """PairCountedLoss: a step's loss is the mean over its pairs on every rank (DDP's
    averaging undone), each window's logged loss pools the pairs of both ranks, and CALS
    sums both ranks' counts. So the 2-rank run of 4 pairs a rank trains and logs as one
    process on 8 pairs a step (the same pairs: the sampler shards the same order)."""
    from tests.dist_reward_worker import config

    one = tmp_path / "one"
    result = run_reward(config(str(two_process_reward / "pairs.jsonl"), one, batch_size=8))
    r0 = torch.load(two_process_reward / "rank0.pt", weights_only=True)
    r1 = torch.load(two_process_reward / "rank1.pt", weights_only=True)
    first = [int(i) for i in next(iter(result.trainer.get_train_dataloader()))["index"]]
    assert sorted(first) == sorted(r0["first_batch"] + r1["first_batch"])
    two = records(two_process_reward / "straight")
    alone = records(one)
    train = [r for r in two if r["split"] == "train"]
    one_train = [r for r in alone if r["split"] == "train"]
    assert [r["step"] for r in train] == [r["step"] for r in one_train] == [2, 4, 6]
    for record, single in zip(train, one_train, strict=True):
        for key in ("loss", "rewards/margins", "rewards/accuracies", "smoothing/alpha_mean"):
            assert record[key] == pytest.approx(single[key], rel=1e-5, abs=1e-7), key
    (summary,), (one_summary,) = ([r for r in rs if "train_loss" in r] for rs in (two, alone))
    assert summary["train_loss"] == pytest.approx(one_summary["train_loss"], rel=1e-5)
    calibrator = result.trainer.smoothing_policy.calibrator
    torch.testing.assert_close(r0["straight"]["policy"]["calibrator"]["wins"], calibrator.wins)
    weights = result.trainer.model.state_dict()
    for k, v in r0["straight"]["weights"].items():
        torch.testing.assert_close(v, weights[k], atol=1e-5, rtol=1e-4)
    # the held-out pairs, scored by both ranks and gathered, count once each
    results = [json.loads((out / "eval_results.json").read_text())
               for out in (two_process_reward / "straight", one)]  # fmt: skip
    for when in ("before", "after"):
        assert results[0][when]["n_pairs"] == results[1][when]["n_pairs"] == result.n_eval
        for key, value in results[1][when].items():
            assert results[0][when][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_two_process_reward_resume_equals_uninterrupted(two_process_reward):
    """A 2-rank reward run resumed (with 2 ranks) from its checkpoint at step 3, saved
    between two logging steps, so that the loss sums it holds (both terms: the pairs' and
    the centering's) were gathered across the ranks, ends as the uninterrupted 2-rank run:
    the same train_loss over every step, CALS state and weights."""
    straight, crashed = two_process_reward / "straight", two_process_reward / "crashed"
    sums = torch.load(crashed / "checkpoint-3" / "loss_sums.pt", weights_only=True)
    assert sorted(sums["run_loss"]) == ["centering", "pairs"]
    assert sums["run_loss"]["pairs"][1] == 3 * 8  # 3 steps of 4 pairs on each of 2 ranks
    r0 = torch.load(two_process_reward / "rank0.pt", weights_only=True)
    assert any("resumed from" in n and "checkpoint-3" in n for n in r0["notes"])
    (a,), (b,) = ([r for r in records(out) if "train_loss" in r] for out in (straight, crashed))
    assert "train_loss_from_step" not in b
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-12, abs=0)
    x, y = r0["straight"], r0["resumed"]
    for key in ("step", "wins", "losses"):
        torch.testing.assert_close(
            x["policy"]["calibrator"][key], y["policy"]["calibrator"][key], atol=1e-6, rtol=0
        )
    for k in x["weights"]:
        torch.testing.assert_close(x["weights"][k], y["weights"][k], atol=1e-6, rtol=0)


def test_two_process_reward_says_and_writes_things_once(two_process_reward):
    """What every rank would say alike (the data's warning, the logged records,
    transformers' messages) comes from the main process only, rank 1 says nothing that
    rank 0 says, and the run's files are written once: each record of metrics.jsonl once."""
    out = {r: (two_process_reward / f"rank{r}.out").read_text() for r in (0, 1)}
    err = {r: (two_process_reward / f"rank{r}.err").read_text() for r in (0, 1)}
    assert "identical chosen and rejected sequences after truncation" in err[0]
    assert "'train_loss'" in out[0] and out[1] == ""  # Trainer's logged dicts
    said = set(err[0].splitlines()) | set(out[0].splitlines())
    assert [line for line in err[1].splitlines() if line.strip() and line in said] == []
    assert "after truncation" not in err[1]
    assert [line for line in err[1].splitlines() if line.startswith("[transformers]")] == []
    for run in ("straight", "crashed"):
        logged = records(two_process_reward / run)
        assert [r["step"] for r in logged if r["split"] == "train"] == [2, 4, 6], run
        assert len([r for r in logged if "train_loss" in r]) == 1, run
        assert len([r for r in logged if "final_eval_accuracy" in r]) == 1, run
    logged = records(two_process_reward / "straight")
    assert [r["step"] for r in logged if "eval_accuracy" in r] == [2, 4, 6]
    straight = two_process_reward / "straight"
    for name in ("config.json", "validation.json", "eval_results.json", "report.md",
                 "training_curves.png", "reliability.png", "divergences.png",
                 "final/model.safetensors", "final/smoothing_state.pt"):  # fmt: skip
        assert (straight / name).is_file(), name
    assert not (straight / ".final.partial").exists()


class _Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        raise KeyboardInterrupt(f"simulated crash after step {state.global_step}")


def test_an_interrupted_new_run_leaves_no_earlier_runs_final(tmp_path):
    """As SFT's: a new run interrupted in a finished run's folder leaves no final/ beside
    its own config.json, and one that would start from that final/ is refused first."""
    out = tmp_path / "run"
    run_reward(_small(out, max_steps=1))
    with pytest.raises(ValueError, match="is what this run loads as --model"):
        run_reward(_small(out, model=str(out / "final")))
    assert (out / "final" / "model.safetensors").is_file()
    with pytest.raises(KeyboardInterrupt):
        run_reward(_small(out, loss="jsd"), callbacks=[_Crash()])
    assert json.loads((out / "config.json").read_text())["loss"] == "jsd"
    assert not (out / "final").exists()


def test_oracle_smoothing_without_confidences_is_refused_before_the_model_loads(
    tmp_path, monkeypatch
):
    """--smoothing oracle-* reads each training pair's true confidence: data without the
    column, or training rows without one, are refused before the model loads (an earlier
    run in the folder untouched), naming the file, the first rows, how many more and the
    field, as the other bad rows; --on-bad-rows skip drops the rows that lack one (listed in
    validation.json). Held-out rows may lack one: the *_true metrics skip them."""
    import smoothalign.reward.run as reward_run

    rows = oracle_text_rows(48, annotators=3, seed=4)
    for i, r in enumerate(rows):
        r["split"] = "eval" if i < 8 else "train"
        if i < 8:
            del r["confidence"]
    out = tmp_path / "run"
    run_reward(_small(out, max_steps=1))
    earlier = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    build = reward_run.build_reward_model

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(reward_run, "build_reward_model", no_model)
    none = tmp_path / "none.jsonl"
    none.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "confidence"}) + "\n"
                            for r in rows))  # fmt: skip
    for on_bad_rows in ("error", "skip"):
        with pytest.raises(ValueError, match="no training row has a confidence") as err:
            run_reward(_small(out, data=str(none), smoothing="oracle-l0", on_bad_rows=on_bad_rows))
        message = str(err.value)
        assert f"{none} row 8, field 'confidence': missing" in message
        assert "40 of 40 training rows are invalid" in message
        assert "... and 35 more" in message and "--on-bad-rows skip" not in message
        # every one is listed beside the earlier run's results, which stay as they were
        refused = json.loads((out / "refused_validation.json").read_text())["train"]
        assert [b["row"] for b in refused["bad_rows"]] == list(range(8, 48))
    untouched = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert untouched.pop("refused_validation.json") and untouched == earlier

    for i in (15, 30, 41):
        del rows[i]["confidence"]
    some = tmp_path / "some.jsonl"
    some.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="3 of 48 preference rows are invalid") as err:
        run_reward(_small(out, data=str(some), smoothing="oracle-l2"))
    for i in (15, 30, 41):
        assert f"{some} row {i}, field 'confidence': missing" in str(err.value)
    untouched = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert untouched.pop("refused_validation.json") and untouched == earlier

    monkeypatch.setattr(reward_run, "build_reward_model", build)
    result = run_reward(
        _small(tmp_path / "skip", data=str(some), smoothing="oracle-l2", on_bad_rows="skip")
    )
    assert result.n_train == 37 and result.n_eval == 8 and result.n_skipped == 3
    bad = json.loads((tmp_path / "skip" / "validation.json").read_text())["train"]["bad_rows"]
    assert [(b["row"], b["code"]) for b in bad] == [(15, "missing_confidence"),
                                                    (30, "missing_confidence"),
                                                    (41, "missing_confidence")]  # fmt: skip


def test_a_resume_refuses_data_that_changed_since_the_checkpoint(tmp_path):
    """As DPO's: a true confidence edited after the run saved its checkpoint (the last, at
    --max-steps: a resume that would only finish the run) is refused where the run reads it
    (an oracle policy's training pairs, every held-out pair: the *_true metrics), naming the
    rows; a training pair's, which the other policies do not read, may change, and so may
    the votes a label came from (the label is read) and a DPO reference column (never)."""
    rows = oracle_text_rows(48, annotators=3, seed=4)
    for i, row in enumerate(rows):
        row["split"] = "eval" if i < 8 else "train"
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = dict(data=str(data), max_steps=2, save_steps=2, eval_steps=0, report=False)
    edited = [dict(r) for r in rows]
    edited[20]["confidence"] = 1 - rows[20]["confidence"]
    edited[21].update(ref_chosen_logps=-1.0, ref_rejected_logps=-2.0)
    p = rows[22]["p_chosen"]  # the same label from twice the votes
    edited[22].update(votes_chosen=2 * rows[22]["votes_chosen"], votes_total=6, p_chosen=p)
    for smoothing in ("none", "oracle-l2"):
        out = tmp_path / smoothing
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        run_reward(_small(out, smoothing=smoothing, **kw))
        data.write_text("".join(json.dumps(r) + "\n" for r in edited))
        if smoothing == "none":
            result = run_reward(_small(out, smoothing=smoothing, resume="latest", **kw))
            assert any("resumed from" in n for n in result.notes)
            continue
        with pytest.raises(ValueError, match="this run's data differs") as err:
            run_reward(_small(out, smoothing=smoothing, resume="latest", **kw))
        assert "training rows: 40 before and now, but not the same ones" in str(err.value)
        assert "held-out rows" not in str(err.value)
    held_out = [dict(r) for r in rows]
    held_out[2]["confidence"] = 1 - rows[2]["confidence"]
    data.write_text("".join(json.dumps(r) + "\n" for r in held_out))
    with pytest.raises(ValueError, match="held-out rows: 8 before and now, but not the same"):
        run_reward(_small(tmp_path / "none", resume="latest", **kw))


def test_a_run_of_the_version_before_resumes_checked_against_its_folders_file(
    tmp_path, monkeypatch
):
    """As DPO's: a run whose folder holds the earlier version's fingerprint (scheme 1: every
    field of a pair, its votes and a confidence no policy of the run reads included) and
    whose checkpoints hold none resumes checked against that file."""
    import smoothalign.reward.run as run_module

    rows = oracle_text_rows(48, annotators=3, seed=4)
    for i, row in enumerate(rows):
        row["split"] = "eval" if i < 8 else "train"
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    kw = dict(data=str(data), max_steps=2, save_steps=2, eval_steps=0, report=False)
    with monkeypatch.context() as patched:
        earlier_version_fingerprints(patched, run_module, run_module.reward_content)
        run_reward(_small(out, **kw))
    assert not (out / "checkpoint-2" / "data_fingerprint.json").exists()
    result = run_reward(_small(out, resume="latest", **kw))
    assert any("resumed from" in n for n in result.notes)
    assert not any(n.startswith("data:") for n in result.notes)
    rows[20]["confidence"] = 1 - rows[20]["confidence"]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="an earlier version's, covers every column") as err:
        run_reward(_small(out, resume="latest", **kw))
    assert "training rows: 40 before and now, but not the same ones" in str(err.value)
