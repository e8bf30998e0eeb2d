"""The SFT objective (SPEC §5) against float64 references written from the formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from smoothalign.sft.objective import sft_loss, token_statistics

B, L, D, V = 3, 7, 5, 11
# prompt tokens (and padding) are -100; row 2 is padded after 5 tokens
LABELS = torch.tensor(
    [
        [-100, -100, -100, 4, 9, 2, 0],
        [-100, -100, 7, 7, 1, 10, 3],
        [-100, -100, -100, -100, 5, -100, -100],
    ]
)


def _batch(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, L, D, generator=g, dtype=torch.float64).to(dtype)
    weight = (2 * torch.randn(V, D, generator=g, dtype=torch.float64)).to(dtype)
    bias = torch.randn(V, generator=g, dtype=torch.float64).to(dtype)
    return hidden, weight, bias


def _reference(hidden, weight, labels, beta, bias=None, softcap=None) -> np.ndarray:
    """Per-token SPEC §5 loss in float64 NumPy, over the completion tokens only, in order:
    L = (1 − β)·(lse(z) − z_t) + β·(lse(z) − mean_v z_v), z from position s predicting s + 1."""
    h, w = hidden.double().numpy(), weight.double().numpy()
    y = labels.numpy()
    out = []
    for b in range(y.shape[0]):
        for s in range(y.shape[1] - 1):
            t = y[b, s + 1]
            if t == -100:
                continue
            z = w @ h[b, s]
            if bias is not None:
                z = z + bias.double().numpy()
            if softcap is not None:
                z = softcap * np.tanh(z / softcap)
            lse = np.log(np.sum(np.exp(z - z.max()))) + z.max()
            out.append((1 - beta) * (lse - z[t]) + beta * (lse - z.mean()))
    return np.array(out)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5])
def test_loss_equals_label_smoothed_cross_entropy_on_completion_tokens(beta):
    hidden, weight, _ = _batch()
    ref = _reference(hidden, weight, LABELS, beta)
    assert ref.size == int((LABELS[:, 1:] != -100).sum()) == 10
    mean = sft_loss(hidden, weight, LABELS, label_smoothing=beta)
    assert mean.item() == pytest.approx(ref.mean(), rel=1e-5)
    total = sft_loss(hidden, weight, LABELS, label_smoothing=beta, reduction="sum")
    assert total.item() == pytest.approx(ref.sum(), rel=1e-5)
    # and exactly torch's label-smoothed cross-entropy on the hand-picked completion positions
    rows, cols = (LABELS[:, 1:] != -100).nonzero(as_tuple=True)
    logits = hidden[rows, cols] @ weight.T
    expected = F.cross_entropy(logits, LABELS[rows, cols + 1], label_smoothing=beta)
    torch.testing.assert_close(mean, expected, rtol=1e-6, atol=1e-6)


def test_per_token_losses_bias_and_softcap():
    hidden, weight, bias = _batch()
    ref = _reference(hidden, weight, LABELS, 0.2, bias=bias, softcap=3.0)
    per = sft_loss(
        hidden, weight, LABELS, label_smoothing=0.2, reduction="none", bias=bias, softcap=3.0
    )
    assert per.shape == (B, L - 1)
    mask = LABELS[:, 1:] != -100
    np.testing.assert_allclose(per[mask].double().numpy(), ref, rtol=1e-5)
    assert (per[~mask] == 0).all()


def test_gradients_match_the_reference_in_float64():
    hidden, weight, _ = _batch(torch.float64)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda h, w: sft_loss(h, w, LABELS, label_smoothing=0.1), (hidden, weight)
    )
    # SPEC §5: ∂L/∂z = softmax(z) − (1 − β)·onehot(t) − β/V, per token, averaged over tokens
    loss = sft_loss(hidden, weight, LABELS, label_smoothing=0.1)
    (grad_h,) = torch.autograd.grad(loss, hidden)
    rows, cols = (LABELS[:, 1:] != -100).nonzero(as_tuple=True)
    z = hidden[rows, cols].detach() @ weight.detach().T
    onehot = F.one_hot(LABELS[rows, cols + 1], V).double()
    dz = (torch.softmax(z, -1) - 0.9 * onehot - 0.1 / V) / rows.numel()
    torch.testing.assert_close(grad_h[rows, cols], dz @ weight.detach())
    assert (grad_h[:, -1] == 0).all()  # the last position predicts nothing


def test_token_statistics_match_numpy_and_recompose_the_loss():
    hidden, weight, bias = _batch()
    stats = token_statistics(hidden, weight, LABELS, bias=bias, chunk_size=4)
    mask = stats["mask"]
    assert torch.equal(mask, LABELS[:, 1:] != -100)
    rows, cols = mask.nonzero(as_tuple=True)
    z = (hidden[rows, cols].double() @ weight.double().T + bias.double()).numpy()
    t = LABELS[rows, cols + 1].numpy()
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(stats["nll"][mask], -np.log(p[np.arange(len(t)), t]), rtol=1e-5)
    np.testing.assert_allclose(stats["entropy"][mask], -(p * np.log(p)).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(stats["confidence"][mask], p.max(-1), rtol=1e-5)
    np.testing.assert_array_equal(stats["correct"][mask], (z.argmax(-1) == t).astype(float))
    beta = 0.3
    per = sft_loss(hidden, weight, LABELS, label_smoothing=beta, reduction="none", bias=bias)
    recomposed = (1 - beta) * stats["nll"] + beta * stats["uniform_ce"]
    torch.testing.assert_close(recomposed[mask], per[mask], rtol=1e-5, atol=1e-6)
    # chunking changes nothing
    whole = token_statistics(hidden, weight, LABELS, bias=bias, chunk_size=10_000)
    for k in stats:
        torch.testing.assert_close(stats[k], whole[k])


def test_token_statistics_of_a_float64_model_and_a_masked_vocabulary_entry():
    """float32 statistics from a float64 model (not an index_put dtype error), and a -inf
    logit (a masked entry) adds 0·log 0 = 0 to the entropy, not NaN."""
    hidden, weight, bias = _batch(torch.float64)
    bias[5] = float("-inf")
    labels = LABELS.masked_fill(LABELS == 5, 4)
    stats = token_statistics(hidden, weight, labels, bias=bias)
    assert all(v.dtype == torch.float32 for k, v in stats.items() if k != "mask")
    mask = stats["mask"]
    rows, cols = mask.nonzero(as_tuple=True)
    z = (hidden[rows, cols] @ weight.T + bias).numpy()
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ent = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)
    np.testing.assert_allclose(stats["entropy"][mask], ent, rtol=1e-5)


def test_bad_arguments_are_refused():
    hidden, weight, _ = _batch()
    with pytest.raises(ValueError, match="label_smoothing"):
        sft_loss(hidden, weight, LABELS, label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction"):
        sft_loss(hidden, weight, LABELS, label_smoothing=0.1, reduction="max")
    with pytest.raises(ValueError, match=r"labels \[B, L\]"):
        sft_loss(hidden, weight, LABELS[:, :-1], label_smoothing=0.1)


@pytest.mark.parametrize("fused", [False, True])
def test_labels_of_the_wrong_kind_are_named(fused):
    """Float or bool ``labels`` raised PyTorch's "expected target dtype to be Long" (or the
    fused kernel's error about ``targets``, a name the caller never passed); int32 ids
    failed unfused only. Now a named refusal, and int32 works on both paths."""
    hidden, weight, _ = _batch()
    for bad in (LABELS.float(), LABELS.clamp(min=0).bool(), LABELS.double()):
        with pytest.raises(TypeError, match=r"^labels: int64 or int32 token ids expected"):
            sft_loss(hidden, weight, bad, label_smoothing=0.1, fused=fused)
    with pytest.raises(TypeError, match=r"^labels: expected a torch.Tensor, got list"):
        sft_loss(hidden, weight, LABELS.tolist(), label_smoothing=0.1, fused=fused)
    with pytest.raises(ValueError, match=r"^label_smoothing: expected a number, got str"):
        sft_loss(hidden, weight, LABELS, label_smoothing="0.1", fused=fused)
    expected = sft_loss(hidden, weight, LABELS, label_smoothing=0.1, fused=fused)
    got = sft_loss(hidden, weight, LABELS.int(), label_smoothing=0.1, fused=fused)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_path_equals_the_reference(reduction):
    hidden, weight, _ = _batch()
    kw = dict(label_smoothing=0.1, reduction=reduction)
    torch.testing.assert_close(
        sft_loss(hidden, weight, LABELS, fused=True, **kw),
        sft_loss(hidden, weight, LABELS, **kw),
        rtol=1e-4,
        atol=1e-5,
    )


def test_token_metrics_are_the_per_token_means_and_the_smoothed_loss():
    """The evaluation summary from per-token values, against a hand computation: the loss is
    (1 − β)·mean(nll) + β·mean(uniform_ce) exactly (SPEC §5), the top-1 ECE is over 15
    equal-width bins (confidences kept off the bin edges)."""
    from smoothalign.sft.trainer import token_metrics

    rng = np.random.default_rng(0)
    n = 200
    conf = (np.floor(rng.uniform(0, 15, n)) + rng.uniform(0.1, 0.9, n)) / 15
    tokens = {
        "nll": rng.uniform(0.1, 4.0, n),
        "uniform_ce": rng.uniform(5.0, 9.0, n),
        "correct": (rng.uniform(size=n) < conf).astype(float),
        "entropy": rng.uniform(0.0, 3.0, n),
        "confidence": conf,
    }
    beta = 0.3
    got = token_metrics(tokens, beta)
    nll = tokens["nll"].mean()
    assert got["loss"] == pytest.approx((1 - beta) * nll + beta * tokens["uniform_ce"].mean())
    assert got["nll"] == pytest.approx(nll) and got["perplexity"] == pytest.approx(np.exp(nll))
    assert got["mean_token_accuracy"] == pytest.approx(tokens["correct"].mean())
    assert got["entropy"] == pytest.approx(tokens["entropy"].mean())
    bins = np.floor(conf * 15).astype(int)
    ece = sum(
        abs(tokens["correct"][bins == b].mean() - conf[bins == b].mean()) * (bins == b).sum() / n
        for b in range(15)
        if (bins == b).any()
    )
    assert got["top1_ece"] == pytest.approx(ece)


def test_under_bf16_autocast_both_paths_use_float32_logits_of_the_rounded_inputs():
    """The plain path's logits were a bf16 product (every logit rounded to 8 bits) while the
    fused path computes them in float32 from the same bf16-rounded inputs: two objectives."""
    hidden, weight, bias = _batch()
    hidden, weight = 8 * hidden, 4 * weight  # logits of tens, as an LM's: bf16 steps of 0.125+
    rounded = hidden.bfloat16(), weight.bfloat16()
    expected = _reference(*rounded, LABELS, 0.1, bias=bias)  # float64 on the rounded inputs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = sft_loss(hidden, weight, LABELS, label_smoothing=0.1, bias=bias, reduction="none")
        fused = sft_loss(
            hidden, weight, LABELS, label_smoothing=0.1, bias=bias, reduction="none", fused=True
        )
    keep = LABELS[:, 1:].reshape(-1) != -100
    for got in (plain, fused):
        np.testing.assert_allclose(got.reshape(-1)[keep].double().numpy(), expected, rtol=1e-5)
    # and the statistics the logs and evaluation read (nll: the unsmoothed loss), chunked
    nll = _reference(*rounded, LABELS, 0.0, bias=bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stats = token_statistics(hidden, weight, LABELS, bias=bias, chunk_size=3)
    got = stats["nll"].reshape(-1)[keep].double().numpy()
    np.testing.assert_allclose(got, nll, rtol=1e-5, atol=1e-6)
