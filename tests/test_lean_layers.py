"""Lean RMSNorm / SwiGLU: the eager layers' outputs and gradients, fewer saved activations."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from smoothalign.kernels.lean_layers import rms_norm, swiglu
from smoothalign.models.lean import use_lean_layers
from smoothalign.models.loading import build_tiny_model


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves while ``fn()`` runs (leaves excluded)."""
    seen: dict[int, int] = {}

    def pack(t):
        if not (t.is_leaf and t.requires_grad):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rms_norm_equals_llamas_with_autograd_gradients(dtype):
    """Against ``LlamaRMSNorm`` differentiated by autograd (which, like it, computes in
    float32 even for float64 inputs, so finite differences cannot be exact here)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 5, 16, generator=g, dtype=torch.float64).to(dtype)
    w0 = (1 + 0.1 * torch.randn(16, generator=g, dtype=torch.float64)).to(dtype)
    up = torch.randn(3, 5, 16, generator=g, dtype=torch.float64).to(dtype)
    ref = LlamaRMSNorm(16, eps=1e-6).to(dtype)
    with torch.no_grad():
        ref.weight.copy_(w0)
    x_ref = x0.clone().requires_grad_()
    y_ref = ref(x_ref)
    y_ref.backward(up)
    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    y = rms_norm(x, w, 1e-6)
    y.backward(up)
    assert torch.equal(y, y_ref)
    tol = {torch.bfloat16: 2e-2}.get(dtype, 1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(w.grad, ref.weight.grad, rtol=tol, atol=tol)


def test_rms_norm_backward_formula_by_finite_differences():
    """The backward's formula on its own: with the compute dtype float64 (patched in),
    finite differences are exact."""
    import smoothalign.kernels.lean_layers as lean_layers

    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = (1 + 0.1 * torch.randn(8, generator=g, dtype=torch.float64)).requires_grad_()
    old = lean_layers.COMPUTE_DTYPE
    try:
        lean_layers.COMPUTE_DTYPE = torch.float64
        assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-6), (x, w))
    finally:
        lean_layers.COMPUTE_DTYPE = old


def test_swiglu_gradients_are_exact_in_float64():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    # tight tolerances: the backward stays in float64 (at gradcheck's defaults a float32
    # backward passed as well)
    assert torch.autograd.gradcheck(swiglu, (a, b), atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(swiglu(a, b), F.silu(a) * b, rtol=0, atol=0)


def test_rms_norm_weight_gradient_stays_float64_like_eager():
    """Eager LlamaRMSNorm normalises in float32 but multiplies by the weight in the input's
    dtype: for float64 inputs its weight gradient is float64 arithmetic, and so is ours."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 256, generator=g, dtype=torch.float64)
    w = (1 + 0.1 * torch.randn(256, generator=g, dtype=torch.float64)).requires_grad_()
    up = torch.randn(64, 256, generator=g, dtype=torch.float64)
    (rms_norm(x, w, 1e-6) * up).sum().backward()
    mine = w.grad.clone()
    w.grad = None
    h = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).double()
    (w * h * up).sum().backward()  # eager: float32 normalisation, float64 product
    torch.testing.assert_close(mine, w.grad, rtol=1e-12, atol=1e-12)


def _tiny_pair(dtype, device="cpu"):
    eager = build_tiny_model().to(device=device, dtype=dtype)
    lean = copy.deepcopy(eager)
    return eager, lean, use_lean_layers(lean)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(
    "device, kernels",
    [
        ("cpu", False),
        pytest.param("cuda", False, marks=CUDA),
        pytest.param("cuda", True, marks=CUDA),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_model_has_the_same_outputs_and_near_gradients(dtype, device, kernels, monkeypatch):
    """Outputs identical bit for bit on the PyTorch path (with the Triton kernels, CUDA's
    default, within rounding); gradients within what bf16 rounding allows: the lean model's
    distance to a float64 reference is no larger than the eager model's (+ slack)."""
    monkeypatch.setenv("SMOOTHALIGN_LEAN_TRITON", "1" if kernels else "0")
    eager, lean, counts = _tiny_pair(dtype, device)
    n_layers = eager.config.num_hidden_layers
    assert counts == {"norm": 2 * n_layers + 1, "mlp": n_layers, "rope": n_layers}
    ref = copy.deepcopy(eager).double()
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, eager.config.vocab_size, (2, 9), generator=gen).to(device)

    def grads(model):
        model.zero_grad()
        logits = model(input_ids=ids).logits
        logits.float().square().mean().backward()
        return logits, torch.cat([p.grad.double().reshape(-1) for p in model.parameters()])

    out_e, g_e = grads(eager)
    out_l, g_l = grads(lean)
    out_ref, g_ref = grads(ref)
    if kernels:  # no further from the float64 model than eager is, within rounding
        d_e = float((out_e.double() - out_ref).abs().max())
        d_l = float((out_l.double() - out_ref).abs().max())
        assert d_l <= 1.5 * d_e + 1e-5, (d_l, d_e)
    else:
        assert torch.equal(out_e, out_l)
    err_e = float((g_e - g_ref).norm() / g_ref.norm())
    err_l = float((g_l - g_ref).norm() / g_ref.norm())
    if dtype == torch.float32:
        assert err_l < 1e-5 and err_e < 1e-5
    else:
        assert err_l <= 1.5 * err_e + 1e-3, (err_l, err_e)


def test_lean_layers_keep_fewer_activations():
    """The norms keep x instead of an fp32 copy of it and the normalised h (6 → 2 bytes per
    unit in bf16), the MLP drops silu(gate) (4 → 3 intermediate-sized tensors): counted."""
    eager, lean, _ = _tiny_pair(torch.bfloat16)
    ids = torch.randint(
        0, eager.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3)
    )
    before, out_e = _saved_bytes(lambda: eager.model(input_ids=ids).last_hidden_state)
    after, out_l = _saved_bytes(lambda: lean.model(input_ids=ids).last_hidden_state)
    assert torch.equal(out_e, out_l)
    cfg = eager.config
    tokens, layers = ids.numel(), cfg.num_hidden_layers
    # a norm kept an fp32 copy of x (4 B) and the bf16 h (2 B) per unit; now x itself (2 B)
    per_norm = (4 + 2 - 2) * cfg.hidden_size * tokens
    expected = per_norm * (2 * layers + 1) + 2 * cfg.intermediate_size * tokens * layers
    assert before - after == pytest.approx(expected, rel=0.02), (before, after, expected)


def test_an_unknown_or_changed_layer_is_left_alone(monkeypatch):
    """A class whose formula differs from the one the lean forward computes is not patched:
    the bit-for-bit check at patch time catches it."""
    import smoothalign.models.lean as lean_mod

    model = build_tiny_model()
    norm = model.model.norm
    monkeypatch.setattr(
        lean_mod,
        "rms_norm",
        lambda x, w, eps, backend="auto": rms_norm(x, w, eps, backend=backend) * 1.0001,
    )
    counts = use_lean_layers(model)
    assert counts["norm"] == 0 and counts["mlp"] == model.config.num_hidden_layers
    assert "forward" not in vars(norm)


def test_lean_layers_setting(monkeypatch):
    """``auto`` means on exactly when training runs on CUDA; booleans from older configs map
    to on/off; anything else is refused by the configs."""
    from smoothalign.sft.config import SFTConfig
    from smoothalign.train.common import lean_layers_enabled
    from smoothalign.train.config import DPOConfig

    for cuda in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert lean_layers_enabled("auto") is cuda
        assert lean_layers_enabled("on") and not lean_layers_enabled("off")
    assert DPOConfig().lean_layers == SFTConfig().lean_layers == "auto"
    # auto, where it is on (CUDA), also recomputes the norm outputs and SwiGLU products
    from smoothalign.train.common import apply_lean_layers

    layers = build_tiny_model().config.num_hidden_layers
    for setting, cuda, recomputed in (("auto", True, True), ("on", True, False),
                                      ("recompute", False, True)):  # fmt: skip
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        note = apply_lean_layers(build_tiny_model(), setting)
        assert (f"recomputed in {layers} decoder layers" in note) is recomputed, (setting, note)
        assert "checkpointed" not in note
    # with --gradient-checkpointing the checkpointed layers skip it: the note says so
    note = apply_lean_layers(build_tiny_model(), "recompute", checkpointing=True)
    assert "not while checkpointed" in note
    assert DPOConfig(lean_layers=True).lean_layers == "on"
    assert SFTConfig(lean_layers=False).lean_layers == "off"
    for cls in (DPOConfig, SFTConfig):
        with pytest.raises(ValueError, match="lean_layers"):
            cls(lean_layers="yes")


def _grads(model, ids):
    model.zero_grad()
    out = model(input_ids=ids).logits
    out.float().square().mean().backward()
    return out, [p.grad.clone() for p in model.parameters()]


def test_recompute_keeps_no_norm_output_nor_swiglu_product_and_changes_nothing():
    """``recompute=True``: outputs and gradients identical bit for bit to the lean layers'
    (and so outputs to eager's); the saved bytes drop by exactly the two norm outputs and
    the SwiGLU product of every layer; each is recomputed once, however many layers read it
    (q, k, v share the input norm's output, gate and up the post-attention norm's)."""
    import smoothalign.kernels.lean_layers as lean_layers

    eager, lean, _ = _tiny_pair(torch.bfloat16)
    rec = copy.deepcopy(eager)
    counts = use_lean_layers(rec, recompute=True)
    cfg = eager.config
    assert counts["layers"] == cfg.num_hidden_layers
    ids = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(5))
    kept_lean, _ = _saved_bytes(lambda: lean(input_ids=ids).logits)
    kept_rec, _ = _saved_bytes(lambda: rec(input_ids=ids).logits)
    tokens = ids.numel()
    per_layer = (2 * cfg.hidden_size + cfg.intermediate_size) * 2 * tokens  # bf16
    assert kept_lean - kept_rec == per_layer * cfg.num_hidden_layers
    out_l, g_l = _grads(lean, ids)
    calls = {"norm": 0, "swiglu": 0}
    real_norm, real_swiglu = lean_layers._rms_norm_value, lean_layers._swiglu_value

    def norm(*a):
        calls["norm"] += 1
        return real_norm(*a)

    def glu(*a):
        calls["swiglu"] += 1
        return real_swiglu(*a)

    lean_layers._rms_norm_value, lean_layers._swiglu_value = norm, glu
    try:
        out_r, g_r = _grads(rec, ids)
    finally:
        lean_layers._rms_norm_value, lean_layers._swiglu_value = real_norm, real_swiglu
    assert torch.equal(out_l, out_r)
    assert all(torch.equal(a, b) for a, b in zip(g_l, g_r, strict=True))
    assert calls == {"norm": 2 * cfg.num_hidden_layers, "swiglu": cfg.num_hidden_layers}


def test_recompute_survives_a_deep_copy_and_checkpointing():
    """A deep copy runs its own weights (the scoped forward is bound to the copy), and
    gradient checkpointing on top changes no gradient."""
    eager, lean, _ = _tiny_pair(torch.float32)
    rec = copy.deepcopy(eager)
    use_lean_layers(rec, recompute=True)
    twin = copy.deepcopy(rec)
    with torch.no_grad():
        for p in twin.model.layers[0].mlp.parameters():
            p.mul_(0.5)
    ids = torch.randint(
        0, eager.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(6)
    )
    out_r, g_r = _grads(rec, ids)
    out_t, _ = _grads(twin, ids)
    assert not torch.equal(out_r, out_t)
    rec.gradient_checkpointing_enable()
    out_c, g_c = _grads(rec, ids)
    assert torch.equal(out_r, out_c)
    for a, b in zip(g_r, g_c, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_recompute_under_autocast_saves_one_cast_norm_output():
    """fp32 weights under bf16 autocast (what ``--precision bf16`` runs): each linear layer
    would keep its own bf16 copy of the norm output (q, k, v; gate, up); with recompute the
    norm hands them one cast output, which is recomputed, so all five copies and the SwiGLU
    product go. Outputs equal the lean layers' bit for bit; gradients (now summed over the
    readers in bf16 before the cast back) are as close to float64 as the lean layers'."""
    eager, lean, _ = _tiny_pair(torch.float32)
    rec = copy.deepcopy(eager)
    use_lean_layers(rec, recompute=True)
    ref = copy.deepcopy(eager).double()
    cfg = eager.config
    ids = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(7))

    def run(model, autocast=True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return model(input_ids=ids).logits

    kept_lean, _ = _saved_bytes(lambda: run(lean))
    kept_rec, _ = _saved_bytes(lambda: run(rec))
    per_layer = (5 * cfg.hidden_size + cfg.intermediate_size) * 2 * ids.numel()
    assert kept_lean - kept_rec == per_layer * cfg.num_hidden_layers

    def grads(model, autocast=True):
        model.zero_grad()
        out = run(model, autocast)
        out.float().square().mean().backward()
        return out, torch.cat([p.grad.double().reshape(-1) for p in model.parameters()])

    out_l, g_l = grads(lean)
    out_r, g_r = grads(rec)
    _, g_ref = grads(ref, autocast=False)
    assert torch.equal(out_l, out_r)
    err_l = float((g_l - g_ref).norm() / g_ref.norm())
    err_r = float((g_r - g_ref).norm() / g_ref.norm())
    assert err_r <= 1.2 * err_l + 1e-4, (err_r, err_l)


def test_recompute_refuses_an_output_changed_in_place():
    """A norm output changed in place before a reader saves it is kept, not recomputed
    (the recipe would rebuild the value before the change)."""
    from smoothalign.kernels.lean_layers import recompute_outputs

    g = torch.Generator().manual_seed(8)
    x0, w0, a0 = (
        torch.randn(4, 8, generator=g),
        torch.rand(8, generator=g),
        torch.randn(8, 3, generator=g),
    )
    grads = []
    for scoped in (False, True):
        x, w, a = (t.clone().requires_grad_() for t in (x0, w0, a0))
        with recompute_outputs() if scoped else torch.enable_grad():
            h = rms_norm(x, w, 1e-6)
            h.mul_(3.0)
            loss = (h @ a).square().sum()
        loss.backward()
        grads.append((x.grad, w.grad, a.grad))
    for u, v in zip(*grads, strict=True):
        assert torch.equal(u, v)


def test_checkpointed_layers_open_no_recompute_scope(monkeypatch):
    """Under gradient checkpointing the layers keep nothing anyway, and recipes would hold
    their inputs outside the checkpoint's hooks: no output is registered for recompute."""
    import smoothalign.kernels.lean_layers as lean_layers

    made = []
    real = lean_layers._Source

    def counting(*args):
        made.append(1)
        return real(*args)

    monkeypatch.setattr(lean_layers, "_Source", counting)
    model = build_tiny_model()
    use_lean_layers(model, recompute=True)
    ids = torch.randint(
        0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(9)
    )
    model.train()
    model(input_ids=ids).logits.sum().backward()
    assert made, "without checkpointing the layers register their outputs"
    made.clear()
    model.gradient_checkpointing_enable()
    model.train()
    model(input_ids=ids).logits.sum().backward()
    assert not made


def test_recompute_under_autocast_with_lora_adapters():
    """LoRA adapters under bf16 autocast (``dpo`` and ``sft`` on CUDA by default): PEFT's
    cast of each adapter's input to fp32 made a fresh copy that no recipe matched, so
    recompute saved nothing over the lean layers. With the cast off inside the recompute
    scope, the norm outputs and SwiGLU products read by the adapters go as well; logits
    equal eager's bit for bit and adapter gradients are as close to float64 as eager's."""
    from peft import LoraConfig, get_peft_model

    def lora(model):
        cfg = LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
        return get_peft_model(model, cfg)

    base = build_tiny_model()
    eager = lora(copy.deepcopy(base))
    with torch.no_grad():
        for name, p in eager.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    models = {"eager": eager}
    for name, recompute in (("lean", False), ("rec", True)):
        m = copy.deepcopy(base)
        use_lean_layers(m, recompute=recompute)
        m = lora(m)
        m.load_state_dict(eager.state_dict())
        models[name] = m
    models["f64"] = copy.deepcopy(eager).double()
    cfg = base.config
    ids = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(10))

    def run(model, autocast=True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return model(input_ids=ids).logits

    kept_lean, _ = _saved_bytes(lambda: run(models["lean"]))
    kept_rec, _ = _saved_bytes(lambda: run(models["rec"]))
    per_layer = (5 * cfg.hidden_size + cfg.intermediate_size) * 2 * ids.numel()
    assert kept_lean - kept_rec >= per_layer * cfg.num_hidden_layers, (kept_lean, kept_rec)

    def grads(name):
        model = models[name]
        model.zero_grad()
        out = run(model, autocast=name != "f64")
        out.float().square().mean().backward()
        g = [p.grad.double().reshape(-1) for p in model.parameters() if p.requires_grad]
        return out, torch.cat(g)

    out_e, g_e = grads("eager")
    out_r, g_r = grads("rec")
    _, g_ref = grads("f64")
    assert torch.equal(out_e, out_r)
    err_e = float((g_e - g_ref).norm() / g_ref.norm())
    err_r = float((g_r - g_ref).norm() / g_ref.norm())
    assert err_r <= 1.2 * err_e + 1e-4, (err_r, err_e)


@pytest.mark.parametrize("command", ["dpo", "sft"])
def test_lean_layers_flag_forms(command):
    """``--lean-layers`` alone means on (as when it was an on/off flag), ``--no-lean-layers``
    off, a value is taken as given, and the default is auto."""
    from smoothalign.cli import build_parser

    parser = build_parser()

    def parsed(*flags):
        return parser.parse_args([command, *flags]).lean_layers

    assert parsed() == "auto"
    assert parsed("--lean-layers") == "on"
    assert parsed("--lean-layers", "--max-steps", "3") == "on"
    assert parsed("--no-lean-layers") == "off"
    assert parsed("--lean-layers", "recompute") == "recompute"


def test_checkpointed_recompute_layers_train_as_the_lean_layers_under_autocast():
    """With checkpointing the recompute scope stays closed, and so does the norms' cast:
    gradients are the lean layers' bit for bit, under autocast too."""
    eager = build_tiny_model()
    lean, rec = copy.deepcopy(eager), copy.deepcopy(eager)
    use_lean_layers(lean)
    use_lean_layers(rec, recompute=True)
    ids = torch.randint(
        0, eager.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(11)
    )
    grads = []
    for model in (lean, rec):
        model.gradient_checkpointing_enable()
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids).logits.float().square().mean()
        loss.backward()
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


@pytest.mark.parametrize("layer", ["rms_norm", "swiglu"])
def test_second_derivatives_are_refused_through_autograd_grad_too(layer):
    """``torch.autograd.grad(penalty, x)`` of a gradient taken with ``create_graph`` raised
    PyTorch's "not used in the graph" (or returned ``None`` with ``allow_unused=True``,
    the penalty silently dropped): now smoothalign's "first derivatives only"."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, generator=g, dtype=torch.float64, requires_grad=True)
    if layer == "rms_norm":
        out = rms_norm(x, w, 1e-6, backend="torch")
    else:
        out = swiglu(x, w.expand(4, 8), backend="torch")
    (gx,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    for kw in ({}, {"allow_unused": True}):
        with pytest.raises(RuntimeError, match="first derivatives only"):
            torch.autograd.grad(gx.pow(2).sum(), x, retain_graph=True, **kw)
