"""End-to-end SFT on the tiny model: CLI and report, resume, LoRA and full fine-tuning,
gradient accumulation counted in tokens, data parallelism (2 ranks), the head check."""

from __future__ import annotations

import importlib.util
import json
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.dist_helpers import records, torchrun
from tests.dpo_helpers import earlier_version_fingerprints
from tests.md_tables import misaligned_rows
from transformers import TrainerCallback

from smoothalign.sft import SFTConfig, run_sft
from smoothalign.train.checkpoints import latest_complete_checkpoint


def _rows(n: int, seed: int = 0) -> list[dict]:
    """Prompts of x/y/z; completions of a/b of varying length (a learnable task)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = "".join(rng.choice("xyz") for _ in range(rng.randint(3, 8))) + ":"
        completion = "".join(rng.choice("ab") for _ in range(rng.randint(2, 9)))
        rows.append({"prompt": prompt, "completion": completion})
    return rows


def _write(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _write(_rows(48, seed=1), tmp_path_factory.mktemp("sft") / "sft.jsonl")


def _config(data: Path, out: Path, **overrides) -> SFTConfig:
    base = dict(
        model="tiny",
        data=str(data),
        output_dir=str(out),
        batch_size=8,
        lora=False,
        logging_steps=2,
        max_length=32,
        report=False,
        lr_warmup_steps=0,
        learning_rate=2e-3,
        max_steps=4,
    )
    return SFTConfig(**{**base, **overrides})


def _trainer(cfg: SFTConfig, model, tok, examples, bf16: bool = False):
    """An SFT trainer on ``examples`` outside a run, and its collator."""
    from smoothalign.sft.data import SFTCollator, SFTDataset
    from smoothalign.sft.trainer import SFTTrainer
    from smoothalign.train.common import training_arguments

    collator = SFTCollator(int(tok.pad_token_id))
    trainer = SFTTrainer(
        model=model,
        args=training_arguments(cfg, bf16),
        train_dataset=SFTDataset(examples),
        data_collator=collator,
        sft_config=cfg,
    )
    return trainer, collator


def test_cli_trains_on_messages_and_writes_the_report(tmp_path, capsys):
    """`smoothalign sft` on conversational data with a split column and a bad row."""
    rows = []
    for i, r in enumerate(_rows(24, seed=2)):
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": r["prompt"]},
                    {"role": "assistant", "content": r["completion"]},
                ],
                "split": "eval" if i % 4 == 0 else "train",
            }
        )
    rows.append({"prompt": [{"role": "user", "content": "q"}], "completion": [], "split": "train"})
    data = _write(rows, tmp_path / "chat.jsonl")
    out = tmp_path / "run"
    from smoothalign.cli import main

    args = ["sft", "--model", "tiny", "--data", str(data), "--output-dir", str(out)]
    assert main([*args, "--max-steps", "1"]) == 2  # one line on stderr, no traceback
    assert "row 24, field 'completion'" in capsys.readouterr().err
    flags = ["--max-steps", "4", "--batch-size", "4", "--logging-steps", "2", "--eval-steps", "2"]
    code = main(
        [*args, *flags, "--max-length", "48", "--on-bad-rows", "skip", "--label-smoothing", "0.2"]
    )
    assert code == 0
    for name in (
        "report.md",
        "metrics.jsonl",
        "training_curves.png",
        "reliability.png",
        "config.json",
        "validation.json",
        "eval_results.json",
        "final/adapter/adapter_model.safetensors",
        "final/model.safetensors",  # LoRA is the default
    ):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "row 24" in report  # the skipped row is listed, not dropped silently
    assert "token accuracy" in report and "ECE of the top-1 probability" in report
    assert misaligned_rows(report) == []
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logged if r["split"] == "train" and "loss" in r]
    for key in ("loss", "nll", "mean_token_accuracy", "entropy", "completion_tokens"):
        assert key in train[-1], key
    assert not any(k.startswith("_sum") for r in logged for k in r)
    evals = [r for r in logged if r["split"] == "eval"]
    assert sorted({r["step"] for r in evals}) == [2, 4]
    results = json.loads((out / "eval_results.json").read_text())
    assert results["after"]["n_rows"] == 6
    # β = 0.2: a smoothed loss of the NLL's order (its exact recomposition from the NLL and
    # the uniform term is test_sft_objective's test_token_metrics_…)
    assert results["after"]["loss"] > 0.8 * results["after"]["nll"]


class _Crash(TrainerCallback):
    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt(f"simulated crash after step {self.at}")


def test_resume_equals_uninterrupted(data, tmp_path):
    """The weights, and train_loss: the checkpoint holds the run's loss sums (checkpoint-4,
    logged at 3: with step 4's, buffered since), so the resumed run's covers every step, as
    the uninterrupted run's (up to the float32 sums of each logged window)."""
    kw = dict(max_steps=6, save_steps=2, logging_steps=3, batch_size=4)
    run_sft(_config(data, tmp_path / "straight", **kw))
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        run_sft(_config(data, crashed, **kw), callbacks=[_Crash(at=5)])
    assert latest_complete_checkpoint(crashed).name == "checkpoint-4"
    # a later checkpoint whose save never completed is not trusted
    shutil.copytree(crashed / "checkpoint-4", crashed / "checkpoint-5")
    (crashed / "checkpoint-5" / "smoothalign_complete.json").unlink()
    result = run_sft(_config(data, crashed, resume="latest", **kw))
    assert any("checkpoint-4" in n for n in result.notes)
    straight, resumed = (
        next(r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if "train_loss" in r)
        for out in (tmp_path / "straight", crashed)
    )  # fmt: skip
    assert resumed["train_loss"] == pytest.approx(
        straight["train_loss"], rel=1e-12
    )  # float64 sums, as the pair trainers'
    assert "train_loss_from_step" not in resumed
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(crashed / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


class _Steps(TrainerCallback):
    """Counts the optimizer steps a run takes."""

    def __init__(self) -> None:
        self.taken = 0

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.taken += 1


class _Events(TrainerCallback):
    """The training events a run's callbacks hear: (event, step, model and tokenizer given)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, bool]] = []

    def _note(self, event, state, kwargs) -> None:
        given = kwargs.get("model") is not None and kwargs.get("processing_class") is not None
        self.seen.append((event, state.global_step, given))

    def on_train_begin(self, args, state, control, **kwargs):
        self._note("on_train_begin", state, kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        self._note("on_train_end", state, kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        self._note("on_step_end", state, kwargs)

    def on_log(self, args, state, control, **kwargs):
        self._note("on_log", state, kwargs)


def test_resume_at_max_steps_finishes_a_lora_run_without_training(data, tmp_path):
    """A LoRA run that a crash stopped after its last checkpoint (at --max-steps), before its
    results: --resume latest loads the checkpoint's adapter, trains no step, and writes the
    final/ (merged model and adapter) and results the run would have."""
    out = tmp_path / "run"
    kw = dict(lora=True, lora_r=4, max_steps=3, save_steps=3)
    first = run_sft(_config(data, out, **kw))
    merged = load_file(out / "final" / "model.safetensors")
    # what a crash while saving leaves: no results, no final/, a half-written one beside
    shutil.rmtree(out / "final")
    (out / ".final.partial").mkdir()
    (out / ".final.partial" / "model.safetensors").write_text("cut short")
    (out / "eval_results.json").unlink()

    steps, events = _Steps(), _Events()
    result = run_sft(_config(data, out, resume="latest", **kw), callbacks=[steps, events])
    assert steps.taken == 0 and result.trainer.state.global_step == 3
    # the callbacks hear training begin and end, at the checkpoint's step, as after train()
    assert events.seen[:2] == [("on_train_begin", 3, True), ("on_train_end", 3, True)]
    assert {e[0] for e in events.seen[2:]} == {"on_log"}  # the after-training evaluation
    assert not (out / ".final.partial").exists()
    adapter = load_file(out / "final" / "adapter" / "adapter_model.safetensors")
    saved = load_file(out / "checkpoint-3" / "adapter_model.safetensors")
    assert adapter.keys() == saved.keys()
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # trained
    for k in adapter:
        assert torch.equal(adapter[k], saved[k]), k
    again = load_file(out / "final" / "model.safetensors")
    assert again.keys() == merged.keys()
    for k in again:
        torch.testing.assert_close(again[k], merged[k], atol=1e-6, rtol=0)
    results = json.loads((out / "eval_results.json").read_text())
    assert results["after"] == pytest.approx(first.after, rel=1e-5)
    assert results["before"] == pytest.approx(first.before, rel=1e-5)


def test_lora_and_full_fine_tuning_both_learn(data, tmp_path):
    full = run_sft(_config(data, tmp_path / "full", max_steps=6))
    assert full.after["nll"] < full.before["nll"]
    assert (tmp_path / "full" / "final" / "model.safetensors").is_file()
    lora = run_sft(_config(data, tmp_path / "lora", lora=True, lora_r=4, max_steps=6))
    adapter = load_file(tmp_path / "lora" / "final" / "adapter" / "adapter_model.safetensors")
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)
    assert lora.after["nll"] < lora.before["nll"]
    # LoRA starts from the base model: the same "before"
    assert lora.before["nll"] == pytest.approx(full.before["nll"], rel=1e-5)


@pytest.mark.parametrize("accepts_loss_kwargs", [True, False])
def test_gradient_accumulation_averages_over_tokens(
    data, tmp_path, monkeypatch, accepts_loss_kwargs
):
    """Two micro-batches of 4 rows (different token counts) accumulate to the step one
    batch of 8 takes: the loss is a mean over all completion tokens, not of micro-batch
    means; also for a model whose forward takes no loss keyword arguments (Trainer then
    counts no tokens itself: remote-code models, Gemma 4's conditional generation class)."""
    from transformers import LlamaForCausalLM

    monkeypatch.setattr(LlamaForCausalLM, "accepts_loss_kwargs", accepts_loss_kwargs, raising=False)
    common = dict(max_steps=2, logging_steps=1, label_smoothing=0.1)
    run_sft(_config(data, tmp_path / "big", batch_size=8, grad_accum=1, **common))
    run_sft(_config(data, tmp_path / "accum", batch_size=4, grad_accum=2, **common))
    logs = []
    for run in ("big", "accum"):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        logs.append([json.loads(x) for x in lines if '"split": "train"' in x])
    for key in ("grad_norm", "loss", "nll", "completion_tokens"):
        assert [r[key] for r in logs[0]] == pytest.approx([r[key] for r in logs[1]], rel=1e-4)
    a = load_file(tmp_path / "big" / "final" / "model.safetensors")
    b = load_file(tmp_path / "accum" / "final" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("grad_accum, fused", [(1, "off"), (2, "off"), (2, "on")])
def test_logged_loss_pools_tokens_like_nll(tmp_path, grad_accum, fused):
    """β = 0: the logged ``loss`` is the ``nll`` of the same window, both means over the
    window's completion tokens, with ``logging_steps`` > 1 over steps of very different token
    counts (Trainer's own ``loss`` is a mean of per-step means: a step of a few tokens weighed
    like one of many); so are the last, partial window's and the run's ``train_loss``."""
    if fused == "on" and importlib.util.find_spec("smoothalign.kernels") is None:
        pytest.skip("no kernel")
    rng = random.Random(5)
    rows = []
    for i in range(32):  # pairs of rows alike in length, alternately short and long
        n = 1 if (i // (2 * grad_accum)) % 2 == 0 else 40
        completion = "".join(rng.choice("ab") for _ in range(n))
        rows.append({"prompt": "xy:", "completion": completion})
    cfg = _config(
        tmp_path / "unused.jsonl", tmp_path / "run", batch_size=2, grad_accum=grad_accum,
        max_steps=5, logging_steps=2, label_smoothing=0.0, max_length=64, fused=fused,
    )  # fmt: skip
    from smoothalign.models import load_model_and_tokenizer
    from smoothalign.sft.data import validate_sft_rows

    model, tok = load_model_and_tokenizer("tiny")
    trainer, _ = _trainer(cfg, model, tok, validate_sft_rows(rows, tok, 64).examples)
    trainer.args.train_sampling_strategy = "sequential"  # the steps in row order
    output = trainer.train()
    logged = [json.loads(x) for x in trainer.metrics_path.read_text().splitlines()]
    train = [r for r in logged if r["split"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 5] and train[-1]["partial_window"]
    tokens = [r["completion_tokens"] for r in train]
    assert max(tokens) > 5 * min(tokens)  # the last window: one short step
    for r in train:
        assert r["loss"] == pytest.approx(r["nll"], rel=1e-5), r
    pooled = sum(r["nll"] * r["completion_tokens"] for r in train) / sum(tokens)
    assert output.metrics["train_loss"] == pytest.approx(pooled, rel=1e-5)
    summary = [r for r in logged if r["split"] == "summary" and "train_loss" in r]
    assert summary[-1]["train_loss"] == pytest.approx(pooled, rel=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("smoothalign.kernels") is None, reason="no kernel")
def test_fused_kernel_trains_like_the_reference(data, tmp_path):
    """The fused loss (the chunked path here, the Triton kernel on a GPU, where the GPU
    session runs this test) trains like materialised logits; fp32, so that the tolerance
    means something on a GPU too."""
    common = dict(max_steps=2, logging_steps=1, precision="fp32")
    plain = run_sft(_config(data, tmp_path / "plain", fused="off", **common))
    fused = run_sft(_config(data, tmp_path / "fused", fused="on", **common))
    assert fused.after["nll"] == pytest.approx(plain.after["nll"], rel=1e-4)


def test_lean_layers_train_like_the_eager_layers(data, tmp_path):
    common = dict(max_steps=2, logging_steps=1, precision="fp32")
    eager = run_sft(_config(data, tmp_path / "eager", lean_layers="off", **common))
    lean = run_sft(_config(data, tmp_path / "lean", lean_layers=True, **common))
    assert any("lean layers: 5 RMSNorm, 2 MLP and 2 attention" in n for n in lean.notes), lean.notes
    assert lean.after["nll"] == pytest.approx(eager.after["nll"], rel=1e-5)


def test_check_head_refuses_logits_the_objective_does_not_reproduce(data, tmp_path):
    from smoothalign.models import load_model_and_tokenizer
    from smoothalign.sft.data import load_sft_rows, validate_sft_rows

    cfg = _config(data, tmp_path / "head")
    model, tok = load_model_and_tokenizer("tiny")
    examples = validate_sft_rows(load_sft_rows(data), tok, 32).examples[:4]
    trainer, collator = _trainer(cfg, model, tok, examples)
    assert trainer.check_head(collator(examples)) < 1e-5
    # Llama ignores this attribute; our head would apply it: the check must notice
    model.config.final_logit_softcapping = 0.5
    with pytest.raises(ValueError, match="not lm_head"):
        trainer.check_head(collator(examples))


@pytest.mark.parametrize("setting, expected", [("auto", "auto"), ("off", None)])
def test_grad_filter_reaches_the_kernel(data, tmp_path, monkeypatch, setting, expected):
    """``--grad-filter``: the fused loss is called with the matching ``filter_eps``."""
    import smoothalign.sft.objective as objective
    from smoothalign.models import load_model_and_tokenizer
    from smoothalign.sft.data import validate_sft_rows

    seen = []
    real = objective.linear_cross_entropy

    def spy(*args, **kwargs):
        seen.append(kwargs.get("filter_eps", "missing"))
        return real(*args, **kwargs)

    monkeypatch.setattr(objective, "linear_cross_entropy", spy)
    cfg = _config(data, tmp_path / "gf", fused="on", grad_filter=setting)
    model, tok = load_model_and_tokenizer("tiny")
    examples = validate_sft_rows(_rows(4, seed=3), tok, 32).examples
    trainer, collator = _trainer(cfg, model, tok, examples)
    loss = trainer.compute_loss(model, collator(examples))
    assert seen == [expected] and torch.isfinite(loss)
    with pytest.raises(ValueError, match="grad_filter"):
        _config(data, tmp_path / "bad", grad_filter="exact")


def test_training_step_records_the_filtered_mass_of_the_fused_loss(data, tmp_path):
    """``head/filtered_mass`` per training step with the fused loss: 0 on the chunked CPU path,
    which never filters (the Triton kernel's count is tested in test_kernels_triton.py)."""
    from smoothalign.models import load_model_and_tokenizer
    from smoothalign.sft.data import validate_sft_rows

    model, tok = load_model_and_tokenizer("tiny")
    examples = validate_sft_rows(_rows(4, seed=3), tok, 32).examples
    for fused, expected in (("on", [0.0]), ("off", None)):
        cfg = _config(data, tmp_path / f"fm-{fused}", fused=fused)
        trainer, collator = _trainer(cfg, model, tok, examples)
        trainer.create_optimizer_and_scheduler(num_training_steps=4)
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() otherwise
        model.train()
        trainer.training_step(model, collator(examples))
        recorded = trainer._stored["train"].get("head/filtered_mass")
        got = [float(t) for t in recorded] if recorded else None
        assert got == expected, fused


@pytest.mark.parametrize("fused", ["off", "on"])
def test_under_bf16_mixed_precision_training_and_evaluation_compute_the_same_loss(
    data, tmp_path, fused
):
    """accelerate's autocast wraps only the model's forward; the head after it must round
    its inputs as the evaluation (run under autocast) does, or the two measure different
    objectives."""
    from smoothalign.models import load_model_and_tokenizer
    from smoothalign.sft.data import validate_sft_rows

    model, tok = load_model_and_tokenizer("tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # logits large enough for bf16's rounding to show
    examples = validate_sft_rows(_rows(4, seed=3), tok, 32).examples
    cfg = _config(data, tmp_path / f"bf16-{fused}", fused=fused)
    trainer, collator = _trainer(cfg, model, tok, examples, bf16=True)
    wrapped = trainer.accelerator.prepare_model(model)  # what Trainer's loop does
    batch = collator(examples)
    with torch.no_grad():
        wrapped.train()
        training = trainer.compute_loss(wrapped, dict(batch))
        with trainer.evaluation_mode() as m:
            evaluation = trainer.compute_loss(m, dict(batch))
    assert float(training) == pytest.approx(float(evaluation), rel=1e-6)


# ---------------------------------------------------------------------------- text rows
@pytest.mark.parametrize("fused", ["off", "on"])
def test_text_row_loss_is_cross_entropy_on_every_token_but_the_first(data, tmp_path, fused):
    """The trainer's loss on ``text`` rows equals a float64 hand-written
    ``F.cross_entropy(logits[:-1], ids[1:], label_smoothing=β)`` over each text's own
    tokens plus its EOS (the tiny tokenizer adds no BOS), from the model's own logits."""
    if fused == "on" and importlib.util.find_spec("smoothalign.kernels") is None:
        pytest.skip("no kernel")
    import torch.nn.functional as F

    from smoothalign.models import load_model_and_tokenizer
    from smoothalign.sft.data import validate_sft_rows

    beta = 0.2
    texts = ["Hello, text rows.", "a shorter one", "ünïcode bytes"]
    cfg = _config(data, tmp_path / "loss", label_smoothing=beta, fused=fused)
    model, tok = load_model_and_tokenizer("tiny")
    model = model.double().eval()
    examples = validate_sft_rows([{"text": t} for t in texts], tok, 64).examples
    trainer, collator = _trainer(cfg, model, tok, examples)
    with torch.no_grad():
        loss = trainer.compute_loss(model, collator(examples))  # a mean over the batch's tokens
        total, count = torch.zeros((), dtype=torch.float64), 0
        for text in texts:
            ids = [*tok(text)["input_ids"], tok.eos_token_id]
            assert ids[:-1] == list(text.encode("utf-8"))  # one token per byte, no BOS
            ids = torch.tensor(ids)
            logits = model(input_ids=ids[None]).logits[0].double()
            total += F.cross_entropy(logits[:-1], ids[1:], label_smoothing=beta, reduction="sum")
            count += len(ids) - 1
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx((total / count).item(), rel=1e-10)


def test_cli_trains_on_text_rows_and_writes_the_report(tmp_path):
    """`smoothalign sft --model tiny --data rows.jsonl` on ``text`` rows, bad rows skipped
    and listed."""
    texts = [r["prompt"] + r["completion"] for r in _rows(20, seed=3)]
    rows = [{"text": t} for t in texts]
    rows += [{"text": ""}, {"text": "t", "prompt": "p", "completion": "c"}]
    data = _write(rows, tmp_path / "lm.jsonl")
    out = tmp_path / "run"
    from smoothalign.cli import main

    args = ["sft", "--model", "tiny", "--data", str(data), "--output-dir", str(out)]
    flags = ["--max-steps", "2", "--batch-size", "4", "--logging-steps", "1"]
    assert main([*args, *flags, "--on-bad-rows", "skip"]) == 0
    for name in ("report.md", "metrics.jsonl", "validation.json", "eval_results.json"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "row 20, field 'text': empty text" in report
    assert "row 21, field 'text': the row has both 'text' and 'prompt'/'completion'" in report
    validation = json.loads((out / "validation.json").read_text())["train"]
    assert validation["n_skipped"] == 2 and validation["n_text_rows"] == 20
    # every byte of every text and its EOS, less each row's first token (no context)
    assert validation["n_completion_tokens"] == sum(len(t.encode()) for t in texts)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logged if r["split"] == "train" and "loss" in r]
    assert len(train) == 2 and all(r["completion_tokens"] > 0 for r in train)
    results = json.loads((out / "eval_results.json").read_text())
    assert results["after"]["n_rows"] == 2  # the 10% holdout of the 20 kept rows
    # the tokens trained on are the 18 training rows', not those of all 20 kept rows
    held = int(results["before"]["n_tokens"])
    total = validation["n_completion_tokens"]
    assert 0 < held < total
    assert f"tokens the loss reads: {total - held} in the 18 training rows" in report
    assert f"{held} in the 2 held-out rows" in report
    assert f"tokens the loss reads, in the kept rows: {total}" in report  # validation's
    assert "tokens trained on" not in report


def test_a_lora_adapter_on_the_lm_head_is_refused_not_left_out(tmp_path, data):
    """The SFT objective reads the head's weight: an adapter on lm_head would get no
    gradient and the loss would not be the model's."""
    import transformers
    from peft import LoraConfig, get_peft_model

    from smoothalign.sft.trainer import SFTTrainer
    from smoothalign.train.common import training_arguments

    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, pad_token_id=0, tie_word_embeddings=False,
    )  # fmt: skip
    model = get_peft_model(
        transformers.LlamaForCausalLM(config),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "lm_head"]),
    )
    cfg = _config(data, tmp_path / "run")
    trainer = SFTTrainer(model=model, args=training_arguments(cfg, False), sft_config=cfg)
    ids = torch.randint(1, 97, (2, 8))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    with pytest.raises(ValueError, match="its LM head is a .*leave lm_head out of the adapter"):
        trainer.compute_loss(model, batch)
    # modules_to_save trains a whole copy of the head, which its weight is: accepted, exact
    model = get_peft_model(
        transformers.LlamaForCausalLM(config),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"]),
    )
    cfg = _config(data, tmp_path / "run2", label_smoothing=0.0)
    trainer = SFTTrainer(model=model, args=training_arguments(cfg, False), sft_config=cfg)
    loss = trainer.compute_loss(model, batch)
    logits = model(input_ids=ids).logits
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 97), ids[:, 1:].reshape(-1)
    )
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_config_fields_of_the_wrong_kind_are_refused_before_anything_loads(data, tmp_path):
    """The Python API gets no argparse conversion: a fractional batch size or a bool
    label smoothing is refused by validate(), naming the field; NumPy integers and ints
    for float fields are numbers like any other."""
    import numpy as np

    from smoothalign.reward.config import RewardConfig
    from smoothalign.train import DPOConfig

    for field, value, words in (
        ("batch_size", 2.5, "batch_size: expected an integer, got float 2.5"),
        ("max_steps", "3", "max_steps: expected an integer, got str"),
        ("label_smoothing", True, "label_smoothing: expected a number, got bool True"),
        ("lora", 1, "lora: expected True or False, got int 1"),
    ):
        with pytest.raises(ValueError, match=re.escape(words)):
            _config(data, tmp_path / field, **{field: value}).validate()
        assert not (tmp_path / field).exists()
    _config(data, tmp_path / "ok", seed=np.int64(3), label_smoothing=0).validate()
    with pytest.raises(ValueError, match="beta: expected a number"):
        DPOConfig(beta=None).validate()
    with pytest.raises(ValueError, match="batch_size: expected an integer"):
        RewardConfig(batch_size=8.0).validate()


def test_the_after_training_evaluation_leaves_no_tensorboard_writer_open(
    data, tmp_path, monkeypatch
):
    """As DPO's: the final evaluation's record reaches TensorBoard in the training's
    writer (one events file a run), which is closed once it is written."""
    from tests.dpo_helpers import fake_tensorboard

    writers = fake_tensorboard(monkeypatch)
    result = run_sft(_config(data, tmp_path / "run", max_steps=2))
    assert "tensorboard" in result.trainer.args.report_to
    (writer,) = writers  # the training's, kept open for the final record: one a run
    assert writer.closed and "train/train_loss" in writer.scalars
    assert any(k.startswith("train/final_eval_") for k in writer.scalars)


# ---------------------------------------------------------------------------- two ranks
@pytest.fixture(scope="module")
def two_process_sft(tmp_path_factory) -> Path:
    """One torchrun launch (gloo, 2 CPU processes) of tests/dist_sft_worker.py: a run
    uninterrupted (``straight/``), and the same run crashed after step 5 and resumed from its
    checkpoint at step 3 (``crashed/``); each rank's output in its own log (``rank<R>.out``,
    ``rank<R>.err``). Completions of 1 to 24 characters, so that the ranks' micro-batches
    differ much in tokens, and one holding a special-token string, which is warned about.
    54 training rows: the 6 steps of 8 stay in the first epoch (its last step, short of
    rows, would have the sampler repeat rows on one rank to even the ranks' batches)."""
    folder = tmp_path_factory.mktemp("sft_dist")
    rng = random.Random(1)
    rows = []
    for i in range(59):
        prompt = "".join(rng.choice("xyz") for _ in range(rng.randint(3, 8))) + ":"
        n = 12 if i % 3 == 0 else 1
        completion = "".join(rng.choice("ab") for _ in range(rng.randint(n, 2 * n)))
        rows.append({"prompt": prompt, "completion": completion})
    rows.append({"prompt": "Q:", "completion": "ab<eos>ab"})
    data = _write(rows, folder / "sft.jsonl")
    return torchrun("dist_sft_worker.py", folder, str(data), str(folder))


@pytest.fixture(scope="module")
def one_process_sft(two_process_sft, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The straight run in one process, on 8 rows a step (the 2 ranks' 4 each): its
    folder, and its training micro-batches as the worker records them."""
    from tests.dist_sft_worker import config, record_micro_batches

    from smoothalign.sft.trainer import SFTTrainer

    seen: list[dict] = []
    out = tmp_path_factory.mktemp("sft_one") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SFTTrainer, "compute_loss", record_micro_batches(seen))
        run_sft(config(str(two_process_sft / "sft.jsonl"), out, batch_size=8))
    return out, seen


def test_two_process_sft_keeps_ranks_identical(two_process_sft):
    r0 = torch.load(two_process_sft / "rank0.pt", weights_only=True)
    r1 = torch.load(two_process_sft / "rank1.pt", weights_only=True)
    assert r0["world_size"] == r1["world_size"] == 2
    # real data parallelism: the trainer knows of both ranks, and they see different rows
    assert r0["trainer_world_size"] == r1["trainer_world_size"] == 2
    for step in range(1, 7):
        rows = [{i for s in r["seen"] if s["step"] == step for i in s["index"]} for r in (r0, r1)]
        assert rows[0] and rows[1] and rows[0].isdisjoint(rows[1]), step
    for run in ("straight", "resumed"):
        for k in r0[run]:
            assert torch.equal(r0[run][k], r1[run][k]), (run, k)


def test_two_process_sft_ddp_skips_the_search_for_unused_parameters(two_process_sft):
    """Every parameter trained takes part in the loss: DDP is told so
    (``ddp_find_unused_parameters=False``), instead of searching the autograd graph every
    step and warning on every rank that it found none."""
    for rank in (0, 1):
        state = torch.load(two_process_sft / f"rank{rank}.pt", weights_only=True)
        assert state["find_unused"] is False, rank
        assert (
            "find_unused_parameters=True" not in (two_process_sft / f"rank{rank}.err").read_text()
        )


def test_two_process_sft_buffered_sums_join_the_gather_on_every_rank(two_process_sft):
    """A value buffered on one rank only (2 values on rank 0, none on rank 1) is summed over
    the ranks on both: the rank without one joins the gather instead of returning 0 (which
    left rank 0 waiting in the collective, or failing as rank 1 exited)."""
    for rank in (0, 1):
        state = torch.load(two_process_sft / f"rank{rank}.pt", weights_only=True)
        assert state["probe_sum"] == 3.5, rank


def test_two_process_sft_pools_tokens_as_one_process(two_process_sft, one_process_sft):
    """The trainer's docstring: every logged training value is a mean over the completion
    tokens of the window, all its steps, micro-batches and ranks pooled, and each step's
    loss is divided by its tokens over both ranks (DDP's averaging undone). So the 2-rank
    run of 4 rows a rank trains and logs as one process on the same 8 rows a step: the same
    rows, window means, train_loss and weights. Its loss is the pooled one, not the mean of
    the ranks' means, which the ranks' token counts here set apart."""
    one, one_seen = one_process_sft
    seen = {
        r: torch.load(two_process_sft / f"rank{r}.pt", weights_only=True)["seen"] for r in (0, 1)
    }
    for step in range(1, 7):
        both = sorted(i for r in (0, 1) for s in seen[r] if s["step"] == step for i in s["index"])
        alone = sorted(i for s in one_seen if s["step"] == step for i in s["index"])
        assert both == alone, step
    two = records(two_process_sft / "straight")
    train = [r for r in two if r["split"] == "train"]
    one_records = records(one)
    one_train = [r for r in one_records if r["split"] == "train"]
    assert [r["step"] for r in train] == [r["step"] for r in one_train] == [2, 4, 6]
    apart = 0  # windows where the pooled mean and the mean of the ranks' means differ
    for record, alone in zip(train, one_train, strict=True):
        window = {r: [s for s in seen[r] if 0 <= record["step"] - s["step"] < 2] for r in (0, 1)}
        sums = {r: sum(s["loss_sum"] for s in window[r]) for r in (0, 1)}
        tokens = {r: sum(s["tokens"] for s in window[r]) for r in (0, 1)}
        pooled = (sums[0] + sums[1]) / (tokens[0] + tokens[1])
        mean_of_means = (sums[0] / tokens[0] + sums[1] / tokens[1]) / 2
        apart += abs(pooled - mean_of_means) > 1e-4 * pooled  # 10x the tolerance below
        assert record["completion_tokens"] == alone["completion_tokens"] == tokens[0] + tokens[1]
        assert record["loss"] == pytest.approx(pooled, rel=1e-9)
        for key in ("loss", "nll", "mean_token_accuracy", "entropy"):
            assert record[key] == pytest.approx(alone[key], rel=1e-5), (record["step"], key)
    assert apart >= 2  # the data tell them apart
    (summary,) = [r for r in two if "train_loss" in r]
    (one_summary,) = [r for r in one_records if "train_loss" in r]
    assert summary["train_loss"] == pytest.approx(one_summary["train_loss"], rel=1e-5)
    a = load_file(two_process_sft / "straight" / "final" / "model.safetensors")
    b = load_file(one / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    # the 6 held-out rows, scored by both ranks (4 and 2, which the sampler evens out with
    # 2 repeated) and gathered, count once each
    results = [
        json.loads((out / "eval_results.json").read_text())
        for out in (two_process_sft / "straight", one)
    ]
    for when in ("before", "after"):
        two_eval, one_eval = results[0][when], results[1][when]
        assert two_eval["n_rows"] == one_eval["n_rows"] == 6
        assert two_eval["n_tokens"] == one_eval["n_tokens"]
        for key, value in one_eval.items():
            assert two_eval[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (when, key)


def test_two_process_sft_resume_equals_uninterrupted(two_process_sft):
    """A 2-rank SFT run resumed (with 2 ranks) from its checkpoint at step 3, saved between
    two logging steps, so that the token sums it holds were gathered across the ranks, ends
    as the uninterrupted 2-rank run: the same train_loss over every step, and weights."""
    straight, crashed = two_process_sft / "straight", two_process_sft / "crashed"
    assert (crashed / "checkpoint-3" / "loss_sums.pt").is_file()
    r0 = torch.load(two_process_sft / "rank0.pt", weights_only=True)
    assert any("resumed from" in n and "checkpoint-3" in n for n in r0["notes"])
    (a,), (b,) = ([r for r in records(out) if "train_loss" in r] for out in (straight, crashed))
    assert "train_loss_from_step" not in b
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-12, abs=0)
    for k in r0["straight"]:
        torch.testing.assert_close(r0["straight"][k], r0["resumed"][k], atol=1e-6, rtol=0)
    resumed_window = [r for r in records(crashed) if r["split"] == "train" and r["step"] == 4]
    assert resumed_window[0]["partial_window"]  # step 4 only: step 3 went into the checkpoint


def test_two_process_sft_says_and_writes_things_once(two_process_sft):
    """What every rank would say alike (the data's warning, the logged records,
    transformers' messages) comes from the main process only, rank 1 says nothing that
    rank 0 says, and the run's files are written once: each record of metrics.jsonl once."""
    out = {r: (two_process_sft / f"rank{r}.out").read_text() for r in (0, 1)}
    err = {r: (two_process_sft / f"rank{r}.err").read_text() for r in (0, 1)}
    assert "hold special-token strings" in err[0]
    assert "'train_loss'" in out[0] and out[1] == ""  # Trainer's logged dicts
    said = set(err[0].splitlines()) | set(out[0].splitlines())
    assert [line for line in err[1].splitlines() if line.strip() and line in said] == []
    assert "special-token" not in err[1]
    assert [line for line in err[1].splitlines() if line.startswith("[transformers]")] == []
    for run in ("straight", "crashed"):
        logged = records(two_process_sft / run)
        assert [r["step"] for r in logged if r["split"] == "train"] == [2, 4, 6], run
        assert len([r for r in logged if "train_loss" in r]) == 1, run
        assert len([r for r in logged if "final_eval_loss" in r]) == 1, run
    logged = records(two_process_sft / "straight")
    assert [r["step"] for r in logged if "eval_loss" in r] == [2, 4, 6]
    straight = two_process_sft / "straight"
    for name in ("config.json", "validation.json", "eval_results.json", "report.md",
                 "training_curves.png", "reliability.png", "final/model.safetensors"):  # fmt: skip
        assert (straight / name).is_file(), name
    assert not (straight / ".final.partial").exists()


def test_an_interrupted_new_run_leaves_no_earlier_runs_final(data, tmp_path):
    """A finished run, then a new one with other options into the same folder, interrupted
    mid-training: the folder's config.json is the new run's, so the earlier run's final/
    must not be left beside it (every command given the folder as --model loads final/ as
    the model this configuration saved). A run refused before it starts keeps it."""
    out = tmp_path / "run"
    run_sft(_config(data, out, max_steps=2))
    assert (out / "final" / "model.safetensors").is_file()
    with pytest.raises(FileNotFoundError):
        run_sft(_config(tmp_path / "missing.jsonl", out))
    # nor can a new run there start from that model: it would remove it when it starts
    for model in (out, out / "final"):
        with pytest.raises(ValueError, match="is what this run loads as --model"):
            run_sft(_config(data, out, model=str(model)))
    assert (out / "final" / "model.safetensors").is_file()
    with pytest.raises(KeyboardInterrupt):
        run_sft(_config(data, out, max_steps=4, learning_rate=1e-4), callbacks=[_Crash(at=1)])
    assert json.loads((out / "config.json").read_text())["learning_rate"] == 1e-4
    assert not (out / "final").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".final")]


def test_resume_latest_without_a_checkpoint_says_it_starts_a_new_run(
    data, tmp_path, recwarn, monkeypatch
):
    """--resume latest with no checkpoint starts fresh (a preemptible job passes it on every
    launch), and says so in one warning, once (the main process only), naming the
    folder and, with --save-steps 0, that this run will not write one either."""
    from smoothalign.train.checkpoints import prepare_output_dir

    out = tmp_path / "run"
    result = run_sft(_config(data, out, max_steps=1, resume="latest"))
    assert result.trainer.state.global_step == 1
    said = [str(w.message) for w in recwarn if "latest" in str(w.message)]
    assert said == [
        f"resume='latest': no complete checkpoint in {out}: starting a new run; with "
        "--save-steps 0 this run writes none either"
    ]
    recwarn.clear()
    monkeypatch.setenv("RANK", "1")
    prepare_output_dir(tmp_path / "other", "latest", {"save_steps": 2})
    assert [str(w.message) for w in recwarn if "latest" in str(w.message)] == []


def test_resume_latest_among_only_incomplete_checkpoints_is_refused_naming_them(
    data, tmp_path, recwarn
):
    """Checkpoints whose save did not complete (a crash while saving) and none that did:
    --resume latest has nothing to continue, and a new run among them would clear the
    earlier run's metrics and save beside the stale folders, which Trainer's rotation
    counts. So it is refused before anything loads, naming them and how to start over
    (deleting nothing); so is a run without --resume, which was told to pass --resume latest
    to continue a run that cannot be. Once they are gone the run starts; a complete
    checkpoint beside an incomplete one resumes as before."""
    from smoothalign.train.checkpoints import prepare_output_dir

    out = tmp_path / "run"
    run_sft(_config(data, out, max_steps=1))
    for step in (2, 4):
        (out / f"checkpoint-{step}").mkdir()
        (out / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"cut short")
    for resume, opening in (("latest", "resume='latest'"), (None, "output_dir: a new run")):
        with pytest.raises(ValueError) as err:
            run_sft(_config(data, out, max_steps=1, resume=resume, model="no-such-model"))
        assert str(err.value) == (
            f"{opening}: {out} holds no complete checkpoint, only checkpoint-2, checkpoint-4, "
            "whose save did not complete (no smoothalign_complete.json, a crash while saving): "
            "none can be resumed, and the run that wrote them cannot be continued. To start it "
            f"over in this folder, delete them (rm -r {out / 'checkpoint-2'} "
            f"{out / 'checkpoint-4'}) and run the same command again; or pass another "
            "--output-dir"
        )
    assert (out / "metrics.jsonl").is_file() and (out / "checkpoint-4").is_dir()
    recwarn.clear()
    (out / "checkpoint-2" / "smoothalign_complete.json").write_text('{"global_step": 2}')
    prepare_output_dir(out, "latest")  # resumes checkpoint-2
    assert [str(w.message) for w in recwarn] == []
    for step in (2, 4):
        shutil.rmtree(out / f"checkpoint-{step}")
    # the finished run's final/ left without a checkpoint: nothing to resume either
    with pytest.raises(ValueError, match="finished without saving a checkpoint"):
        prepare_output_dir(out, "latest")
    shutil.rmtree(out / "final")
    (out / "eval_results.json").unlink(missing_ok=True)
    prepare_output_dir(out, "latest")
    assert any("starting a new run" in str(w.message) for w in recwarn)


def test_a_resume_refuses_data_that_changed_since_the_checkpoint(tmp_path):
    """As DPO's: a data file edited after the crash (one row's completion) is refused on
    resume, saying that the training rows differ; the held-out ones did not."""
    rows, held_out = _rows(24, seed=2), _rows(6, seed=3)
    data, eval_data = (
        _write(rows, tmp_path / "sft.jsonl"),
        _write(held_out, tmp_path / "eval.jsonl"),
    )
    out = tmp_path / "run"
    kw = dict(max_steps=3, save_steps=1, eval_data=str(eval_data))
    with pytest.raises(KeyboardInterrupt):
        run_sft(_config(data, out, **kw), callbacks=[_Crash(at=2)])
    rows[4]["completion"] += "ab"
    _write(rows, data)
    with pytest.raises(ValueError, match="this run's data differs") as err:
        run_sft(_config(data, out, resume="latest", **kw))
    assert "training rows: 24 before and now, but not the same ones" in str(err.value)
    assert "held-out rows" not in str(err.value)


def test_a_run_of_the_version_before_resumes_checked_against_its_folders_file(
    tmp_path, monkeypatch
):
    """As DPO's: a run whose folder holds the earlier version's fingerprint (scheme 1) and
    whose checkpoints hold none resumes checked against that file."""
    import smoothalign.sft.run as run_module

    rows, held_out = _rows(24, seed=2), _rows(6, seed=3)
    data, eval_data = _write(rows, tmp_path / "sft.jsonl"), _write(held_out, tmp_path / "e.jsonl")
    out = tmp_path / "run"
    kw = dict(max_steps=3, save_steps=1, eval_data=str(eval_data))
    with monkeypatch.context() as patched:
        earlier_version_fingerprints(patched, run_module, run_module.sft_content)
        with pytest.raises(KeyboardInterrupt):
            run_sft(_config(data, out, **kw), callbacks=[_Crash(at=2)])
    assert not (out / "checkpoint-2" / "data_fingerprint.json").exists()
    held_out[1]["completion"] += "ab"
    _write(held_out, eval_data)
    with pytest.raises(ValueError, match="held-out rows: 6 before and now, but not the same"):
        run_sft(_config(data, out, resume="latest", **kw))
    _write(_rows(6, seed=3), eval_data)
    result = run_sft(_config(data, out, resume="latest", **kw))
    assert any("resumed from" in n for n in result.notes)
    assert not any(n.startswith("data:") for n in result.notes)
