"""DPO with fused log-probs (``--fused-logps``) equals DPO with materialised logits."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tests.dpo_helpers import synthetic_rows

from smoothalign.data import PreferenceCollator, validate_preference_rows
from smoothalign.models import load_model_and_tokenizer
from smoothalign.train import DPOConfig
from smoothalign.train.trainer import fused_logps_enabled, model_sequence_logps


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model_and_tokenizer("tiny", dtype=torch.float64)
    report = validate_preference_rows(synthetic_rows(4, seed=2), tok, max_length=32)
    batch = PreferenceCollator(int(tok.pad_token_id))(report.examples)
    return model, tok, batch


def _lora(model):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
    model = get_peft_model(copy.deepcopy(model), cfg)
    with torch.no_grad():  # a non-zero adapter, so that enabled and disabled differ
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


def _logps_and_grads(model, batch, fused, weights):
    model.zero_grad(set_to_none=True)
    head_rows = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda _m, _a, out: head_rows.append(out.shape[1]))
    try:
        logps, lengths = model_sequence_logps(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"], fused=fused
        )
    finally:
        handle.remove()
    # fused: the LM head ran on no position at all (no fallback to the logits)
    assert head_rows == ([0] if fused else [batch["input_ids"].shape[1]])
    (logps * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), lengths, grads


def _assert_same(model, batch):
    w = torch.linspace(-1.0, 2.0, batch["input_ids"].shape[0], dtype=torch.float64)
    a = _logps_and_grads(model, batch, False, w)
    b = _logps_and_grads(model, batch, True, w)
    torch.testing.assert_close(a[0], b[0], rtol=1e-10, atol=1e-10)
    assert torch.equal(a[1], b[1])
    assert a[2].keys() == b[2].keys() and a[2]
    for name in a[2]:
        torch.testing.assert_close(a[2][name], b[2][name], rtol=1e-8, atol=1e-10, msg=name)


def test_fused_logps_equal_materialised_full_model(tiny):
    model, _, batch = tiny
    _assert_same(copy.deepcopy(model), batch)  # tied embeddings: one weight, two uses


def test_a_responses_user_turn_is_left_out_of_its_log_prob_on_both_paths(tiny):
    """A user turn inside a response is masked in the middle of the sequence, not only
    before it: both paths sum the assistant turns' tokens alone (the log-prob of the
    model's own moves), with the same values and gradients."""
    model, tok, _ = tiny
    turn = [
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "and then?"},
        {"role": "assistant", "content": "no"},
    ]
    rows = [
        {"prompt": [{"role": "user", "content": "q"}], "chosen": turn, "rejected": turn[:1]},
        {"prompt": [{"role": "user", "content": "r"}], "chosen": turn[2:], "rejected": turn},
    ]
    report = validate_preference_rows(rows, tok, max_length=128)
    examples = report.examples
    assert report.n_truncated == 0
    batch = PreferenceCollator(int(tok.pad_token_id))(examples)
    for i in (0, 3):  # the two responses that hold the user's turn, chosen and rejected
        scored = tok.decode(batch["input_ids"][i][batch["labels"][i] != -100])
        assert "yes" in scored and "no" in scored and "and then" not in scored
    _assert_same(copy.deepcopy(model), batch)
    with torch.no_grad():
        logps, lengths = model_sequence_logps(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"], fused=False
        )
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    token_logps = torch.log_softmax(logits[:, :-1].double(), -1)
    pairs = [(ex.prompt_ids, ex.chosen_ids, ex.chosen_spans) for ex in examples]
    pairs += [(ex.prompt_ids, ex.rejected_ids, ex.rejected_spans) for ex in examples]
    for i, (prompt, response, spans) in enumerate(pairs):
        scored = [j for a, b in spans or [(0, len(response))] for j in range(a, b)]
        assert int(lengths[i]) == len(scored) <= len(response) - (spans is not None), i
        p = len(prompt)
        expected = sum(float(token_logps[i, p + j - 1, response[j]]) for j in scored)
        assert float(logps[i]) == pytest.approx(expected, abs=1e-9)
    assert sum(ex.chosen_spans is not None for ex in examples) == 1


def test_fused_logps_equal_materialised_untied_head(tiny):
    from transformers import LlamaForCausalLM

    _, _, batch = tiny
    cfg = copy.deepcopy(tiny[0].config)
    cfg.tie_word_embeddings = False
    torch.manual_seed(3)
    model = LlamaForCausalLM(cfg).double()
    assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    _assert_same(model, batch)


def test_fused_logps_equal_materialised_with_lora(tiny):
    model = _lora(tiny[0])
    batch = tiny[2]
    _assert_same(model, batch)
    with model.disable_adapter():  # the reference of a LoRA run
        on = model_sequence_logps(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"], fused=True
        )[0]
        off = model_sequence_logps(
            model, batch["input_ids"], batch["attention_mask"], batch["labels"], fused=False
        )[0]
    torch.testing.assert_close(on, off, rtol=1e-10, atol=1e-10)
    base = model_sequence_logps(
        tiny[0], batch["input_ids"], batch["attention_mask"], batch["labels"], fused=False
    )[0]
    torch.testing.assert_close(on, base, rtol=1e-10, atol=1e-10)


class _ScaledHead(torch.nn.Linear):
    """An LM head that scales its logits (as some architectures' heads do)."""

    def forward(self, x):
        return 2.0 * super().forward(x)


def test_heads_and_model_types_the_fused_path_does_not_know_take_the_materialised_one(tiny):
    """A head subclass may transform its output, and a model type outside
    FUSED_MODEL_TYPES may post-process its logits (a multiplier, a learned scale): fused log-
    probs would silently differ, so such models take the materialised path."""
    _, _, batch = tiny
    args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    model = copy.deepcopy(tiny[0])
    old = model.lm_head
    model.lm_head = _ScaledHead(old.in_features, old.out_features, bias=False).double()
    model.lm_head.weight = old.weight
    on = model_sequence_logps(model, *args, fused=True)[0]
    off = model_sequence_logps(model, *args, fused=False)[0]
    torch.testing.assert_close(on, off, rtol=1e-10, atol=1e-10)
    plain = model_sequence_logps(tiny[0], *args, fused=False)[0]
    assert (on - plain).abs().max() > 1.0  # the scale matters: the case is real
    from smoothalign.train.trainer import _fused_parts

    model = copy.deepcopy(tiny[0])
    assert _fused_parts(model) is not None  # a llama: fused
    model.config.model_type = "some_new_arch"  # a type whose logit transform is unknown
    assert _fused_parts(model) is None
    on = model_sequence_logps(model, *args, fused=True)[0]
    torch.testing.assert_close(on, plain, rtol=1e-10, atol=1e-10)
    # a multimodal wrapper whose text config is of a fused type: its own forward may treat
    # the logits otherwise (Gemma-3's applies no softcap), so its own type decides
    wrapper = copy.deepcopy(tiny[0])
    text = copy.deepcopy(wrapper.config)  # a llama text config
    wrapper.config.model_type = "llava"
    wrapper.config.get_text_config = lambda *a, **k: text
    assert _fused_parts(wrapper) is None


def test_the_fused_head_runs_under_the_autocast_its_forward_ran_under(tiny):
    """accelerate wraps only model.forward in autocast: a training step's head (after the
    forward) must round its inputs as the reference and the evaluation do (they run the whole
    call under autocast); else a policy equal to its reference starts from non-zero margins."""
    model, _, batch = tiny
    model = copy.deepcopy(model).float()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # logits large enough for bf16's rounding to show
    args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the reference's way
        reference, _ = model_sequence_logps(model, *args, fused=True)
    plain_forward = model.forward
    model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(plain_forward)  # accelerate's
    try:
        with torch.no_grad():
            policy, _ = model_sequence_logps(model, *args, fused=True)  # the training step's
    finally:
        model.forward = plain_forward
    assert torch.equal(policy, reference)  # margins exactly 0 at step 0
    with torch.no_grad():
        full_precision, _ = model_sequence_logps(model, *args, fused=True)
    assert not torch.equal(full_precision, reference)  # the rounding does show here


def test_fused_logps_are_off_under_an_fsdp_launch(monkeypatch):
    """The precomputed reference and the trainer must take the same path: under FSDP the
    trainer cannot fuse (sharded head weight), so neither does the reference."""
    from smoothalign.train.trainer import fused_logps_enabled

    assert fused_logps_enabled("on", "cpu")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert not fused_logps_enabled("on", "cpu") and not fused_logps_enabled("auto", "cuda")


def test_final_logit_softcapping_is_honoured(tiny):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(
        vocab_size=259,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        final_logit_softcapping=2.0,
        pad_token_id=258,
    )
    torch.manual_seed(4)
    model = Gemma2ForCausalLM(cfg).double()
    _assert_same(model, tiny[2])


def _dpo_trainer(cfg, model, tok, ref_model):
    from smoothalign.train.common import training_arguments
    from smoothalign.train.trainer import SmoothDPOTrainer

    return SmoothDPOTrainer(
        model=model,
        args=training_arguments(cfg, False),
        processing_class=tok,
        dpo_config=cfg,
        smoothing_policy=cfg.smoothing_policy(),
        ref_model=ref_model,
    )


@pytest.mark.parametrize("lora", [False, True])
def test_dpo_loss_and_gradients_equal(tiny, tmp_path, lora):
    """One DPO ``compute_loss`` (CALS on) through the trainer, fused and not."""
    model, tok, batch = tiny
    model = _lora(model) if lora else copy.deepcopy(model)
    cfg = DPOConfig(
        model="tiny", output_dir=str(tmp_path), lora=lora, fused_logps="off", report=False
    )
    trainer = _dpo_trainer(cfg, model, tok, None if lora else copy.deepcopy(model))
    assert trainer.fused_logps is False
    policy0 = copy.deepcopy(trainer.smoothing_policy)
    results = []
    for fused in (False, True):
        trainer.fused_logps = fused
        trainer.smoothing_policy = copy.deepcopy(policy0)
        model.train()
        model.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads, trainer.smoothing_policy.state_dict()))
    (l0, g0, s0), (l1, g1, s1) = results
    torch.testing.assert_close(l0, l1, rtol=1e-10, atol=1e-12)
    assert g0.keys() == g1.keys() and g0
    for name in g0:
        torch.testing.assert_close(g0[name], g1[name], rtol=1e-8, atol=1e-10, msg=name)
    assert str(s0) == str(s1)


def test_fused_logps_option():
    assert fused_logps_enabled("auto", "cuda") and not fused_logps_enabled("auto", "cpu")
    assert fused_logps_enabled("on", "cpu") and not fused_logps_enabled("off", "cuda")
    with pytest.raises(ValueError, match="fused_logps"):
        DPOConfig(fused_logps="yes")


def test_cli_flag():
    import argparse

    from smoothalign.train.cli import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args([])).fused_logps == "auto"
    assert config_from_args(parser.parse_args(["--fused-logps", "off"])).fused_logps == "off"


@pytest.mark.parametrize("fused", [False, True])
def test_sft_weight_adds_the_chosen_nll_per_token_through_the_trainer(tiny, tmp_path, fused):
    """--sft-weight λ in the trainer: with the policy equal to its reference (loss ln 2 per
    pair) the loss is ln 2 + λ·mean over pairs of −log π(y_w|x)/|y_w|, computed here by hand
    from the model's logits of the chosen rows."""
    import math

    model, tok, batch = tiny
    model = copy.deepcopy(model)
    lam = 0.7
    cfg = DPOConfig(model="tiny", output_dir=str(tmp_path), lora=False, smoothing="none",
                    sft_weight=lam, fused_logps="on" if fused else "off", report=False)  # fmt: skip
    trainer = _dpo_trainer(cfg, model, tok, copy.deepcopy(model))
    model.eval()  # no dropout in the tiny model; eval only to keep the hand forward equal
    loss = float(trainer.compute_loss(model, dict(batch)))
    b = batch["input_ids"].shape[0] // 2  # chosen rows first
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"][:b], attention_mask=batch["attention_mask"][:b]
        ).logits
    logp = torch.log_softmax(logits[:, :-1].double(), -1)
    labels = batch["labels"][:b, 1:]
    keep = labels != -100
    tok_logp = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0] * keep
    nll_per_token = -(tok_logp.sum(1) / keep.sum(1))
    assert loss == pytest.approx(math.log(2) + lam * float(nll_per_token.mean()), rel=1e-9)


@pytest.mark.parametrize("setting, expected", [("auto", "auto"), ("off", None)])
def test_grad_filter_reaches_the_kernel(tiny, tmp_path, monkeypatch, setting, expected):
    """``--grad-filter``: the trainer's fused log-probs call the kernel with the matching
    ``filter_eps`` (``off``: None, every block computed), and the loss is unchanged by it."""
    import smoothalign.kernels as K

    seen = []
    real = K.linear_log_probs

    def spy(*args, **kwargs):
        seen.append(kwargs.get("filter_eps", "missing"))
        return real(*args, **kwargs)

    monkeypatch.setattr(K, "linear_log_probs", spy)
    model, tok, batch = tiny
    model = copy.deepcopy(model)
    cfg = DPOConfig(model="tiny", output_dir=str(tmp_path), lora=False, smoothing="none",
                    fused_logps="on", grad_filter=setting, report=False)  # fmt: skip
    trainer = _dpo_trainer(cfg, model, tok, copy.deepcopy(model))
    loss = trainer.compute_loss(model, dict(batch))
    assert seen and set(seen) == {expected}
    assert float(loss.detach()) == pytest.approx(math.log(2), rel=1e-9)  # policy = reference


def test_grad_filter_option_is_checked():
    with pytest.raises(ValueError, match="grad_filter"):
        DPOConfig(grad_filter="on")


@pytest.mark.parametrize(("fused", "lora"), [("on", False), ("on", True), ("off", False)])
def test_training_step_records_the_mass_the_filter_left_out(
    tiny, tmp_path, monkeypatch, fused, lora
):
    """With the fused head, each training step records ``head/filtered_mass``: the mean of
    the kernel's per-token ``dropped_mass`` (here a stand-in's 0.25, 0.75 and an ignored
    token's NaN). The reference forward (a frozen copy, or the policy with its adapter off,
    in train mode but without gradients) never gets the dict: the stand-in would write 9
    there. The materialised path records nothing."""
    import smoothalign.kernels as K

    real = K.linear_log_probs

    def reporting(*args, filter_stats=None, **kwargs):
        out = real(*args, filter_stats=filter_stats, **kwargs)
        if filter_stats is not None:
            grad = torch.is_grad_enabled()
            filter_stats["dropped_mass"] = torch.tensor([0.25, 0.75, math.nan] if grad else [9.0])
        return out

    monkeypatch.setattr(K, "linear_log_probs", reporting)
    model, tok, batch = tiny
    model = _lora(model) if lora else copy.deepcopy(model)
    cfg = DPOConfig(model="tiny", output_dir=str(tmp_path), lora=lora, smoothing="none",
                    fused_logps=fused, report=False)  # fmt: skip
    trainer = _dpo_trainer(cfg, model, tok, None if lora else copy.deepcopy(model))
    trainer.create_optimizer_and_scheduler(num_training_steps=4)
    model.train()
    trainer.training_step(model, dict(batch))
    recorded = trainer._stored["train"].get("head/filtered_mass")
    if fused == "on":
        assert [float(t) for t in recorded] == [0.5]
        logs = {"loss": 1.0}
        trainer._summarised("train", logs)
        assert logs["head/filtered_mass"] == pytest.approx(0.5)
    else:
        assert not recorded
    assert trainer.head_stats is None  # only for the step
