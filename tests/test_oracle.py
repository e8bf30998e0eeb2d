"""The sentiment oracle, Bradley–Terry probabilities, and the shipped preference set."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from smoothalign.assets import EMBEDDED_EPSILON, EMBEDDED_TAU, embedded_dataset_path
from smoothalign.eval import bradley_terry_probability, sentiment_reward

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# the oracle
# --------------------------------------------------------------------------------------------


def test_vader_orders_obvious_texts():
    pos, neu, neg = sentiment_reward(
        [
            "Absolutely wonderful, I love it. The best purchase I have ever made!",
            "The box is blue and it arrived on Tuesday.",
            "Terrible. It broke after a day and the support was awful. I hate it.",
        ]
    )
    assert pos > 0.5 and neg < -0.5 and abs(neu) < 0.1
    assert pos > neu > neg


def test_vader_range_empty_and_determinism():
    texts = ["good", "bad", "", "   ", "not good at all", "GREAT!!! :)"]
    a = sentiment_reward(texts)
    assert a == sentiment_reward(texts)
    assert all(-1.0 <= x <= 1.0 for x in a) and all(isinstance(x, float) for x in a)
    assert a[2] == 0.0 and a[3] == 0.0
    assert a[4] < 0 < a[0]  # VADER handles the negation
    with pytest.raises(TypeError):
        sentiment_reward("a single string")


def test_bradley_terry_matches_sigmoid():
    for ra, rb, tau in [(0.5, -0.5, 0.25), (0.0, 0.0, 1.0), (-0.9, 0.3, 0.1), (1.0, -1.0, 2.0)]:
        expected = 1.0 / (1.0 + math.exp(-(ra - rb) / tau))
        assert bradley_terry_probability(ra, rb, tau) == pytest.approx(expected, rel=1e-12)
    # arrays and tensors, broadcasting, symmetry P(a≻b) + P(b≻a) = 1
    ra, rb = np.array([0.2, -0.4, 0.9]), np.array([0.1, 0.5, -0.9])
    p = bradley_terry_probability(ra, rb, 0.25)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-(ra - rb) / 0.25)), rtol=1e-12)
    np.testing.assert_allclose(p + bradley_terry_probability(rb, ra, 0.25), 1.0, rtol=1e-12)
    t = bradley_terry_probability(torch.tensor(ra), torch.tensor(rb), 0.25)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), p, rtol=1e-12)
    # stable for huge margins, in both directions
    assert bradley_terry_probability(1e4, -1e4, 1e-3) == 1.0
    assert bradley_terry_probability(-1e4, 1e4, 1e-3) == 0.0
    assert np.all(np.isfinite(bradley_terry_probability(np.array([-1e6, 1e6]), 0.0, 1e-3)))
    with pytest.raises(ValueError):
        bradley_terry_probability(0.0, 1.0, 0.0)


# --------------------------------------------------------------------------------------------
# the shipped data set
# --------------------------------------------------------------------------------------------

REQUIRED = {
    "prompt": list,
    "chosen": list,
    "rejected": list,
    "chosen_reward": float,
    "rejected_reward": float,
    "confidence": float,
    "flipped": bool,
    "split": str,
}


@pytest.fixture(scope="module")
def rows():
    path = embedded_dataset_path()
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _text(messages, role):
    assert isinstance(messages, list) and len(messages) == 1
    assert messages[0]["role"] == role and isinstance(messages[0]["content"], str)
    return messages[0]["content"]


def test_embedded_rows_are_well_formed(rows):
    assert 400 <= len(rows) <= 1000
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        for key, typ in REQUIRED.items():
            assert isinstance(r.get(key), typ), (r.get("id"), key)
        assert r["split"] in ("train", "eval")
        prompt, chosen, rejected = (
            _text(r["prompt"], "user"),
            _text(r["chosen"], "assistant"),
            _text(r["rejected"], "assistant"),
        )
        assert prompt.strip() and chosen.strip() and rejected.strip()
        assert chosen != rejected
        assert 0.0 <= r["confidence"] <= 1.0
        assert -1.0 <= r["chosen_reward"] <= 1.0 and -1.0 <= r["rejected_reward"] <= 1.0
    splits = [r["split"] for r in rows]
    assert splits.count("eval") >= 50 and splits.count("train") >= 4 * splits.count("eval") - 8
    # one pair per prompt: no prompt in both splits
    assert len({_text(r["prompt"], "user") for r in rows}) == len(rows)


def test_embedded_flip_fraction_is_exact(rows):
    for split in ("train", "eval"):
        part = [r for r in rows if r["split"] == split]
        assert sum(r["flipped"] for r in part) == round(EMBEDDED_EPSILON * len(part))


def test_embedded_confidence_matches_rewards_tau_and_flips(rows):
    rc = np.array([r["chosen_reward"] for r in rows])
    rr = np.array([r["rejected_reward"] for r in rows])
    conf = np.array([r["confidence"] for r in rows])
    flipped = np.array([r["flipped"] for r in rows])
    # confidence is the true probability that the labelled chosen wins (SPEC §1), after flips
    np.testing.assert_allclose(conf, 1 / (1 + np.exp(-(rc - rr) / EMBEDDED_TAU)), atol=1e-12)
    # flips were applied on top of Bernoulli(q) labels, so flipped labels are mostly wrong and
    # the others mostly right
    assert conf[flipped].mean() < 0.5 < conf[~flipped].mean()
    assert conf.mean() > 0.6  # the labels carry signal


def test_embedded_rewards_are_the_oracle_of_the_text(rows):
    texts = [_text(r["chosen"], "assistant") for r in rows]
    texts += [_text(r["rejected"], "assistant") for r in rows]
    expected = [r["chosen_reward"] for r in rows] + [r["rejected_reward"] for r in rows]
    assert sentiment_reward(texts) == expected


def test_data_card_documents_the_parameters():
    card = (embedded_dataset_path().parent / "README.md").read_text(encoding="utf-8")
    assert f"τ = {EMBEDDED_TAU}" in card and f"ε = {EMBEDDED_EPSILON}" in card
    assert "make_sentiment_pairs.py" in card and "Apache-2.0" in card and "MIT" in card


# --------------------------------------------------------------------------------------------
# the generator script
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location(
        "make_sentiment_pairs", REPO / "scripts" / "make_sentiment_pairs.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_labelling_is_exact_and_consistent(script):
    cfg = script.GenConfig(
        model="none",
        seed=3,
        n_train=80,
        n_eval=20,
        tau=0.25,
        epsilon=0.1,
        max_new_tokens=8,
        temperature=1.0,
        batch_size=8,
        max_retries=1,
    )
    rng = np.random.default_rng(cfg.seed)
    prompts = script.build_prompts(100, rng)
    assert len({p["text"] for p in prompts}) == 100
    words = ["wonderful", "terrible", "fine", "awful", "great", "boring", "lovely", "okay"]
    responses = [
        [f"It was {words[i % 8]}.", f"Really {words[(3 * i + 1) % 8]}!"] for i in range(100)
    ]
    rows = script.label_pairs(prompts, responses, list(range(100)), cfg, rng)
    assert [r["split"] for r in rows].count("eval") == 20
    for split, n in (("train", 80), ("eval", 20)):
        assert sum(r["flipped"] for r in rows if r["split"] == split) == round(0.1 * n)
    for r in rows:
        assert r["confidence"] == pytest.approx(
            bradley_terry_probability(r["chosen_reward"], r["rejected_reward"], 0.25)
        )
        # before a flip the labelled pair's confidence is the Bernoulli label's; after, 1 − it
        pre = r["_pre_flip_confidence"]
        assert r["confidence"] == pytest.approx(1 - pre if r["flipped"] else pre)
    summary = script.summarise(rows)
    assert summary["all"]["pairs"] == 100 and summary["all"]["flipped"] == 10


def test_script_end_to_end_on_tiny(script, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["--model", "tiny", "--n-train", "6", "--n-eval", "2", "--batch-size", "8"]
    args += ["--max-new-tokens", "6", "--output-dir", str(tmp_path)]
    assert script.main(args) == 0
    lines = (tmp_path / "sentiment_pairs.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) <= 8 and all(not k.startswith("_") for r in rows for k in r)
    assert (tmp_path / "README.md").read_text(encoding="utf-8").startswith("# The embedded")
