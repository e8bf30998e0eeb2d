"""The DPO objective: log-probs and per-pair losses against hand computations (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from tests.dpo_helpers import synthetic_rows

from smoothalign.data import PreferenceCollator, validate_preference_rows
from smoothalign.models import load_model_and_tokenizer
from smoothalign.smoothing import make_policy
from smoothalign.train.objective import dpo_terms, sequence_logps

BETA = 0.3


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model_and_tokenizer("tiny", dtype=torch.float64)
    report = validate_preference_rows(synthetic_rows(6, seed=1), tok, max_length=32)
    batch = PreferenceCollator(int(tok.pad_token_id))(report.examples)
    return model, tok, batch


def _brute_force_logps(model, batch) -> list[float]:
    """Token by token: the log-softmax of the logits before each response token."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    out = []
    for i in range(batch["input_ids"].shape[0]):
        total = 0.0
        for t in range(1, batch["input_ids"].shape[1]):
            if batch["labels"][i, t] != -100:
                row = logits[i, t - 1].tolist()
                lse = math.log(sum(math.exp(v) for v in row))
                total += row[int(batch["labels"][i, t])] - lse
        out.append(total)
    return out


def test_sequence_logps_matches_token_by_token_sum(tiny):
    model, _, batch = tiny
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps, lengths = sequence_logps(logits, batch["labels"])
    expected = _brute_force_logps(model, batch)
    assert logps.tolist() == pytest.approx(expected, abs=1e-9)
    assert lengths.tolist() == (batch["labels"][:, 1:] != -100).sum(1).tolist()


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


HAND = {
    "sigmoid": lambda h, a: -(1 - a) * math.log(_sig(h)) - a * math.log(_sig(-h)),
    "robust": lambda h, e: ((1 - e) * -math.log(_sig(h)) - e * -math.log(_sig(-h))) / (1 - 2 * e),
    "ipo": lambda h, _: (h / BETA - 1 / (2 * BETA)) ** 2,
    "hinge": lambda h, _: max(0.0, 1 - h),
}


@pytest.mark.parametrize(
    "loss,smoothing,param,options",
    [
        ("sigmoid", "none", 0.0, {}),
        ("sigmoid", "constant:0.1", 0.1, {}),
        ("robust", "none", 0.2, {"flip_rate": 0.2}),
        ("ipo", "none", 0.0, {"beta": BETA}),
        ("hinge", "none", 0.0, {}),
    ],
)
def test_one_dpo_step_equals_hand_computation(tiny, loss, smoothing, param, options):
    model, _, batch = tiny
    torch.manual_seed(0)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps, _ = sequence_logps(logits, batch["labels"])
    b = logps.shape[0] // 2
    # a reference that differs from the policy, so margins are not all zero
    ref = logps.detach() + torch.linspace(-0.5, 0.7, logps.shape[0], dtype=torch.float64)
    terms = dpo_terms(
        logps[:b],
        logps[b:],
        ref[:b],
        ref[b:],
        beta=BETA,
        loss=loss,
        policy=make_policy(smoothing),
        loss_options=options,
    )
    for i in range(b):
        h = BETA * ((logps[i].item() - ref[i].item()) - (logps[b + i].item() - ref[b + i].item()))
        assert terms.margins[i].item() == pytest.approx(h, abs=1e-12)
        assert terms.losses[i].item() == pytest.approx(HAND[loss](h, param), abs=1e-10)
        assert terms.chosen_rewards[i].item() == pytest.approx(
            BETA * (logps[i].item() - ref[i].item())
        )


def test_nll_term_adds_length_normalised_chosen_nll(tiny):
    model, _, batch = tiny
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps, lengths = sequence_logps(logits, batch["labels"])
    b = logps.shape[0] // 2
    ref = logps.detach()
    kw = dict(beta=BETA, loss="sigmoid", policy=make_policy("none"))
    plain = dpo_terms(logps[:b], logps[b:], ref[:b], ref[b:], **kw)
    with_nll = dpo_terms(
        logps[:b], logps[b:], ref[:b], ref[b:], chosen_lengths=lengths[:b], sft_weight=0.5, **kw
    )
    expected = plain.losses - 0.5 * logps[:b] / lengths[:b]
    torch.testing.assert_close(with_nll.losses, expected)


def _loss_and_grads(model, batch, policy):
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps, _ = sequence_logps(logits, batch["labels"])
    b = logps.shape[0] // 2
    ref = logps.detach() + torch.linspace(-0.3, 0.4, logps.shape[0], dtype=torch.float64)
    terms = dpo_terms(
        logps[:b], logps[b:], ref[:b], ref[b:], beta=BETA, loss="sigmoid", policy=policy
    )
    loss = terms.losses.mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("metric", ["l0", "l2"])
def test_cals_with_c0_one_is_plain_dpo_on_the_first_step(tiny, metric):
    model, _, batch = tiny
    loss_dpo, grads_dpo = _loss_and_grads(model, batch, make_policy("none"))
    loss_cals, grads_cals = _loss_and_grads(
        model, batch, make_policy(f"cals-{metric}", init_confidence=1.0)
    )
    assert torch.equal(loss_dpo, loss_cals)
    assert all(torch.equal(a, b) for a, b in zip(grads_dpo, grads_cals, strict=True))


def test_constant_policy_is_conservative_dpo(tiny):
    model, _, batch = tiny
    loss_const, _ = _loss_and_grads(model, batch, make_policy("constant:0.1"))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps, _ = sequence_logps(logits, batch["labels"])
    b = logps.shape[0] // 2
    ref = logps.detach() + torch.linspace(-0.3, 0.4, logps.shape[0], dtype=torch.float64)
    h = BETA * ((logps[:b] - ref[:b]) - (logps[b:] - ref[b:]))
    cdpo = (
        -(0.9) * torch.nn.functional.logsigmoid(h) - 0.1 * torch.nn.functional.logsigmoid(-h)
    ).mean()
    torch.testing.assert_close(loss_const, cdpo.detach())


def test_a_refused_call_leaves_the_calibrator_as_it_was():
    policy = make_policy("cals-l2")
    h = torch.tensor([0.5, -0.2, 1.0], dtype=torch.float64)
    zeros = torch.zeros_like(h)
    before = policy.state_dict()

    def call(**kw):
        return dpo_terms(h, zeros, zeros, zeros, beta=1.0, policy=policy, **kw)

    with pytest.raises(ValueError, match="flip_rate"):
        call(loss="robust")  # the robust loss needs its flip rate
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sft_weight: must be finite and >= 0"):
            call(loss="sigmoid", sft_weight=bad)
    with pytest.raises(ValueError, match="chosen_lengths"):
        call(loss="sigmoid", sft_weight=0.5)
    with pytest.raises(ValueError, match="beta 0.5 differs from the margin's beta 1.0"):
        call(loss="ipo", loss_options={"beta": 0.5})
    assert str(policy.state_dict()) == str(before)
    call(loss="sigmoid")  # an accepted call folds the batch in
    assert str(policy.state_dict()) != str(before)
