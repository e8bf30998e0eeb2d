"""End-to-end DPO training on the tiny model: cold start, resume, data parallelism, CLI."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.dist_helpers import torchrun
from tests.dpo_helpers import (
    cut_alike_rows,
    earlier_version_fingerprints,
    synthetic_rows,
    write_jsonl,
)
from transformers import TrainerCallback

from smoothalign.train import DPOConfig, run_dpo
from smoothalign.train.checkpoints import latest_complete_checkpoint, load_smoothing_state


@pytest.fixture(scope="module")
def noisy_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prefs")
    return write_jsonl(synthetic_rows(64, seed=3, flip_rate=0.2), folder / "pairs.jsonl")


def _config(data: Path, out: Path, **overrides) -> DPOConfig:
    base = dict(
        model="tiny",
        data=str(data),
        eval_data=str(data),
        output_dir=str(out),
        batch_size=8,
        lora=False,
        logging_steps=4,
        eval_samples=0,
        max_length=32,
        report=False,
        lr_warmup_steps=0,
    )
    return DPOConfig(**{**base, **overrides})


def _train_accuracy(data: Path, out: Path, smoothing: str, **kw) -> float:
    cfg = _config(data, out, smoothing=smoothing, max_steps=12, learning_rate=2e-4, **kw)
    return run_dpo(cfg).after["accuracy"]


def test_cals_does_not_stall_at_cold_start(noisy_data, tmp_path):
    """SPEC §4: from policy == reference (every forecast exactly 1/2), CALS reaches >= 90% of
    DPO's training preference accuracy in the same steps, for c0 = 1 and c0 = 0.8."""
    dpo = _train_accuracy(noisy_data, tmp_path / "dpo", "none")
    assert dpo > 0.7  # the task is learnable: DPO gets well above the 0.5 of a stalled policy
    for metric in ("l0", "l2"):
        for c0 in (1.0, 0.8):
            acc = _train_accuracy(
                noisy_data, tmp_path / f"{metric}{c0}", f"cals-{metric}", init_confidence=c0
            )
            assert acc >= 0.9 * dpo, (metric, c0, acc, dpo)
    # the criterion detects a stall: α forced to 1/2 (c0 = 1/2 held by the warm-up) zeroes the
    # expected gradient at h = 0, and the policy never leaves its reference
    stalled = _train_accuracy(
        noisy_data, tmp_path / "stall", "cals-l2", init_confidence=0.5, warmup_steps=1000
    )
    assert stalled < 0.9 * dpo


class _Crash(TrainerCallback):
    """Simulate a crash right after optimizer step ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt(f"simulated crash after step {self.at}")


def test_resume_equals_uninterrupted(noisy_data, tmp_path):
    kw = dict(smoothing="cals-l2", max_steps=8, save_steps=3, learning_rate=1e-3, logging_steps=1)
    run_dpo(_config(noisy_data, tmp_path / "straight", **kw))

    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        run_dpo(_config(noisy_data, crashed, **kw), callbacks=[_Crash(at=5)])
    assert latest_complete_checkpoint(crashed).name == "checkpoint-3"
    # a later checkpoint whose save never completed must not be trusted
    shutil.copytree(crashed / "checkpoint-3", crashed / "checkpoint-4")
    (crashed / "checkpoint-4" / "smoothalign_complete.json").unlink()
    assert latest_complete_checkpoint(crashed).name == "checkpoint-3"

    logged = (crashed / "metrics.jsonl").read_text().splitlines()
    assert json.loads(logged[-1])["step"] == 4  # the crash came before step 5 was logged
    result = run_dpo(_config(noisy_data, crashed, resume="latest", **kw))
    assert any("checkpoint-3" in n for n in result.notes)
    assert any("1 record(s) of the earlier run after step 3" in n for n in result.notes)
    records = [json.loads(line) for line in (crashed / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train" and "loss" in r]
    assert train_steps == list(range(1, 9))  # each step once: the rolled-back 4 is gone

    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(crashed / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    sa = load_smoothing_state(tmp_path / "straight" / "final")
    sb = load_smoothing_state(crashed / "final")
    assert sa["calibrator"]["step"] == sb["calibrator"]["step"] == 8
    torch.testing.assert_close(
        sa["calibrator"]["wins"], sb["calibrator"]["wins"], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        sa["calibrator"]["losses"], sb["calibrator"]["losses"], atol=1e-6, rtol=0
    )


def test_a_resumed_runs_train_loss_covers_the_whole_run(noisy_data, tmp_path):
    """train_loss (pooled over every pair of the run) after a crash and a resume equals the
    uninterrupted run's: the checkpoint holds the run's loss sums, with those of the steps
    buffered since the last log (checkpoint-3, logged at 2: step 3's). From an earlier
    version's checkpoint, without them, it covers the steps after the checkpoint only, and
    the record says so (train_loss_from_step)."""
    kw = dict(smoothing="cals-l2", max_steps=8, save_steps=3, learning_rate=1e-3, logging_steps=2)

    def train_loss(out: Path) -> tuple[float, dict]:
        (summary,) = [r for r in _records(out) if "train_loss" in r]
        return summary["train_loss"], summary

    run_dpo(_config(noisy_data, tmp_path / "straight", **kw))
    straight, summary = train_loss(tmp_path / "straight")
    assert "train_loss_from_step" not in summary
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        run_dpo(_config(noisy_data, crashed, **kw), callbacks=[_Crash(at=5)])
    shutil.copytree(crashed, tmp_path / "old")  # the same crash, its checkpoint of old
    run_dpo(_config(noisy_data, crashed, resume="latest", **kw))
    resumed, summary = train_loss(crashed)
    assert "train_loss_from_step" not in summary
    assert resumed == pytest.approx(straight, rel=1e-12, abs=0)
    old = tmp_path / "old"
    (old / "checkpoint-3" / "loss_sums.pt").unlink()
    result = run_dpo(_config(noisy_data, old, resume="latest", **kw))
    since, summary = train_loss(old)
    assert summary["train_loss_from_step"] == 3
    assert any("train_loss: over the steps after 3 only" in n for n in result.notes)
    windows = [r for r in _records(old) if r["split"] == "train" and r["step"] > 3]
    assert [r["step"] for r in windows] == [4, 6, 8]  # of 8, 16 and 16 pairs (step 4 alone)
    pooled = (8 * windows[0]["loss"] + 16 * windows[1]["loss"] + 16 * windows[2]["loss"]) / 40
    assert since == pytest.approx(pooled, rel=1e-12)
    assert abs(since - straight) > 1e-6


class _Steps(TrainerCallback):
    """Counts the optimizer steps a run takes."""

    def __init__(self) -> None:
        self.taken = 0

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.taken += 1


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_at_max_steps_finishes_a_run_that_crashed_after_training(
    noisy_data, tmp_path, monkeypatch
):
    """A run whose training ended (its last checkpoint is at --max-steps) but which crashed in
    the after-training phase (here saving final/) is finished by --resume latest: the
    checkpoint's weights, not one step more, and the outputs of a run that never crashed —
    the model's config included, whose EOS id (unlike its tokenizer's here) train() aligns
    with the tokenizer's. The training rows' reference log-probs are not computed."""
    import smoothalign.train.run as run_module
    from smoothalign.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("tiny")
    assert tok.eos_token_id != 5
    model.config.eos_token_id = model.generation_config.eos_token_id = 5
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    kw = dict(smoothing="cals-l2", max_steps=3, save_steps=3, learning_rate=1e-3, report=True,
              logging_steps=2, model=str(tmp_path / "model"))  # fmt: skip
    straight = tmp_path / "straight"
    run_dpo(_config(noisy_data, straight, **kw))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash while saving final/")

    crashed = tmp_path / "crashed"
    monkeypatch.setattr(run_module, "save_final_model", crash)
    with pytest.raises(KeyboardInterrupt):
        run_dpo(_config(noisy_data, crashed, **kw))
    monkeypatch.undo()
    assert latest_complete_checkpoint(crashed).name == "checkpoint-3"
    for name in ("final", "eval_results.json", "report.md"):
        assert not (crashed / name).exists(), name

    steps = _Steps()
    result = run_dpo(_config(noisy_data, crashed, resume="latest", **kw), callbacks=[steps])
    assert steps.taken == 0 and result.trainer.state.global_step == 3
    assert any("checkpoint-3" in n and "no step was trained" in n for n in result.notes)
    assert any("training rows' not computed" in n for n in result.notes)
    # the training time reported is the earlier run's, from its kept end-of-training record
    (runtime,) = [r["train_runtime"] for r in _records(crashed) if "train_runtime" in r]
    assert result.train_seconds == pytest.approx(runtime) and runtime > 0
    for name in ("config.json", "generation_config.json"):
        ours = json.loads((crashed / "final" / name).read_text())
        theirs = json.loads((straight / "final" / name).read_text())
        assert ours["eos_token_id"] == theirs["eos_token_id"], name
        eos = ours["eos_token_id"]
        assert tok.eos_token_id in (eos if isinstance(eos, list) else [eos]), name
    checkpoint = load_file(crashed / "checkpoint-3" / "model.safetensors")
    final = load_file(crashed / "final" / "model.safetensors")
    expected = load_file(straight / "final" / "model.safetensors")
    assert checkpoint.keys() == final.keys() == expected.keys()
    for k in final:
        assert torch.equal(final[k], checkpoint[k]), k  # the checkpoint's weights, exactly
        torch.testing.assert_close(final[k], expected[k], atol=1e-6, rtol=0)
    state = load_smoothing_state(crashed / "final")
    assert state["calibrator"]["step"] == 3
    assert torch.equal(
        state["calibrator"]["wins"],
        load_smoothing_state(crashed / "checkpoint-3")["calibrator"]["wins"],
    )
    for name in ("report.md", "training_curves.png", "alpha.png", "reliability.png"):
        assert (crashed / name).is_file(), name
    ours = json.loads((crashed / "eval_results.json").read_text())
    theirs = json.loads((straight / "eval_results.json").read_text())
    for when in ("before", "after"):
        assert ours[when] == pytest.approx(theirs[when], abs=1e-6, nan_ok=True), when
    # metrics.jsonl holds what the uninterrupted run's does: the end-of-training record
    # (runtime, mean loss) of the run that trained, the after-training evaluation once
    shape = [[(r["step"], r["split"], sorted(r)) for r in _records(o)] for o in (straight, crashed)]
    assert shape[0] == shape[1]


class _Checkpointing(TrainerCallback):
    """Whether the model trains with gradient checkpointing on."""

    on = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        new = hasattr(type(model), "is_activation_checkpointing")  # later transformers 5.x
        self.on = bool(
            model.is_activation_checkpointing if new else model.is_gradient_checkpointing
        )


@pytest.mark.parametrize(("lora", "fused"), [(False, "off"), (True, "off"), (False, "on")])
def test_gradient_checkpointing_recomputes_and_trains_the_same(
    noisy_data, tmp_path, lora, fused, monkeypatch
):
    """--gradient-checkpointing: the backward runs each layer's MLP again, and the trained
    model is the same as without it."""
    from transformers.models.llama import modeling_llama

    calls = [0]
    forward = modeling_llama.LlamaMLP.forward

    def counted(self, x):  # module hooks do not see the recompute: count the method itself
        calls[0] += 1
        return forward(self, x)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", counted)
    runs = {}
    for gc in (False, True):
        calls[0] = 0
        flag = _Checkpointing()
        cfg = _config(
            noisy_data,
            tmp_path / f"gc{gc}",
            smoothing="cals-l2",
            max_steps=2,
            learning_rate=1e-3,
            lora=lora,
            fused_logps=fused,
            gradient_checkpointing=gc,
        )
        runs[gc] = (run_dpo(cfg, callbacks=[flag]).after, flag.on, calls[0])
    (plain, on0, n0), (ckpt, on1, n1) = runs[False], runs[True]
    assert on0 is False and on1 is True
    assert n1 > n0 > 0  # the same evaluation passes, plus the backward's recompute
    assert plain["margin_mean"] != 0.0  # training moved the policy
    assert ckpt["margin_mean"] == pytest.approx(plain["margin_mean"], rel=1e-4, abs=1e-7)
    assert ckpt["accuracy"] == plain["accuracy"]


def test_fused_logps_train_like_materialised_logits(noisy_data, tmp_path):
    """--fused-logps on (the chunked path here, the Triton kernel on a GPU, where the GPU
    session runs this test) trains like --fused-logps off; fp32 for a tight tolerance."""
    after = {}
    for fused in ("off", "on"):
        cfg = _config(
            noisy_data,
            tmp_path / fused,
            smoothing="cals-l2",
            max_steps=3,
            learning_rate=1e-3,
            fused_logps=fused,
            precision="fp32",
        )
        after[fused] = run_dpo(cfg).after
    assert after["off"]["margin_mean"] != 0.0
    assert after["on"]["margin_mean"] == pytest.approx(after["off"]["margin_mean"], rel=1e-3)
    assert after["on"]["accuracy"] == after["off"]["accuracy"]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory) -> Path:
    """One torchrun launch (gloo, 2 CPU processes) of tests/dist_dpo_worker.py: a run
    uninterrupted (``straight/``), and the same run crashed after step 5 and resumed from its
    checkpoint at step 3 (``crashed/``); each rank's output in its own log (``rank<R>.out``,
    ``rank<R>.err``). The data have a pair that truncation makes identical and a field
    holding a special-token string: each is warned about."""
    folder = tmp_path_factory.mktemp("dist")
    rows = synthetic_rows(64, seed=3, flip_rate=0.2)
    shared = " the same long prefix here, then "  # 33 tokens: past max_length 32
    rows.append({"prompt": "P:", "chosen": shared + "ab", "rejected": shared + "cd",
                 "confidence": 0.8})  # fmt: skip
    rows.append({"prompt": "Q:", "chosen": "ab<eos>ab", "rejected": "cdcd", "confidence": 0.9})
    data = write_jsonl(rows, folder / "pairs.jsonl")
    return torchrun("dist_dpo_worker.py", folder, str(data), str(folder))


def test_two_process_gloo_run_keeps_ranks_identical(two_process_runs):
    r0 = torch.load(two_process_runs / "rank0.pt", weights_only=True)
    r1 = torch.load(two_process_runs / "rank1.pt", weights_only=True)
    assert r0["world_size"] == r1["world_size"] == 2
    # real data parallelism: the trainer knows of both ranks, and they see different pairs
    assert r0["trainer_world_size"] == r1["trainer_world_size"] == 2
    assert set(r0["first_batch"]).isdisjoint(r1["first_batch"])
    for run in ("straight", "resumed"):
        cal0, cal1 = r0[run]["policy"]["calibrator"], r1[run]["policy"]["calibrator"]
        assert cal0["step"] == cal1["step"] == 6
        assert torch.equal(cal0["wins"], cal1["wins"])
        assert torch.equal(cal0["losses"], cal1["losses"])
        # counts summed across ranks: each step folds in both ranks' 4 pairs, mirrored (x2)
        assert cal0["wins"].sum() > 0
        for k in r0[run]["weights"]:
            assert torch.equal(r0[run]["weights"][k], r1[run]["weights"][k]), (run, k)


def test_two_process_ddp_skips_the_search_for_unused_parameters(two_process_runs):
    """Every parameter trained takes part in the loss (full fine-tuning, and LoRA with the
    adapter-disabled policy as reference: a second forward through DDP each step): DDP is
    told so (``ddp_find_unused_parameters=False``), instead of searching the autograd graph
    every step and warning on every rank that it found none; the LoRA run trains (the
    adapter moves) alike on both ranks."""
    r0 = torch.load(two_process_runs / "rank0.pt", weights_only=True)
    r1 = torch.load(two_process_runs / "rank1.pt", weights_only=True)
    assert r0["find_unused"] is r1["find_unused"] is False
    assert r0["lora"]["find_unused"] is r1["lora"]["find_unused"] is False
    lora = {k: v for k, v in r0["lora"]["weights"].items() if "lora_B" in k}
    assert lora and any(v.abs().max() > 0 for v in lora.values())
    for k, v in r0["lora"]["weights"].items():
        assert torch.equal(v, r1["lora"]["weights"][k]), k
    for rank in (0, 1):
        assert (
            "find_unused_parameters=True" not in (two_process_runs / f"rank{rank}.err").read_text()
        )


def test_explicit_ddp_find_unused_parameters_is_kept(tmp_path):
    """``ddp_find_unused_parameters`` set in the trainer's arguments is the user's: the
    trainer leaves it (only an unset one becomes False, for a model that uses every
    parameter: :func:`~smoothalign.train.base_trainer.uses_every_parameter`)."""
    from transformers import TrainingArguments

    from smoothalign.models import load_model_and_tokenizer
    from smoothalign.smoothing import SmoothingPolicy
    from smoothalign.train.trainer import SmoothDPOTrainer

    model, _ = load_model_and_tokenizer("tiny")
    for given, expected in ((True, True), (False, False), (None, False)):
        args = TrainingArguments(
            output_dir=str(tmp_path), use_cpu=True, report_to=[], ddp_find_unused_parameters=given
        )
        trainer = SmoothDPOTrainer(
            model=model,
            args=args,
            dpo_config=_config(tmp_path / "none.jsonl", tmp_path),
            smoothing_policy=SmoothingPolicy(),
        )
        assert trainer.args.ddp_find_unused_parameters is expected, given


def test_uses_every_parameter_only_for_dense_single_models():
    """DDP may skip its search for unused parameters (:func:`uses_every_parameter`) for a
    dense causal LM or sequence classifier, under PEFT too, not for a mixture of experts
    (experts no token is routed to), a multimodal model (a vision tower text leaves out), or
    a module without a transformers config."""
    from peft import LoraConfig, get_peft_model
    from transformers import (
        Gemma3Config,
        LlamaConfig,
        LlamaForSequenceClassification,
        MixtralConfig,
        Qwen2MoeConfig,
    )

    from smoothalign.models import load_model_and_tokenizer
    from smoothalign.train.base_trainer import uses_every_parameter

    model, _ = load_model_and_tokenizer("tiny")
    assert uses_every_parameter(model)
    lora = LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM")
    assert uses_every_parameter(get_peft_model(model, lora))
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=2, vocab_size=32)  # fmt: skip
    assert uses_every_parameter(LlamaForSequenceClassification(LlamaConfig(**small, num_labels=1)))

    class Holder(torch.nn.Module):  # only its config is read
        def __init__(self, config):
            super().__init__()
            self.config = config

    for config in (MixtralConfig(), Qwen2MoeConfig(), Gemma3Config()):
        assert not uses_every_parameter(Holder(config)), type(config).__name__
    assert not uses_every_parameter(torch.nn.Linear(2, 2))
    assert not uses_every_parameter(None)


def test_two_process_resume_equals_uninterrupted(two_process_runs):
    """A 2-rank run resumed (with 2 ranks) from its checkpoint at step 3, saved between two
    logging steps, so that the loss sums it holds were gathered across the ranks (every
    rank reached the collective: the launch ended), ends as the uninterrupted 2-rank run:
    the same train_loss over every step, CALS state and weights."""
    straight, crashed = two_process_runs / "straight", two_process_runs / "crashed"
    assert (crashed / "checkpoint-3" / "loss_sums.pt").is_file()
    r0 = torch.load(two_process_runs / "rank0.pt", weights_only=True)
    assert any("resumed from" in n and "checkpoint-3" in n for n in r0["notes"])

    def summary(out: Path) -> dict:
        (record,) = [r for r in _records(out) if "train_loss" in r]
        return record

    assert "train_loss_from_step" not in summary(crashed)
    assert summary(crashed)["train_loss"] == pytest.approx(
        summary(straight)["train_loss"], rel=1e-12, abs=0
    )
    a, b = r0["straight"], r0["resumed"]
    for key in ("step", "wins", "losses"):
        torch.testing.assert_close(
            a["policy"]["calibrator"][key], b["policy"]["calibrator"][key], atol=1e-6, rtol=0
        )
    for k in a["weights"]:
        torch.testing.assert_close(a["weights"][k], b["weights"][k], atol=1e-6, rtol=0)


def test_two_process_run_says_and_writes_things_once(two_process_runs):
    """What every rank would say alike (the data's warnings, smoothalign's own progress
    bars and prints, the logged records, transformers' messages) comes from the main
    process only, and the run's files are written once: each record of metrics.jsonl once."""
    out = {r: (two_process_runs / f"rank{r}.out").read_text() for r in (0, 1)}
    err = {r: (two_process_runs / f"rank{r}.err").read_text() for r in (0, 1)}
    said_once = (
        "identical chosen and rejected scored tokens after truncation",  # data, eval_data
        "hold special-token strings",
        "reference log-probs (train)",
        "scoring held-out pairs",
        "oracle reward: sampling 2 responses",
    )
    assert all(text in err[0] for text in said_once)
    transformers_said = [line for line in err[1].splitlines() if line.startswith("[transformers]")]
    assert [text for text in said_once if text in err[1]] + transformers_said == []
    assert "'train_loss'" in out[0] and out[1] == ""  # Trainer's logged dicts
    for run, steps in (("straight", [2, 4, 6]), ("crashed", [2, 4, 6])):
        records = _records(two_process_runs / run)
        assert [r["step"] for r in records if r["split"] == "train"] == steps, run
        assert len([r for r in records if "train_loss" in r]) == 1, run
    report = two_process_runs / "straight" / "report.md"
    assert "oracle reward" in report.read_text()
    for name in ("config.json", "validation.json", "eval_results.json", "training_curves.png"):
        assert (two_process_runs / "straight" / name).is_file(), name


def test_two_process_shares_out_the_reference_and_the_oracle(two_process_runs, tmp_path):
    """What every rank computed alike is shared out: the ranks compute the precomputed
    reference log-probs of disjoint batches (their shares add up to the pairs, once each)
    and gather them, and the main process alone samples and scores the oracle's responses
    (before and after training), sending its results to the other rank. The results are a
    single process's: every pair's reference log-probs on both ranks, in the right rows, and
    the metrics before training, the oracle reward included (the same initial policy; the
    training steps differ: 4 pairs a step here)."""
    from tests.dist_dpo_worker import reference_logps, straight_config

    r0, r1 = (torch.load(two_process_runs / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    one = run_dpo(
        straight_config(
            str(two_process_runs / "pairs.jsonl"), tmp_path / "one", max_steps=1, report=False
        )
    )
    expected = reference_logps(one.trainer)
    n_pairs = sum(len(logps) for logps in expected.values())
    shares = [r["work"]["reference_pairs"] for r in (r0, r1)]
    assert sum(shares) == n_pairs and min(shares) > 0, shares
    assert [r["work"]["generate"] for r in (r0, r1)] == [2, 0]  # before and after training
    assert [r["work"]["oracle_scored"] for r in (r0, r1)] == [4, 0]  # 2 samples each time
    for split, logps in expected.items():
        for rank, r in enumerate((r0, r1)):
            assert r["reference_logps"][split].keys() == logps.keys(), (split, rank)
            for index, pair in logps.items():
                assert r["reference_logps"][split][index] == pytest.approx(pair, rel=1e-6), (
                    split,
                    rank,
                    index,
                )
    results = r0["straight_results"]
    assert "oracle_reward" in results["before"] and "oracle_reward" in results["after"]
    for when in ("before", "after"):  # rank 1 returns the main process's oracle reward
        assert r1["straight_results"][when].keys() == results[when].keys()
        for key, value in results[when].items():
            assert r1["straight_results"][when][key] == pytest.approx(value, nan_ok=True), key
    assert one.before.keys() == results["before"].keys()
    for key, value in one.before.items():
        assert results["before"][key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), key


def test_lora_reference_modes_agree(noisy_data, tmp_path):
    """With LoRA, the reference is the base model: precomputed once, the adapter-disabled
    policy on the fly, or a frozen copy — all three train the same adapter."""
    finals = {}
    for reference in ("precomputed", "adapter-disabled", "model"):
        out = tmp_path / reference
        cfg = _config(
            noisy_data,
            out,
            lora=True,
            lora_r=4,
            reference=reference,
            max_steps=3,
            learning_rate=5e-3,
        )
        result = run_dpo(cfg)
        assert result.before["margin_mean"] == pytest.approx(
            0.0, abs=1e-5
        )  # policy == reference at start
        finals[reference] = load_file(out / "final" / "adapter" / "adapter_model.safetensors")
    ref = finals["precomputed"]
    assert any(v.abs().max() > 0 for k, v in ref.items() if "lora_B" in k)  # the adapter moved
    for name in ("adapter-disabled", "model"):
        for k in ref:
            torch.testing.assert_close(finals[name][k], ref[k], atol=1e-5, rtol=1e-4)


def test_cli_trains_and_writes_the_report(tmp_path, capsys):
    """`smoothalign dpo` on a conversational data file with a split column (the embedded
    set's format), on the tiny model: report, metrics and plots written."""
    rows = []
    for i, r in enumerate(synthetic_rows(24, seed=5, flip_rate=0.25)):
        rows.append(
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
                "confidence": r["confidence"],
                "split": "eval" if i % 4 == 0 else "train",
            }
        )
    rows.append({"prompt": "plain", "chosen": "", "rejected": "x", "split": "train"})  # a bad row
    data = write_jsonl(rows, tmp_path / "conv.jsonl")
    out = tmp_path / "run"
    from smoothalign.cli import main

    argv = ["dpo", "--model", "tiny", "--data", str(data), "--output-dir", str(out)]
    assert main([*argv, "--max-steps", "2"]) == 2  # one line on stderr, no traceback
    assert "row 24, field 'prompt'" in capsys.readouterr().err
    code = main(
        [
            "dpo",
            "--model",
            "tiny",
            "--data",
            str(data),
            "--output-dir",
            str(out),
            "--max-steps",
            "4",
            "--batch-size",
            "4",
            "--logging-steps",
            "2",
            "--max-length",
            "48",
            "--on-bad-rows",
            "skip",
            "--oracle",
            "sentiment",
            "--eval-samples",
            "3",
            "--max-new-tokens",
            "4",
            "--smoothing",
            "cals-l0",
        ]
    )
    assert code == 0
    for name in (
        "report.md",
        "metrics.jsonl",
        "training_curves.png",
        "alpha.png",
        "reliability.png",
        "config.json",
        "eval_results.json",
        "final/smoothing_state.pt",
    ):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "row 24" in report  # the skipped row is listed, not silently dropped
    assert "oracle reward" in report
    import json

    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logged if r["split"] == "train"]
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "cals/alpha_mean",
        "cals/alpha_hist",
        "cals/q_hat",
    ):
        assert key in train[-1], key


def test_reference_logps_from_the_data_and_periodic_eval(tmp_path):
    """Rows that carry ref_chosen_logps / ref_rejected_logps (TRL's names) are used as the
    reference as given; --eval-steps logs the eval split's calibration during training."""
    rows = synthetic_rows(16, seed=7)
    for r in rows:
        r["ref_chosen_logps"], r["ref_rejected_logps"] = -1.0, -50.0
    data = write_jsonl(rows, tmp_path / "with_ref.jsonl")
    out = tmp_path / "run"
    cfg = _config(data, out, reference="auto", max_steps=4, eval_steps=2, logging_steps=2)
    result = run_dpo(cfg)
    assert any("from the data" in n for n in result.notes)
    # at step 0 the policy's own log-ratio is far from the given reference: margins not 0
    assert result.before["margin_mean"] < -1.0
    import json

    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in logged if r["split"] == "eval"]
    assert sorted({r["step"] for r in evals}) == [2, 4]
    assert all("eval_ece" in r and "eval_accuracy" in r for r in evals)

    # an explicit on-the-fly reference overrides the data's values, and says so
    cfg = _config(data, tmp_path / "model_ref", reference="model", max_steps=1)
    result = run_dpo(cfg)
    assert any("were not used" in n for n in result.notes)
    assert result.before["margin_mean"] == pytest.approx(0.0, abs=1e-6)


def test_a_non_finite_log_prob_names_the_term_and_the_data_row(tmp_path, monkeypatch):
    """A reference log-prob that is infinite for one row (a masked token, say) stops the run
    with the term and that row's number, not a position in the shuffled batch."""
    from smoothalign.train.trainer import SmoothDPOTrainer

    original = SmoothDPOTrainer.reference_logps

    def reference_logps(self, model, batch):
        chosen, rejected = original(self, model, batch)
        return chosen.masked_fill(batch["index"].to(chosen.device) == 13, -math.inf), rejected

    monkeypatch.setattr(SmoothDPOTrainer, "reference_logps", reference_logps)
    data = write_jsonl(synthetic_rows(16, seed=3), tmp_path / "rows.jsonl")
    cfg = _config(data, tmp_path / "run", max_steps=2, batch_size=16)
    with pytest.raises(ValueError) as err:
        run_dpo(cfg)
    message = str(err.value)
    assert "reference log-prob of the chosen response is -inf in data row 13" in message


def test_logged_metrics_cover_every_pair_at_the_end_of_an_epoch(tmp_path):
    """10 pairs in batches of 4: the log after step 3 (the epoch's short last batch) must
    summarise all 10 pairs, not the last batch's remainder."""
    import json

    data = write_jsonl(synthetic_rows(10, seed=2), tmp_path / "ten.jsonl")
    out = tmp_path / "run"
    run_dpo(_config(data, out, eval_data=str(data), batch_size=4, max_steps=3, logging_steps=3))
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step3 = next(r for r in logged if r["split"] == "train" and r["step"] == 3)
    assert sum(step3["cals/alpha_hist"]) == 10


def test_the_logged_loss_is_the_mean_over_the_windows_pairs(tmp_path, monkeypatch):
    """10 pairs in batches of 4: steps of 4, 4 and 2 pairs in one logging window. Its
    ``loss`` (and the run's ``train_loss``) is the mean over the window's 10 pairs, as the
    other logged values are, not Trainer's mean of the 3 per-step means (which weighs the
    short step's pairs twice)."""
    from smoothalign.train.trainer import SmoothDPOTrainer

    steps: list[tuple[float, int]] = []  # (the step's loss: its pairs' mean, its pairs)
    training_step = SmoothDPOTrainer.training_step

    def recorded(self, model, inputs, num_items_in_batch=None):
        loss = training_step(self, model, inputs, num_items_in_batch)
        steps.append((float(loss), int(inputs["index"].numel())))
        return loss

    monkeypatch.setattr(SmoothDPOTrainer, "training_step", recorded)
    data = write_jsonl(synthetic_rows(10, seed=2), tmp_path / "ten.jsonl")
    out = tmp_path / "run"
    kw = dict(smoothing="none", batch_size=4, max_steps=3, logging_steps=3, learning_rate=1e-2)
    run_dpo(_config(data, out, eval_data=str(data), **kw))
    assert [n for _, n in steps] == [4, 4, 2]
    pooled = math.fsum(loss * n for loss, n in steps) / 10
    of_means = math.fsum(loss for loss, _ in steps) / 3
    assert abs(pooled - of_means) > 1e-4  # the short step's pairs weigh differently
    (window,) = [r for r in _records(out) if r["split"] == "train"]
    (summary,) = [r for r in _records(out) if "train_loss" in r]
    assert window["loss"] == pytest.approx(pooled, rel=1e-6)
    assert summary["train_loss"] == pytest.approx(pooled, rel=1e-6)


def test_data_split_values_other_than_train_and_eval_are_refused(tmp_path):
    rows = synthetic_rows(8, seed=1)
    for i, r in enumerate(rows):
        r["split"] = ["train", "eval", "test", "train"][i % 4]
    data = write_jsonl(rows, tmp_path / "split.jsonl")
    with pytest.raises(ValueError, match=r"2 of 8 preference rows are invalid") as err:
        run_dpo(_config(data, tmp_path / "run", eval_data=None, max_steps=1))
    assert "split.jsonl row 2, field 'split': 'test'; every row's split must be" in str(err.value)
    # ... bad rows like any other: --on-bad-rows skip drops and lists them
    run_dpo(_config(data, tmp_path / "run", eval_data=None, max_steps=1, on_bad_rows="skip"))
    validation = json.loads((tmp_path / "run" / "validation.json").read_text())["train"]
    assert [(b["row"], b["code"]) for b in validation["bad_rows"]] == [
        (2, "bad_split"),
        (6, "bad_split"),
    ]


def test_resume_refuses_other_cals_options(noisy_data, tmp_path):
    out = tmp_path / "run"
    kw = dict(smoothing="cals-l2", max_steps=2, save_steps=2)
    run_dpo(_config(noisy_data, out, **kw))
    with pytest.raises(
        ValueError, match="differ from the checkpointed run's .*momentum 0.99 -> 0.9"
    ):
        run_dpo(_config(noisy_data, out, resume="latest", momentum=0.9, **{**kw, "max_steps": 3}))
    # the smoothing state's own check, for a checkpoint whose run left no config.json
    (out / "config.json").unlink()
    with pytest.raises(
        ValueError, match="momentum: the checkpoint .* has 0.99, this run asks for 0.9"
    ):
        run_dpo(_config(noisy_data, out, resume="latest", momentum=0.9, **{**kw, "max_steps": 3}))


def _no_model(monkeypatch):
    import smoothalign.train.run as run_module

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the resume was checked")

    monkeypatch.setattr(run_module, "load_checked", refuse)


def test_resume_refuses_a_changed_training_option_before_the_model_loads(
    noisy_data, tmp_path, monkeypatch
):
    """A resume continues the same training: β, the data or the batch size may not change
    (the report would describe the new values as if the whole run had used them); how long
    to train and how often to log may."""
    out = tmp_path / "run"
    kw = dict(smoothing="none", max_steps=2, save_steps=2)
    run_dpo(_config(noisy_data, out, **kw))
    _no_model(monkeypatch)
    with pytest.raises(ValueError, match=r"batch_size 8 -> 4; beta 0\.1 -> 0\.5"):
        run_dpo(_config(noisy_data, out, resume="latest", beta=0.5, batch_size=4, **kw))
    with pytest.raises(ValueError, match="resume: no checkpoint folder"):
        run_dpo(_config(noisy_data, out, resume=str(tmp_path / "nope"), **kw))
    with pytest.raises(
        ValueError, match="is at step 2, past --max-steps 1: .*--max-steps 2 to finish"
    ):
        run_dpo(_config(noisy_data, out, resume="latest", **{**kw, "max_steps": 1}))
    # at --max-steps a resume finishes the run without training; FSDP / DeepSpeed load the
    # weights only inside Trainer.train, which would train a step 3
    for variable, name in (
        ("ACCELERATE_USE_FSDP", "FSDP"),
        ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"),
    ):
        with monkeypatch.context() as launch:
            launch.setenv(variable, "true")
            with pytest.raises(
                ValueError, match=f"step 2 = --max-steps: .* not supported under {name}"
            ):
                run_dpo(_config(noisy_data, out, resume="latest", **kw))
    # another run's folder: its checkpoints and metrics would mix with this lineage's
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="holds another run's outputs .*metrics.jsonl"):
        run_dpo(
            _config(noisy_data, other, resume=str(out / "checkpoint-2"), **{**kw, "max_steps": 3})
        )
    monkeypatch.undo()
    (out / "report.md").write_text("the 2-step run's report")  # as a report=True run leaves
    result = run_dpo(_config(noisy_data, out, resume="latest", logging_steps=4, report=False,
                             **{**kw, "max_steps": 4}))  # fmt: skip
    assert any("checkpoint-2" in n for n in result.notes)
    assert not (out / "report.md").exists()  # the 2-step run's report would pass for this one
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step4 = [r for r in records if r["split"] == "train" and r["step"] == 4 and "loss" in r]
    assert len(step4) == 1 and step4[0]["partial_window"] is True  # steps 3-4 only, not 1-4
    # a finished run extended: its end-of-run summary at the checkpoint's step goes, the
    # resumed run writes its own; no record appears twice
    run_dpo(_config(noisy_data, out, resume="latest", **{**kw, "max_steps": 6}))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summaries = [r for r in records if r["split"] == "summary"]
    assert summaries and all(r["step"] == 6 for r in summaries)
    keys = [(r["step"], r["split"], tuple(sorted(r))) for r in records]
    assert len(keys) == len(set(keys))


def test_resume_refuses_a_new_max_steps_under_a_schedule_that_follows_it(tmp_path):
    from smoothalign.train.checkpoints import check_resume_config

    saved = tmp_path / "config.json"
    base = {"max_steps": 6, "lr_scheduler": "linear", "beta": 0.1}
    saved.write_text(json.dumps(base))
    with pytest.raises(ValueError, match="max_steps 6 -> 9 with --lr-scheduler linear"):
        check_resume_config(saved, {**base, "max_steps": 9})
    check_resume_config(saved, base)  # unchanged: fine
    saved.write_text(json.dumps({**base, "lr_scheduler": "constant_with_warmup"}))
    check_resume_config(saved, {**base, "lr_scheduler": "constant_with_warmup", "max_steps": 9})


def test_a_resume_refusal_names_every_changed_option_and_the_flags_to_give_again(tmp_path):
    """All at once (fixing the first one named must not lead to a second refusal), with the
    saved values as flags; max_steps is judged under the saved schedule, which the resumed
    run must keep."""
    from smoothalign.train.checkpoints import check_resume_config

    saved = tmp_path / "config.json"
    base = {"max_steps": 6, "lr_scheduler": "cosine", "beta": 0.1, "lora": True, "data": None}
    saved.write_text(json.dumps(base))
    now = {**base, "max_steps": 9, "lr_scheduler": "constant", "beta": 0.2, "lora": False}
    with pytest.raises(ValueError) as err:
        check_resume_config(saved, {**now, "data": str(tmp_path / "config.json")})
    message = str(err.value)
    for change in (
        "beta 0.1 -> 0.2",
        "lora True -> False",
        "lr_scheduler 'cosine' -> 'constant'",
        "max_steps 6 -> 9 with --lr-scheduler cosine",
    ):
        assert change in message
    flags = "--beta 0.1 without --data --lora --lr-scheduler cosine --max-steps 6, with --resume"
    assert f"as that run had them ({flags})" in message
    # the other way round, the longer run is fine under the saved constant schedule
    saved.write_text(json.dumps({**base, "lr_scheduler": "constant"}))
    with pytest.raises(ValueError) as err:
        check_resume_config(saved, {**base, "lr_scheduler": "cosine", "max_steps": 9})
    assert "lr_scheduler 'constant' -> 'cosine'. A resumed run" in str(err.value)
    assert "max_steps" not in str(err.value)


def test_resume_reads_relative_paths_against_the_launch_directory(
    noisy_data, tmp_path, monkeypatch
):
    """config.json keeps ``--data`` as typed: a relative path is read against the directory
    the run was launched from, so resuming from elsewhere with the same file (absolute) is
    the same run, and a different file of the same relative name is not."""
    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    first.mkdir()
    elsewhere.mkdir()
    shutil.copy(noisy_data, first / "pairs.jsonl")
    shutil.copy(noisy_data, elsewhere / "pairs.jsonl")
    (elsewhere / "pairs.jsonl").write_text((elsewhere / "pairs.jsonl").read_text() + "\n")
    out = tmp_path / "run"
    kw = dict(smoothing="none", max_steps=2, save_steps=2, eval_data=None)
    monkeypatch.chdir(first)
    run_dpo(_config(Path("pairs.jsonl"), out, **kw))
    monkeypatch.chdir(elsewhere)
    _no_model(monkeypatch)
    with pytest.raises(ValueError) as err:
        run_dpo(_config(Path("pairs.jsonl"), out, resume="latest", **kw))
    # the same relative name on both sides: the message says where each was read
    assert (
        f"data 'pairs.jsonl' ({(first / 'pairs.jsonl').resolve()}) -> 'pairs.jsonl' "
        f"({(elsewhere / 'pairs.jsonl').resolve()}): a relative path is read against the "
        "folder its run was launched from" in str(err.value)
    )
    assert f"(--data {(first / 'pairs.jsonl').resolve()}, with --resume)" in str(err.value)
    (elsewhere / "pairs.jsonl").unlink()
    with pytest.raises(
        ValueError, match=r"-> 'pairs.jsonl' \(.*elsewhere/pairs.jsonl: not found\)"
    ):
        run_dpo(_config(Path("pairs.jsonl"), out, resume="latest", **kw))
    monkeypatch.undo()
    monkeypatch.chdir(elsewhere)
    run_dpo(_config(first / "pairs.jsonl", out, resume="latest", **{**kw, "max_steps": 3}))


def test_final_holds_the_cals_state_when_it_is_swapped_in(noisy_data, tmp_path, monkeypatch):
    import smoothalign.io as io_module

    seen = []
    real = io_module.swap_in_folder

    def spy(new, dest):
        seen.append(sorted(p.name for p in new.iterdir()))
        real(new, dest)

    monkeypatch.setattr(io_module, "swap_in_folder", spy)
    run_dpo(_config(noisy_data, tmp_path / "run", smoothing="cals-l2", max_steps=1))
    assert len(seen) == 1 and "smoothing_state.pt" in seen[0]


def test_a_metrics_line_cut_by_a_crash_does_not_break_the_resumed_report(noisy_data, tmp_path):
    import json

    out = tmp_path / "run"
    kw = dict(smoothing="none", save_steps=2, logging_steps=1, report=True)
    run_dpo(_config(noisy_data, out, max_steps=2, **kw))
    metrics = out / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[: len(text) - 40])  # the last record cut in mid-line
    run_dpo(_config(noisy_data, out, resume="latest", max_steps=4, **kw))
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert {r["step"] for r in records if r["split"] == "train"} >= {1, 3, 4}
    assert (out / "report.md").is_file()


def test_final_is_replaced_whole_by_a_later_run(noisy_data, tmp_path):
    """A LoRA run, then a full fine-tune into the same folder: the new final/ holds no
    adapter/ of the old run."""
    out = tmp_path / "run"
    run_dpo(_config(noisy_data, out, smoothing="none", max_steps=1, lora=True))
    assert (out / "final" / "adapter").is_dir()
    run_dpo(_config(noisy_data, out, smoothing="none", max_steps=1, lora=False))
    assert (out / "final" / "model.safetensors").is_file()
    assert not (out / "final" / "adapter").exists()
    assert not (out / ".final.partial").exists()
    umask = os.umask(0)
    os.umask(umask)  # the weights follow the umask as every other output (not 0600)
    assert (out / "final" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_oracle_smoothing_needs_a_confidence_on_training_rows_only(tmp_path):
    """Held-out rows (a ``split: eval`` column) may lack one: the *_true metrics skip them.
    A training row without one is a bad row (an error, or skipped with --on-bad-rows skip)."""
    rows = synthetic_rows(48, seed=5)
    for i, r in enumerate(rows):
        r["split"] = "eval" if i < 8 else "train"
        if i < 8:
            r["confidence"] = None
    data = write_jsonl(rows, tmp_path / "split.jsonl")
    kw = dict(smoothing="oracle-l0", max_steps=1, eval_data=None)
    result = run_dpo(_config(data, tmp_path / "ok", **kw))
    assert result.n_train == 40 and result.n_eval == 8
    rows[20]["confidence"] = None
    data = write_jsonl(rows, tmp_path / "one_missing.jsonl")
    with pytest.raises(ValueError, match="row 20, field 'confidence': missing; the oracle"):
        run_dpo(_config(data, tmp_path / "error", **kw))
    result = run_dpo(_config(data, tmp_path / "skip", on_bad_rows="skip", **kw))
    assert result.n_train == 39 and result.n_skipped == 1
    import json

    bad = json.loads((tmp_path / "skip" / "validation.json").read_text())["train"]["bad_rows"]
    assert [(b["row"], b["code"]) for b in bad] == [(20, "missing_confidence")]
    # none has one: skipping them would leave nothing, so that is not suggested
    for r in rows:
        r["confidence"] = None
    data = write_jsonl(rows, tmp_path / "none.jsonl")
    with pytest.raises(ValueError, match="no training row has a confidence") as err:
        run_dpo(_config(data, tmp_path / "none", on_bad_rows="skip", **kw))
    assert "40 of 40 training rows are invalid" in str(err.value)
    assert "--on-bad-rows skip" not in str(err.value)


def test_the_reliability_curve_of_the_forecasts_is_logged(noisy_data, tmp_path):
    """SPEC §4 logs the reliability curve beside q̂: per bin, how often labels agreed with
    the forecasts (the moving-average counts, without q̂'s prior) and the counts."""
    import json

    out = tmp_path / "run"
    run_dpo(_config(noisy_data, out, smoothing="cals-l2", max_steps=3, logging_steps=1,
                    learning_rate=1e-2))  # fmt: skip
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["split"] == "train" and "cals/reliability" in r][-1]
    state = load_smoothing_state(out / "final")["calibrator"]
    w, lo = state["wins"].double(), state["losses"].double()
    assert last["cals/bin_counts"] == pytest.approx((w + lo).tolist())
    want = [float(a / (a + b)) if a + b > 0 else None for a, b in zip(w, lo, strict=True)]
    assert last["cals/reliability"] == pytest.approx(want, nan_ok=True)
    assert len(want) == 20 and any(x is not None for x in want)


def test_a_refused_run_leaves_the_earlier_results_and_a_fresh_one_clears_them(noisy_data, tmp_path):
    """A run that fails its checks (here bf16 on a CPU) must not cost the earlier run its
    report and metrics; a run that does start removes them, plots included, even with
    --no-report (they would pass for this run's)."""
    out = tmp_path / "run"
    kw = dict(smoothing="none", max_steps=1)
    run_dpo(_config(noisy_data, out, report=True, **kw))
    earlier = {"report.md", "metrics.jsonl", "training_curves.png", "eval_results.json"}
    assert earlier <= {p.name for p in out.iterdir()}
    with pytest.raises(ValueError, match="precision"):
        run_dpo(_config(noisy_data, out, report=True, precision="bf16", **kw))
    assert earlier <= {p.name for p in out.iterdir()}
    run_dpo(_config(noisy_data, out, report=False, **kw))
    names = {p.name for p in out.iterdir()}
    assert not {"report.md", "training_curves.png", "alpha.png", "reliability.png"} & names
    assert {"metrics.jsonl", "eval_results.json"} <= names  # this run's


def test_an_option_out_of_range_is_refused_with_its_range():
    """The Python API names the field (the CLI its flag: test_cli_errors)."""
    with pytest.raises(ValueError, match=r"^sft_weight: must be >= 0, got -1\.0$"):
        DPOConfig(sft_weight=-1.0)
    with pytest.raises(ValueError, match=r"^eval_fraction: must be in \[0, 1\), got 1\.5$"):
        DPOConfig(eval_fraction=1.5)


def test_calibrator_options_without_cals_are_refused():
    with pytest.raises(ValueError, match="bins: a CALS calibrator option; smoothing='oracle-l2'"):
        DPOConfig(smoothing="oracle-l2", bins=7).validate()
    DPOConfig(smoothing="cals-l0", bins=8).validate()


@pytest.mark.parametrize("n_pairs", [64, 6])
def test_gradient_accumulation_matches_the_large_batch(tmp_path, n_pairs):
    """2 micro-batches of 4 accumulate to the step one batch of 8 takes (plain DPO: the
    objective has no state that sees micro-batches), also when the second is short (6 pairs:
    4 + 2, an epoch's end): the step's loss is the mean over its pairs, not of the
    micro-batches' means."""
    import json

    data = write_jsonl(synthetic_rows(n_pairs, seed=3, flip_rate=0.2), tmp_path / "d.jsonl")
    common = dict(smoothing="none", max_steps=2, learning_rate=1e-3, logging_steps=1)
    run_dpo(_config(data, tmp_path / "big", batch_size=8, grad_accum=1, **common))
    run_dpo(_config(data, tmp_path / "accum", batch_size=4, grad_accum=2, **common))
    norms = []
    for run in ("big", "accum"):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        norms.append([json.loads(x)["grad_norm"] for x in lines if '"split": "train"' in x])
    # Adam hides a gradient's scale from the weights; the logged norm does not
    assert norms[0] == pytest.approx(norms[1], rel=1e-4)
    a = load_file(tmp_path / "big" / "final" / "model.safetensors")
    b = load_file(tmp_path / "accum" / "final" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_a_new_run_into_an_earlier_runs_folder_is_refused(noisy_data, tmp_path):
    """Two runs must not mix in one folder: a fresh run among an earlier run's checkpoints
    is refused before the model loads (a later --resume latest could pick up the other
    run's state), and a run that starts fresh empties metrics.jsonl instead of appending."""
    import json

    out = tmp_path / "run"
    kw = dict(smoothing="none", max_steps=2, logging_steps=1)
    run_dpo(_config(noisy_data, out, **kw))  # no checkpoints: a rerun is fine
    run_dpo(_config(noisy_data, out, **kw))
    logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in logs if r.get("split") == "train" and "loss" in r]
    assert steps == [1, 2]  # one run's log, not two

    run_dpo(_config(noisy_data, out, save_steps=2, **kw))
    with pytest.raises(ValueError, match="already holds an earlier run's checkpoints"):
        run_dpo(_config(noisy_data, out, learning_rate=1e-5, **kw))
    run_dpo(_config(noisy_data, out, resume="latest", **{**kw, "max_steps": 3}))


def test_dropout_is_off_so_the_policy_starts_equal_to_its_reference(tmp_path):
    """A model whose config asks for dropout: at step 1 (LoRA B = 0) the policy is its
    reference, so the margins are exactly 0 and the loss is ln 2, for both reference modes."""
    import json
    import math

    from smoothalign.models.loading import build_tiny_model, build_tiny_tokenizer

    model = build_tiny_model()
    model.config.attention_dropout = 0.3
    model.save_pretrained(tmp_path / "model")
    build_tiny_tokenizer().save_pretrained(tmp_path / "model")
    rows = [{"prompt": f"p{i}:", "chosen": " abab", "rejected": " cdcd"} for i in range(8)]
    data = write_jsonl(rows, tmp_path / "d.jsonl")
    for reference in ("adapter-disabled", "model"):
        out = tmp_path / f"run-{reference}"  # not tmp_path / "model": the model's folder
        cfg = _config(data, out, model=str(tmp_path / "model"), lora=True, lora_r=4,
                      reference=reference, max_steps=1, logging_steps=1, batch_size=4)  # fmt: skip
        result = run_dpo(cfg)
        assert any("dropout" in n for n in result.notes)
        logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        first = next(r for r in logs if r.get("split") == "train" and "loss" in r)
        assert first["rewards/margins"] == 0.0
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_lean_layers_train_like_the_eager_layers(noisy_data, tmp_path):
    """--lean-layers changes what autograd keeps, not the training: same weights after a few
    steps (float32, up to rounding) and the notes say what was patched."""
    kw = dict(smoothing="cals-l2", max_steps=3, learning_rate=1e-3)
    eager = run_dpo(_config(noisy_data, tmp_path / "eager", lean_layers="off", **kw))
    lean = run_dpo(_config(noisy_data, tmp_path / "lean", lean_layers=True, **kw))
    assert any("lean layers: 5 RMSNorm, 2 MLP and 2 attention" in n for n in lean.notes), lean.notes
    a = load_file(tmp_path / "eager" / "final" / "model.safetensors")
    b = load_file(tmp_path / "lean" / "final" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
    assert eager.after["accuracy"] == lean.after["accuracy"]
    # recompute: the norm outputs and SwiGLU products recomputed, the same training exactly
    rec = run_dpo(_config(noisy_data, tmp_path / "rec", lean_layers="recompute", **kw))
    assert any("outputs recomputed in 2 decoder layers" in n for n in rec.notes), rec.notes
    c = load_file(tmp_path / "rec" / "final" / "model.safetensors")
    assert all(torch.equal(b[k], c[k]) for k in b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (its defaults)")
def test_cuda_defaults_train_like_the_plain_path(noisy_data, tmp_path):
    """On CUDA the defaults are bf16 autocast over fp32 weights, --lean-layers recompute
    (Triton RMSNorm, SwiGLU and RoPE, outputs recomputed) and --fused-logps (the Triton
    kernel): a smoke test that three steps run and end near where lean layers off with
    materialised logits end (margins within 20%: NaN, a wrong sign or a gross error fails
    it; a subtly wrong gradient may not, which the kernels' own tests are for)."""
    kw = dict(smoothing="cals-l2", max_steps=3, learning_rate=1e-3)
    default = run_dpo(_config(noisy_data, tmp_path / "default", **kw))
    assert any("outputs recomputed in 2 decoder layers" in n for n in default.notes)
    plain = run_dpo(
        _config(noisy_data, tmp_path / "plain", lean_layers="off", fused_logps="off", **kw)
    )
    a, b = default.after["margin_mean"], plain.after["margin_mean"]
    assert math.isfinite(a) and b != 0.0
    assert a == pytest.approx(b, rel=0.2, abs=5e-3)


def test_validation_json_lists_every_skipped_row_and_data_objects_are_described(tmp_path):
    """`--on-bad-rows skip` lists every skipped row in validation.json (report.md shows the
    first ten), and rows handed over as a list are described in config.json, not copied."""
    import json

    rows = synthetic_rows(24, seed=5)
    for i in range(12):
        rows[i]["chosen"] = "  "  # 12 bad rows, more than the report lists
    cfg = _config(tmp_path, tmp_path / "run", max_steps=1, on_bad_rows="skip")
    cfg.data, cfg.eval_data = rows, None  # the Python API takes the rows themselves
    result = run_dpo(cfg)
    validation = json.loads((tmp_path / "run" / "validation.json").read_text())
    listed = [b for part in validation.values() for b in part["bad_rows"]]
    assert sorted(b["row"] for b in listed) == list(range(12))
    assert all(b["field"] == "chosen" for b in listed)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"] == "<builtins.list of 24 rows>"
    assert result.n_train + result.n_eval == 12


def test_the_last_partial_logging_window_is_written(noisy_data, tmp_path, monkeypatch):
    """max_steps 3 with logging_steps 2: step 3's per-pair values (rewards, α) are written
    at the end instead of dropped, and its ``loss`` too (Trainer logs none for it; ours is
    pooled from the window's buffered sums): metrics.jsonl has ``loss`` on every training
    record, and the training curves, which plot only records with one, show that step."""
    import json

    from smoothalign.train.report import plot_training_curves
    from smoothalign.train.trainer import SmoothDPOTrainer

    losses: list[float] = []  # each step's loss: its pairs' mean (one micro-batch a step)
    training_step = SmoothDPOTrainer.training_step

    def recorded(self, model, inputs, num_items_in_batch=None):
        loss = training_step(self, model, inputs, num_items_in_batch)
        losses.append(float(loss))
        return loss

    monkeypatch.setattr(SmoothDPOTrainer, "training_step", recorded)
    run_dpo(_config(noisy_data, tmp_path / "run", max_steps=3, logging_steps=2))
    logs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logs if r["split"] == "train"]
    assert [r["step"] for r in train] == [2, 3]
    assert train[1]["partial_window"] and "rewards/margins" in train[1]
    assert train[1]["loss"] == pytest.approx(losses[2], rel=1e-6)  # step 3's pairs
    assert train[1]["cals/step"] == 3  # the calibrator saw every micro-batch
    (summary,) = [r for r in logs if "train_loss" in r]
    assert summary["train_loss"] == pytest.approx(sum(losses) / 3, rel=1e-6)  # 8 pairs a step
    plotted = plot_training_curves(logs).axes[0].lines[0]
    assert list(plotted.get_xdata()) == [2, 3]


def test_pairs_made_identical_by_truncation_are_warned_about(tmp_path):
    """Pairs that differ only past max_length train with a margin of 0 at every step: the
    run says so on the console (a warning per data option, with the count and the option to
    raise), not only in validation.json. (All of them: refused, tests/test_cli_errors.py.)"""
    data = write_jsonl(cut_alike_rows(), tmp_path / "cut.jsonl")
    with pytest.warns(UserWarning, match="max_length 20") as caught:
        run_dpo(_config(data, tmp_path / "run", max_length=20, max_steps=1, smoothing="none"))
    said = [str(w.message) for w in caught if "after truncation" in str(w.message)]
    assert [m.split(" have")[0] for m in said] == [
        "data: 10 of 20 kept pairs",
        "eval_data: 10 of 20 kept pairs",
    ]
    # called from Python, the option to raise is named by its keyword (the CLI names its flag)
    assert all(m.endswith("raise max_length") for m in said)


def test_true_metrics_name_the_pairs_they_cover(tmp_path):
    """Held-out rows of which only some carry a confidence: the *_true metrics cover those
    alone, and eval_results.json (n_pairs_true) and report.md say how many."""
    rows = synthetic_rows(16, seed=4)
    for i, r in enumerate(rows):
        if i % 4:  # a confidence on rows 0, 4, 8 and 12 only
            del r["confidence"]
    held_out = write_jsonl(rows, tmp_path / "eval.jsonl")
    train = write_jsonl(synthetic_rows(8, seed=5), tmp_path / "train.jsonl")
    out = tmp_path / "run"
    run_dpo(_config(train, out, eval_data=str(held_out), max_steps=1, report=True))
    results = json.loads((out / "eval_results.json").read_text())
    for when in ("before", "after"):
        assert results[when]["n_pairs"] == 16 and results[when]["n_pairs_true"] == 4
    table = [x for x in (out / "report.md").read_text().splitlines() if x.startswith("| ")]
    noted = [x.split(" |")[0] for x in table if "(the 4 of 16 pairs with a confidence)" in x]
    assert len(noted) == 4  # the *_true rows alone: accuracy, ECE, RMS and KL against q
    assert any(x.startswith("| ECE of σ(h) vs the true q (the 4 of 16") for x in table)


def test_a_constant_schedule_records_no_warm_up_and_resumes(noisy_data, tmp_path):
    out = tmp_path / "run"
    kw = dict(smoothing="none", save_steps=2, lr_scheduler="constant", lr_warmup_steps=5)  # default
    run_dpo(_config(noisy_data, out, max_steps=2, **kw))
    assert json.loads((out / "config.json").read_text())["lr_warmup_steps"] == 0
    run_dpo(_config(noisy_data, out, max_steps=3, resume="latest", **kw))  # same config


def test_a_resume_at_max_steps_only_finishes_a_run_that_ended_there(tmp_path):
    """A checkpoint at --max-steps is finished without training only when its run was to end
    there (its trainer_state.json's max_steps); a mid-run one is refused, since the end of its
    training (last window, training summary) was never written, and the advice for a
    checkpoint past --max-steps depends on which it is."""
    from smoothalign.train.checkpoints import check_resume_step

    def checkpoint(step: int, planned: int) -> Path:
        folder = tmp_path / f"run{planned}" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(
            json.dumps({"global_step": step, "max_steps": planned})
        )
        return folder

    ended, mid = checkpoint(6, 6), checkpoint(6, 8)
    check_resume_step(ended, 6, 6)  # finished without training
    check_resume_step(mid, 6, 10)  # trained on to 10
    with pytest.raises(ValueError, match="of a 8-step run, which was to go on"):
        check_resume_step(mid, 6, 6)
    with pytest.raises(ValueError, match="pass --max-steps 6 to finish that run"):
        check_resume_step(ended, 6, 5)
    with pytest.raises(ValueError, match="pass a --max-steps above 6 to go on training"):
        check_resume_step(mid, 6, 5)


def test_the_after_training_evaluation_leaves_no_tensorboard_writer_open(
    noisy_data, tmp_path, monkeypatch
):
    """The final evaluation's record goes into the training's TensorBoard writer, one
    events file a run (the writer stays open past the end of training), which is closed
    once that record is written, in a run that trains and in a resume that only finishes
    one. A TensorBoard callback of the caller's (a subclass) closes its own at the end of
    training, and the record opens another: closed too."""
    from tests.dpo_helpers import fake_tensorboard
    from transformers.integrations import TensorBoardCallback

    writers = fake_tensorboard(monkeypatch)
    out = tmp_path / "run"
    kw = dict(smoothing="none", max_steps=2, save_steps=2)
    for resume in (None, "latest"):
        writers.clear()
        result = run_dpo(_config(noisy_data, out, resume=resume, **kw))
        assert "tensorboard" in result.trainer.args.report_to
        (writer,) = writers  # one a run
        assert writer.closed, resume
        assert "train/final_eval_accuracy" in writer.scalars, resume
        # the training's record (the resume trains nothing: Trainer logs no train_loss)
        assert ("train/train_loss" in writer.scalars) is (resume is None)

    class Own(TensorBoardCallback):
        pass

    writers.clear()
    run_dpo(_config(noisy_data, tmp_path / "own", **kw), callbacks=[Own()])
    # ours, and the caller's: its training's writer and the one its final record opened
    assert len(writers) == 3 and all(w.closed for w in writers)
    finals = [w for w in writers if "train/final_eval_accuracy" in w.scalars]
    assert len(finals) == 2


def test_a_resume_that_only_finishes_its_run_shows_its_steps_done(noisy_data, tmp_path, capsys):
    """A resume at --max-steps trains no step: the training bar it opens and closes says the
    checkpoint's steps are done (2/2), not that none is (an empty 0/2)."""
    import re

    out = tmp_path / "run"
    kw = dict(smoothing="none", max_steps=2, save_steps=2)
    run_dpo(_config(noisy_data, out, **kw))
    capsys.readouterr()
    run_dpo(_config(noisy_data, out, resume="latest", **kw))
    # the training bar: tqdm's without a description, redrawn after each carriage return
    shown = re.findall(r"(?:^|[\r\n])\s*\d+%\|[^|\r\n]*\| (\d+)/2 \[", capsys.readouterr().err)
    assert shown and shown[-1] == "2", shown


def test_config_json_records_the_final_folder_a_run_folder_model_loads(
    noisy_data, tmp_path, monkeypatch
):
    """``--model runs/first`` (a finished run's folder) loads ``runs/first/final``: that is
    what config.json records as ``model`` (relative as typed, read against the launch
    folder), with the value typed as ``model_as_given``. A resume compares what loads: it
    passes with either spelling, and from a config.json that recorded the run folder (as
    before)."""
    monkeypatch.chdir(tmp_path)
    run_dpo(_config(noisy_data, Path("runs/first"), smoothing="none", max_steps=1))
    kw = dict(smoothing="none", max_steps=2, save_steps=2)
    out = Path("runs/second")
    run_dpo(_config(noisy_data, out, model="runs/first", **kw))
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == str(Path("runs/first/final"))
    assert saved["model_as_given"] == "runs/first"
    _no_model(monkeypatch)  # each resume below is checked, then stopped before loading
    for model in ("runs/first", "runs/first/final", str(tmp_path / "runs/first")):
        with pytest.raises(AssertionError, match="the model was loaded"):
            run_dpo(_config(noisy_data, out, model=model, resume="latest", **kw))
    del saved["model_as_given"]
    (out / "config.json").write_text(json.dumps({**saved, "model": "runs/first"}))
    with pytest.raises(AssertionError, match="the model was loaded"):
        run_dpo(_config(noisy_data, out, model="runs/first", resume="latest", **kw))
    with pytest.raises(ValueError, match=r"model 'runs/first' .* -> 'tiny'"):
        run_dpo(_config(noisy_data, out, model="tiny", resume="latest", **kw))


def test_a_resume_refusal_names_each_options_own_flag_or_says_it_has_none(tmp_path):
    """The flags that give the saved values again are the command's own (config_flags, from
    which the CLI makes them), not made from each key's name; a key no flag sets (an
    option of the version that wrote config.json, which this one has not) has none."""
    import argparse

    from smoothalign.cli import build_parser
    from smoothalign.train.checkpoints import check_resume_config

    saved = tmp_path / "config.json"
    base = {"max_steps": 6, "lr_scheduler": "constant", "beta": 0.1, "lora": True}
    saved.write_text(json.dumps({**base, "ref_beta": 0.3}))
    with pytest.raises(ValueError) as err:
        check_resume_config(saved, base)
    assert "ref_beta 0.3 -> None" in str(err.value) and "--ref-beta" not in str(err.value)
    assert "as that run had them (ref_beta has no flag in this command), or" in str(err.value)
    flags = {"max_steps": "--max-steps", "lr_scheduler": "--lr-scheduler", "beta": "--dpo-beta",
             "lora": "--adapter"}  # fmt: skip
    with pytest.raises(ValueError) as err:
        check_resume_config(saved, {**base, "beta": 0.2, "lora": False}, flags)
    message = str(err.value)
    assert "beta 0.1 -> 0.2; lora True -> False; ref_beta 0.3 -> None" in message
    assert "(--dpo-beta 0.1 --adapter, with --resume; ref_beta has no flag in" in message
    assert "--beta" not in message and "--lora" not in message
    # the runs pass their command's flags: each one the CLI's option for that field
    from smoothalign.io import config_flags
    from smoothalign.reward.config import RewardConfig
    from smoothalign.sft.config import SFTConfig

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, config_cls in (("dpo", DPOConfig), ("sft", SFTConfig), ("reward", RewardConfig)):
        options = {o: a.dest for a in commands.choices[command]._actions for o in a.option_strings}
        flags = config_flags(config_cls)
        assert flags and "extra" not in flags, command
        for name, flag in flags.items():
            assert options[flag] == name, (command, name, flag)


def test_oracle_auto_scores_the_embedded_set_named_by_its_path(tmp_path):
    """`--oracle auto` means the sentiment oracle for the embedded set, whether --data is
    left out or names the shipped file (relative or not); any other data: no oracle."""
    from smoothalign.assets import embedded_dataset_path
    from smoothalign.train.run import _oracle

    shipped = embedded_dataset_path()
    copy = tmp_path / "sentiment_pairs.jsonl"
    copy.write_bytes(shipped.read_bytes())  # the same rows elsewhere: the user's own file
    rel = os.path.relpath(shipped)
    for data, expected in [(None, True), (str(shipped), True), (rel, True), (copy, False)]:
        assert _oracle(DPOConfig(data=data)) is expected, data
        assert _oracle(DPOConfig(data=data, oracle="none")) is False
        assert _oracle(DPOConfig(data=data, eval_samples=0)) is False
    assert _oracle(DPOConfig(data=str(copy), oracle="sentiment")) is True


def test_an_interrupted_new_run_leaves_no_earlier_runs_final(noisy_data, tmp_path):
    """As SFT's: a new run interrupted in a finished run's folder leaves no final/ beside
    its own config.json, and one that would start from that final/ is refused first."""
    out = tmp_path / "run"
    run_dpo(_config(noisy_data, out, smoothing="none", max_steps=2))
    with pytest.raises(ValueError, match="is what this run loads as --model"):
        run_dpo(_config(noisy_data, out, smoothing="none", max_steps=2, model=str(out)))
    assert (out / "final" / "model.safetensors").is_file()
    with pytest.raises(KeyboardInterrupt):
        run_dpo(_config(noisy_data, out, smoothing="cals-l2", max_steps=4), callbacks=[_Crash(1)])
    assert json.loads((out / "config.json").read_text())["smoothing"] == "cals-l2"
    assert not (out / "final").exists()


def test_a_resume_refuses_data_that_changed_since_the_checkpoint(tmp_path, monkeypatch):
    """A resume checks its paths' options, and its rows too: a data file edited (one row's
    text), appended to or reordered after a crash, or other held-out rows, would leave the
    checkpoint's data position pointing into other rows and the metrics before and after on
    other pairs; refused before the model loads, saying what differs. The same rows resume
    as before, and so does a run that only finishes at --max-steps."""
    import smoothalign.train.run as run_module

    rows, held_out = synthetic_rows(40, seed=5), synthetic_rows(8, seed=6)
    data, eval_data = tmp_path / "pairs.jsonl", tmp_path / "heldout.jsonl"
    write_jsonl(rows, data)
    write_jsonl(held_out, eval_data)
    out = tmp_path / "run"
    kw = dict(smoothing="none", max_steps=4, save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        run_dpo(_config(data, out, eval_data=str(eval_data), **kw), callbacks=[_Crash(at=3)])
    fingerprint = json.loads((out / "data_fingerprint.json").read_text())
    assert (fingerprint["train"]["rows"], fingerprint["held_out"]["rows"]) == (40, 8)

    def resume(**more):
        return run_dpo(_config(data, out, eval_data=str(eval_data), resume="latest", **kw, **more))

    load = run_module.load_model_and_tokenizer
    monkeypatch.setattr(run_module, "load_model_and_tokenizer", _refuse_model)
    edited = [dict(r) for r in rows]
    edited[7]["chosen"] = edited[7]["chosen"][::-1]
    for changed, what in (
        (edited, "training rows: 40 before and now, but not the same ones"),
        (
            [*rows, {"prompt": "zyx:", "chosen": "abba", "rejected": "cddc"}],
            "training rows: 40 before, 41 now",
        ),
        ([*rows[1:], rows[0]], "training rows: the same 40, in another order"),
    ):
        write_jsonl(changed, data)
        with pytest.raises(ValueError, match="this run's data differs") as err:
            resume()
        message = str(err.value)
        assert what in message and "held-out rows" not in message
        assert "must read the same rows" in message and "drop --resume" in message
    write_jsonl(rows, data)
    write_jsonl(held_out[:7], eval_data)
    with pytest.raises(ValueError, match="held-out rows: 8 before, 7 now") as err:
        resume()
    assert "training rows" not in str(err.value)
    write_jsonl(held_out, eval_data)

    monkeypatch.setattr(run_module, "load_model_and_tokenizer", load)
    result = resume()  # the same rows: resumed from checkpoint-2, trained on to 4
    assert any("resumed from" in n and "checkpoint-2" in n for n in result.notes)
    assert not any("data_fingerprint" in n for n in result.notes)
    result = resume()  # at --max-steps: finishes the run, training nothing
    assert any("is at --max-steps 4" in n for n in result.notes)


def _fingerprint_of(folder: Path) -> dict:
    return json.loads((folder / "data_fingerprint.json").read_text())


def _run_crashed_after_its_first_checkpoint(tmp_path):
    """A run of 40 pairs (8 held out apart) interrupted at step 3, after checkpoint-2:
    ``(rows, data file, run folder, its options)``."""
    rows, held_out = synthetic_rows(40, seed=5), synthetic_rows(8, seed=6)
    data, eval_data = tmp_path / "pairs.jsonl", tmp_path / "heldout.jsonl"
    write_jsonl(rows, data)
    write_jsonl(held_out, eval_data)
    out = tmp_path / "run"
    kw = dict(smoothing="none", max_steps=4, save_steps=2, eval_data=str(eval_data))
    with pytest.raises(KeyboardInterrupt):
        run_dpo(_config(data, out, **kw), callbacks=[_Crash(at=3)])
    return rows, data, out, kw


def test_each_checkpoint_holds_the_fingerprint_of_the_rows_it_was_trained_on(tmp_path, monkeypatch):
    """A checkpoint carries the fingerprint of its run's rows (written before its completion
    marker), and a resume compares its own rows with that one, not with the run folder's
    file: another fingerprint there, or none, changes nothing."""
    import smoothalign.train.run as run_module

    rows, data, out, kw = _run_crashed_after_its_first_checkpoint(tmp_path)
    fingerprint = _fingerprint_of(out / "checkpoint-2")
    assert fingerprint == _fingerprint_of(out)
    assert (fingerprint["train"]["rows"], fingerprint["held_out"]["rows"]) == (40, 8)
    other = {**fingerprint, "train": {**fingerprint["train"], "rows": 39, "sha256": "0" * 64}}
    (out / "data_fingerprint.json").write_text(json.dumps(other))
    result = run_dpo(_config(data, out, resume="latest", **kw))
    assert any("resumed from" in n and "checkpoint-2" in n for n in result.notes)
    assert not any(n.startswith("data:") for n in result.notes)
    assert _fingerprint_of(out / "checkpoint-4") == fingerprint
    assert _fingerprint_of(out) == other  # a resumed run leaves the folder's file alone
    (out / "data_fingerprint.json").unlink()
    edited = [dict(r) for r in rows]
    edited[3]["rejected"] += "c"
    write_jsonl(edited, data)
    monkeypatch.setattr(run_module, "load_model_and_tokenizer", _refuse_model)
    for resume in ("latest", str(out / "checkpoint-2")):
        with pytest.raises(ValueError, match="this run's data differs") as err:
            run_dpo(_config(data, out, **{**kw, "resume": resume}))
        assert "training rows: 40 before and now, but not the same ones" in str(err.value)
        checkpoint = "checkpoint-4" if resume == "latest" else "checkpoint-2"
        assert f"{out / checkpoint / 'data_fingerprint.json'}" in str(err.value)


def test_a_resume_from_a_checkpoint_without_a_fingerprint_is_said_and_vouches_for_nothing(
    tmp_path, recwarn
):
    """A checkpoint of an earlier version, whose run recorded no fingerprint, resumes
    unchecked: said in the report's notes and, at once, on the console. The resumed run
    writes no folder file from the rows it read, which would vouch for rows its earlier
    checkpoints may not have trained on; the checkpoints it saves hold its rows'."""
    rows, data, out, kw = _run_crashed_after_its_first_checkpoint(tmp_path)
    original = _fingerprint_of(out)
    for folder in (out, out / "checkpoint-2"):  # as an earlier version left them
        (folder / "data_fingerprint.json").unlink()
    edited = [dict(r) for r in rows]
    edited[3]["rejected"] += "c"
    write_jsonl(edited, data)

    def unchecked(resume: str):
        recwarn.clear()
        result = run_dpo(_config(data, out, **{**kw, "resume": resume}))
        noted = [n for n in result.notes if n.startswith("data:")]
        said = [str(w.message) for w in recwarn if "were not checked" in str(w.message)]
        assert noted == [
            "data: checkpoint-2 holds no data_fingerprint.json, nor does its run folder (a run "
            "of an earlier smoothalign version, which recorded none): this run's rows were not "
            "checked to be the ones it trained on"
        ]
        assert said == [f"--resume {resume}: {noted[0]}"]
        return result

    unchecked("latest")
    assert not (out / "data_fingerprint.json").exists()
    trained_on = _fingerprint_of(out / "checkpoint-4")  # the edited rows
    assert trained_on["train"]["sha256"] != original["train"]["sha256"]
    assert trained_on["held_out"] == original["held_out"]
    write_jsonl(rows, data)  # the original rows: checkpoint-4 did not train on them
    with pytest.raises(ValueError, match="training rows: 40 before and now, but not the same"):
        run_dpo(_config(data, out, resume="latest", **kw))
    # checkpoint-2 is still unchecked, whatever the rows: nothing says which it trained on
    unchecked(str(out / "checkpoint-2"))
    assert _fingerprint_of(out / "checkpoint-4") == original
    assert not (out / "data_fingerprint.json").exists()


def test_a_resume_checks_again_only_what_the_run_reads_of_a_row(tmp_path, monkeypatch):
    """The fingerprint covers what the run reads of a pair, and records it: the data's
    reference log-probs where they are used (precomputed, every row has them), a training
    pair's confidence where the smoothing policy reads it (oracle-*), a held-out pair's
    always (the *_true metrics). A column the run does not read may change on a resume;
    one that it reads may not, nor may it read them otherwise."""
    import smoothalign.train.run as run_module

    def with_reference(rows):
        return [
            {**r, "ref_chosen_logps": -1.0 - i / 8, "ref_rejected_logps": -2.0 - i / 16}
            for i, r in enumerate(rows)
        ]

    rows, held_out = with_reference(synthetic_rows(40, seed=5)), synthetic_rows(8, seed=6)
    held_out = with_reference(held_out)
    data, eval_data = tmp_path / "pairs.jsonl", tmp_path / "heldout.jsonl"
    write_jsonl(held_out, eval_data)
    kw = dict(max_steps=4, save_steps=2, eval_data=str(eval_data))

    def edited(source, i, **fields):
        changed = [dict(r) for r in source]
        changed[i].update(fields)
        return changed

    def first_run(out, **more):
        write_jsonl(rows, data)
        with pytest.raises(KeyboardInterrupt):
            run_dpo(_config(data, out, **kw, **more), callbacks=[_Crash(at=3)])
        return _fingerprint_of(out / "checkpoint-2")

    # the reference from the model, a policy that ignores confidence: neither is read of a
    # training pair, and both may change
    out = tmp_path / "model-reference"
    fingerprint = first_run(out, reference="model", smoothing="cals-l2")
    tokens = ["prompt_ids", "chosen_ids", "rejected_ids", "chosen_spans", "rejected_spans"]
    assert fingerprint["train"]["reads"] == tokens
    assert fingerprint["held_out"]["reads"] == [*tokens, "confidence"]
    unread = edited(rows, 7, confidence=0.3, ref_chosen_logps=-7.0, ref_rejected_logps=-0.5)
    write_jsonl(unread, data)
    write_jsonl(edited(held_out, 2, ref_chosen_logps=-7.0), eval_data)
    result = run_dpo(
        _config(data, out, resume="latest", reference="model", smoothing="cals-l2", **kw)
    )
    assert any("resumed from" in n for n in result.notes)
    assert _fingerprint_of(out / "checkpoint-4") == fingerprint
    load = run_module.load_model_and_tokenizer
    monkeypatch.setattr(run_module, "load_model_and_tokenizer", _refuse_model)
    write_jsonl(edited(held_out, 2, confidence=0.4), eval_data)  # read by the metrics
    with pytest.raises(ValueError, match=r"held-out rows: 8 before and now, but not the same"):
        run_dpo(_config(data, out, resume="latest", reference="model", smoothing="cals-l2", **kw))
    write_jsonl(held_out, eval_data)
    monkeypatch.setattr(run_module, "load_model_and_tokenizer", load)

    # the data's reference log-probs, an oracle policy: both are read of every pair
    out = tmp_path / "data-reference"
    fingerprint = first_run(out, smoothing="oracle-l2")
    reference = ["ref_chosen_logp", "ref_rejected_logp"]
    assert fingerprint["train"]["reads"] == [*tokens, "confidence", *reference]
    assert fingerprint["held_out"]["reads"] == [*tokens, "confidence", *reference]
    monkeypatch.setattr(run_module, "load_model_and_tokenizer", _refuse_model)
    without = edited(rows, 7)
    del without[7]["ref_chosen_logps"], without[7]["ref_rejected_logps"]
    for changed, what in (
        (edited(rows, 7, confidence=0.3), "training rows: 40 before and now, but not the same"),
        (edited(rows, 7, ref_rejected_logps=-0.5), "training rows: 40 before and now, but not"),
        (
            without,  # then the run computes the reference itself: another reference
            "training rows: the checkpointed run read their ref_chosen_logp, "
            "ref_rejected_logp, this one does not (its data gives them for every row, or not",
        ),
    ):
        write_jsonl(changed, data)
        with pytest.raises(ValueError, match="this run's data differs") as err:
            run_dpo(_config(data, out, resume="latest", smoothing="oracle-l2", **kw))
        assert what in str(err.value), str(err.value)
    assert "held-out rows: the checkpointed run read their ref_chosen_logp" in str(err.value)


def _refuse_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the resumed run's data was checked")


def test_a_run_of_the_version_before_resumes_checked_against_its_folders_file(
    tmp_path, monkeypatch
):
    """A run of the version before this one (its checkpoints hold no fingerprint, its
    folder one of scheme 1, of every field of a row) resumes checked against that file: the
    same rows resume, with no note; a column that version fingerprinted is still compared,
    read or not, and the refusal says so."""
    import smoothalign.train.run as run_module
    from smoothalign.train.data_fingerprint import pair_content

    rows, held_out = synthetic_rows(40, seed=5), synthetic_rows(8, seed=6)
    data, eval_data = tmp_path / "pairs.jsonl", tmp_path / "heldout.jsonl"
    write_jsonl(rows, data)
    write_jsonl(held_out, eval_data)
    out = tmp_path / "run"
    kw = dict(smoothing="cals-l2", max_steps=4, save_steps=2, eval_data=str(eval_data))
    with monkeypatch.context() as patched:
        earlier_version_fingerprints(patched, run_module, pair_content)
        with pytest.raises(KeyboardInterrupt):
            run_dpo(_config(data, out, **kw), callbacks=[_Crash(at=3)])
    assert _fingerprint_of(out)["scheme"] == 1
    assert not (out / "checkpoint-2" / "data_fingerprint.json").exists()
    write_jsonl([*rows[:7], {**rows[7], "confidence": 0.3}, *rows[8:]], data)
    with pytest.raises(ValueError, match="that fingerprint, an earlier version's, covers every"):
        run_dpo(_config(data, out, resume="latest", **kw))
    write_jsonl(rows, data)
    result = run_dpo(_config(data, out, resume="latest", **kw))
    assert any("resumed from" in n and "checkpoint-2" in n for n in result.notes)
    assert not any(n.startswith("data:") for n in result.notes)
    assert _fingerprint_of(out / "checkpoint-4")["scheme"] == 2


def test_the_datas_reference_is_used_or_not_whatever_the_held_out_rows_evaluated(tmp_path):
    """Whether the data's reference log-probs are used (every row has them) is decided on
    every held-out row, also those past --max-eval-pairs: that option may change on a
    resume, and must not change the reference the run trains against, nor what its
    fingerprint says it read."""
    rows = [
        {**r, "ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0}
        for r in synthetic_rows(48, seed=5)
    ]
    del rows[-1]["ref_chosen_logps"], rows[-1]["ref_rejected_logps"]  # the last held-out row
    data, eval_data = tmp_path / "pairs.jsonl", tmp_path / "heldout.jsonl"
    write_jsonl(rows[:40], data)
    write_jsonl(rows[40:], eval_data)
    for max_eval_pairs in (7, 0):
        out = tmp_path / f"first-{max_eval_pairs}"
        result = run_dpo(
            _config(data, out, eval_data=str(eval_data), smoothing="none", max_steps=1,
                    max_eval_pairs=max_eval_pairs)
        )  # fmt: skip
        assert "reference log-probs: precomputed" in result.notes, max_eval_pairs
        assert (
            "the data's reference log-probs (47 rows) were not used: --reference precomputed "
            "and not every row has them"
        ) in result.notes
        assert "ref_chosen_logp" not in _fingerprint_of(out)["train"]["reads"]


def _pair(i: int, confidence: float | None = 0.9, ref: float | None = None):
    """A stand-in for a ``TokenizedPair``: the fields a fingerprint reads."""
    from types import SimpleNamespace

    return SimpleNamespace(
        prompt_ids=[i, i + 1], chosen_ids=[2, i], rejected_ids=[3], chosen_spans=[[0, 2]],
        rejected_spans=[[0, 1]], confidence=confidence, ref_chosen_logp=ref,
        ref_rejected_logp=None if ref is None else ref - 1,
    )  # fmt: skip


def test_a_data_fingerprint_tells_rows_moved_between_the_sides_from_rows_changed(tmp_path):
    """What a refusal says: rows changed, counted otherwise, reordered, or the same rows split
    otherwise between training and held-out (another version's holdout, say), also where the
    held-out rows are read for more than the training rows (their confidence)."""
    from smoothalign.train.data_fingerprint import (
        DATA_FINGERPRINT,
        check_resume_data,
        data_fingerprint,
        pair_reads,
        write_data_fingerprint,
    )

    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    (checkpoint / "smoothalign_complete.json").write_text('{"global_step": 2}')
    rows = [_pair(i) for i in range(10)]

    def fingerprint(train, held_out):
        reads = pair_reads(confidence=False), pair_reads(confidence=True)
        return data_fingerprint(train, held_out, *reads)

    write_data_fingerprint(checkpoint, fingerprint(rows[:8], rows[8:]))

    def check(train, held_out):
        return check_resume_data("latest", tmp_path, fingerprint(train, held_out))

    assert check(rows[:8], rows[8:]) is None
    with pytest.raises(ValueError) as err:
        check(rows[1:9], [rows[0], rows[9]])
    assert (
        "training rows: 8 before and now, but not the same ones; held-out rows: 2 before "
        "and now, but not the same ones; the same rows in all, split otherwise between "
        "training and held-out. A resumed run must read the same rows"
    ) in str(err.value)
    with pytest.raises(ValueError, match=r"held-out rows: the same 2, in another order\. "):
        check(rows[:8], rows[:7:-1])
    with pytest.raises(
        ValueError,
        match=r"held-out rows: 2 before and now, but not the same "
        r"ones \(a row's tokens, label or confidence differ\)\. ",
    ):
        check(rows[:8], [rows[8], _pair(9, confidence=0.1)])  # a confidence the metrics read
    assert check([*rows[:7], _pair(7, confidence=0.1)], rows[8:]) is None  # one not read
    assert check_resume_data(None, tmp_path, {}) is None  # no resume: nothing to check
    (checkpoint / DATA_FINGERPRINT).write_text('{"scheme": 99}')
    with pytest.warns(UserWarning, match="were not checked"):
        assert check(rows, []) == (
            "data: checkpoint-2/data_fingerprint.json is another smoothalign version's: this "
            "run's rows were not checked to be the ones it trained on"
        )


def test_an_earlier_versions_fingerprint_is_still_compared(tmp_path, monkeypatch):
    """A run of the version before checkpoints held their fingerprint wrote one beside its
    config.json, of scheme 1 (every field of a pair, read or not): a resume from its
    checkpoints compares with it, this run's rows fingerprinted alike; the digests are the
    ones that version wrote (computed by it). Each side's changes are said as before, with
    what that fingerprint covers. The console note of an unchecked resume is the main
    process's only."""
    from smoothalign.train.data_fingerprint import (
        DATA_FINGERPRINT,
        check_resume_data,
        data_fingerprint,
        earlier_data_fingerprint,
        pair_reads,
    )

    rows = [_pair(i, confidence=0.9 if i % 2 else None, ref=-1.5 if i else None) for i in range(3)]
    earlier = earlier_data_fingerprint(rows[:2], rows[2:])
    assert earlier == {  # as the earlier version's data_fingerprint(train, held_out) gave it
        "scheme": 1,
        "train": {
            "rows": 2,
            "sha256": "656ef19221435eca518e0809b3a367f1c05b7e1168f4f445608b8b8b9ed04521",
            "unordered": "724cfacdbfe8751d5b86379744bfb39fb94e6d189093d71ecef4a3ddd3fe0520",
        },
        "held_out": {
            "rows": 1,
            "sha256": "8d2c48999b536e98b88fbba782a08ab929ed96e46612f09bfc92301728b4c121",
            "unordered": "2b528b463d569361492d2976b02e7d7afdbad611b8e1575f4df05f8e0349df8e",
        },
    }
    checkpoint = tmp_path / "checkpoint-2"  # its checkpoints held none
    checkpoint.mkdir()
    (checkpoint / "smoothalign_complete.json").write_text('{"global_step": 2}')
    (tmp_path / DATA_FINGERPRINT).write_text(json.dumps(earlier))
    reads = pair_reads(confidence=False)  # what this run reads: not the confidence

    def check(train, held_out, **kw):
        now = data_fingerprint(train, held_out, reads)
        return check_resume_data(
            "latest", tmp_path, now, lambda: earlier_data_fingerprint(train, held_out), **kw
        )

    assert check(rows[:2], rows[2:]) is None
    with pytest.raises(ValueError) as err:  # scheme 1 read the confidence, read or not
        check([_pair(0, confidence=0.4), rows[1]], rows[2:])
    assert (
        f"differs from the checkpointed run's ({tmp_path / DATA_FINGERPRINT}) (that "
        "fingerprint, an earlier version's, covers every column of a row it read, its "
        "confidence and reference log-probs too, whether the run used them or not): training "
        "rows: 2 before and now, but not the same ones"
    ) in str(err.value)
    # without a way to read the rows as scheme 1 did, it is not compared: noted, and said
    with pytest.warns(UserWarning) as said:
        note = check_resume_data("latest", tmp_path, data_fingerprint(rows[:2], rows[2:], reads))
    assert note == (
        "data: data_fingerprint.json is another smoothalign version's: this run's rows were "
        "not checked to be the ones it trained on"
    )
    assert [str(w.message) for w in said] == [f"--resume latest: {note}"]
    monkeypatch.setenv("RANK", "1")  # another rank: the note, not said again
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_resume_data("latest", tmp_path, {}) == note


def test_a_resume_saves_and_logs_every_steps_it_is_given(tmp_path):
    """A resume may change --save-steps and --logging-steps (RESUMABLE_OPTIONS), but
    Trainer loaded the checkpoint's state over them: the resumed run kept saving and
    logging every 2 steps. It now follows the options it is given."""
    rows, data, out, kw = _run_crashed_after_its_first_checkpoint(tmp_path)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    kw = {**kw, "max_steps": 5, "save_steps": 1, "logging_steps": 1, "save_total_limit": 10}
    run_dpo(_config(data, out, resume="latest", **kw))
    saved = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert saved == [2, 3, 4, 5]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r.get("split") == "train" and r["step"] > 2] == [3, 4, 5]
