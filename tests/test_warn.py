"""``smoothalign._warn``: a fallback's warning once per process; what every rank of a
data-parallel run would say alike, said by the main process only."""

from __future__ import annotations

import warnings

from smoothalign._warn import warn_main, warn_once


def _said(fn) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught]


def test_each_key_warns_once_and_points_at_the_caller():
    def fallback(name):  # a library function that warns where it falls back
        warn_once(f"falling back for {name}", key=f"test-fallback {name}")

    first = _said(lambda: [fallback("A") for _ in range(3)])
    assert first == ["falling back for A"]
    assert _said(lambda: fallback("A")) == []  # the process remembers
    assert _said(lambda: fallback("B")) == ["falling back for B"]  # another key
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_once("a message of its own", stacklevel=1)  # stacklevel 1: this line
    assert caught[0].filename == __file__


def test_the_main_process_alone_warns(monkeypatch):
    """Under torchrun (``RANK`` set) only rank 0 says it; without a launch, the process
    does. The caller's caller is pointed at, as by ``warnings.warn(stacklevel=2)``."""

    def check():  # a library check that every rank runs alike
        warn_main("the data hold something odd")

    monkeypatch.delenv("RANK", raising=False)
    assert _said(check) == ["the data hold something odd"]
    monkeypatch.setenv("RANK", "0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check()  # stacklevel 2: this line
    assert [w.filename for w in caught] == [__file__]
    monkeypatch.setenv("RANK", "1")
    assert _said(check) == []
    assert _said(lambda: warn_once("a fallback", key="test-fallback rank 1")) == []
    monkeypatch.setenv("RANK", "0")  # the key was seen: not said later either
    assert _said(lambda: warn_once("a fallback", key="test-fallback rank 1")) == []


def test_wrapping_a_model_in_lora_says_nothing_of_peft_s_deprecated_alias():
    """PEFT's ``PeftModel.__init__`` reads ``model.is_gradient_checkpointing``, which
    transformers deprecated: its FutureWarning was printed by every training command with
    LoRA (dpo, sft, reward). Filtered while PEFT wraps the model, and then only: reading
    the alias ourselves is still said."""
    from types import SimpleNamespace

    from smoothalign.models.loading import build_tiny_model
    from smoothalign.reward.run import _add_lora as add_reward_lora
    from smoothalign.reward.run import build_reward_model
    from smoothalign.train.common import add_lora

    config = SimpleNamespace(lora_r=2, lora_alpha=4)
    policy = build_tiny_model()
    reward, _ = build_reward_model("tiny")
    said = _said(lambda: (add_lora(policy, config), add_reward_lora(reward, config)))
    assert not [m for m in said if "is_gradient_checkpointing" in m], said
    assert any(
        "is_gradient_checkpointing" in m for m in _said(lambda: reward.is_gradient_checkpointing)
    )
