"""A learnable synthetic preference task for the tiny model, and a trainer built around it."""

from __future__ import annotations

import json
import random
from pathlib import Path


def synthetic_rows(n: int = 64, seed: int = 0, flip_rate: float = 0.0) -> list[dict]:
    """Prompts of random x/y/z; the better response is made of a/b, the worse of c/d.

    ``confidence`` is the true probability that the labelled chosen response wins: 0.9 for
    an unflipped pair, 0.1 for one whose label was flipped (``flip_rate`` of them, exactly).
    """
    rng = random.Random(seed)
    n_flip = round(flip_rate * n)
    flipped = set(rng.sample(range(n), n_flip))
    rows = []
    for i in range(n):
        prompt = "".join(rng.choice("xyz") for _ in range(6)) + ":"
        good = "".join(rng.choice("ab") for _ in range(5))
        bad = "".join(rng.choice("cd") for _ in range(5))
        if i in flipped:
            rows.append({"prompt": prompt, "chosen": bad, "rejected": good, "confidence": 0.1})
        else:
            rows.append({"prompt": prompt, "chosen": good, "rejected": bad, "confidence": 0.9})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def cut_alike_rows(n: int = 20) -> list[dict]:
    """Pairs whose responses share a prefix longer than a max_length of 20 tokens, but for
    the first half, whose rejected responses differ at once."""
    shared = " the same long prefix here, then "
    return [
        {
            "prompt": f"P{i:02d}:",
            "chosen": shared + "good",
            "rejected": (" bad, and that is all" if i < n // 2 else shared + "bad"),
            "p_chosen": 0.8,
        }
        for i in range(n)
    ]


class FakeSummaryWriter:
    """``torch.utils.tensorboard.SummaryWriter`` without tensorboard: records what is logged
    and whether it was closed (:func:`fake_tensorboard`)."""

    opened: list[FakeSummaryWriter] = []

    def __init__(self, log_dir=None, **kwargs) -> None:
        self.log_dir, self.scalars, self.closed = log_dir, {}, False
        self.opened.append(self)

    def add_scalar(self, name, value, step=None) -> None:
        assert not self.closed, f"{name}: written to a closed writer"
        self.scalars[name] = value

    def add_text(self, *args, **kwargs) -> None:
        assert not self.closed, "text written to a closed writer"

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def fake_tensorboard(monkeypatch) -> list[FakeSummaryWriter]:
    """Make the runs report to TensorBoard as where it is installed (``training_arguments``
    and ``transformers`` see a ``tensorboard`` package; ``TensorBoardCallback`` gets
    :class:`FakeSummaryWriter`); the list of writers opened, in order."""
    import importlib.machinery
    import importlib.util
    import sys
    import types

    find_spec = importlib.util.find_spec

    def spec(name, *args, **kwargs):
        if name == "tensorboard":
            return importlib.machinery.ModuleSpec("tensorboard", None)
        return find_spec(name, *args, **kwargs)

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeSummaryWriter
    monkeypatch.setattr(importlib.util, "find_spec", spec)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    monkeypatch.setattr(FakeSummaryWriter, "opened", [])
    return FakeSummaryWriter.opened


def earlier_version_fingerprints(monkeypatch, run_module, content_of) -> None:
    """Have ``run_module`` record its data as the version before checkpoints held their
    fingerprint did: scheme 1 of ``content_of`` (every field of a row), beside config.json
    only, written by every run."""
    from smoothalign.train.data_fingerprint import (
        earlier_data_fingerprint,
        write_data_fingerprint,
    )

    monkeypatch.setattr(
        run_module,
        "data_fingerprint",
        lambda train, held_out, *reads: earlier_data_fingerprint(train, held_out, content_of),
    )
    monkeypatch.setattr(
        run_module,
        "record_data_fingerprint",
        lambda trainer, out, resume, fingerprint: write_data_fingerprint(out, fingerprint),
    )
