"""Shared fixtures and float64 reference helpers for the core-module tests.

The references here are written from SPEC.md with NumPy only, independently of the code
under test, so that a wrong formula in the package cannot also be wrong in its check.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

# The tensors in these tests are tiny: intra-op threads only add contention (on a loaded
# 2-core machine a 4000-element op ran 50x slower with 2 threads than with 1).
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_preference_model(tmp_path_factory):
    """A saved tiny preference (reward) model with random weights (seed 0), as
    rank-calibrate reads one: ``--reward-model``."""
    from smoothalign.reward.run import build_reward_model

    torch.manual_seed(0)
    model, tok = build_reward_model("tiny")
    out = tmp_path_factory.mktemp("rm") / "final"
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    """A NumPy generator with a fixed seed (each test gets a fresh one)."""
    return np.random.default_rng(20240611)


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same torch RNG state, whatever ran before it."""
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _temp_files_in_the_tests_folder(tmp_path, monkeypatch):
    """Temporary files (the CLI's saved tracebacks of refused commands, ``smoothalign-
    error-*.txt``) go to the test's own folder, not by the thousand into the system's."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def np_log_sigmoid(h: np.ndarray) -> np.ndarray:
    """``log σ(h)`` in float64, stable for large ``|h|``."""
    return -np.logaddexp(0.0, -np.asarray(h, dtype=np.float64))


def np_sigmoid(h: np.ndarray) -> np.ndarray:
    return np.exp(np_log_sigmoid(h))


def np_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)
