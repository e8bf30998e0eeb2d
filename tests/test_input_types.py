"""The Python API takes tensors, NumPy arrays, lists and NumPy / 0-d tensor scalars alike,
and refuses what is not a real number (strings, objects, complex, None) with an error that
names the argument (a TypeError, and a ValueError as every refusal was)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import smoothalign as sa
from smoothalign.losses import forward_kl, jensen_shannon, reverse_kl

LOGITS = [[0.0, 1.0], [2.0, -1.0]]
PRIOR = [[0.5, 0.5], [0.9, 0.1]]


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd"])
def test_soft_label_loss_takes_numpy_and_lists_like_tensors(name):
    want = sa.soft_label_loss(name, torch.tensor(LOGITS), torch.tensor(PRIOR))
    for logits, prior in [
        (torch.tensor(LOGITS), np.array(PRIOR)),
        (np.array(LOGITS), np.array(PRIOR)),
        (LOGITS, PRIOR),
    ]:
        got = sa.soft_label_loss(name, logits, prior, posterior=True)
        assert isinstance(got, torch.Tensor) and got.shape == (2,)
        got = sa.soft_label_loss(name, logits, prior)
        torch.testing.assert_close(got.to(want.dtype), want)


@pytest.mark.parametrize("div", [forward_kl, reverse_kl, jensen_shannon])
def test_the_divergences_take_numpy_too(div):
    torch.testing.assert_close(
        div(np.array(LOGITS), PRIOR), div(torch.tensor(LOGITS, dtype=torch.float64), PRIOR)
    )


def test_numbers_held_as_objects_are_numbers():
    """An object array of numbers (a pandas column read with missing-value support, a list
    mixing NumPy and Python floats) is still numbers; only strings, None, ... are refused."""
    probs = np.array([0.3, np.float32(0.7)], dtype=object)
    assert sa.expected_calibration_error(probs, np.array([1, 0], dtype=object)) == pytest.approx(
        0.7
    )


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: sa.expected_calibration_error(["0.3", "0.7"], [1, 0]), "probs"),
        (lambda: sa.rms_calibration_error([0.3, 0.7], ["1", "0"]), "outcomes"),
        (lambda: sa.pairwise_loss("sigmoid", ["1", "2"]), "margins"),
        (lambda: sa.pairwise_loss("sigmoid", [1.0, 2.0], alpha=["0.1", "0.1"]), "alpha"),
        (lambda: sa.pairwise_loss("sigmoid", np.array([1.0, None])), "margins"),
        (lambda: sa.pairwise_loss("sigmoid", [1 + 2j, 1.0]), "margins"),
        (lambda: sa.pairwise_loss("sigmoid", torch.tensor([1 + 2j])), "margins"),
        (lambda: sa.pairwise_loss("sigmoid", "1.0"), "margins"),
        (lambda: sa.soft_label_loss("fkl", LOGITS, [["a", "b"], ["c", "d"]]), "prior"),
        (lambda: sa.soft_label_loss("fkl", [["0", "1"], ["2", "3"]], PRIOR), "logits"),
        (lambda: sa.optimal_alpha(["0.7"]), "q"),
        (lambda: sa.CALSCalibrator().update(["0.7"]), "forecasts"),
    ],
)
def test_non_numeric_inputs_are_refused_naming_the_argument(call, name):
    with pytest.raises(TypeError, match=f"^{name}: expected") as e:
        call()
    assert isinstance(e.value, ValueError)  # as every refusal was: the CLI's input errors


def test_numpy_integers_and_0d_tensors_are_numbers_for_the_calibrator():
    cal = sa.CALSCalibrator(bins=np.int64(10), warmup_steps=np.int32(2), momentum=np.float64(0.9))
    assert (cal.bins, cal.warmup_steps, cal.momentum) == (10, 2, 0.9)
    assert type(cal.bins) is int
    cal = sa.CALSCalibrator(prior_strength=torch.tensor(5.0), bins=torch.tensor(4))
    assert (cal.bins, cal.prior_strength) == (4, 5.0)
    assert sa.make_policy("cals-l2", bins=np.int64(10)).calibrator.bins == 10
    assert sa.expected_calibration_error([0.3, 0.7], [1, 0], bins=np.int64(5)) >= 0


@pytest.mark.parametrize(
    "options, message",
    [
        ({"momentum": "0.9"}, "momentum: expected a number, got str '0.9'"),
        ({"prior_strength": None}, "prior_strength: expected a number, got NoneType None"),
        ({"init_confidence": True}, "init_confidence: expected a number"),
        ({"bins": 10.0}, "bins: expected an integer, got float 10.0"),
        ({"bins": "10"}, "bins: expected an integer"),
        ({"warmup_steps": torch.tensor(2.0)}, "warmup_steps: expected an integer"),
        ({"momentum": torch.tensor([0.9, 0.9])}, "momentum: expected a number, got an array"),
    ],
)
def test_calibrator_options_of_the_wrong_kind_are_named(options, message):
    for build in (
        lambda: sa.CALSCalibrator(**options),
        lambda: sa.make_policy("cals-l0", **options),
    ):
        with pytest.raises(TypeError) as e:
            build()
        assert str(e.value).startswith(message)


def test_scalar_loss_options_take_0d_tensors_and_numpy_scalars():
    h = torch.tensor([0.5, -1.0])
    want = sa.pairwise_loss("ipo", h, beta=0.25)
    for beta in (torch.tensor(0.25), np.float64(0.25), np.array(0.25)):
        torch.testing.assert_close(sa.pairwise_loss("ipo", h, beta=beta), want)
    want = sa.pairwise_loss("robust", h, flip_rate=0.25)
    for eps in (torch.tensor(0.25), np.float32(0.25)):
        torch.testing.assert_close(sa.pairwise_loss("robust", h, flip_rate=eps), want)
    for beta, message in [
        ("0.1", "beta: expected a number, got str"),
        (torch.tensor([0.1, 0.2]), "beta: expected a number, got an array of shape [2]"),
        (torch.tensor(-1.0), "beta: must be a finite number > 0, got -1.0"),
    ]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            sa.pairwise_loss("ipo", h, beta=beta)
    with pytest.raises(ValueError, match=r"flip_rate: must lie in \[0.0, 0.5\), got 0.7$"):
        sa.pairwise_loss("robust", h, flip_rate=0.7)
    with pytest.raises(TypeError, match="target_floor: expected a number"):
        reverse_kl(LOGITS, PRIOR, target_floor="0.1")
