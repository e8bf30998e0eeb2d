"""`smoothalign analyze head`: the SPEC §5 LM-head entropy lower bound.

References: the SPEC formula typed in directly (float64 NumPy), the entropy of the explicit
extremal distribution (one logit ``a`` above all others), NumPy standard deviations, and the
tiny model's own hidden states and logits for the hooked head inputs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from smoothalign.analysis import (
    entropy_lower_bound,
    head_entropy_bound,
    smoothed_target_entropy,
    smoothing_for_entropy,
)
from smoothalign.analysis.head_inputs import default_texts, head_inputs, prediction_entropies
from smoothalign.models.loading import build_tiny_model, build_tiny_tokenizer


def _spec_bound(rho: float, D: int, V: int) -> float:
    """SPEC §5 as written."""
    gamma = np.exp(-rho * np.sqrt(D * V / (V - 1)))
    return float(
        np.log(1 + (V - 1) * gamma) + rho * gamma * np.sqrt(D * V * (V - 1)) / (1 + (V - 1) * gamma)
    )


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@pytest.mark.parametrize(
    "rho, D, V", [(0.01, 64, 259), (0.1, 64, 259), (0.26, 576, 49152), (1.0, 16, 10), (0.5, 8, 2)]
)
def test_bound_equals_the_spec_formula_and_the_extremal_entropy(rho, D, V):
    bound, gamma = entropy_lower_bound(rho, D, V)
    assert bound == pytest.approx(_spec_bound(rho, D, V), rel=1e-12)
    assert gamma == pytest.approx(np.exp(-rho * np.sqrt(D * V / (V - 1))), rel=1e-12)
    a = rho * np.sqrt(D * V / (V - 1))
    z = np.zeros(V)
    z[0] = a
    p = np.exp(z - z.max())
    assert bound == pytest.approx(_entropy(p / p.sum()), rel=1e-10)


def test_bound_limits_and_monotonicity():
    V, D = 1000, 64
    assert entropy_lower_bound(0.0, D, V)[0] == pytest.approx(math.log(V), rel=1e-14)
    values = [entropy_lower_bound(r, D, V)[0] for r in np.linspace(0, 10, 50)]
    assert all(b < a for a, b in zip(values, values[1:], strict=False))
    huge = entropy_lower_bound(1e6, D, V)[0]  # exp underflows: stays finite, tends to 0
    assert math.isfinite(huge) and 0 <= huge < 1e-100
    with pytest.raises(ValueError):
        entropy_lower_bound(-1.0, D, V)


def test_smoothed_target_entropy_and_its_inverse():
    V = 50
    for beta in (0.0, 0.05, 0.3, 1.0):
        q = np.full(V, beta / V)
        q[3] += 1 - beta
        assert smoothed_target_entropy(beta, V) == pytest.approx(_entropy(q), abs=1e-13)
    for beta in (1e-4, 0.1, 0.7):
        h = smoothed_target_entropy(beta, V)
        assert smoothing_for_entropy(h, V) == pytest.approx(beta, abs=1e-9)
    assert smoothing_for_entropy(0.0, V) == 0.0
    assert smoothing_for_entropy(math.log(V), V) == 1.0


def test_head_entropy_bound_uses_population_stds(rng):
    W = torch.tensor(rng.normal(0.1, 0.3, size=(40, 8)))
    H = torch.tensor(rng.normal(-0.2, 2.0, size=(25, 8)))
    r = head_entropy_bound(W, H)
    assert r.sigma_head == pytest.approx(np.std(W.numpy()), rel=1e-12)
    assert r.sigma_hidden == pytest.approx(np.std(H.numpy()), rel=1e-12)
    assert r.bound == pytest.approx(_spec_bound(r.rho, 8, 40), rel=1e-12)
    assert (r.vocab_size, r.width, r.n_hidden) == (40, 8, 25)
    assert r.beta_threshold == pytest.approx(smoothing_for_entropy(r.bound, 40))
    with pytest.raises(ValueError, match="hidden"):
        head_entropy_bound(W, H[:, :7])


def test_reading_checks_the_bound_against_observed_entropies(rng):
    W = torch.tensor(rng.normal(0, 0.02, size=(100, 16)))
    r = head_entropy_bound(W, torch.tensor(rng.normal(0, 1.0, size=(10, 16))))
    assert "hardly matter" in r.reading()
    above = torch.full((20,), r.log_vocab)
    assert "0% of 20 sampled tokens fall below it" in r.reading(above)
    below = torch.full((20,), 0.01)
    line = r.reading(below)
    assert "premise" in line and "100% of 20" in line and "\n" not in line


def test_head_inputs_are_the_heads_input_and_entropies_match_the_logits():
    model, tok = build_tiny_model().eval(), build_tiny_tokenizer()
    texts = ["hello there", "a longer text, to make padding happen in the batch"]
    hidden = head_inputs(model, tok, texts, batch_size=2)
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    mask = enc["attention_mask"].bool()
    assert hidden.shape == (int(mask.sum()), 64)
    logits = out.logits[mask].double()
    W = model.get_output_embeddings().weight.detach()
    torch.testing.assert_close(hidden @ W.double().T, logits, atol=1e-5, rtol=0)
    logp = torch.log_softmax(logits, -1)
    ref = -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(prediction_entropies(W, hidden), ref, atol=1e-5, rtol=0)


def test_a_chat_template_writes_the_fixed_template_date_not_today(monkeypatch):
    """analyze head rendered chat templates with today's date (Llama-3.x Instruct's
    strftime_now), while dpo, sft, reward and rank-calibrate render one fixed date: its
    texts, and entropies, changed from day to day and were not the training data's. The
    messages now give the hidden states of the text rendered with TEMPLATE_DATE."""

    from tests.data_helpers import dated_tiny_tokenizer
    from transformers.utils import chat_template_utils

    from smoothalign.data.tokenization import TEMPLATE_DATE

    model, tok = build_tiny_model().eval(), dated_tiny_tokenizer(monkeypatch)
    clock = chat_template_utils.datetime
    messages = json.dumps(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    )
    hidden = head_inputs(model, tok, [messages])
    as_text = TEMPLATE_DATE.strftime("%d %b %Y") + "|hiyo"  # not JSON: read as it is
    torch.testing.assert_close(hidden, head_inputs(model, tok, [as_text]), atol=0, rtol=0)
    assert chat_template_utils.datetime is clock  # the clock given back after rendering


def test_default_texts_come_from_the_shipped_set():
    texts = default_texts(3)
    assert len(texts) == 3
    assert all(isinstance(json.loads(t), list) for t in texts)


def test_cli_end_to_end_on_tiny(tmp_path, capsys):
    from smoothalign.cli import main

    out = tmp_path / "head"
    rc = main(["analyze", "head", "--model", "tiny", "--texts", "3", "--max-tokens", "32",
               "--output-dir", str(out)])  # fmt: skip
    assert rc == 0
    report = json.loads((out / "head.json").read_text())
    b = report["bound"]
    assert b["vocab_size"] == 259 and b["width"] == 64
    assert b["bound"] == pytest.approx(_spec_bound(b["rho"], 64, 259), rel=1e-12)
    assert report["observed_entropy"]["n_tokens"] == b["n_hidden"] > 0
    assert report["reading"] in capsys.readouterr().out
    assert (out / "head_entropy.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [("--max-tokens", "0", "--max-tokens: must be >= 2, got 0"), ("--batch-size", "0",
     "--batch-size: must be >= 1, got 0"), ("--texts", "5000", "texts: 5000 asked for"),
     ("--device", "bogus", "device: 'bogus'"), ("--texts", "0", "--texts: must be >= 1, got 0")],
)  # fmt: skip
def test_cli_bad_options_fail_before_the_model_loads(capsys, option, value, words):
    """The model does not even exist: the option is refused first, by name (the texts: the
    shipped set has 800 conversations, so 5000 is not silently capped)."""
    from smoothalign.cli import main

    assert main(["analyze", "head", "--model", "no-such-model", option, value]) == 2
    assert words in capsys.readouterr().err


def _tiny_granite():
    """A one-layer Granite, whose logits are ``lm_head(h) / logits_scaling`` (0.05)."""
    import transformers

    config = transformers.GraniteConfig(
        vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=4, logits_scaling=0.05, bos_token_id=256,
        eos_token_id=257, pad_token_id=258, initializer_range=0.2,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.GraniteForCausalLM(config).eval()


def test_cli_reads_a_logit_scale_and_refuses_a_softcap(tmp_path, capsys):
    """Granite divides its logits by logits_scaling: the observed entropies must be the
    model's own; Gemma-2's softcap makes the head non-linear, outside the bound."""
    from smoothalign.cli import main

    tok = build_tiny_tokenizer()
    model = _tiny_granite()
    model.save_pretrained(tmp_path / "granite")
    tok.save_pretrained(tmp_path / "granite")
    out = tmp_path / "head"
    argv = ["analyze", "head", "--model", str(tmp_path / "granite"), "--texts", "2",
            "--max-tokens", "32", "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    observed = json.loads((out / "head.json").read_text())["observed_entropy"]
    texts = default_texts(2)
    hidden = head_inputs(model, tok, texts, max_tokens=32)
    with torch.no_grad():  # the model's own softmax: its logits are lm_head(h) / 0.05
        logits = model.lm_head(hidden.float()).double() / 0.05
    logp = torch.log_softmax(logits, -1)
    assert observed["mean"] == pytest.approx(float(-(logp.exp() * logp).sum(-1).mean()), rel=1e-4)
    model.config.final_logit_softcapping = 30.0
    model.save_pretrained(tmp_path / "granite")
    assert main(argv) == 2
    assert "caps its logits (softcap 30)" in capsys.readouterr().err


def test_cli_scales_a_heads_bias_with_the_logit_scale(tmp_path, monkeypatch):
    """A head with a bias under a logit scale: the model's logits are ``(C·h + b) / 0.05``,
    so the observed entropies must scale the bias as well as the hidden states."""
    import smoothalign.models as models
    from smoothalign.cli import main

    tok = build_tiny_tokenizer()
    model = _tiny_granite()
    biased = torch.nn.Linear(64, 259, bias=True)
    with torch.no_grad():
        biased.weight.copy_(model.lm_head.weight)
        biased.bias.copy_(0.3 * torch.randn(259))  # ÷ 0.05: logits shifted by up to ~20
    model.lm_head = biased
    monkeypatch.setattr(models, "load_model_and_tokenizer", lambda name, **kw: (model, tok))
    out = tmp_path / "head"
    argv = ["analyze", "head", "--model", "in-memory", "--texts", "2", "--max-tokens", "32",
            "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "head.json").read_text())
    assert report["head_has_bias"] is True
    texts = default_texts(2)
    hidden = head_inputs(model, tok, texts, max_tokens=32)
    with torch.no_grad():  # the model's own softmax
        logits = model.lm_head(hidden.float()).double() / 0.05
    logp = torch.log_softmax(logits, -1)
    expected = float(-(logp.exp() * logp).sum(-1).mean())
    assert report["observed_entropy"]["mean"] == pytest.approx(expected, rel=1e-4)


def test_cli_refuses_a_run_or_model_folder_as_the_output(tmp_path, capsys, monkeypatch):
    """head.json and head_entropy.png written into a run's folder (or its final/ model)
    mixed into it: refused before the model loads, naming --output-dir."""
    from smoothalign.cli import main

    monkeypatch.delenv("SMOOTHALIGN_DEBUG", raising=False)
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"output_dir": str(run), "working_dir": "."}))
    (run / "final" / "config.json").write_text(json.dumps({"architectures": ["X"]}))
    for out, what in ((run, "a smoothalign run's folder"), (run / "final", "a model folder")):
        rc = main(["analyze", "head", "--model", "tiny", "--texts", "2", "--output-dir", str(out)])
        assert rc == 2
        assert f"--output-dir: {out} is {what}" in capsys.readouterr().err
    assert sorted(p.name for p in run.rglob("*")) == ["config.json", "config.json", "final"]
