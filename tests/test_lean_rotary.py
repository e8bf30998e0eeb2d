"""The lean rotary embedding: transformers' formula on the PyTorch path, and the dispatcher
that routes a patched attention's call to it and every other call to the original.

The Triton kernel's own tests are in ``test_lean_layers_triton.py``."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.models.llama import modeling_llama

import smoothalign.models.lean as lean_mod
from smoothalign.kernels.lean_rotary import rotary
from smoothalign.models.lean import use_lean_layers
from smoothalign.models.loading import build_tiny_model

_installed = modeling_llama.apply_rotary_pos_emb  # another test file may have patched it
ORIGINAL = getattr(_installed, "smoothalign_original", _installed)


@pytest.fixture(autouse=True)
def _original_modeling_function(monkeypatch):
    """Each test starts from transformers' own function, as a fresh process does (earlier
    test files may have installed the dispatcher), and monkeypatch puts back what was there."""
    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", ORIGINAL)


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
    assert modeling_llama.apply_rotary_pos_emb.smoothalign_original is ORIGINAL
    calls.clear()  # the patch-time check's own call
    after = plain(input_ids=ids).logits
    assert calls == [] and torch.equal(before, after)
    out = patched(input_ids=ids).logits
    assert len(calls) == n_layers and torch.equal(out, before)
    # patching again (or a second model, or a copy) keeps one dispatcher around the
    # original, and counts the attention modules that are patched, also when they were
    dispatcher = modeling_llama.apply_rotary_pos_emb
    assert use_lean_layers(plain)["rope"] == n_layers
    assert use_lean_layers(patched)["rope"] == n_layers
    assert use_lean_layers(copy.deepcopy(patched))["rope"] == n_layers
    assert modeling_llama.apply_rotary_pos_emb is dispatcher


def test_an_attention_with_a_forward_of_its_own_is_left_alone():
    """An instance forward that is not ours (another library's patch, accelerate's hooks)
    is neither replaced nor counted."""
    model = build_tiny_model()
    attn = model.model.layers[0].self_attn
    theirs = attn.forward
    attn.forward = lambda *a, **k: theirs(*a, **k)
    counts = use_lean_layers(model)
    assert counts["rope"] == model.config.num_hidden_layers - 1
    assert "forward" in vars(attn) and not lean_mod._rope_patched(attn)


def test_torch_compile_traces_patched_and_unpatched_models_whole():
    """The dispatcher reads a context variable, which torch.compile cannot trace: while it
    traces, the dispatcher and the patched forward leave it alone, so an unpatched model of
    the same modeling file, and the patched one, still compile as one graph each."""
    torch.manual_seed(0)
    patched, plain = build_tiny_model(), build_tiny_model()
    use_lean_layers(patched)
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(0, plain.config.vocab_size, (1, 6), generator=gen)
    for model in (plain, patched):
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        with torch.no_grad():
            torch.testing.assert_close(compiled(input_ids=ids).logits, model(input_ids=ids).logits)


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
