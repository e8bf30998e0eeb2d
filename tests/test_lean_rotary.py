"""The lean rotary embedding: transformers' formula on the PyTorch path, and the dispatcher
that routes a patched attention's call to it and every other call to the original.

The Triton kernel's own tests are in ``test_lean_layers_triton.py``."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama import modeling_llama

import smoothalign.models.lean as lean_mod
from smoothalign.kernels.lean_rotary import rotary
from smoothalign.models.lean import use_lean_layers
from smoothalign.models.loading import build_tiny_model


@pytest.fixture(autouse=True)
def _restore_modeling_function(monkeypatch):
    """Patching installs a dispatcher in transformers' modeling file: put the original back
    after each test (monkeypatch restores what it set)."""
    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", modeling_llama.apply_rotary_pos_emb)


def _tables(bsz, seq, hd, dtype, gen):
    """cos/sin as Llama's rotary embedding makes them: both halves the same angles."""
    inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    pos = torch.arange(seq, dtype=torch.float64)[:, None] + torch.rand(bsz, 1, 1, generator=gen)
    ang = torch.cat([pos * inv, pos * inv], -1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


@pytest.mark.parametrize(
    "q_dtype, table_dtype",
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.bfloat16, torch.float32),  # autocast with fp32 weights: q bf16, tables fp32
    ],
)
def test_pytorch_path_is_transformers_formula_bit_for_bit(q_dtype, table_dtype):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 5, 4, 12, generator=gen).to(q_dtype).transpose(1, 2)  # strided view
    k = torch.randn(2, 5, 2, 12, generator=gen).to(q_dtype).transpose(1, 2)
    cos, sin = _tables(2, 5, 12, table_dtype, gen)
    want = modeling_llama.apply_rotary_pos_emb(q, k, cos, sin)
    for backend in ("torch", "auto"):  # auto on CPU tensors: the PyTorch path
        got = rotary(q, k, cos, sin, backend=backend)
        for a, b in zip(got, want, strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)


def test_backend_and_unfit_inputs_are_refused_for_triton():
    q = torch.randn(1, 2, 3, 6)
    cos = sin = torch.randn(1, 3, 6)
    with pytest.raises(ValueError, match="backend"):
        rotary(q, q, cos, sin, backend="cuda")
    with pytest.raises(ValueError, match="even hd"):
        rotary(q[..., :5], q[..., :5], cos[..., :5], sin[..., :5], backend="triton")
    with pytest.raises(ValueError, match="without gradients"):
        rotary(q, q, cos.clone().requires_grad_(), sin, backend="triton")
    # auto takes the formula for whatever the kernel would not: same values
    odd = rotary(q[..., :5], q[..., :5], cos[..., :5], sin[..., :5])
    assert torch.equal(
        odd[0],
        modeling_llama.apply_rotary_pos_emb(q[..., :5], q[..., :5], cos[..., :5], sin[..., :5])[0],
    )


def test_dispatcher_serves_patched_attention_only(monkeypatch):
    """After patching one model, a second (unpatched) model in the same process computes what
    it did before, without the lean function; the patched model calls it once per layer and
    gives the same outputs on the PyTorch path."""
    calls = []

    def counting(q, k, cos, sin, **kw):
        calls.append(q.shape)
        return rotary(q, k, cos, sin, **kw)

    monkeypatch.setattr(lean_mod, "rotary", counting)
    torch.manual_seed(0)
    patched, plain = build_tiny_model(), build_tiny_model()
    plain.load_state_dict(patched.state_dict())
    ids = torch.randint(
        0, patched.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1)
    )
    before = plain(input_ids=ids).logits
    counts = use_lean_layers(patched)
    n_layers = patched.config.num_hidden_layers
    assert counts["rope"] == n_layers
    assert modeling_llama.apply_rotary_pos_emb.smoothalign_original is not None
    calls.clear()  # the patch-time check's own call
    after = plain(input_ids=ids).logits
    assert calls == [] and torch.equal(before, after)
    out = patched(input_ids=ids).logits
    assert len(calls) == n_layers and torch.equal(out, before)
    # patching again (or a second model) keeps one dispatcher around the original
    dispatcher = modeling_llama.apply_rotary_pos_emb
    use_lean_layers(plain)
    assert modeling_llama.apply_rotary_pos_emb is dispatcher


def test_a_changed_modeling_function_is_left_alone(monkeypatch):
    """A modeling file whose apply_rotary_pos_emb computes something else keeps it, and the
    attention modules are not patched."""
    original = modeling_llama.apply_rotary_pos_emb

    def scaled(q, k, cos, sin, unsqueeze_dim=1):
        a, b = original(q, k, cos, sin, unsqueeze_dim)
        return a * 1.5, b

    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", scaled)
    model = build_tiny_model()
    counts = use_lean_layers(model)
    assert counts["rope"] == 0 and counts["mlp"] == model.config.num_hidden_layers
    assert modeling_llama.apply_rotary_pos_emb is scaled
    assert all("forward" not in vars(layer.self_attn) for layer in model.model.layers)
